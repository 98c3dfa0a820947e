"""MkDocs hook (mkdocs.yml `hooks:`): the site works offline and the notebooks' links work in it.

mkdocs-jupyter renders each notebook with nbconvert's template, which loads MathJax and the Jupyter widgets' HTML
manager from CDNs. The course writes its maths in plain Unicode and puts an animation (a GIF) under every widget for
static copies (the widgets need a kernel to do anything), so those scripts are not needed: they are removed with the
saved widget state they would have drawn, and the site loads nothing from another server (a page that still names
one in a tag is a build warning, which fails the strict build; tests/test_site_browser.py fails on any request that
leaves the machine).

The notebooks link each other as `02_forward_and_reverse.ipynb` (what works in JupyterLab, on GitHub and nbviewer);
in the site those pages are `02_forward_and_reverse.html`, so the links are rewritten. A link to a notebook that does
not exist is a warning too.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.offline")

DEAD_SCRIPTS = [
    re.compile(r"<script[^>]*\ssrc=\"(https?://[^\"]*)?\"[^>]*>\s*</script>", re.S),  # CDN or empty (MathJax)
    re.compile(r"<script>\s*\(function\(\) \{\s*function addWidgetsRenderer\(\).*?</script>", re.S),  # loads unpkg
    re.compile(r"<script type=\"application/vnd\.jupyter\.widget-(state|view)\+json\">.*?</script>", re.S),
]
EXTERNAL_RESOURCE = re.compile(r"<(script|img|link|iframe)\b[^>]*\s(src|href)=\"(https?:)?//[^\"]*\"", re.S)
NOTEBOOK_LINK = re.compile(r"href=\"([\w.-]+)\.ipynb(#[^\"]*)?\"")


def _notebook_href(match: re.Match, folder: Path, page: str) -> str:
    name, anchor = match.group(1), match.group(2) or ""
    if not (folder / f"{name}.ipynb").exists():
        log.warning("%s links %s.ipynb, which is not in %s", page, name, folder)
    return f'href="{name}.html{anchor}"'


def on_post_page(output: str, page, config) -> str:
    """Drop the CDN scripts of notebook pages, rewrite links between notebooks, warn on anything external left."""
    source = Path(page.file.abs_src_path or "")
    if source.suffix == ".ipynb":
        for dead in DEAD_SCRIPTS:
            output = dead.sub("", output)
        output = NOTEBOOK_LINK.sub(lambda m: _notebook_href(m, source.parent, page.file.src_uri), output)
    for match in EXTERNAL_RESOURCE.finditer(output):
        log.warning("%s loads %s from another server", page.file.src_uri, match.group(0)[:120])
    return output

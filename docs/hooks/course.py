"""MkDocs hook (mkdocs.yml `hooks:`): every notebook of the course is in the site's navigation.

mkdocs.yml lists the lessons by hand, with short titles. A notebook added to notebooks/ later (a new lesson) joins
the navigation's "The course" section by itself, in file-name order, titled by its first heading, so that the strict
build (which refuses a page missing from the navigation) and tests/test_site_browser.py (which follows the
navigation to every notebook) need no edit of mkdocs.yml to take it.
"""

from __future__ import annotations

import json
from pathlib import Path

SECTION = "The course"


def _title(path: Path) -> str:
    """The notebook's first Markdown heading, without its '#'s; its file name when it has none."""
    cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            for line in "".join(cell.get("source", "")).splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return path.stem


def _listed(entries: list) -> set[str]:
    found = set()
    for entry in entries:
        for value in entry.values() if isinstance(entry, dict) else [entry]:
            if isinstance(value, str):
                found.add(value)
            elif isinstance(value, list):
                found |= _listed(value)
    return found


def on_config(config):
    """Add the notebooks that mkdocs.yml does not list to the course's section, after its last notebook."""
    section = next((e[SECTION] for e in config["nav"] or [] if isinstance(e, dict) and SECTION in e), None)
    if section is None:
        return config
    listed = _listed(config["nav"])
    folder = Path(config["docs_dir"]) / "notebooks"
    missing = [p for p in sorted(folder.glob("*.ipynb")) if f"notebooks/{p.name}" not in listed]
    last = max((i for i, e in enumerate(section) if str(next(iter(e.values()))).endswith(".ipynb")), default=-1)
    for k, path in enumerate(missing):
        section.insert(last + 1 + k, {_title(path): f"notebooks/{path.name}"})
    return config

"""The documentation site in a real browser: every page of the navigation opens in headless Chromium (Debian's,
driven by Playwright) with no missing picture, no console error, and nothing fetched from another server.

The site is what `make docs` builds (`mkdocs build --strict`: docs/, the notebooks with their committed outputs, the
API reference from the docstrings). `make test-all` builds it first and points this test at it (SDVIZ_SITE=site);
run alone, the test builds its own copy in a temporary folder. It is served from a local http.server, as a static
host would serve it, and the test follows the site's own navigation from the home page, so a page missing from the
navigation is a page the test does not reach: it also checks that every notebook of the course is among them.
"""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse

import pytest

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(Path(__file__).parent / "browser"))

from lab import LabError, chromium  # noqa: E402

pytestmark = pytest.mark.slow

NAV_LINKS = """() => Array.from(document.querySelectorAll('nav.md-nav--primary a.md-nav__link[href]'))
  .map(a => a.href)"""
BROKEN_IMAGES = """() => Array.from(document.images)
  .filter(img => !img.complete || img.naturalWidth === 0)
  .map(img => img.getAttribute('src').slice(0, 80))"""
CONTENT_LINKS = """() => Array.from(document.querySelectorAll('.md-content a[href]')).map(a => a.href)"""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The built site: SDVIZ_SITE (what `make docs` built), or a fresh strict build in a temporary folder."""
    if os.environ.get("SDVIZ_SITE"):
        folder = Path(os.environ["SDVIZ_SITE"]).resolve()
        assert (folder / "index.html").is_file(), f"SDVIZ_SITE={folder} holds no index.html: run `make docs` first"
        return folder
    folder = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(folder)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    warnings = [line for line in build.stderr.splitlines() if "WARNING" in line or "Error" in line]
    said = "\n".join(warnings or build.stderr.splitlines()[-5:])
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{said}"
    return folder


@pytest.fixture(scope="module")
def server(site):
    """A local static web server over the site (what GitHub Pages or any static host does)."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def visited(server, tmp_path_factory) -> dict[str, dict]:
    """Every page reached from the home page through the navigation: {url: what was seen there}."""
    seen: dict[str, dict] = {}
    outside: list[str] = []
    try:
        with chromium(tmp_path_factory.mktemp("profile")) as context:

            def guard(route):  # nothing may leave this machine: a request elsewhere is recorded and refused
                url = route.request.url
                if urlparse(url).hostname not in ("127.0.0.1", "localhost") and not url.startswith(("data:", "blob:")):
                    outside.append(url)
                    return route.abort()
                return route.continue_()

            context.route("**/*", guard)
            page = context.pages[0] if context.pages else context.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url} ({r.failure})"))
            queue = [server + "index.html"]
            while queue:
                url = queue.pop(0)
                if url in seen:
                    continue
                errors.clear()
                # networkidle: the search worker and the pictures have loaded before the next page is opened (a
                # request that leaving a page cuts short would read as a failure of the next one)
                response = page.goto(url, wait_until="networkidle")
                seen[url] = {
                    "status": response.status if response else None,
                    "title": page.title(),
                    "broken_images": page.evaluate(BROKEN_IMAGES),
                    "images": page.evaluate("() => document.images.length"),
                    "errors": list(errors),
                    "links": page.evaluate(CONTENT_LINKS),
                    "text": page.inner_text(".md-content"),
                }
                for link in page.evaluate(NAV_LINKS):
                    link = urldefrag(link).url
                    if link.startswith(server) and link not in seen and link not in queue:
                        queue.append(link)
    except LabError as e:
        pytest.fail(str(e), pytrace=False)
    assert not outside, f"the site fetched from other servers: {sorted(set(outside))[:5]}"
    return seen


def test_the_navigation_reaches_every_page_and_every_notebook(visited, site):
    pages = {urlparse(u).path.lstrip("/") for u in visited}
    lessons = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    missing = [name for name in lessons if f"notebooks/{name}.html" not in pages]
    assert not missing, f"notebooks not reached through the navigation: {missing}"
    api = [p for p in pages if p.startswith("api/")]
    assert len(api) >= 5, f"the API reference has {len(api)} pages: {sorted(api)}"
    built = {str(p.relative_to(site)) for p in site.rglob("*.html") if p.name != "404.html"}
    not_in_nav = sorted(p for p in built - pages if not p.startswith(("runs/", "readme-images/", "flowcharts/")))
    assert not not_in_nav, f"pages built but not in the navigation: {not_in_nav}"
    print(f"\n{len(pages)} pages reached: {len(lessons)} notebooks, {len(api)} API pages")


def test_every_page_loads_with_its_pictures_and_no_console_error(visited):
    bad = {u: v["status"] for u, v in visited.items() if v["status"] != 200}
    assert not bad, f"pages that did not load: {bad}"
    broken = {u: v["broken_images"] for u, v in visited.items() if v["broken_images"]}
    assert not broken, f"missing pictures: {broken}"
    errors = {u: v["errors"] for u, v in visited.items() if v["errors"]}
    assert not errors, f"console errors: {errors}"


def _saved_pictures(notebook: Path) -> int:
    """How many pictures a committed notebook's outputs hold (a PNG, GIF or JPEG output, or an <img> in HTML)."""
    import nbformat

    count = 0
    for cell in nbformat.read(notebook, as_version=4).cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if any(k in data for k in ("image/png", "image/gif", "image/jpeg")):
                count += 1
            else:
                count += "".join(data.get("text/html", "")).count("<img ")
    return count


def test_the_notebooks_show_every_saved_figure_and_no_widget_error(visited, server):
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        v = visited[f"{server}notebooks/{notebook.stem}.html"]
        assert "Error displaying widget" not in v["text"], notebook.name
        saved = _saved_pictures(notebook)
        assert saved >= 1 and v["images"] >= saved, f"{notebook.name}: {saved} pictures saved, {v['images']} shown"


def test_links_inside_the_pages_lead_to_pages_that_exist(visited, server, site):
    """The notebooks' links to each other (rewritten from .ipynb by docs/hooks/offline.py) and the pages' own links."""
    dead = []
    for url, v in visited.items():
        for link in v["links"]:
            target = urldefrag(urljoin(url, link)).url
            if not target.startswith(server):
                continue
            path = site / urlparse(target).path.lstrip("/")
            if not (path.is_file() or (path / "index.html").is_file()):
                dead.append(f"{urlparse(url).path} -> {urlparse(target).path}")
    assert not dead, f"links to nothing: {dead[:10]}"

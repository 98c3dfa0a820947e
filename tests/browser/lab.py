"""Drive a real JupyterLab in headless Chromium: the browser test's machinery, and `make screenshots`.

    python tests/browser/lab.py --out readme-images     # redraw readme-images/explorer.png (and keep the others in
                                                         # a temporary folder, printed)

What it does, all on this machine (127.0.0.1, no other network):
  1. copies `widgets.ipynb` (beside this file) into a temporary folder;
  2. starts JupyterLab on a free localhost port over that folder, with its own temporary configuration: no news,
     no update check, every notebook cell kept in the page (windowing off), the app reachable from the page's
     JavaScript (`window.jupyterapp`) so that the test can read the notebook's outputs from its model;
  3. opens the notebook in Debian's Chromium (headless, through Playwright, never a downloaded browser), runs every
     cell, then uses the widgets as a person would: presses Play, drags the step slider, clicks a word and a pixel,
     presses the studio's Generate (with a prompt in and one outside the model's vocabulary), moves the reweight
     slider, reloads the page (every widget must come back from the kernel); and takes screenshots along the way.

`exercise()` returns what it saw (a `Findings`); the test asserts on it. A browser or server that does not start
raises `LabError` with one line saying why.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
NOTEBOOK = HERE / "widgets.ipynb"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
# JupyterLab user settings: no news prompt, no update check, all cells rendered (so off-screen widgets exist)
SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}

# The server: no news feed, no update check, no terminals, the app visible to the page's scripts
SERVER_CONFIG = {
    "ServerApp": {
        "jpserver_extensions": {"jupyter_server_terminals": False},
        "terminals_enabled": False,
        "shutdown_no_activity_timeout": 600,
    },
    "LabApp": {
        "news_url": None,
        "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
        "expose_app_in_browser": True,
    },
}


class LabError(RuntimeError):
    """JupyterLab or the browser could not be started or driven: one line that says why."""


@dataclass
class Findings:
    """What the browser saw."""

    seconds: dict[str, float] = field(default_factory=dict)  # how long each phase took
    cells: list[dict] = field(default_factory=list)  # per code cell: execution count and outputs (from the model)
    figure_texts: list[str] = field(default_factory=list)  # figures shown as text instead of a picture
    figure_images: int = 0  # figure outputs shown as pictures
    widget_views: int = 0  # rendered widget views
    widget_errors: list[str] = field(default_factory=list)  # "Error displaying widget" and the like
    play_sources: list[str] = field(default_factory=list)  # the player's x0 image source, sampled while playing
    play_readouts: list[str] = field(default_factory=list)
    drag: tuple[str, str] = ("", "")  # the x0 image source before and after dragging the slider
    drag_readout: tuple[str, str] = ("", "")
    player_word: tuple[str, str] = ("", "")  # the player's attention panel before and after picking another word
    word: tuple[str, str] = ("", "")  # the explorer's map source before and after clicking a word
    ranking: str = ""  # the ranking table's text after clicking a pixel
    studio_picture: str = ""  # the studio's picture source after Generate
    studio_status: str = ""
    studio_live_updates: int = 0  # distinct live x0 sources seen while generating
    studio_broken_before: list[str] = field(default_factory=list)  # broken pictures in the studio before Generate
    studio_unknown_status: str = ""  # the status after generating a prompt outside the model's vocabulary
    reweight_sizes: dict[str, float] = field(default_factory=dict)  # the reweight picture: natural and shown size
    reweight: tuple[str, str] = ("", "")  # the reweight picture's source before and after moving the slider
    studio_buttons: list[str] = field(default_factory=list)  # the studio's button labels, Guidance tab open
    clipped_buttons: list[str] = field(default_factory=list)  # buttons whose label does not fit (shown with "…")
    reload_errors: list[str] = field(default_factory=list)  # widget errors shown after reloading the page
    reload_widget_views: int = 0  # widget views rendered after reloading the page
    reload_closed: list[str] = field(default_factory=list)  # widget views whose model the kernel no longer holds
    broken_images: list[str] = field(default_factory=list)  # sdviz pictures the browser could not draw
    console_errors: list[str] = field(default_factory=list)
    screenshots: dict[str, Path] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 3) -> str:
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


@contextmanager
def jupyterlab(root: Path, work: Path, timeout: float = 90):
    """A JupyterLab server over `root`, on a free localhost port, with temporary configuration under `work`.
    Yields (base url, token); the server and its kernels are stopped on exit."""
    for name in ("config", "runtime", "settings", "workspaces", "ipython"):
        (work / name).mkdir(parents=True, exist_ok=True)
    (work / "config" / "jupyter_server_config.json").write_text(json.dumps(SERVER_CONFIG))
    for name, values in SETTINGS.items():
        path = work / "settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(work / "config"),
        "JUPYTER_RUNTIME_DIR": str(work / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(work / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(work / "workspaces"),
        "IPYTHONDIR": str(work / "ipython"),
        "JUPYTER_PLATFORM_DIRS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cmd = [
        sys.executable, "-m", "jupyterlab",
        "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
    ]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # CI and containers run as root
    log = work / "jupyterlab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise LabError(f"JupyterLab exited with status {proc.returncode}: {_tail(log)}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:  # noqa: S310
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise LabError(f"JupyterLab did not answer on {base} within {timeout:.0f} s: {_tail(log)}")
            time.sleep(0.25)
        yield base, token
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server we started (it shuts its kernels down); its process group if it does not go."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@contextmanager
def chromium(profile: Path):
    """Debian's Chromium, headless, through Playwright (never a browser Playwright downloads)."""
    if not Path(CHROMIUM).is_file():
        raise LabError(f"{CHROMIUM} is missing: apt-get install -y chromium (make test does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        raise LabError(f"playwright is not installed ({e}); pip install -e '.[test]' (make test does)") from None
    with sync_playwright() as p:
        try:
            context = p.chromium.launch_persistent_context(
                user_data_dir=str(profile),
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1400, "height": 1000},
            )
        except Exception as e:  # noqa: BLE001 - any launch failure becomes one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise LabError(f"headless Chromium did not start: {first}") from None
        try:
            yield context
        finally:
            context.close()


# --------------------------------------------------------------------------------------------------------------------
# What the test does in the page
# --------------------------------------------------------------------------------------------------------------------

READ_CELLS = """() => {
  const nb = window.jupyterapp.shell.currentWidget;
  const cells = nb.content.model.cells;
  const out = [];
  for (let i = 0; i < cells.length; i++) {
    const c = cells.get(i);
    if (c.type !== 'code') continue;
    out.push({index: i, count: c.executionCount, source: c.sharedModel.getSource(),
      outputs: c.outputs.toJSON().map(o => ({type: o.output_type, mimes: Object.keys(o.data || {}),
        text: String((o.data && o.data['text/plain']) || o.text || ''),
        error: (o.ename || '') + ': ' + (o.evalue || '')}))});
  }
  return out;
}"""

RUN_ALL = """async () => {
  const nb = window.jupyterapp.shell.currentWidget;
  await nb.sessionContext.ready;
  await window.jupyterapp.commands.execute('notebook:run-all-cells');
}"""

DONE = """() => {
  const nb = window.jupyterapp.shell.currentWidget;
  const kernel = nb.sessionContext.session && nb.sessionContext.session.kernel;
  if (!kernel || kernel.status !== 'idle') return false;
  const cells = nb.content.model.cells;
  for (let i = 0; i < cells.length; i++) {
    const c = cells.get(i);
    if (c.type === 'code' && c.executionCount === null) return false;
  }
  return true;
}"""

BROKEN_IMAGES = """() => Array.from(document.querySelectorAll('.jp-OutputArea-output img'))
  .filter(img => img.complete && img.naturalWidth === 0)
  .map(img => img.className || img.alt || img.src.slice(0, 40))"""


BROKEN_IN = """(root) => Array.from(document.querySelectorAll(root + ' img'))
  .filter(img => !img.getAttribute('src') || (img.complete && img.naturalWidth === 0))
  .map(img => img.className || img.alt || 'img')"""

SIZES = """(selector) => { const img = document.querySelector(selector); if (!img) return {};
  const r = img.getBoundingClientRect();
  return {natural_width: img.naturalWidth, natural_height: img.naturalHeight, width: r.width, height: r.height,
          rendering: getComputedStyle(img).imageRendering}; }"""

VIEW_IDS = """() => { const cells = window.jupyterapp.shell.currentWidget.content.model.cells; const ids = [];
  for (let i = 0; i < cells.length; i++) { const c = cells.get(i); if (c.type !== 'code') continue;
    for (const o of c.outputs.toJSON()) { const v = (o.data || {})['application/vnd.jupyter.widget-view+json'];
      if (v) ids.push(v.model_id); } }
  return ids; }"""

KERNEL_PRINT = """async (code) => { const k = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  let out = ''; const f = k.requestExecute({code: code, store_history: false});
  f.onIOPub = (msg) => { if (msg.header.msg_type === 'stream') out += msg.content.text; };
  await f.done; return out; }"""

CLIPPED = """(selector) => Array.from(document.querySelectorAll(selector))
  .filter(b => b.offsetParent !== null && b.scrollWidth > b.clientWidth + 1).map(b => b.innerText)"""

WIDGET_ERRORS = """() => Array.from(document.querySelectorAll('.jp-OutputArea-output'))
  .map(o => o.innerText).filter(t => /Error displaying widget|model not found|Failed to load model/.test(t))
  .map(t => t.slice(0, 120))"""


def _cell(page: Any, source: str) -> Any:
    """The notebook cell whose code contains `source`."""
    return page.locator(".jp-CodeCell", has=page.locator(".jp-InputArea", has_text=source)).first


def _src(page: Any, selector: str) -> str:
    loc = page.locator(selector).first
    return loc.get_attribute("src") or "" if loc.count() else ""


def _text(page: Any, selector: str) -> str:
    loc = page.locator(selector).first
    return loc.inner_text() if loc.count() else ""


def _wait_change(page: Any, selector: str, before: str, timeout: float = 20, attr: str = "src") -> str:
    """Wait until an element's attribute (or text) differs from `before`; its new value ('' if it never did)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = _src(page, selector) if attr == "src" else _text(page, selector)
        if now and now != before:
            return now
        page.wait_for_timeout(100)
    return before


APP_READY = (
    "() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
    " && window.jupyterapp.shell.currentWidget.sessionContext"
)


@contextmanager
def notebook_page(notebook: Path, work: Path, errors: list[str], run_timeout: float = 300):
    """JupyterLab over a copy of `notebook` (in work/notebooks), opened in headless Chromium with every cell run:
    yields the page. The page's console errors and uncaught errors are appended to `errors`. A panel's browser test
    (tests/test_*_browser.py) then uses its widgets."""
    root = work / "notebooks"
    root.mkdir(exist_ok=True)
    shutil.copy(notebook, root / notebook.name)
    with jupyterlab(root, work / "jupyter") as (base, token), chromium(work / "profile") as context:
        page = context.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        page.goto(f"{base}/lab/tree/{notebook.name}?token={token}", wait_until="domcontentloaded")
        page.wait_for_function(APP_READY, timeout=60_000)
        page.evaluate(RUN_ALL)
        page.wait_for_function(DONE, timeout=run_timeout * 1000, polling=250)
        yield page


def exercise(work: Path, shots: Path | None = None, run_timeout: float = 300) -> Findings:
    """Run the whole scenario (see the module docstring); screenshots go to `shots` (default work/screenshots)."""
    f = Findings()
    t0 = time.monotonic()
    root = work / "notebooks"
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    shots = shots or work / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)

    def shot(name: str, page: Any, selector: str | None = None) -> None:
        path = shots / f"{name}.png"
        (page.locator(selector).first if selector else page).screenshot(path=str(path))
        f.screenshots[name] = path

    with jupyterlab(root, work / "jupyter") as (base, token):
        f.seconds["jupyterlab start"] = time.monotonic() - t0
        with chromium(work / "profile") as context:
            page = context.new_page()
            page.on("console", lambda m: f.console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: f.console_errors.append(f"page error: {e}"))
            t = time.monotonic()
            page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}", wait_until="domcontentloaded")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            page.wait_for_function(
                "() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                " && window.jupyterapp.shell.currentWidget.sessionContext", timeout=60_000
            )  # fmt: skip
            f.seconds["page load"] = time.monotonic() - t
            t = time.monotonic()
            page.evaluate(RUN_ALL)
            page.wait_for_function(DONE, timeout=run_timeout * 1000, polling=250)
            f.seconds["run all cells"] = time.monotonic() - t
            page.wait_for_timeout(500)  # the last widget views render
            f.cells = page.evaluate(READ_CELLS)
            f.figure_texts = [
                t for t in page.locator(".jp-OutputArea-output .jp-RenderedText").all_inner_texts() if "<Figure" in t
            ]
            figures = [o for c in f.cells for o in c["outputs"] if o["text"].startswith("<Figure")]
            f.figure_images = sum("image/png" in o["mimes"] for o in figures)
            f.widget_views = page.locator(".jp-OutputArea-output .widget-vbox").count()
            f.widget_errors = [
                t for t in page.locator(".jp-OutputArea-output").all_inner_texts()
                if "Error displaying widget" in t or "Loading widget" in t or "Failed to load model" in t
            ]  # fmt: skip
            shot("notebook", page)

            # the player: Play, then drag the slider
            t = time.monotonic()
            x0 = "img.sdviz-player-x0"
            page.locator(".sdviz-player").first.scroll_into_view_if_needed()
            page.locator(".sdviz-play button").first.click()  # play
            for _ in range(6):
                f.play_sources.append(_src(page, x0))
                f.play_readouts.append(_text(page, ".sdviz-readout"))
                page.wait_for_timeout(400)
            page.locator(".sdviz-play button").nth(1).click()  # pause
            page.wait_for_timeout(400)
            before, readout = _src(page, x0), _text(page, ".sdviz-readout")
            handle = page.locator(".sdviz-step .noUi-handle").first
            box = handle.bounding_box()
            track = page.locator(".sdviz-step .noUi-target").first.bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.down()
            page.mouse.move(track["x"] + 0.15 * track["width"], box["y"] + box["height"] / 2, steps=5)
            page.mouse.move(track["x"] + 0.8 * track["width"], box["y"] + box["height"] / 2, steps=10)
            page.mouse.up()
            after = _wait_change(page, x0, before)
            f.drag = (before, after)
            f.drag_readout = (readout, _text(page, ".sdviz-readout"))
            attention = "img.sdviz-player-attention"
            if page.locator(".sdviz-player-word select").count():  # the attention panel's word picker
                before = _src(page, attention)
                page.locator(".sdviz-player-word select").first.select_option("square")
                f.player_word = (before, _wait_change(page, attention, before))
            shot("player", page, ".sdviz-player")
            f.seconds["player"] = time.monotonic() - t

            # the explorer: a word, then a pixel
            t = time.monotonic()
            explorer_map = "img.sdviz-explorer-map"
            page.locator(".sdviz-explorer").first.scroll_into_view_if_needed()
            before = _src(page, explorer_map)
            page.locator(".sdviz-words button", has_text="square").first.click()
            f.word = (before, _wait_change(page, explorer_map, before))
            picture = page.locator(explorer_map).first.bounding_box()
            # a click on the circle (seed 13 draws it at the top centre): the words ranked there
            page.mouse.click(picture["x"] + 0.57 * picture["width"], picture["y"] + 0.2 * picture["height"])
            page.wait_for_selector(".sdviz-ranking", timeout=20_000)
            f.ranking = _text(page, ".sdviz-ranking")
            page.wait_for_timeout(300)
            shot("explorer", page, ".sdviz-explorer")
            f.seconds["explorer"] = time.monotonic() - t

            # the studio: Generate
            t = time.monotonic()
            page.locator(".sdviz-studio").first.scroll_into_view_if_needed()
            f.studio_broken_before = page.evaluate(BROKEN_IN, ".sdviz-studio")
            shot("studio_before", page, ".sdviz-studio")
            first_picture, first_live = _src(page, "img.sdviz-picture"), _src(page, "img.sdviz-live")
            live: set[str] = set()
            page.locator("button.sdviz-generate").first.click()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and _src(page, "img.sdviz-picture") == first_picture:
                if (src := _src(page, "img.sdviz-live")) != first_live:
                    live.add(src)
                page.wait_for_timeout(50)
            picture = _src(page, "img.sdviz-picture")
            f.studio_picture = picture if picture != first_picture else ""
            f.studio_live_updates = len(live)
            page.wait_for_function(
                "() => (document.querySelector('.sdviz-status') || {}).innerText?.includes('done:')"
                " && !(document.querySelector('.sdviz-status').innerText.includes('preparing'))", timeout=60_000
            )  # fmt: skip
            f.studio_status = _text(page, ".sdviz-status")
            page.wait_for_timeout(300)
            shot("studio", page, ".sdviz-studio")
            # a prompt outside the embedded model's vocabulary: the panel must say so, not just "done"
            page.locator(".sdviz-studio input[type=text]").first.fill("an elephant on the moon")
            page.locator("button.sdviz-generate").first.click()
            page.wait_for_timeout(300)
            page.wait_for_function(
                "() => !(document.querySelector('.sdviz-status') || {}).innerText?.includes('generating')"
                " && !(document.querySelector('.sdviz-status').innerText.includes('preparing'))", timeout=120_000
            )  # fmt: skip
            f.studio_unknown_status = _text(page, ".sdviz-status")
            shot("studio_unknown_prompt", page, ".sdviz-studio")
            page.locator(".sdviz-studio .lm-TabBar-tab", has_text="Guidance").first.click()  # its buttons' labels
            page.wait_for_timeout(300)
            f.studio_buttons = page.locator(".sdviz-studio button").all_inner_texts()
            f.clipped_buttons = page.evaluate(CLIPPED, ".sdviz-studio button")
            shot("studio_guidance", page, ".sdviz-studio")
            f.seconds["studio"] = time.monotonic() - t

            # the reweight slider: its picture at its natural size (a whole factor), and a move regenerates it
            t = time.monotonic()
            cell = _cell(page, "reweight_widget(")
            cell.scroll_into_view_if_needed()
            picture = ".sdviz-reweight-picture"
            if page.locator(picture).count():
                f.reweight_sizes = page.evaluate(SIZES, picture)
                before = _src(page, picture)
                handle = page.locator(".sdviz-reweight .noUi-handle").first.bounding_box()
                track = page.locator(".sdviz-reweight .noUi-target").first.bounding_box()
                page.mouse.move(handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
                page.mouse.down()
                page.mouse.move(track["x"] + 0.75 * track["width"], handle["y"] + handle["height"] / 2, steps=8)
                page.mouse.up()
                f.reweight = (before, _wait_change(page, picture, before, timeout=60))
            shot("reweight", page, ".jp-CodeCell:has(.jp-InputArea:has-text('reweight_widget(')) .jp-OutputArea")
            f.seconds["reweight"] = time.monotonic() - t
            f.cells = page.evaluate(READ_CELLS)  # again: a callback's error would show up as an output
            f.broken_images = page.evaluate(BROKEN_IMAGES)
            shot("generate_progress", page, ".jp-CodeCell:has(.jp-InputArea:has-text('result = pipe.generate'))")

            # save, then reload the page: every widget must come back from the kernel (no "model not found")
            t = time.monotonic()
            page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
            page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=30_000)
            page.reload(wait_until="domcontentloaded")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            page.wait_for_function("() => document.querySelectorAll('.jp-OutputArea-output .widget-vbox').length"
                                   " >= 3", timeout=60_000, polling=250)  # fmt: skip
            page.wait_for_timeout(2000)  # the rest of the views render (or fail)
            f.reload_errors = page.evaluate(WIDGET_ERRORS)
            f.reload_widget_views = page.locator(".jp-OutputArea-output .widget-vbox").count()
            ids = page.evaluate(VIEW_IDS)  # the widget views the saved notebook shows: does the kernel hold each?
            code = ("from ipywidgets.widgets.widget import _instances\n"
                    f"print(','.join(m for m in {ids!r} if m not in _instances))")  # fmt: skip
            f.reload_closed = [m for m in page.evaluate(KERNEL_PRINT, code).strip().split(",") if m]
            shot("after_reload_generate", page,
                 ".jp-CodeCell:has(.jp-InputArea:has-text('result = pipe.generate'))")  # fmt: skip
            shot("after_reload", page)
            f.seconds["reload"] = time.monotonic() - t
            page.close()
    f.seconds["total"] = time.monotonic() - t0
    return f


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the widget notebook in JupyterLab and headless Chromium.")
    p.add_argument("--out", default="readme-images", help="where the explorer screenshot goes (explorer.png)")
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="sdviz-lab-"))
    try:
        findings = exercise(work)
    except LabError as e:
        print(f"screenshots: error: {e}", file=sys.stderr)
        return 1
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(findings.screenshots["explorer"], out / "explorer.png")
    print(f"wrote {out / 'explorer.png'}; all screenshots in {work / 'screenshots'}")
    print(", ".join(f"{k} {v:.1f} s" for k, v in findings.seconds.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

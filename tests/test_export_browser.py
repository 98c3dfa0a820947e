"""The exported page in a real browser: Debian's Chromium, headless, driven by Playwright, opened from file:// with
the network cut off.

One scenario, run once (`seen`), as a person would use the page: wait for it, press Play, drag the step slider,
step with the keyboard, click a word, choose a step window, a layer and a head, click a pixel, and narrow the window
to a phone's width. The tests then check what the page showed against the trace itself: the player's canvases hold
the trace's own frames pixel for pixel, the explorer's maps are `Trace.word_map` within 1e-5, the ranked words at
the clicked pixel are `word_map` there; and no console error, no request leaving the file. A browser that cannot
start fails the test with one line: it is never skipped.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

import sdviz
from sdviz.tracing.export import export

sys.path.insert(0, str(Path(__file__).parent / "browser"))

from lab import LabError, chromium  # noqa: E402

PROMPT = "a large red circle above a small blue square"
STEPS = 10

CANVAS = """(sel) => { const c = document.querySelector(sel);
  return [c.width, c.height, Array.from(c.getContext("2d").getImageData(0, 0, c.width, c.height).data)]; }"""


@dataclass
class Seen:
    """What the browser showed."""

    played_steps: list[int] = field(default_factory=list)
    paused: bool = False
    dragged_step: int = -1
    readout: str = ""
    canvases: dict[str, np.ndarray] = field(default_factory=dict)  # panel -> (h, w, 3) after the drag
    keyboard_steps: list[int] = field(default_factory=list)  # after ArrowRight, ArrowLeft, End, Home
    space_playing: tuple[bool, bool] = (False, False)
    entry: str = ""
    attention_caption: str = ""  # the player's panel of the explorer's word at the player's step
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # "whole" / "window" / "layer-head" -> (64, 64)
    layer: str = ""
    pixel: tuple[int, int] = (-1, -1)
    ranked: list[tuple[str, float]] = field(default_factory=list)
    ranking_text: str = ""
    widths: dict[int, int] = field(default_factory=dict)  # viewport width -> document scroll width
    side_by_side: bool = False
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    left_the_file: list[str] = field(default_factory=list)


@pytest.fixture(scope="session")
def traced():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    pipe = sdviz.load_pipeline()
    with sdviz.trace(pipe, keep=["step", "layer", "head"], decode=True) as tr:
        pipe.generate(PROMPT, seed=13, steps=STEPS, sampler="ddim", cfg_scale=5, progress=False)
    return tr


def _scenario(page, seen: Seen, tr) -> None:
    page.wait_for_selector("body[data-ready='1']", timeout=20_000)
    state = lambda: page.evaluate("sdvizPage.state()")  # noqa: E731

    # the player: Play, watch the step move, pause
    page.click("#play")
    for _ in range(8):
        page.wait_for_timeout(140)
        seen.played_steps.append(state()["step"])
    page.click("#play")
    seen.paused = not state()["playing"]

    # drag the step slider to about 60 %
    box = page.locator("#step").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + 3, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.35, y, steps=4)
    page.mouse.move(box["x"] + box["width"] * 0.6, y, steps=4)
    page.mouse.up()
    seen.dragged_step = state()["step"]
    seen.readout = page.inner_text("#readout")
    for panel in ("x_t", "x0", "decoded", "eps"):
        w, h, data = page.evaluate(CANVAS, f"canvas[data-panel={panel}]")
        seen.canvases[panel] = np.array(data, np.uint8).reshape(h, w, 4)[..., :3]

    # the keyboard, with the focus on the page
    page.click("h1")
    for key in ("ArrowRight", "ArrowLeft", "End", "Home"):
        page.keyboard.press(key)
        seen.keyboard_steps.append(state()["step"])
    page.keyboard.press(" ")
    playing = state()["playing"]
    page.keyboard.press(" ")
    seen.space_playing = (playing, state()["playing"])

    # the explorer: a word, a step window, a layer and a head, then back to all layers and heads, and a pixel
    page.click("button[data-entry='square']")
    seen.entry = state()["entry"]
    seen.attention_caption = page.inner_text("#attention-caption")
    seen.maps["whole"] = np.array(page.evaluate("sdvizPage.maps(['square'])[0]")).reshape(64, 64)
    page.evaluate("""() => { for (const [id, v] of [["from", 3], ["to", 7]]) {
        const e = document.getElementById(id); e.value = v; e.dispatchEvent(new Event("input")); } }""")
    seen.maps["window"] = np.array(page.evaluate("sdvizPage.maps(['square'])[0]")).reshape(64, 64)
    options = page.eval_on_selector_all("#where option", "os => os.map(o => o.value)")
    seen.layer = next(o for o in options if o.startswith("key:"))
    page.select_option("#where", seen.layer)
    page.select_option("#head", "1")
    seen.maps["layer-head"] = np.array(page.evaluate("sdvizPage.maps(['square'])[0]")).reshape(64, 64)
    page.select_option("#where", "all")
    page.select_option("#head", "mean")
    box = page.locator("#map").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.55, box["y"] + box["height"] * 0.8)
    s = state()
    seen.pixel = tuple(s["pixel"])
    seen.ranked = [(k, float(v)) for k, v in s["ranked"]]
    seen.ranking_text = page.inner_text("#ranking")
    seen.side_by_side = page.locator("#ranking").bounding_box()["x"] > box["x"] + box["width"] / 2

    # the layout: no sideways scrolling at a phone's width or on a wide screen
    for width in (375, 1400):
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_timeout(100)
        seen.widths[width] = page.evaluate("document.documentElement.scrollWidth")


@pytest.fixture(scope="session")
def seen(traced, tmp_path_factory):
    work = tmp_path_factory.mktemp("export_browser")
    page_file = work / "run.html"
    export(traced, page_file)
    out = Seen()

    def route(r):
        if r.request.url.startswith("file:"):
            r.continue_()
        else:
            out.left_the_file.append(r.request.url)
            r.abort()

    try:
        with chromium(work / "profile") as context:
            context.route("**/*", route)
            page = context.new_page()
            page.on("console", lambda m: out.console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: out.console_errors.append(str(e)))
            page.on("request", lambda r: out.requests.append(r.url[:100]))
            page.goto(page_file.as_uri())
            _scenario(page, out, traced)
    except LabError as e:
        pytest.fail(str(e), pytrace=False)
    return out


def test_nothing_leaves_the_file_and_nothing_errs(seen):
    assert not seen.console_errors, seen.console_errors
    assert not seen.left_the_file, seen.left_the_file
    assert all(u.startswith(("file:", "data:")) for u in seen.requests), seen.requests


def test_play_moves_the_steps_and_pauses(seen):
    assert len(set(seen.played_steps)) >= 3, seen.played_steps
    assert seen.paused


def test_the_dragged_step_shows_the_traces_own_frames(seen, traced):
    s = seen.dragged_step
    assert 3 <= s <= STEPS - 2, s  # about 60 % of the slider
    assert f"t = {traced.timesteps[s]} " in seen.readout
    assert np.array_equal(seen.canvases["x0"], traced.latents.preview("x0", steps=s))
    assert np.array_equal(seen.canvases["x_t"], traced.latents.preview("x_t", steps=s))
    assert np.array_equal(seen.canvases["decoded"], traced.latents.decoded[s, 0].permute(1, 2, 0).numpy())
    assert not np.array_equal(seen.canvases["x0"], traced.latents.preview("x0", steps=s - 1))


def test_the_keyboard_steps_and_plays(seen):
    assert seen.keyboard_steps == [seen.dragged_step + 1, seen.dragged_step, STEPS - 1, 0]
    assert seen.space_playing == (True, False)


def test_the_explorers_maps_are_word_map(seen, traced):
    assert seen.entry == "square"
    assert seen.attention_caption == 'attention of "square" at this step'
    want = {
        "whole": traced.word_map("square"),
        "window": traced.word_map("square", steps=[3, 4, 5, 6, 7]),
        "layer-head": traced.word_map("square", steps=[3, 4, 5, 6, 7], layers=seen.layer[4:], heads=1),
    }
    for name, m in want.items():
        assert np.abs(seen.maps[name] - m.double().numpy()).max() < 1e-5, name
    assert np.abs(seen.maps["window"] - seen.maps["whole"]).max() > 1e-3  # the window changed the map


def test_the_clicked_pixel_ranks_the_words_as_word_map(seen, traced):
    y, x = seen.pixel
    assert (y, x) == (51, 35)  # 80 % down, 55 % across the 64x64 map
    maps = traced.word_maps(steps=[3, 4, 5, 6, 7])
    want = sorted(((w, float(m[y, x])) for w, m in maps.items()), key=lambda kv: -kv[1])
    assert [w for w, _ in seen.ranked] == [w for w, _ in want]
    assert np.allclose([v for _, v in seen.ranked], [v for _, v in want], atol=1e-5, rtol=0)
    assert seen.ranked[0][0] in ("square", "blue", "small")  # the small blue square sits there
    assert f"1\t{seen.ranked[0][0]}\t{seen.ranked[0][1]:.4f}" in seen.ranking_text


def test_the_page_fits_a_phone_and_a_wide_screen(seen):
    assert seen.widths == {375: 375, 1400: 1400}
    assert seen.side_by_side  # at 1400 px the ranking stands beside the map

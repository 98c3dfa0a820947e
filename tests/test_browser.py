"""The widgets in a real JupyterLab 4, in headless Chromium (Debian's, driven by Playwright).

`tests/browser/lab.py` starts JupyterLab on a free localhost port over a temporary copy of
`tests/browser/widgets.ipynb` (the player, the explorer and the studio on the embedded model, and figures with and
without pyplot), runs every cell, presses Play, drags the step slider, clicks a word and a pixel, presses the
studio's Generate, and reports what it saw; this test checks it. Screenshots stay in the test's temporary folder
(the path is printed; `pytest -s` or -rA shows it). A browser or server that cannot start fails the test with one
line: it is never skipped.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "browser"))

from lab import LabError, exercise  # noqa: E402


@pytest.fixture(scope="module")
def seen(tmp_path_factory):
    work = tmp_path_factory.mktemp("lab")
    try:
        findings = exercise(work)
    except LabError as e:
        pytest.fail(str(e), pytrace=False)
    print(f"\nscreenshots: {work / 'screenshots'}; " + ", ".join(f"{k} {v:.1f} s" for k, v in findings.seconds.items()))
    return findings


def test_every_cell_ran_without_an_error_output(seen):
    assert seen.cells and all(c["count"] is not None for c in seen.cells), "a cell did not run"
    problems = [
        f"cell {c['index']}: {o['error'] if o['type'] == 'error' else o['text'][:200]}"
        for c in seen.cells
        for o in c["outputs"]
        if o["type"] == "error" or (o["type"] == "stream" and "Traceback" in o["text"])
    ]
    assert not problems, problems


def test_every_figure_is_an_image_not_text(seen):
    assert not seen.figure_texts, f"figures shown as text: {seen.figure_texts}"
    assert seen.figure_images == 3  # two without pyplot, one with its inline backend active
    figure_outputs = [o for c in seen.cells for o in c["outputs"] if o["text"].startswith("<Figure")]
    assert len(figure_outputs) == 3  # with pyplot imported, the figure is still shown once
    assert not seen.broken_images, f"pictures the browser could not draw: {seen.broken_images}"


def test_the_widgets_render_with_their_static_animations(seen):
    assert seen.widget_views >= 3 and not seen.widget_errors, seen.widget_errors
    animations = [o for c in seen.cells for o in c["outputs"] if "image/gif" in o["mimes"]]
    assert len(animations) == 2  # after the player and after the explorer


def test_play_changes_the_frame_over_time(seen):
    assert len(set(seen.play_sources)) >= 3, seen.play_sources
    assert len(set(seen.play_readouts)) >= 3, seen.play_readouts


def test_dragging_the_slider_changes_the_picture(seen):
    before, after = seen.drag
    assert before and after != before
    assert seen.drag_readout[0] != seen.drag_readout[1], seen.drag_readout


def test_a_word_button_and_a_pixel_click_in_the_explorer(seen):
    before, after = seen.word
    assert before and after != before
    assert "circle" in seen.ranking and "square" in seen.ranking, seen.ranking


def test_the_studio_generates_a_picture_live(seen):
    assert seen.studio_picture, "Generate produced no picture"
    assert seen.studio_status.startswith("done"), seen.studio_status
    assert seen.studio_live_updates >= 2  # x0 updated during the run, not only at the end


def test_no_javascript_console_errors(seen):
    assert not seen.console_errors, seen.console_errors


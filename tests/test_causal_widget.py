"""The what-if panel (sdviz.viz.widgets.what_if) without a browser: each kind of intervention regenerates the
picture and shows the judge's verdict; the start token's share of the attention mass and the negative prompt's maps
are shown; a bad window is a one-line message in the panel and leaves nothing attached."""

from __future__ import annotations

import pytest
import torch

from sdviz.hooks import hook_points
from sdviz.pipeline import load_pipeline
from sdviz.viz.widgets.what_if import KINDS, what_if

PROMPT = "a large red circle above a small blue square"


@pytest.fixture(scope="module")
def panel():
    torch.set_num_threads(2)
    pipe = load_pipeline()
    return what_if(pipe, PROMPT, seed=1, negative_prompt="a green triangle", steps=4).panel


def test_the_start_token_and_the_negative_prompt_get_their_share_and_maps(panel):
    for half in ("cond", "uncond"):
        assert 0.0 < panel.watch.share(half) < 1.0
        assert abs(float(panel.watch.mass[half].sum()) / panel.watch.count[half] - 1.0) < 1e-3  # rows sum to 1
    assert "start token took" in panel.attention.value
    maps = panel.watch.maps
    assert maps.shape == (77, 16, 16) and float(maps[0].sum()) > 0
    assert panel.maps.value[:4] == b"\x89PNG"


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_regenerates_and_the_judge_reads_both_pictures(panel, kind):
    panel.kind.value = kind
    panel.window.value = (0.0, 1.0)
    panel.source.value = "a large green circle above a small blue square"
    iv = panel.regenerate()
    assert iv is not None and type(iv).__name__ in panel.status.value
    assert panel.pictures.value[:4] == b"\x89PNG"
    assert "before:" in panel.verdict.value and "after:" in panel.verdict.value
    assert not (panel.after == panel.before).all()  # every one of these changes the picture
    assert not panel.pipe.observers and not any(p.listeners for p in hook_points(panel.pipe).values())


def test_an_empty_window_is_a_message_in_the_panel(panel):
    panel.kind.value = KINDS[0]
    panel.window.value = (0.5, 0.5)
    assert panel.regenerate() is None
    assert "empty window" in panel.status.value
    assert not any(p.listeners for p in hook_points(panel.pipe).values())

"""The feature browser (sdviz.viz.widgets.features) without a browser, on the embedded model and its shipped SAE:
the panel opens on the best-graded feature, another feature shows other pictures, a pixel lists the features the
SAE really computes there (checked against an encode of our own), switching a feature off regenerates a different
picture that the judge reads, and a feature out of range is the SAE's one-line error in the panel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdviz.hooks import hook_points, hooks
from sdviz.toy.world import held_out_prompts
from sdviz.viz.widgets import feature_browser
from sdviz.viz.widgets.features import SIZE, FeatureBrowser

PAIRS = held_out_prompts(8)[:4]  # the default's first four pictures, to keep the test short
STEPS = 8


@pytest.fixture(scope="module")
def browser(embedded_pipe) -> FeatureBrowser:
    torch.set_num_threads(1)
    return feature_browser(embedded_pipe, prompts=[p for p, _ in PAIRS], seeds=[s for _, s in PAIRS], steps=STEPS)


def _shown(b: FeatureBrowser) -> list[bytes]:
    return [v for _, picture, heat, _ in b.tiles for v in (picture.value, heat.value)]


def test_the_panel_opens_on_the_best_graded_feature_with_its_concept(browser):
    assert browser.feature == 143 and browser.graded.value == 143  # green, the best AUROC of the shipped record
    assert "green (AUROC 0.98)" in browser.about.value
    assert len(browser.runs) == 4 and all(len(r.index) == STEPS for r in browser.runs)
    assert browser.late == [6, 7]  # the last quarter of the steps
    assert all(v[:4] == b"\x89PNG" for v in _shown(browser))
    assert browser.chart.value[:4] == b"\x89PNG" and browser.strip.value[:4] == b"\x89PNG"
    assert "feature 143" in browser.off.description
    assert browser.static.png[:4] == b"\x89PNG"  # the copy shown under the widget for nbviewer


def test_the_pictures_are_shown_at_a_whole_factor(browser):
    import io

    from PIL import Image

    for _, picture, heat, _ in browser.tiles:
        for value in (picture.value, heat.value):
            assert Image.open(io.BytesIO(value)).size == (SIZE, SIZE)  # 64 x 2, the 8x8 map x 16
            assert picture.layout.width == f"{SIZE}px"


def test_another_feature_shows_other_pictures_strongest_first(browser):
    before, order = _shown(browser), list(browser.order)
    browser.number.value = 1106  # what typing it does (graded best for cyan and for right)
    try:
        assert browser.feature == 1106 and browser.graded.value == 1106
        assert _shown(browser) != before
        strength = [float(r.activation(1106)[browser.late].mean(0).max()) for r in browser.runs]
        assert [strength[i] for i in browser.order] == sorted(strength, reverse=True)
        assert browser.order != order or _shown(browser) != before
        browser.number.value = 482  # a feature no concept was graded best for: the picker is cleared
        assert browser.graded.value is None and "not the best feature" in browser.about.value
    finally:
        browser.number.value = 143


def test_a_pixel_lists_the_features_the_sae_computes_there(browser, embedded_pipe):
    run = browser.order[0]
    a = browser.runs[run].activation(browser.feature)[browser.late].mean(0)
    y, x = (int(v) for v in np.unravel_index(a.argmax(), a.shape))  # where the feature fires most
    ranked = browser.click(0, (x + 0.5) * SIZE / 8, (y + 0.5) * SIZE / 8)  # a click in that map cell
    assert browser.pixel == (y, x) and browser.chosen == run
    values = [v for _, v in ranked]
    assert values == sorted(values, reverse=True) and all(v > 0 for v in values)
    assert browser.feature in [f for f, _ in ranked]
    assert "sdviz-features-ranking" in browser.at_pixel.value and str(ranked[0][0]) in browser.at_pixel.value

    sae, (prompt, seed) = browser.sae, PAIRS[run]  # the same generation, encoded here with sdviz.hooks.hooks
    codes = []
    with torch.no_grad(), hooks(embedded_pipe, sae.point, lambda _, t: codes.append(sae.encode(t[1].flatten(1).T))):
        picture = embedded_pipe.generate(prompt, seed=seed, **browser.generate).image  # t: (uncond; cond)
    assert (np.asarray(picture.convert("RGB")) == browser.runs[run].picture).all()
    z = torch.stack(codes)[browser.late, y * 8 + x].mean(0)  # (n,) the late steps' mean at that pixel
    expect = [int(f) for f in torch.argsort(z, descending=True, stable=True) if z[f] > 0]
    assert [f for f, _ in ranked] == expect
    assert np.allclose(values, z[expect].numpy(), atol=1e-6)


def test_switching_a_feature_off_regenerates_a_different_picture(browser, embedded_pipe):
    browser.pick(browser.order[0], 3, 3)
    after = browser.switch_off()
    before = browser.runs[browser.chosen].picture
    assert after is not None and after.shape == before.shape and not (after == before).all()
    assert browser.compare.value[:4] == b"\x89PNG"
    assert "the judge" in browser.verdict.value and "before:" in browser.verdict.value
    assert "after:" in browser.verdict.value
    assert not embedded_pipe.observers and not any(p.listeners for p in hook_points(embedded_pipe).values())


@pytest.mark.parametrize("bad", [1536, -1])
def test_a_feature_out_of_range_is_the_saes_error_in_the_panel(browser, bad):
    before = _shown(browser)
    browser.number.value = bad
    try:
        assert "out of range" in browser.status.value and "0..1535" in browser.status.value
        assert browser.feature == 143 and _shown(browser) == before  # nothing else moved
    finally:
        browser.number.value = 143


def test_an_sae_of_another_model_is_refused_with_one_line(browser, toy_pipe):
    from sdviz.concepts import SAEMismatch

    with pytest.raises(SAEMismatch, match="this SAE was trained on"):  # the same shapes, other (random) weights
        feature_browser(toy_pipe, browser.sae, prompts=["a red circle"], steps=2)

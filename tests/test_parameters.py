"""The last loose parameters: each a one-line error naming the parameter, or documented behaviour."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import sdviz
from sdviz.editing import LocalBlend, Replace, Reweight, reweight

PIPE = "embedded"  # the session pipeline the `pipe` fixture gives (tests/conftest.py)

FAST = {"steps": 2, "sampler": "ddim", "progress": False, "seed": 0}


def _one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("threshold", [1.0, 1.5, 0.0, -0.5])
def test_local_blend_threshold_is_a_fraction(threshold):
    with pytest.raises(ValueError, match="threshold") as e:
        LocalBlend(["red", "blue"], threshold=threshold)
    assert repr(threshold) in _one_line(e)


def test_reweight_steps_has_one_meaning(pipe):
    with pytest.raises(TypeError, match=r"Reweight\(steps=...\) is now reweight_steps") as e:
        Reweight({"red": 2.0}, steps=0.5)
    _one_line(e)
    with pytest.raises(TypeError, match="reweight_steps"):
        reweight(pipe, "a red circle", {"red": 2.0}, steps=0.5, seed=0)
    # steps= is the number of denoising steps, as for replace() and refine(): one step runs, not fifty
    seen: list[int] = []
    reweight(pipe, "a red circle", {"red": 2.0}, steps=1, seed=0, progress=False, on_step=lambda s: seen.append(s.t))
    assert len(seen) == 1


@pytest.mark.parametrize("value", ["256", -1, 0, 2.5, True])
def test_self_replace_max_queries_is_a_positive_count(value):
    with pytest.raises(ValueError, match="self_replace_max_queries") as e:
        Replace(self_replace_max_queries=value)
    _one_line(e)


BAD_CFG = [(float("nan"), ValueError), (float("inf"), ValueError), ("7.5", TypeError)]


@pytest.mark.parametrize(("value", "error"), BAD_CFG)
def test_cfg_scale_must_be_a_finite_number(pipe, value, error):
    with pytest.raises(error, match="cfg_scale") as e:
        pipe.generate("a red circle", cfg_scale=value, **FAST)
    _one_line(e)


def test_a_picture_of_the_wrong_size_says_where_the_size_came_from(pipe):
    said = r"height must be a positive multiple of 8 pixels, got 70 \(the input image's size is 70x70"
    with pytest.raises(ValueError, match=said) as e:
        pipe.generate("a red circle", image=Image.new("RGB", (70, 70)), **FAST)
    _one_line(e)


def test_an_image_and_its_own_mask_are_resized_together_with_a_warning(pipe):
    image = Image.new("RGB", (96, 64), (200, 30, 30))
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (0, 0, 48, 64))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = pipe.generate("a red circle", image=image, mask=mask, height=64, width=64, **FAST)
    said = [str(w.message) for w in caught if "resized" in str(w.message)]
    assert said == ["the image and its mask (96x64) resized to 64x64"]
    assert result.images[0].size == (64, 64)
    with pytest.raises(ValueError, match="mask is 64x64 but the image is 96x64"):
        pipe.generate("a red circle", image=image, mask=Image.new("L", (64, 64)), height=64, width=64, **FAST)


def test_sizes_may_be_numpy_integers(pipe):
    result = pipe.generate("a red circle", height=np.int64(72), width=np.int32(64), cfg_scale=np.float32(3.0), **FAST)
    assert result.images[0].size == (64, 72)


def test_loading_a_folder_as_a_trace_says_so(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder, not a trace file") as e:
        sdviz.load_trace(tmp_path)
    _one_line(e)


def test_daams_grid_is_an_option_and_equal_on_the_latent_grid(pipe):
    from sdviz.tracing.aggregate import DAAM

    with sdviz.trace(pipe, record=["cross_attention"], keep=["layer", "head"]) as tr:
        pipe.generate("a large red circle above a small blue square", cfg_scale=5.0, **FAST)
    h, w = tr.latent_hw
    assert (h, w) == (16, 16)
    # DAAM's own rule for a model whose default size is not 512 or 1024 pixels: a 96 x 96 grid
    on_latent = tr.word_map("circle", method="daam")
    torch.testing.assert_close(tr.word_map("circle", method=DAAM.with_(grid=h)), on_latent, rtol=0, atol=0)
    on_96 = tr.word_map("circle", method=DAAM.with_(grid=96))
    assert on_96.shape == on_latent.shape and not torch.allclose(on_96, on_latent)
    with pytest.raises(ValueError, match="grid"):
        DAAM.with_(grid=0)

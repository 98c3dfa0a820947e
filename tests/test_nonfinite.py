"""Numbers that overflow never become a black picture.

Non-finite latents raise one line naming the step where they went non-finite; a half-precision VAE that overflows on
finite latents decodes again in float32 and says so; pixels that stay non-finite raise; `tensor_to_images` refuses
NaN. Random TINY weights on the CPU; the NaN is forced by an editor at a hook point or by an oversized weight.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from sdviz.config import TINY
from sdviz.hooks import hooks
from sdviz.pipeline import StableDiffusion, tensor_to_images
from sdviz.weights import build_models

KW = {"steps": 4, "seed": 1, "cfg_scale": 5.0, "sampler": "ddim", "progress": False}


def make_pipe(dtype: torch.dtype = torch.float32) -> StableDiffusion:
    torch.manual_seed(0)
    return StableDiffusion(build_models(TINY), dtype=dtype)


@pytest.fixture(scope="module")
def pipe() -> StableDiffusion:
    return make_pipe()


def poison_unet_from(step: int, value: float = float("nan")):
    """An editor at the UNet's output that replaces its prediction by `value` from UNet call `step` on."""
    calls = []

    def edit(name, x):
        calls.append(name)
        return torch.full_like(x, value) if len(calls) > step else None

    return edit


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_latents_that_go_non_finite_raise_naming_the_step(pipe, value):
    with hooks(pipe, "unet.hook_out", poison_unet_from(2, value), edit=True):  # one UNet call per step here
        with pytest.raises(FloatingPointError, match=r"non-finite \(NaN or inf\) at step 2 of 4 \(t=\d+\)") as e:
            pipe.generate("a red circle", **KW)
    assert "\n" not in str(e.value)


def test_an_inf_that_the_guidance_turns_into_nan_is_caught_too(pipe):
    # only the unconditional row overflows: eps_uncond + cfg * (eps_cond - eps_uncond) = inf - inf = nan
    with hooks(pipe, "unet.hook_out", poison_unet_from(0, float("inf")), rows=slice(0, 1), edit=True):
        with pytest.raises(FloatingPointError, match="at step 0 of 4"):
            pipe.generate("a red circle", **KW)


def test_a_float16_vae_that_overflows_decodes_in_float32_and_says_so():
    pipe16 = make_pipe(torch.float16)
    plain = pipe16.generate("a red circle", **KW)
    # a decoder whose first convolution is 3e4 times too large: its activations pass float16's 65504 (inf, then NaN
    # after the GroupNorm), while float32 normalises them away
    with torch.no_grad():
        pipe16.vae.decoder.conv_in.weight.mul_(3e4)
    assert not torch.isfinite(pipe16.decode_latents(plain.latents)).all()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = pipe16.generate("a red circle", **KW)
    assert [str(w.message) for w in caught if "float32" in str(w.message)] == [
        "the torch.float16 VAE decoder overflowed (non-finite pixels); decoded again in float32"
    ]
    assert torch.equal(result.latents, plain.latents)
    assert np.asarray(result.images[0]).std() > 0  # a picture, not a flat black square
    assert pipe16.vae.decoder.conv_in.weight.dtype == torch.float16  # and the VAE is half precision again


def test_a_float32_vae_that_gives_non_finite_pixels_raises():
    pipe = make_pipe()
    with hooks(pipe, "vae.decoder.conv_norm_out.hook_out", lambda name, x: torch.full_like(x, float("nan")), edit=True):
        with pytest.raises(FloatingPointError, match="VAE decoder gave non-finite pixels"):
            pipe.generate("a red circle", **KW)


def test_tensor_to_images_refuses_nan():
    x = torch.zeros(1, 3, 8, 8)
    x[0, 0, 3, 3] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite"):
        tensor_to_images(x)

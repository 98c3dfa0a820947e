"""The pipeline's behaviour on random TINY weights: seeds, batches, image-to-image, inpainting and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sdviz.samplers import SAMPLERS

PIPE = "tiny"  # the session pipeline the `pipe` fixture gives (tests/conftest.py)


def picture(mode: str = "RGB", size=(64, 64)) -> Image.Image:
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


def gen(pipe, prompt="a red circle", **kw):
    kw.setdefault("steps", 3)
    kw.setdefault("progress", False)
    return pipe.generate(prompt, **kw)


def test_text_to_image_shapes_and_types(pipe):
    result = gen(pipe, ["a red circle", "a blue square"], seed=3, height=64, width=48)
    assert [im.size for im in result.images] == [(48, 64), (48, 64)]
    assert all(im.mode == "RGB" for im in result.images)
    assert result.latents.shape == (2, 4, 8, 6) and result.latents.dtype == torch.float32
    assert result.seeds == [3, 4]


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_a_seed_gives_the_same_image_at_any_batch_position(pipe, sampler):
    alone = gen(pipe, "a red circle", seed=11, sampler=sampler)
    batch = gen(pipe, ["a green square", "x y z", "a red circle"], seed=[5, 6, 11], sampler=sampler)
    assert torch.equal(alone.latents[0], batch.latents[2])
    assert np.array_equal(np.asarray(alone.images[0]), np.asarray(batch.images[2]))
    again = gen(pipe, "a red circle", seed=11, sampler=sampler)
    assert torch.equal(alone.latents, again.latents)
    other = gen(pipe, "a red circle", seed=12, sampler=sampler)
    assert not torch.equal(alone.latents, other.latents)


def test_image_to_image_batch_position(pipe):
    image = picture()
    alone = gen(pipe, "a red circle", image=image, strength=0.6, seed=11, sampler="ddpm")
    batch = gen(pipe, ["a green square", "a red circle"], image=image, strength=0.6, seed=[5, 11], sampler="ddpm")
    assert torch.equal(alone.latents[0], batch.latents[1])


def test_guidance_scale_changes_the_result_and_one_disables_it(pipe):
    a = gen(pipe, seed=1, cfg_scale=7.5)
    b = gen(pipe, seed=1, cfg_scale=1.0)
    c = gen(pipe, seed=1, cfg_scale=1.0, negative_prompt="anything")  # ignored without guidance
    assert not torch.equal(a.latents, b.latents)
    assert torch.equal(b.latents, c.latents)
    d = gen(pipe, seed=1, cfg_scale=7.5, negative_prompt="blurry")
    assert not torch.equal(a.latents, d.latents)


def test_given_latents_are_not_modified(pipe):
    start = torch.randn(1, 4, 8, 8)
    copy = start.clone()
    gen(pipe, latents=start, sampler="euler")
    assert torch.equal(start, copy)


def test_image_to_image_strength(pipe):
    image = picture()
    zero = gen(pipe, image=image, strength=0.0, seed=2)
    known = pipe.encode_images(torch.from_numpy(np.asarray(image) / 127.5 - 1).permute(2, 0, 1)[None].float(),
                               [torch.Generator().manual_seed(2)])  # fmt: skip
    assert torch.allclose(zero.latents, known, atol=1e-5)  # no step: the encoded picture itself
    low = gen(pipe, image=image, strength=0.3, seed=2, steps=10)
    high = gen(pipe, image=image, strength=0.9, seed=2, steps=10)
    assert (low.latents - known).abs().mean() < (high.latents - known).abs().mean()  # more noise, more freedom


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_image_modes_are_converted(pipe, mode):
    result = gen(pipe, image=picture(mode), strength=0.5, seed=1)
    assert result.images[0].size == (64, 64)


def test_inpainting_keeps_the_known_region(pipe):
    image = picture()
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, :32] = 255  # repaint the left half
    result = gen(pipe, image=image, mask=Image.fromarray(mask), strength=1.0, seed=4, steps=4)
    x = torch.from_numpy(np.asarray(image) / 127.5 - 1).permute(2, 0, 1)[None].float()
    known = pipe.encode_images(x, [torch.Generator().manual_seed(4)])
    assert torch.allclose(result.latents[..., 4:], known[..., 4:], atol=1e-6)  # right half: the original
    assert not torch.allclose(result.latents[..., :4], known[..., :4], atol=1e-2)  # left half: repainted


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(height=60), "height must be a positive multiple of 8"),
        (dict(width=0), "width must be a positive multiple of 8"),
        (dict(steps=0), "steps must be an integer >= 1"),
        (dict(sampler="plms"), "unknown sampler 'plms'; known: ddpm, ddim, euler, euler_a"),
        (dict(image=picture(), strength=1.5), "strength must be between 0 and 1"),
        (dict(image=picture(), mask=Image.new("L", (32, 32))), "mask is 32x32 but the image is 64x64"),
        (dict(mask=Image.new("L", (64, 64))), "a mask needs an image"),
        (dict(prompt=["a", "b"], negative_prompt=["c"]), "2 prompts but 1 negative prompts"),
        (dict(prompt=["a", "b"], seed=[1]), "2 prompts but 1 seeds"),
        (dict(latents=torch.zeros(1, 4, 4, 4)), "latents must have shape (1, 4, 8, 8)"),
    ],
)
def test_bad_input_is_a_clear_error(pipe, kwargs, message):
    prompt = kwargs.pop("prompt", "a red circle")
    with pytest.raises(ValueError) as e:
        gen(pipe, prompt, **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_over_long_prompt_warns_and_still_runs(pipe):
    with pytest.warns(UserWarning, match="tokens were dropped"):
        result = gen(pipe, " ".join(["circle"] * 100), seed=1)
    assert result.images[0].size == (64, 64)

"""Inversion of an existing picture (sdviz.inversion): DDIM inversion against diffusers' DDIMInverseScheduler, the
redraw through `generate(null_embeddings=...)`, null-text and negative-prompt inversion on a scene of the toy world,
explain and edit on an inversion, and every bad input of issue 22 as a one-line error (nothing left attached)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from diffusers import DDIMInverseScheduler
from PIL import Image

from sdviz.hooks import hook_points
from sdviz.inversion import Inversion, edit_inverted, explain, invert, load_picture, psnr, weights_id
from sdviz.inversion.walk import ddim_invert, inverse_step, null_text_optimise
from sdviz.samplers import DDIMSampler
from sdviz.toy import world

SCENE = world.scene_from_spec("a large red circle above a small blue square", 3)  # drawn by the world, not the model
STEPS = 6  # small, fast (the CPU is shared); the record measures at 50


def _clean(pipe) -> None:
    """Nothing of a run is left on the pipeline: no observer, no latent editor, no hook listener."""
    assert pipe.observers == [] and pipe.latent_editors == []
    assert not any(p.listeners for p in hook_points(pipe).values())


# -- DDIM inversion against diffusers --------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [10, 50])
def test_inverse_step_matches_diffusers_ddim_inverse_scheduler(steps):
    """Same timesteps (ascending 1, 21, ..., 981 for 50 steps) and, fed the same model outputs, the same latents at
    every step within 1e-5 relative, with SD 1.5's schedule and DDIM settings."""
    ref = DDIMInverseScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                               beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                               steps_offset=1, timestep_spacing="leading")  # fmt: skip
    ref.set_timesteps(steps)
    ours = DDIMSampler()
    ours.set_timesteps(steps)
    assert ours.timesteps.flip(0).tolist() == ref.timesteps.tolist()
    g = torch.Generator().manual_seed(0)
    x_ours = x_ref = torch.randn(2, 4, 8, 8, generator=g)
    for t in ref.timesteps.tolist():
        eps = torch.tanh(x_ref) * 0.7 + 0.1 * torch.randn(2, 4, 8, 8, generator=g)  # a model output, same both sides
        x_ours = inverse_step(ours, eps, t, x_ours)
        x_ref = ref.step(eps, t, x_ref).prev_sample
        rel = float((x_ours - x_ref).abs().max() / x_ref.abs().max())
        assert rel < 1e-5, (t, rel)


def test_ddim_inversion_then_ddim_sampling_returns_the_latents(embedded_pipe):
    """The cfg-1 walk up, then the sampler's walk down from its end: back to the start latents (the approximation
    eps(x_prev, t) ~ eps(x_t, t) costs a little at 10 steps)."""
    pipe = embedded_pipe
    z0 = pipe.encode_images(torch.from_numpy(SCENE.image).permute(2, 0, 1)[None].float() / 127.5 - 1)
    context = pipe.encode_prompts([SCENE.caption])
    trajectory = ddim_invert(pipe, z0, context, STEPS)
    assert len(trajectory) == STEPS + 1 and trajectory[0] is z0
    result = pipe.generate(SCENE.caption, latents=trajectory[-1], cfg_scale=1.0, steps=STEPS, sampler="ddim",
                           progress=False)  # fmt: skip
    err = float((result.latents - z0).abs().mean() / z0.abs().mean())
    assert err < 0.1, err
    assert psnr(SCENE.pil(), result.image) > 25


# -- the three methods -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inversions(embedded_pipe):
    pipe = embedded_pipe
    return {m: invert(pipe, SCENE.pil(), SCENE.caption, m, STEPS, 5.0, progress=False) for m in
            ("ddim", "null_text", "negative_prompt")}  # fmt: skip


def test_null_text_beats_ddim_at_cfg_5_and_negative_prompt_equals_cfg_1(embedded_pipe, inversions):
    pipe, pic = embedded_pipe, SCENE.pil()
    cfg1 = psnr(pic, inversions["ddim"].redraw(pipe, cfg_scale=1.0).image)
    cfg5 = psnr(pic, inversions["ddim"].redraw(pipe).image)
    null = psnr(pic, inversions["null_text"].redraw(pipe).image)
    npi = psnr(pic, inversions["negative_prompt"].redraw(pipe).image)
    assert cfg5 < cfg1 - 3, (cfg1, cfg5)  # guidance breaks the inversion
    assert null > cfg5 + 3, (null, cfg5)  # null-text repairs it
    assert abs(npi - cfg1) < 0.5, (npi, cfg1)  # eps_u = eps_c: the guided redraw is the cfg-1 redraw
    inv = inversions["null_text"]
    assert inv.null_embeddings.shape == (STEPS, 77, pipe.config.unet.context_dim)
    assert len(inv.losses) == STEPS and inv.weights_id == weights_id(pipe)
    assert inversions["negative_prompt"].null_embeddings is None
    _clean(pipe)


def test_generate_takes_per_step_null_embeddings(embedded_pipe, inversions):
    """null_embeddings equal to the empty prompt's context at every step is exactly negative_prompt=""; a wrong shape
    or cfg 1 is a one-line error naming the parameter."""
    pipe = embedded_pipe
    inv = inversions["ddim"]
    null = pipe.encode_prompts([""]).expand(STEPS, -1, -1)  # (steps, 77, D)
    a = pipe.generate(SCENE.caption, latents=inv.latents, steps=STEPS, sampler="ddim", cfg_scale=5.0, progress=False)
    b = pipe.generate(SCENE.caption, latents=inv.latents, steps=STEPS, sampler="ddim", cfg_scale=5.0, progress=False,
                      null_embeddings=null)  # fmt: skip
    assert torch.equal(a.latents, b.latents)
    with pytest.raises(ValueError, match="null_embeddings"):
        pipe.generate(SCENE.caption, steps=STEPS, cfg_scale=5.0, null_embeddings=null[:-1], progress=False)
    with pytest.raises(ValueError, match="null_embeddings"):
        pipe.generate(SCENE.caption, steps=STEPS, cfg_scale=1.0, null_embeddings=null, progress=False)


def test_save_load_and_the_weights_check(embedded_pipe, toy_pipe, inversions, tmp_path):
    pipe, inv = embedded_pipe, inversions["null_text"]
    back = Inversion.load(inv.save(tmp_path / "x.pt"))
    assert torch.equal(back.null_embeddings, inv.null_embeddings) and back.settings() == inv.settings()
    assert np.array_equal(np.asarray(back.picture), np.asarray(inv.picture))
    assert torch.equal(back.redraw(pipe).latents, inv.redraw(pipe).latents)
    with pytest.raises(ValueError, match="other weights"):
        inv.redraw(toy_pipe)  # same shapes, other (random) weights
    with pytest.raises(ValueError, match="made at 64x64"):
        inv.redraw(pipe, height=128, width=128)
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(Exception):  # noqa: B017 (torch's own unpickling error)
        Inversion.load(tmp_path / "bad.pt")
    _clean(toy_pipe)


# -- explain and edit ------------------------------------------------------------------------------------------------


def test_explain_gives_word_maps_on_the_picture(embedded_pipe, inversions):
    pipe = embedded_pipe
    tr = explain(pipe, inversions["null_text"])
    circle, square = SCENE.objects[0].mask, SCENE.objects[1].mask
    m = tr.word_map("circle").numpy()  # (64, 64)
    assert m.shape == circle.shape
    assert m[circle].mean() > 2 * m[square].mean()  # "circle" looks at the circle, not at the square
    assert psnr(SCENE.pil(), tr.images[0]) > 25
    _clean(pipe)


def test_edit_an_inverted_picture(embedded_pipe):
    """A colour replaced on the picture's DDIM inversion (the record: the judge reads the new colour in 11 of 12
    scenes there, in 6 of 14 on null-text, whose null embeddings start from the caption's)."""
    from sdviz.toy.judge import judge

    pipe = embedded_pipe
    inv = invert(pipe, SCENE.pil(), SCENE.caption, "ddim", 25, 5.0, progress=False)  # p2p needs more than 6 steps
    target = "a large green circle above a small blue square"
    result = edit_inverted(pipe, inv, target, blend=["red", "green"])
    assert judge(result.images[1], target).objects[0].colour_ok
    assert judge(result.images[1], target).objects[1].colour_ok  # the square keeps its colour
    one = edit_inverted(pipe, inv, weights={"square": 0.0})
    assert len(one.images) == 1
    with pytest.raises(ValueError, match="target caption"):
        edit_inverted(pipe, inv)
    _clean(pipe)


# -- bad input -------------------------------------------------------------------------------------------------------


def test_pictures_of_another_size_or_mode(tmp_path):
    big = SCENE.pil().resize((128, 96))
    with pytest.warns(UserWarning, match="resized from 128x96 to 64x64"):
        assert load_picture(big, 64, 64).size == (64, 64)
    with pytest.raises(ValueError, match="picture is 128x96"):
        load_picture(big, 64, 64, resize=False)
    rgb = SCENE.pil()
    for mode in ("L", "RGBA", "P", "LA", "CMYK"):
        out = load_picture(rgb.convert(mode), 64, 64)
        assert out.mode == "RGB" and out.size == (64, 64), mode
    assert np.array_equal(np.asarray(load_picture(rgb.convert("RGBA"), 64, 64)), SCENE.image)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="is empty"):
        load_picture(tmp_path / "empty.png", 64, 64)
    with pytest.raises(ValueError, match="not a readable image"):
        load_picture(tmp_path / "junk.png", 64, 64)
    with pytest.raises(ValueError, match="no such file"):
        load_picture(tmp_path / "missing.png", 64, 64)


def test_bad_arguments_and_long_captions(embedded_pipe):
    pipe = embedded_pipe
    with pytest.raises(ValueError, match="method must be one of"):
        invert(pipe, SCENE.pil(), SCENE.caption, method="magic")
    with pytest.raises(ValueError, match="steps must be"):
        invert(pipe, SCENE.pil(), SCENE.caption, steps=0)
    with pytest.raises(TypeError, match="caption must be a string"):
        invert(pipe, SCENE.pil(), None, method="ddim", steps=2)
    long = " ".join(["a red circle"] * 40)
    with pytest.warns(UserWarning, match="tokens were dropped"):
        inv = invert(pipe, SCENE.pil(), long, method="ddim", steps=2, progress=False)
    assert inv.latents.shape == (1, 4, 16, 16)
    _clean(pipe)


def test_a_nan_stops_the_optimisation_with_its_step(embedded_pipe):
    """A non-finite pivot makes the loss non-finite at the first step: FloatingPointError naming step 0, and the
    pipeline keeps nothing (the networks' parameters still need no gradient)."""
    pipe = embedded_pipe
    z0 = torch.zeros(1, 4, 16, 16)
    trajectory = [z0] * STEPS + [z0]
    trajectory[STEPS - 3] = torch.full_like(z0, float("nan"))  # z*_{t-1} of step 2
    context, null = pipe.encode_prompts([SCENE.caption]), pipe.encode_prompts([""])
    with pytest.raises(FloatingPointError, match="at step 2"):
        null_text_optimise(pipe, trajectory, context, null, 5.0, inner_steps=2, progress=False)
    assert not any(p.requires_grad for p in pipe.unet.parameters())
    _clean(pipe)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Image.fromarray(SCENE.image)  # the scene is a plain uint8 picture


# -- the command line ------------------------------------------------------------------------------------------------


def test_the_command_line(tmp_path, capsys):
    from sdviz.cli import main

    picture = tmp_path / "scene.png"
    SCENE.pil().convert("P").save(picture)  # a palette picture: converted
    fast = ["--method", "negative_prompt", "--steps", "4", "--quiet", "--threads", "2"]
    assert main(["invert", str(picture), SCENE.caption, "--out", str(tmp_path / "scene.pt"), *fast]) == 0
    assert "PSNR" in capsys.readouterr().out and (tmp_path / "scene.redraw.png").is_file()
    assert Inversion.load(tmp_path / "scene.pt").method == "negative_prompt"
    out = tmp_path / "map.png"
    assert main(["explain", str(tmp_path / "scene.pt"), "--word", "circle", "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 200
    assert main(["explain", str(tmp_path / "scene.pt"), "--word", "dog", "--out", str(out)]) == 2
    assert "dog" in capsys.readouterr().err
    (tmp_path / "empty.png").write_bytes(b"")
    assert main(["invert", str(tmp_path / "empty.png"), "a red circle", "--out", str(tmp_path / "x.pt"), *fast]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sdviz invert: error: picture:") and "empty" in err and "\n" not in err

"""End to end: sdviz's pipeline equals diffusers' StableDiffusionPipeline / StableDiffusionImg2ImgPipeline.

Identical random weights (the TINY configuration in `make test`; SD 1.5's full size, `sd15_weights`, among the slow
tests), the same initial latents / seed, DDIM with SD 1.5's scheduler settings, 4 steps, 64x64 pixels, cfg 7.5. The
reference pipelines are built from local components only (tokenizer from sdviz's shipped vocabulary, safety checker
off): nothing is downloaded.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from PIL import Image
from reference import hf_tokenizer

from sdviz.pipeline import load_pipeline

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

PROMPT = "a photograph of an astronaut riding a horse"


@pytest.fixture(scope="module", params=["tiny", pytest.param("sd15", marks=pytest.mark.slow)])
def pipes(request):
    weights = request.getfixturevalue(f"{request.param}_weights")
    folder = weights["diffusers"]
    components = dict(
        vae=diffusers.AutoencoderKL.from_pretrained(folder / "vae").eval(),
        text_encoder=transformers.CLIPTextModel.from_pretrained(folder / "text_encoder").eval(),
        tokenizer=hf_tokenizer(),
        unet=diffusers.UNet2DConditionModel.from_pretrained(folder / "unet").eval(),
        scheduler=diffusers.DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            set_alpha_to_one=False,
            clip_sample=False,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    ref_txt2img = diffusers.StableDiffusionPipeline(**components)
    ref_img2img = diffusers.StableDiffusionImg2ImgPipeline(**components)
    for p in (ref_txt2img, ref_img2img):
        p.set_progress_bar_config(disable=True)
    ours = load_pipeline(folder)
    yield ours, ref_txt2img, ref_img2img
    del components, ref_txt2img, ref_img2img, ours
    gc.collect()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_text_to_image_matches_diffusers(pipes):
    ours, ref, _ = pipes
    start = torch.randn(1, ours.config.unet.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = ref(
        PROMPT,
        height=64,
        width=64,
        num_inference_steps=4,
        guidance_scale=7.5,
        latents=start.clone(),
        output_type="latent",
    ).images
    result = ours.generate(
        PROMPT, sampler="ddim", steps=4, cfg_scale=7.5, height=64, width=64, latents=start, progress=False
    )
    assert result.latents.shape == expected.shape == (1, 4, 8, 8)
    assert rel_err(result.latents, expected) <= 1e-3
    assert result.images[0].size == (64, 64)


@pytest.mark.parametrize("case", ["pndm", "dpmpp_2m", "dpmpp_2m_karras", "unipc"])
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # diffusers' np.array on a tensor
def test_multistep_samplers_match_diffusers_end_to_end(pipes, case):
    """The multistep samplers inside the whole guided pipeline (their history across steps, guidance applied before
    the step), against diffusers' pipeline with the scheduler configured as SD 1.5's, 10 steps."""
    from test_samplers_multistep import CASES

    ours, ref, _ = pipes
    name, options, scheduler = CASES[case]
    ref.scheduler, saved = scheduler(), ref.scheduler
    try:
        start = torch.randn(1, ours.config.unet.in_channels, 8, 8, generator=torch.Generator().manual_seed(3))
        expected = ref(
            PROMPT, height=64, width=64, num_inference_steps=10, guidance_scale=7.5, latents=start.clone(),
            output_type="latent",
        ).images  # fmt: skip
    finally:
        ref.scheduler = saved
    result = ours.generate(
        PROMPT, sampler=name, steps=10, cfg_scale=7.5, height=64, width=64, latents=start, progress=False, **options
    )
    assert rel_err(result.latents, expected) <= 1e-3


def test_image_to_image_matches_diffusers(pipes):
    ours, _, ref = pipes
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    expected = ref(
        PROMPT,
        image=picture,
        strength=0.75,
        num_inference_steps=4,
        guidance_scale=7.5,
        generator=torch.Generator().manual_seed(7),
        output_type="latent",
    ).images
    result = ours.generate(PROMPT, image=picture, strength=0.75, sampler="ddim", steps=4, seed=7, progress=False)
    assert rel_err(result.latents, expected) <= 1e-3

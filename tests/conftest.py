"""Shared test set-up: make `tests/reference.py` importable, keep runs small, and build pipelines and reference
weights once per session.

A test module asks for its pipeline with the `pipe` fixture and says which with a module constant
`PIPE = "embedded"` (the model sdviz ships, the default), `"toy"` (the embedded model's shapes, random weights) or
`"tiny"` (every code path of SD 1.5 at tiny widths, random weights). Each is built once for the whole session; a test
that changes a pipeline's setting restores it (`finally`)."""

import gc
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, torch.get_num_threads()))

if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() == "avx2":
    # The README's AVX2-held run (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 make test) stands in for an AVX2-only
    # CPU. Inductor does not read that variable: on an AVX-512 machine it still generates 512-bit kernels, and mixed
    # with ATen's AVX2 kernels the compiled UNet gives NaN (measured with PyTorch 2.13; 256-bit kernels give the
    # eager numbers). An AVX2-only CPU gets 256-bit kernels from inductor's own probe: hold inductor to that too.
    import torch._inductor.config as inductor_config

    inductor_config.cpp.simdlen = 256


def _write_reference_weights(root: Path, cfg) -> dict[str, Path]:
    """Random weights of `cfg` (fixed seed, 1-D parameters perturbed so a swapped norm would show), written by the
    reference libraries as a diffusers folder and, by an independent key mapping, as a CompVis single file."""
    from reference import diffusers_unet, diffusers_vae, hf_clip, perturb_, to_compvis
    from safetensors.torch import save_file

    torch.manual_seed(0)
    clip = perturb_(hf_clip(cfg), 1).eval()
    vae = perturb_(diffusers_vae(cfg), 2).eval()
    unet = perturb_(diffusers_unet(cfg), 3).eval()
    clip.save_pretrained(root / "diffusers" / "text_encoder")
    vae.save_pretrained(root / "diffusers" / "vae")
    unet.save_pretrained(root / "diffusers" / "unet")
    save_file(to_compvis(unet.state_dict(), vae.state_dict(), clip.state_dict(), cfg), root / f"{cfg.name}.safetensors")
    del clip, vae, unet
    gc.collect()
    return {"diffusers": root / "diffusers", "compvis": root / f"{cfg.name}.safetensors", "config": cfg}


@pytest.fixture(scope="session")
def sd15_weights(tmp_path_factory):
    """Random SD 1.5 weights, written once as a diffusers folder and as a CompVis single file (slow tests only).

    Only files are kept (3.4 GB of UNet is too much to hold twice in memory); tests load what they need.
    """
    from sdviz.config import SD15

    return _write_reference_weights(tmp_path_factory.mktemp("sd15"), SD15)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """The same for the TINY configuration (every code path of SD 1.5 at tiny widths): fast."""
    from sdviz.config import TINY

    return _write_reference_weights(tmp_path_factory.mktemp("tiny"), TINY)


@pytest.fixture(scope="session")
def embedded_pipe():
    """The embedded model, loaded once."""
    from sdviz.pipeline import load_pipeline

    return load_pipeline()


def _random_pipe(cfg):
    from sdviz.pipeline import StableDiffusion
    from sdviz.weights import build_models

    torch.manual_seed(0)
    return StableDiffusion(build_models(cfg))


@pytest.fixture(scope="session")
def toy_pipe():
    """The embedded model's configuration with random weights (seed 0)."""
    from sdviz.config import TOY

    return _random_pipe(TOY)


@pytest.fixture(scope="session")
def tiny_pipe():
    """The TINY configuration (SD 1.5's code paths at tiny widths) with random weights (seed 0)."""
    from sdviz.config import TINY

    return _random_pipe(TINY)


@pytest.fixture(scope="module")
def pipe(request):
    """The session's pipeline that the test module names with `PIPE = "embedded" | "toy" | "tiny"`."""
    kind = getattr(request.module, "PIPE", "embedded")
    if kind not in ("embedded", "toy", "tiny"):
        raise ValueError(f"{request.module.__name__}: PIPE must be 'embedded', 'toy' or 'tiny', not {kind!r}")
    return request.getfixturevalue(f"{kind}_pipe")

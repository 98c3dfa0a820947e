"""Shared test set-up: make `tests/reference.py` importable, keep runs small, and build the SD 1.5 weights once."""

import gc
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def sd15_weights(tmp_path_factory):
    """Random SD 1.5 weights (fixed seed), written once as a diffusers folder and as a CompVis single file.

    Only files are kept (3.4 GB of UNet is too much to hold twice in memory); tests load what they need.
    """
    from reference import diffusers_unet, diffusers_vae, hf_clip, perturb_, to_compvis
    from safetensors.torch import save_file

    from sdviz.config import SD15

    root = tmp_path_factory.mktemp("sd15")
    torch.manual_seed(0)
    clip = perturb_(hf_clip(SD15), 1).eval()
    vae = perturb_(diffusers_vae(SD15), 2).eval()
    unet = perturb_(diffusers_unet(SD15), 3).eval()
    clip.save_pretrained(root / "diffusers" / "text_encoder")
    vae.save_pretrained(root / "diffusers" / "vae")
    unet.save_pretrained(root / "diffusers" / "unet")
    save_file(to_compvis(unet.state_dict(), vae.state_dict(), clip.state_dict(), SD15), root / "sd15.safetensors")
    del clip, vae, unet
    gc.collect()
    return {"diffusers": root / "diffusers", "compvis": root / "sd15.safetensors"}

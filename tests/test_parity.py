"""sdviz's networks give the reference implementations' numbers on identical weights, at the full SD 1.5 size.

Random weights with a fixed seed (1-D parameters perturbed, so that a swapped norm would show), CPU, float32. Each
comparison runs twice: sdviz loads the weights from a diffusers folder, and from the same weights rewritten into the
CompVis single-file layout by `tests/reference.py`.
"""

from __future__ import annotations

import gc

import pytest
import torch

from sdviz.config import SD15
from sdviz.weights import load_models

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
# full-size SD 1.5 builds: `make test-all` (test_weights compares the TINY layouts in `make test`)
pytestmark = pytest.mark.slow


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def sd15_sources(sd15_weights):
    """Reference outputs of the diffusers/transformers models on fixed inputs, and the two files sdviz loads."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = sd15_weights["diffusers"]
    torch.manual_seed(0)
    ids = torch.randint(0, 49408, (2, 77))
    image = torch.randn(1, 3, 64, 48)
    z = torch.randn(1, 4, 8, 6)
    latents = {"2x4x16x16": torch.randn(2, 4, 16, 16), "1x4x16x24": torch.randn(1, 4, 16, 24)}
    t = torch.tensor([981, 20])
    context = torch.randn(2, 77, 768)
    expected = {}
    with torch.no_grad():
        expected["clip"] = CLIPTextModel.from_pretrained(folder / "text_encoder").eval()(ids).last_hidden_state
        vae = AutoencoderKL.from_pretrained(folder / "vae").eval()
        dist = vae.encode(image).latent_dist
        expected["mean"], expected["logvar"] = dist.mean, dist.logvar
        expected["decoded"] = vae.decode(z).sample
        unet = UNet2DConditionModel.from_pretrained(folder / "unet").eval()
        for name, x in latents.items():
            expected[name] = unet(x, t[: len(x)], context[: len(x)]).sample
    del vae, unet
    gc.collect()
    inputs = {"ids": ids, "image": image, "z": z, "latents": latents, "t": t, "context": context}
    return sd15_weights, inputs, expected


@pytest.mark.parametrize("layout", ["diffusers", "compvis"])
def test_sd15_parity(sd15_sources, layout):
    paths, x, expected = sd15_sources
    models = load_models(paths[layout], config=SD15 if layout == "compvis" else None)
    assert models.config.unet == SD15.unet and models.config.vae == SD15.vae and models.config.clip == SD15.clip
    with torch.no_grad():
        hidden = models.text_encoder(x["ids"])
        assert hidden.shape == (2, 77, 768)
        assert (hidden - expected["clip"]).abs().max().item() <= 1e-4

        mean, logvar = models.vae.encode(x["image"])
        assert rel_err(mean, expected["mean"]) <= 1e-4
        assert rel_err(logvar, expected["logvar"]) <= 1e-4
        decoded = models.vae.decode(x["z"])
        assert decoded.shape == (1, 3, 64, 48)
        assert rel_err(decoded, expected["decoded"]) <= 1e-4

        for name, latents in x["latents"].items():
            n = len(latents)
            eps = models.unet(latents, x["t"][:n], x["context"][:n])
            assert eps.shape == latents.shape
            assert rel_err(eps, expected[name]) <= 1e-4, name
    del models
    gc.collect()

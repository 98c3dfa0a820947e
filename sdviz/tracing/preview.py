"""Cheap looks inside the model that need no generation: latent previews and time-embedding tables.

Latent -> RGB in one matrix product. The VAE's 4 latent channels are not colours, but over natural (or toy) images
each pixel's colour is close to a *linear* function of the latent vector at that place: SD 1.5's community preview
("latent2RGB") is a fixed 3x4 matrix. `latent_rgb_map` fits that matrix (and a bias) for whatever VAE a pipeline
uses: it encodes a few scenes of sdviz's shapes world, shrinks each image to the latent grid by averaging the f x f
pixels above every latent pixel, and solves the least-squares problem

    rgb(pixel) ~ W z(pixel) + b,      W: (3, C), b: (3,)

The fit takes a fraction of a second for the embedded model and is cached per VAE. It is deterministic: the scenes
come from a fixed seed, and the VAE's mean latent is used (no sampling).

The map is fitted on flat, saturated colours (what the shapes world has); for photographs it is a rough sketch,
as any linear preview is: it shows layout and colour, not detail.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdviz.models.unet import timestep_embedding

_FITTED: weakref.WeakKeyDictionary[nn.Module, tuple[Tensor, Tensor]] = weakref.WeakKeyDictionary()


def _fit_images(seed: int = 0) -> Tensor:
    """Four 64x64 pictures to fit the map on, (4, 3, 64, 64) in [-1, 1]: two scenes of the shapes world and two
    patchworks of 16x16 tiles in its colours, white, grey and its background (each tile covers whole latent pixels
    for downsampling factors up to 16, so most latents see one flat colour)."""
    from sdviz.toy import world

    rng = np.random.default_rng(seed)
    scenes, _ = world.batch(2, rng)  # (2, 3, 64, 64) in [-1, 1]
    colours = torch.tensor([*world.PALETTE.values(), (255, 255, 255), (128, 128, 128), world.BACKGROUND])
    colours = colours.float() / 127.5 - 1.0  # (9, 3)
    tiles = [colours[torch.from_numpy(rng.permutation(np.arange(16) % len(colours)))] for _ in range(2)]  # (16, 3)
    patchworks = torch.stack([t.T.reshape(3, 4, 4) for t in tiles])  # (2, 3, 4, 4): a 4x4 grid of colours
    patchworks = patchworks.repeat_interleave(16, -1).repeat_interleave(16, -2)  # (2, 3, 64, 64)
    return torch.cat([scenes, patchworks])


@torch.no_grad()
def latent_rgb_map(pipe, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The linear latent -> RGB map fitted for the pipeline's VAE: (weight (3, C), bias (3,)), for scaled latents
    (as the UNet sees them). Cached per VAE module."""
    if pipe.vae in _FITTED:
        return _FITTED[pipe.vae]
    x = _fit_images(seed)  # (N, 3, 64, 64) in [-1, 1]
    mean, _ = pipe.vae.encode(x.to(pipe.device, pipe.dtype))  # (N, C, h, w): the posterior mean, one batched call
    z = mean.float().cpu() * pipe.config.vae.scaling_factor  # scaled, as the UNet sees latents
    f = x.shape[-1] // z.shape[-1]
    target = F.avg_pool2d(x, f)  # (N, 3, 64, 64) -> (N, 3, h, w): the colour above each latent pixel
    a = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (N h w, C)
    a = torch.cat([a, torch.ones(len(a), 1)], 1)  # (N h w, C + 1): the last column fits the bias
    y = target.permute(0, 2, 3, 1).reshape(-1, 3)  # (N h w, 3)
    solution = torch.linalg.lstsq(a.double(), y.double()).solution.float()  # (C + 1, 3)
    weight, bias = solution[:-1].T.contiguous(), solution[-1].contiguous()
    _FITTED[pipe.vae] = (weight, bias)
    return weight, bias


@torch.no_grad()
def time_embeddings(unet, timesteps: Tensor | list[int] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The UNet's time embedding at any timesteps (default all 0..999), without generating anything:
    (timesteps (T,), sinusoid (T, 320), MLP output (T, 1280)) for SD 1.5, on the CPU."""
    cfg = unet.config
    t = torch.arange(1000) if timesteps is None else torch.as_tensor(timesteps).long()
    p = next(unet.parameters())
    sin = timestep_embedding(t.to(p.device), cfg.model_channels, cfg.flip_sin_to_cos, cfg.freq_shift).to(p.dtype)
    mlp = unet.time_embedding(sin)
    return t, sin.float().cpu(), mlp.float().cpu()

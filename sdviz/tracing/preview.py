"""Cheap looks inside the model that need no generation: latent previews and time-embedding tables.

Latent -> RGB in one matrix product. The VAE's 4 latent channels are not colours, but over natural (or toy) images
each pixel's colour is close to a *linear* function of the latent vector at that place: SD 1.5's community preview
("latent2RGB") is a fixed 3x4 matrix. `fit_latent_rgb` fits that matrix (and a bias) for a VAE from pictures: it
encodes them, shrinks each picture to the latent grid by averaging the f x f pixels above every latent pixel, and
solves the least-squares problem

    rgb(pixel) ~ W z(pixel) + b,      W: (3, C), b: (3,)

`latent_rgb_map(pipe)` is the map a pipeline previews with: the one its model folder ships (the embedded model's
`sdviz.json` carries the map fitted on its own world's scenes, `sdviz.toy.world.preview_pictures`), else one fitted
here on patchworks of flat colours (`patchworks`), cached per VAE. Both fits are deterministic: the pictures come
from a fixed seed, and the VAE's mean latent is used (no sampling).

The map is fitted on flat, saturated colours; for photographs it is a rough sketch, as any linear preview is: it
shows layout and colour, not detail.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdviz.models.unet import timestep_embedding

_FITTED: weakref.WeakKeyDictionary[nn.Module, tuple[Tensor, Tensor]] = weakref.WeakKeyDictionary()


# the colours of the patchworks: the primaries and secondaries, black, white and greys, a few mixed tones
PATCH_COLOURS = (
    (220, 40, 40), (40, 170, 60), (40, 80, 220), (235, 210, 40), (40, 200, 210), (200, 60, 200),
    (255, 255, 255), (0, 0, 0), (128, 128, 128), (64, 64, 64), (192, 192, 192),
    (240, 150, 40), (120, 80, 40), (250, 200, 180), (90, 120, 60), (60, 40, 120),
)  # fmt: skip


def patchworks(n: int = 4, size: int = 64, seed: int = 0) -> Tensor:
    """`n` pictures of 4 x 4 tiles of flat colours (`PATCH_COLOURS`, each used in every picture, shuffled):
    (n, 3, size, size) in [-1, 1]. A tile covers whole latent pixels for downsampling factors up to size / 4, so most
    latents see one flat colour."""
    rng = np.random.default_rng(seed)
    colours = torch.tensor(PATCH_COLOURS).float() / 127.5 - 1.0  # (16, 3)
    grids = [colours[torch.from_numpy(rng.permutation(len(colours)))].T.reshape(3, 4, 4) for _ in range(n)]
    tile = size // 4
    return torch.stack(grids).repeat_interleave(tile, -1).repeat_interleave(tile, -2)  # (n, 3, 4, 4) -> (n, 3, S, S)


@torch.no_grad()
def fit_latent_rgb(
    vae: nn.Module,
    scaling_factor: float,
    pictures: Tensor,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """The least-squares linear map from scaled latents to the colours of `pictures` (N, 3, H, W) in [-1, 1]:
    (weight (3, C), bias (3,)), float32 on the CPU. The VAE runs on `device` in `dtype` (where its weights are)."""
    mean, _ = vae.encode(pictures.to(device, dtype))  # (N, C, h, w): the posterior mean, one batched call
    z = mean.float().cpu() * scaling_factor  # scaled, as the UNet sees latents
    f = pictures.shape[-1] // z.shape[-1]
    target = F.avg_pool2d(pictures.float(), f)  # (N, 3, H, W) -> (N, 3, h, w): the colour above each latent pixel
    a = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (N h w, C)
    a = torch.cat([a, torch.ones(len(a), 1)], 1)  # (N h w, C + 1): the last column fits the bias
    y = target.permute(0, 2, 3, 1).reshape(-1, 3)  # (N h w, 3)
    solution = torch.linalg.lstsq(a.double(), y.double()).solution.float()  # (C + 1, 3)
    return solution[:-1].T.contiguous(), solution[-1].contiguous()


def latent_rgb_map(pipe) -> tuple[Tensor, Tensor]:
    """The linear latent -> RGB map for the pipeline's VAE: (weight (3, C), bias (3,)), for scaled latents (as the
    UNet sees them). The one its model folder ships, else fitted on `patchworks` (cached per VAE module)."""
    shipped = getattr(pipe, "latent_rgb", None)
    if shipped is not None:
        return shipped
    if pipe.vae not in _FITTED:
        size = 16 * pipe.config.vae.downsampling_factor  # 16 latent pixels a side: 4 x 4 of each tile
        fitted = fit_latent_rgb(pipe.vae, pipe.config.vae.scaling_factor, patchworks(4, size), pipe.device, pipe.dtype)
        _FITTED[pipe.vae] = fitted
    return _FITTED[pipe.vae]


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

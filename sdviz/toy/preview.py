"""The embedded model's latent -> RGB preview map, fitted on its own world's pictures and shipped in its folder.

A trace previews latents with one matrix product (`sdviz.tracing.preview`). For a model of the shapes world the map
is fitted on what that world draws: two scenes and two patchworks of 16x16 tiles in its colours, white, grey and its
background. `export` (sdviz/toy/train.py) writes the fitted map into the model folder's `sdviz.json`
(`"latent_rgb"`), and the pipeline reads it from there: the tracing code itself knows nothing of the toy world.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from sdviz.toy import world
from sdviz.tracing.preview import fit_latent_rgb


def preview_pictures(seed: int = 0) -> Tensor:
    """Four 64x64 pictures to fit the map on, (4, 3, 64, 64) in [-1, 1]: two scenes of the shapes world and two
    patchworks of 16x16 tiles in its colours, white, grey and its background (each tile covers whole latent pixels
    for downsampling factors up to 16, so most latents see one flat colour)."""
    rng = np.random.default_rng(seed)
    scenes, _ = world.batch(2, rng)  # (2, 3, 64, 64) in [-1, 1]
    colours = torch.tensor([*world.PALETTE.values(), (255, 255, 255), (128, 128, 128), world.BACKGROUND])
    colours = colours.float() / 127.5 - 1.0  # (9, 3)
    tiles = [colours[torch.from_numpy(rng.permutation(np.arange(16) % len(colours)))] for _ in range(2)]  # (16, 3)
    patchworks = torch.stack([t.T.reshape(3, 4, 4) for t in tiles])  # (2, 3, 4, 4): a 4x4 grid of colours
    patchworks = patchworks.repeat_interleave(16, -1).repeat_interleave(16, -2)  # (2, 3, 64, 64)
    return torch.cat([scenes, patchworks])


def world_latent_rgb(vae: torch.nn.Module, scaling_factor: float) -> tuple[Tensor, Tensor]:
    """The preview map of a VAE trained on the shapes world: (weight (3, C), bias (3,))."""
    return fit_latent_rgb(vae, scaling_factor, preview_pictures())

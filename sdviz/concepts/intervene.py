"""Features during generation: splice an SAE's reconstruction in, ablate or clamp a feature, add (steer) one.

Each edit is an intervention of `sdviz.causal` (`FeatureEdit`): an editor on the SAE's hook point, attached for the
`with` block and removed in a `finally` by `sdviz.causal.intervene`. It changes only the conditional rows of the
guided batch (the ones the SAE was trained on), at every pixel of the feature map, in a window of the steps
(default all). With x the activation at a pixel, z = SAE(x)'s features and d_i the unit direction of feature i
(times the SAE's scale):

    splice        x <- x_hat = decode(z)                  what the model does with the SAE's picture of x
    ablate i      x <- x - z_i d_i                         feature i's part removed, the rest (and the error) kept
    clamp i to v  x <- x + (v - z_i) d_i                   feature i forced to v (v < 0 pushes against it)
    add i by a    x <- x + a d_i                           steering: feature i added everywhere, a in its own units
    swap i -> j   x <- x - z_i d_i + g z_i d_j             steering where i fires: j put in its place (gain g)

    with intervene(pipe, sae, ablate=[17]):
        picture = pipe.generate("a red circle", seed=1, steps=20, cfg_scale=5, sampler="ddim").image
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor

from sdviz import causal
from sdviz.causal.interventions import Intervention, Listening, Steps
from sdviz.concepts.sae import SAE
from sdviz.hooks import HookCall


def edit_rows(
    sae: SAE,
    x: Tensor,
    splice: bool = False,
    ablate: Sequence[int] = (),
    clamp: dict[int, float] | None = None,
    add: dict[int, float] | None = None,
    swap: dict[int, int] | None = None,
    gain: float = 1.0,
) -> Tensor:
    """The edited activation rows (N, d) -> (N, d), as the module docstring describes."""
    x_hat, z = sae(x.float())
    if splice:
        out = x_hat
    else:
        out = x.float().clone()
    for i in ablate:
        out = out - z[:, i : i + 1] * sae.direction(i)  # (N, 1) * (d,) -> (N, d)
    for i, value in (clamp or {}).items():
        out = out + (value - z[:, i : i + 1]) * sae.direction(i)
    for i, amount in (add or {}).items():
        out = out + amount * sae.direction(i)
    for i, j in (swap or {}).items():
        out = out + z[:, i : i + 1] * (gain * sae.direction(j) - sae.direction(i))
    return out.to(x.dtype)


class FeatureEdit(Intervention):
    """An SAE's features edited at its hook point, on the conditional rows, in a window of steps (an intervention of
    `sdviz.causal`: attach it with `sdviz.causal.intervene(pipe, FeatureEdit(...))` or with `intervene` below)."""

    name = "FeatureEdit"

    def __init__(
        self,
        sae: SAE,
        splice: bool = False,
        ablate: Sequence[int] = (),
        clamp: dict[int, float] | None = None,
        add: dict[int, float] | None = None,
        swap: dict[int, int] | None = None,
        gain: float = 1.0,
        window: Steps = 1.0,
        point: str | None = None,
        *,
        steps: Any = None,
    ):
        super().__init__(window, steps=steps)
        for i in [*ablate, *(clamp or {}), *(add or {}), *(swap or {}), *(swap or {}).values()]:
            sae.check_feature(i)
        self.sae, self.point = sae, point
        self.edit = {"splice": splice, "ablate": list(ablate), "clamp": clamp, "add": add, "swap": swap, "gain": gain}

    def bind(self, pipe: Any) -> list[Listening]:
        point = self.sae.check_pipe(pipe, self.point)  # trained on this model and point, or a one-line error
        return [(point, self.cond_rows, self._edit)]

    def _edit(self, x: Tensor, _hook: HookCall) -> Tensor:
        b, c, h, w = x.shape  # the conditional rows of the UNet batch
        rows = x.permute(0, 2, 3, 1).reshape(-1, c)  # (B', C, H, W) -> (B'*H*W, C)
        with torch.no_grad():
            edited = edit_rows(self.sae, rows, **self.edit)
        return edited.reshape(b, h, w, c).permute(0, 3, 1, 2)  # (B'*H*W, C) -> (B', C, H, W)


def intervene(pipe: Any, sae: SAE, **edit: Any) -> AbstractContextManager:
    """Edit the SAE's hook point of `pipe` during the generations of the `with` block (see the module docstring):
    `sdviz.causal.intervene` with one `FeatureEdit(sae, **edit)` (splice, ablate, clamp, add, swap, gain, window,
    point). `window` is a window of the steps as a fraction (0.5: the first half; (0.5, 1.0): the second).

    The SAE must have been trained on this model and hook point (a one-line error otherwise), and every feature
    index must exist (an error lists the valid range)."""
    return causal.intervene(pipe, FeatureEdit(sae, **edit))

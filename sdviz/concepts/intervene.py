"""Features during generation: splice an SAE's reconstruction in, ablate or clamp a feature, add (steer) one.

Each intervention is an *editor* on the SAE's hook point (`HookPoint.listen(..., edit=True)`), registered under its
own `Scope` for the `with` block and removed in a `finally`, like `sdviz.editing.control`. It changes only the
conditional rows of the guided batch (the ones the SAE was trained on; `current_call()` says which they are), at
every pixel of the feature map, at the steps asked for (default all). With x the activation at a pixel, z = SAE(x)'s
features and d_i the unit direction of feature i (times the SAE's scale):

    splice        x <- x_hat = decode(z)                  what the model does with the SAE's picture of x
    ablate i      x <- x - z_i d_i                         feature i's part removed, the rest (and the error) kept
    clamp i to v  x <- x + (v - z_i) d_i                   feature i forced to v (v < 0 pushes against it)
    add i by a    x <- x + a d_i                           steering: feature i added everywhere, a in its own units
    swap i -> j   x <- x - z_i d_i + g z_i d_j             steering where i fires: j put in its place (gain g)

    with intervene(pipe, sae, ablate=[17]):
        picture = pipe.generate("a red circle", seed=1, steps=20, cfg_scale=5, sampler="ddim").image
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from sdviz.concepts.sae import SAE
from sdviz.events import Scope, current_call
from sdviz.hooks import HookCall, hook_points


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


@contextmanager
def intervene(
    pipe: Any,
    sae: SAE,
    splice: bool = False,
    ablate: Sequence[int] = (),
    clamp: dict[int, float] | None = None,
    add: dict[int, float] | None = None,
    swap: dict[int, int] | None = None,
    gain: float = 1.0,
    steps: Sequence[int] | None = None,
    point: str | None = None,
) -> Iterator[SAE]:
    """Edit the SAE's hook point of `pipe` during the generations of the `with` block (see the module docstring).

    The SAE must have been trained on this model and hook point (a one-line error otherwise), and every feature
    index must exist (an error lists the valid range)."""
    point = sae.check_pipe(pipe, point)
    for i in [*ablate, *(clamp or {}), *(add or {}), *(swap or {}), *(swap or {}).values()]:
        sae.check_feature(i)
    wanted = None if steps is None else set(steps)

    def editor(x: Tensor, _hook: HookCall) -> Tensor | None:
        call = current_call()
        if call is None or (wanted is not None and call.step not in wanted):
            return None
        b, c, h, w = x.shape
        rows = call.cond_rows
        cond = x[rows].permute(0, 2, 3, 1).reshape(-1, c)  # (B', C, H, W) -> (B'*H*W, C)
        with torch.no_grad():
            edited = edit_rows(sae, cond, splice, ablate, clamp, add, swap, gain)
        out = x.clone()
        out[rows] = edited.reshape(-1, h, w, c).permute(0, 3, 1, 2)  # (B'*H*W, C) -> (B', C, H, W)
        return out

    scope = Scope()
    scope.open()
    handle = hook_points(pipe)[point].listen(editor, edit=True, scope=scope)
    try:
        yield sae
    finally:
        scope.close()
        handle.remove()

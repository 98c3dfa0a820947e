"""What a generation tells whoever watches or changes it: the events, and which UNet call is running now.

The pipeline (`sdviz.pipeline`) is the one place that knows which step, which images and which batch rows every
UNet call serves. It hands that over once, here, so that traces (`sdviz.tracing`), edits (`sdviz.editing`) and
interventions (`sdviz.causal`) read the same object instead of working it out again by counting calls:

    GenerationInfo   before the first step: prompts, size, timesteps, guidance, seeds, the calls of each step
    UNetCall         while the UNet runs: the step, t, the images it holds and which rows are conditional
    StepInfo         after each step: x_t, the noise predictions, x0 and x_{t-1}
    GenerationResult at the end: the pictures and the final latents

`current_call()` is the UNet call running *in this thread or task* (a context variable, not a global): a hook
listener reads it to know where the tensor it was handed comes from, and a listener of another generation that
runs at the same time on another thread never sees it.

Observers (`pipe.observe(obs)`, a trace, an edit; the protocol is `sdviz.pipeline.Observer`) are scoped the same
way: each is registered under a `Scope`, and a generation tells only the observers whose scope is open in the thread
or task that called `generate`. A trace entered in one thread therefore never records a generation another thread
runs on the same pipeline.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from torch import Tensor


@dataclass
class GenerationInfo:
    """What a generation is about to do; handed to observers before the first step."""

    prompts: list[str]
    negative_prompts: list[str]
    height: int
    width: int
    timesteps: list[int]
    cfg_scale: float
    sampler: str
    seeds: list[int]
    # The UNet calls of one step, in order: the images (batch rows of the generation) each call holds. With guidance
    # a call's UNet batch is [uncond rows; cond rows] of those images. On the CPU one call per image.
    unet_calls: list[slice] = field(default_factory=list)
    latent_hw: tuple[int, int] = (0, 0)  # the latent grid (h, w) = (height, width) / the VAE's factor
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def guided(self) -> bool:
        return self.cfg_scale > 1.0


@dataclass(frozen=True)
class UNetCall:
    """One call of the UNet during a generation: which step, which images, which rows are conditional.

    With guidance the UNet batch is [uncond rows; cond rows] of `images`: for images 2..3 of a batch, rows 0..1 are
    their unconditional halves and rows 2..3 their conditional ones.
    """

    info: GenerationInfo  # the generation it belongs to (compare with `is`)
    step: int  # the denoising step index, 0 .. len(info.timesteps) - 1
    t: int  # the timestep
    index: int  # which call of the step (0 .. len(info.unet_calls) - 1)
    images: slice  # the images (batch rows of the generation) it holds

    @property
    def guided(self) -> bool:
        return self.info.guided

    @property
    def n_images(self) -> int:
        return self.images.stop - self.images.start

    @property
    def batch(self) -> int:
        """Rows of the UNet batch: 2 per image with guidance, else 1."""
        return self.n_images * (2 if self.guided else 1)

    @property
    def cond_rows(self) -> slice:
        """The conditional rows of the UNet batch."""
        n = self.n_images
        return slice(n, 2 * n) if self.guided else slice(0, n)

    @property
    def uncond_rows(self) -> slice:
        """The unconditional rows of the UNet batch (empty without guidance)."""
        return slice(0, self.n_images) if self.guided else slice(0, 0)

    def image_of(self, row: int) -> int:
        """The image (of the generation) that row `row` of the UNet batch belongs to."""
        return self.images.start + row % self.n_images

    def is_cond(self, row: int) -> bool:
        return not self.guided or row >= self.n_images


@dataclass
class StepInfo:
    """Everything one denoising step computed; handed to observers (the trace, a live preview) after the step."""

    index: int  # 0 .. len(timesteps) - 1
    t: int  # the timestep
    latents: Tensor  # x_t, (B, 4, h, w)
    eps_cond: Tensor  # the UNet's noise prediction given the prompt
    eps_uncond: Tensor | None  # given the negative/empty prompt (None without guidance)
    eps: Tensor  # the guided prediction the sampler used
    x0: Tensor  # the clean latents this prediction implies (the sampler's `pred_original_sample`)
    next_latents: Tensor  # x_{t-1}, after inpainting's re-imposition


@dataclass
class GenerationResult:
    """What `generate` returns: the pictures, the final (scaled) latents and the seed of each picture."""

    images: list[Image.Image]
    latents: Tensor  # (B, 4, h, w) on the CPU, float32, as the UNet saw them (multiplied by the scaling factor)
    seeds: list[int]

    @property
    def image(self) -> Image.Image:
        return self.images[0]


# --------------------------------------------------------------------------------------------------------------------
# The running call, and scopes: both per thread or task (context variables)
# --------------------------------------------------------------------------------------------------------------------

_CALL: ContextVar[UNetCall | None] = ContextVar("sdviz_unet_call", default=None)
_SCOPES: ContextVar[frozenset[int]] = ContextVar("sdviz_scopes", default=frozenset())
_SCOPE_IDS = itertools.count(1)


def current_call() -> UNetCall | None:
    """The UNet call of a generation running in this thread or task now (None between calls or outside one)."""
    return _CALL.get()


@contextmanager
def unet_call(call: UNetCall) -> Iterator[UNetCall]:
    """Used by the pipeline around each UNet call: `current_call()` is `call` inside the block."""
    token = _CALL.set(call)
    try:
        yield call
    finally:
        _CALL.reset(token)


class Scope:
    """A `with` block's claim on what runs inside it, in its own thread or task.

    A listener or observer registered with a scope hears only what runs while the scope is open in the context that
    runs it: a trace entered in thread A never hears a generation of thread B, even on the same pipeline. A new
    thread starts with no scope open (Python gives it an empty context).
    """

    def __init__(self) -> None:
        self.id = next(_SCOPE_IDS)
        self._opened = False

    def open(self) -> None:
        _SCOPES.set(_SCOPES.get() | {self.id})
        self._opened = True

    def close(self) -> None:
        if self._opened:
            _SCOPES.set(_SCOPES.get() - {self.id})
            self._opened = False

    def visible(self) -> bool:
        """Is this scope open in the running thread or task?"""
        return self.id in _SCOPES.get()

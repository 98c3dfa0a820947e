"""What every sampler does, and the one thing they share: choosing which timesteps to visit.

A sampler turns the UNet's noise prediction into a denoising step. The pipeline drives it like this
(the interface is diffusers' scheduler interface, minus everything a learner does not need):

    sampler.set_timesteps(50)                                # which of the 1000 training timesteps to visit
    latents = torch.randn(shape) * sampler.init_noise_sigma  # pure noise at the first of them
    for t in sampler.timesteps:                              # descending: 981, 961, ..., 1
        eps = unet(sampler.scale_model_input(latents, t), t, context)
        latents = sampler.step(eps, t, latents, generator=g).prev_sample  # x_t -> x_{t_prev}

Image-to-image starts part of the way down instead: `set_timesteps(50, strength=0.6)` keeps only the last 30
timesteps, and the start latents are the encoded image noised to the first of them, `add_noise(x0, noise, t0)`.

Choosing timesteps ("leading" spacing, as SD 1.x's schedulers do): with n steps out of T = 1000, visit every
(T // n)-th timestep counting up from 0, shifted by `steps_offset`, in descending order. For n = 50 and offset 1:
981, 961, ..., 21, 1. A sampler always steps from one of these to the next one (T // n lower) and the last step
lands below 0, on the clean image.

The multistep samplers (PNDM, DPM-Solver++, UniPC) also remember earlier steps' predictions: `set_timesteps` starts
them afresh, and their `step` must be called with `sampler.timesteps` in order.

Every method leaves its input tensors untouched and computes in float32; results come back in the latents' dtype.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from sdviz.config import ScheduleConfig
from sdviz.samplers.schedule import NoiseSchedule


class SamplerOutput(NamedTuple):
    """What one step returns (diffusers' names): the latents at the next timestep, and the clean latents x0 that
    this step's noise prediction implies (what a preview shows)."""

    prev_sample: Tensor  # x_{t_prev}, (B, 4, h, w)
    pred_original_sample: Tensor  # x0 predicted at this step, (B, 4, h, w)


class Sampler:
    """The shared interface. Subclasses implement `step`, `predict_x0`, `add_noise` (and `scale_model_input`)."""

    name: str = "base"
    steps_offset: int = 0  # added to every timestep; SD 1.5 ships with 1 (so the last step is t=1), DDPM uses 0
    needs_noise: bool = False  # does step() inject fresh Gaussian noise?
    init_noise_sigma: float = 1.0  # pure-noise latents are randn * init_noise_sigma

    def __init__(self, schedule: ScheduleConfig | None = None):
        self.schedule = NoiseSchedule(schedule)
        self.num_steps: int | None = None  # n, as asked of set_timesteps (before strength cuts the start off)
        self.step_ratio: int | None = None  # T // n: the distance between two consecutive timesteps (None: uneven)
        self.timesteps = torch.zeros(0, dtype=torch.long)  # set by set_timesteps

    # -- choosing the timesteps ------------------------------------------------------------------------------------

    @property
    def max_steps(self) -> int:
        """The most steps `set_timesteps` accepts: more would need timestep T, which the model never saw."""
        return self.schedule.num_train_timesteps - self.steps_offset

    def set_timesteps(self, num_steps: int, strength: float = 1.0) -> None:
        """Pick the `num_steps` timesteps to visit, in descending order, then keep only the last `strength` of them.

        strength = 1 starts from pure noise; strength = 0.6 with 50 steps visits the last int(50 * 0.6) = 30
        timesteps (image-to-image: the image keeps 40% of its structure). strength = 0 visits none.
        """
        num_steps = self._check_steps(num_steps, strength)
        self.num_steps = num_steps
        self.step_ratio = self.schedule.num_train_timesteps // num_steps
        # "leading" spacing: 0, r, 2r, ..., (n-1) r, shifted by the offset, then reversed (noisiest first)
        timesteps = (torch.arange(num_steps, dtype=torch.long) * self.step_ratio + self.steps_offset).flip(0)
        self.timesteps = timesteps[first_kept_step(num_steps, strength) :]  # (n,) -> (int(n * strength),)

    def _check_steps(self, num_steps: int, strength: float) -> int:
        """`set_timesteps`' arguments, checked: num_steps as an int, or a one-line ValueError."""
        is_int = isinstance(num_steps, numbers.Integral) and not isinstance(num_steps, bool)
        if not is_int or not 1 <= num_steps <= self.max_steps:
            raise ValueError(
                f"num_steps must be an integer from 1 to {self.max_steps} ({self.name}), got {num_steps!r}"
            )
        if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be a number between 0 and 1, got {strength!r}")
        return int(num_steps)

    # -- what each sampler defines ---------------------------------------------------------------------------------

    def scale_model_input(self, latents: Tensor, t: int) -> Tensor:
        """What the UNet is fed at timestep t. DDPM and DDIM feed x_t as it is."""
        return latents

    def step(
        self,
        model_output: Tensor,
        t: int,
        latents: Tensor,
        noise: Tensor | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> SamplerOutput:
        """One denoising step: from x_t and the predicted noise eps, the latents at the next (lower) timestep, and
        the x0 the prediction implies."""
        raise NotImplementedError

    def predict_x0(self, model_output: Tensor, t: int, latents: Tensor) -> Tensor:
        """The clean latents the prediction implies at this step (what the preview shows)."""
        raise NotImplementedError

    def add_noise(self, original: Tensor, noise: Tensor, t: int | Tensor) -> Tensor:
        """The forward process: noise clean latents to timestep t (one t, or one per batch element)."""
        raise NotImplementedError

    # -- small helpers -----------------------------------------------------------------------------------------------

    def _timestep(self, t: int | Tensor) -> int:
        return timestep_int(t, self.schedule.num_train_timesteps)

    def _check_ready(self) -> None:
        if self.num_steps is None:
            raise RuntimeError(f"{self.name}: call set_timesteps(num_steps) before step()")

    def _noise_for(
        self, latents: Tensor, noise: Tensor | None, generator: torch.Generator | Sequence[torch.Generator] | None
    ) -> Tensor:
        """The fresh noise of this step: the one given, or a draw of torch.randn from `generator`.

        With a list of generators, row i of the batch is drawn from generator i, so that each image's noise depends
        on its own seed only (the pipeline gives every image its own generator).

        The draw happens on the generator's device (like diffusers' `randn_tensor`, so a CPU generator gives the
        same numbers whatever device the latents are on), then moves to the latents' device.
        """
        if noise is not None:
            if noise.shape != latents.shape:
                raise ValueError(f"noise has shape {tuple(noise.shape)}, latents {tuple(latents.shape)}")
            return noise
        if isinstance(generator, Sequence):
            if len(generator) != latents.shape[0]:
                raise ValueError(f"{len(generator)} generators for a batch of {latents.shape[0]}")
            rows = [
                torch.randn((1, *latents.shape[1:]), generator=g, device=g.device, dtype=latents.dtype)
                for g in generator
            ]
            return torch.cat(rows).to(latents.device)  # B x (1, ...) -> (B, ...)
        device = generator.device if generator is not None else latents.device
        return torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype).to(latents.device)

    def __repr__(self) -> str:
        steps = self.timesteps.tolist()
        shown = steps if len(steps) <= 6 else steps[:3] + ["..."] + steps[-2:]
        return f"{type(self).__name__}(num_steps={self.num_steps}, timesteps={shown})"


def first_kept_step(num_steps: int, strength: float) -> int:
    """Image-to-image: how many of the `num_steps` (noisiest) steps `strength` skips, exactly as diffusers' img2img
    pipeline counts them (`get_timesteps`): it keeps the last int(num_steps * strength)."""
    init_timestep = min(int(num_steps * strength), num_steps)
    return max(num_steps - init_timestep, 0)


def timestep_int(t: int | Tensor, num_train_timesteps: int) -> int:
    """One timestep as a Python int (the loop over `sampler.timesteps` yields 0-dim tensors)."""
    if isinstance(t, Tensor) and t.numel() != 1:
        raise ValueError(f"expected a single timestep, got a tensor of shape {tuple(t.shape)}")
    return int(timestep_tensor(t, num_train_timesteps).reshape(()))


def timestep_tensor(t: int | Tensor, num_train_timesteps: int) -> Tensor:
    """Timesteps (one int, or a tensor of one per batch element) as a CPU LongTensor, to index the schedule."""
    t = torch.as_tensor(t).cpu()
    if t.is_floating_point():
        if not torch.equal(t, t.round()):
            raise ValueError(f"timesteps are integers, got {t.tolist()}")
    t = t.long()
    if t.numel() and not (0 <= int(t.min()) and int(t.max()) < num_train_timesteps):
        raise ValueError(f"timesteps must lie in [0, {num_train_timesteps - 1}], got {t.tolist()}")
    return t


def expand_to(coefficient: Tensor, x: Tensor) -> Tensor:
    """Per-sample coefficients (B,) or a scalar () -> a shape that broadcasts against x (B, C, H, W)."""
    coefficient = coefficient.to(x.device)
    if coefficient.dim() == 0:
        return coefficient
    return coefficient.reshape(-1, *([1] * (x.dim() - 1)))  # (B,) -> (B, 1, 1, 1)

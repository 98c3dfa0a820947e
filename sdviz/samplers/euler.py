"""Euler and Euler-ancestral: sampling as solving an ODE in "sigma space" (Karras, Aittala, Aila & Laine 2022,
"Elucidating the Design Space of Diffusion-Based Generative Models"; equation and algorithm numbers are theirs).

Change variables: divide x_t by sqrt(a_bar_t). Eq. 4 of DDPM, x_t = sqrt(a_bar_t) x_0 + sqrt(1 - a_bar_t) eps, becomes

    x = x_0 + sigma * eps          with sigma = sqrt((1 - a_bar_t) / a_bar_t)   (`NoiseSchedule.sigmas`)

so each timestep is just a noise level sigma (0.029 at t = 0 up to 14.6 at t = 999 for SD), and the latents carry
the image plus sigma times unit noise. In these coordinates:

- the model's input must be scaled back to unit variance: x / sqrt(sigma^2 + 1), which is exactly the x_t the UNet
  was trained on (Karras Table 1, "VP" preconditioning: c_in = 1 / sqrt(sigma^2 + 1));
- the denoiser is D(x; sigma) = x - sigma * eps (eq. 7 with Table 1's c_skip = 1, c_out = -sigma): the predicted x_0;
- the probability-flow ODE (eq. 1 with sigma(t) = t and the score of eq. 3) is dx / dsigma = (x - D(x; sigma)) / sigma;
- pure noise at the first level sigma_max is N(0, (sigma_max^2 + 1) I): unit-variance latents plus sigma_max noise,
  hence `init_noise_sigma` = sqrt(sigma_max^2 + 1).

Euler: take one straight step of that ODE from each sigma to the next (Algorithm 2 lines 7-8 with gamma = 0, which is
Algorithm 1 lines 4-5 without Heun's correction). Deterministic.

Euler ancestral (Katherine Crowson's k-diffusion `sample_euler_ancestral`): step the ODE down to a lower level
sigma_down, then add fresh noise of standard deviation sigma_up, with sigma_down^2 + sigma_up^2 = sigma_next^2.
sigma_up is DDIM's eq. 16 with eta = 1 written in sigma space, so this is "DDPM-like" ancestral sampling; the fresh
noise keeps it from converging to one image as the step count grows.

Settings are SD 1.5's (diffusers' `EulerDiscreteScheduler` / `EulerAncestralDiscreteScheduler`): "leading" timesteps
offset by 1, each timestep's sigma read from the training schedule (their linear interpolation at integer
timesteps), and a final sigma of 0. diffusers keeps the timesteps as floats (981.0); sdviz keeps the same values as
integers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sdviz.config import ScheduleConfig
from sdviz.samplers.base import Sampler, SamplerOutput, expand_to, timestep_tensor


class EulerSampler(Sampler):
    """Euler's method on the probability-flow ODE. Deterministic. Options: none."""

    name = "euler"
    steps_offset = 1
    needs_noise = False

    def __init__(self, schedule: ScheduleConfig | None = None):
        super().__init__(schedule)
        # sigma of each visited timestep, then 0 (the clean image). Before set_timesteps: the whole training chain.
        self.sigmas = torch.cat([self.schedule.sigmas.flip(0), torch.zeros(1)])  # (T + 1,)

    def set_timesteps(self, num_steps: int, strength: float = 1.0) -> None:
        super().set_timesteps(num_steps, strength)
        self.sigmas = torch.cat([self.schedule.sigmas[self.timesteps], torch.zeros(1)])  # (n,) -> (n + 1,)

    @property
    def init_noise_sigma(self) -> float:
        """Standard deviation of pure-noise latents at the first sigma: sqrt(sigma_max^2 + 1).

        sigma_max is the largest sigma this sampler visits (as in diffusers, whose img2img never uses this value: with
        strength < 1 diffusers still reports the full schedule's first sigma, sdviz the first one it will visit).
        """
        return float((self.sigmas.max() ** 2 + 1) ** 0.5)

    def scale_model_input(self, latents: Tensor, t: int) -> Tensor:
        """The UNet sees x / sqrt(sigma^2 + 1), the unit-variance x_t it was trained on (Table 1, c_in)."""
        sigma = self.schedule.sigmas[self._timestep(t)]
        return (latents.float() / (sigma**2 + 1) ** 0.5).to(latents.dtype)

    def predict_x0(self, model_output: Tensor, t: int, latents: Tensor) -> Tensor:
        """The denoiser D(x; sigma) = x - sigma * eps (eq. 7, Table 1: c_skip = 1, c_out = -sigma)."""
        sigma = self.schedule.sigmas[self._timestep(t)]
        return (latents.float() - sigma * model_output.float()).to(latents.dtype)

    def step(
        self,
        model_output: Tensor,
        t: int,
        latents: Tensor,
        noise: Tensor | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> SamplerOutput:
        """One Euler step of dx/dsigma = (x - D(x; sigma)) / sigma from this timestep's sigma to the next one."""
        i = self._index(t)
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        x_next, x0 = self._euler_step(model_output, t, latents, sigma, sigma_to=sigma_next)
        return SamplerOutput(x_next.to(latents.dtype), x0.to(latents.dtype))

    def _euler_step(
        self, model_output: Tensor, t: int, latents: Tensor, sigma: Tensor, sigma_to: Tensor
    ) -> tuple[Tensor, Tensor]:
        """What both Euler samplers do: one straight step of the ODE from x at level sigma (timestep t's) down to
        level `sigma_to`. Returns (x at sigma_to, the denoised x0), in float32."""
        x = latents.float()  # (B, 4, h, w)
        x0 = self.predict_x0(model_output.float(), t, x)  # D(x; sigma)  (eq. 7)
        d = (x - x0) / sigma  # dx/dsigma = (x - D(x; sigma)) / sigma  (Algorithm 2 line 7; eqs. 1 and 3)
        x_next = x + d * (sigma_to - sigma)  # x_{i+1} = x_i + (sigma_{i+1} - sigma_i) d_i  (Algorithm 2 line 8)
        return x_next, x0

    def add_noise(self, original: Tensor, noise: Tensor, t: int | Tensor) -> Tensor:
        """Noise clean latents to timestep t in sigma space: x = x_0 + sigma_t * eps. `t` may hold one per sample."""
        sigma = self.schedule.sigmas[timestep_tensor(t, self.schedule.num_train_timesteps)]  # () or (B,)
        x = original.float() + noise.float() * expand_to(sigma, original)  # (B,) -> (B, 1, 1, 1)
        return x.to(original.dtype)

    def _index(self, t: int | Tensor) -> int:
        """Where t is in self.timesteps: the step needs the *next* sigma, which only the position tells."""
        t = self._timestep(t)
        hits = (self.timesteps == t).nonzero()
        if len(hits) == 0:
            raise ValueError(
                f"{self.name}: timestep {t} is not one of this sampler's timesteps {self.timesteps.tolist()} "
                "(call set_timesteps first, and step with the values of sampler.timesteps)"
            )
        return int(hits[0])


class EulerAncestralSampler(EulerSampler):
    """Euler ancestral: an Euler step down to sigma_down, then fresh noise up to sigma_next. Stochastic."""

    name = "euler_a"
    needs_noise = True

    def step(
        self,
        model_output: Tensor,
        t: int,
        latents: Tensor,
        noise: Tensor | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> SamplerOutput:
        """x at sigma -> x at sigma_next, part deterministic (to sigma_down), part fresh noise (sigma_up)."""
        i = self._index(t)
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]

        # Split the target level: sigma_next^2 = sigma_down^2 + sigma_up^2, with sigma_up from DDIM eq. 16 at eta = 1
        sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
        sigma_down = (sigma_next**2 - sigma_up**2).clamp(min=0) ** 0.5  # clamp: float rounding must not give NaN

        x_next, x0 = self._euler_step(model_output, t, latents, sigma, sigma_to=sigma_down)  # Euler step to sigma_down
        # diffusers draws this noise on every step, the last one too (where sigma_up = 0): so does sdviz, so that one
        # generator gives both the same numbers
        z = self._noise_for(latents, noise, generator).float()  # z ~ N(0, I)
        x_next = x_next + z * sigma_up  # add the fresh noise back: x now sits at level sigma_next
        return SamplerOutput(x_next.to(latents.dtype), x0.to(latents.dtype))

"""DPM-Solver++(2M): a second-order multistep solver of the diffusion ODE, written for the clean-image prediction
(Lu, Zhou, Bao, Chen, Li & Zhu 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models"; algorithm numbers are that paper's). Option: Karras et al.'s noise levels (2022, "Elucidating the Design
Space of Diffusion-Based Generative Models", eq. 5).

Notation (the DPM-Solver papers'). The forward process is x_t = alpha_t x_0 + sigma_t eps with

    alpha_t = sqrt(a_bar_t),  sigma_t = sqrt(1 - a_bar_t),  lambda_t = log(alpha_t / sigma_t)  (half the log-SNR)

(sdviz's `sigma` everywhere else, the Euler samplers' and Karras', is the ratio sigma_t / alpha_t; so
alpha_t = 1 / sqrt(sigma^2 + 1), sigma_t = sigma alpha_t and lambda = -log(sigma)). The model's noise prediction
gives the clean-image ("data") prediction x_theta = (x_t - sigma_t eps) / alpha_t, and the probability-flow ODE
has an exact solution from level s to level t in which only x_theta must be approximated:

    x_t = (sigma_t / sigma_s) x_s + sigma_t * integral from lambda_s to lambda_t of e^lambda x_theta(x_lambda) d lambda

Why this form: under guidance x_theta stays in the range of images while eps is pushed far out; integrating the
smooth, bounded quantity exactly in its exponential weight leaves little for the approximation to get wrong.

- First order: take x_theta constant over the step. The integral is alpha_t (1 - e^-h) x_theta with h =
  lambda_t - lambda_s, so
      x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) x_theta(x_s)          (DPM-Solver++(1), which is DDIM)
- 2M, multistep second order (Algorithm 2): take x_theta linear in lambda, through this step's prediction and the
  previous step's. With r = h_prev / h, the ratio of the last two steps in lambda,
      D   = (1 + 1 / (2r)) x_theta(x_s) - (1 / (2r)) x_theta(x_prev)
      x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) D
  One UNet call per step, like DDIM, for second-order accuracy: the previous prediction comes for free.

The first step has no previous prediction and is first order; so is the last one (diffusers' `lower_order_final`),
which lands on sigma = 0: there lambda = infinity, e^-h = 0 and the update returns x_theta itself, the clean image.

Timesteps (SD 1.5's settings, "leading" spacing with offset 1, as diffusers' DPMSolverMultistepScheduler computes
them): with n steps, every (T // (n + 1))-th timestep from the top, leaving out 0: 20 steps visit 941, 894, ...,
48; 5 steps visit 831, ..., 167. (Pure noise is thus labelled t = 941, where sigma is 10.4 rather than the 14.6 of
t = 999.) Each timestep's sigma is the training schedule's, and a final sigma of 0 follows the last one.

Karras sigmas (`use_karras_sigmas=True`): the n noise levels are spaced evenly in sigma^(1/rho), rho = 7, from the
largest to the smallest of the training schedule (eq. 5), which puts more steps where the noise is low; each level
is then given the training timestep of the same sigma (interpolated in log sigma, rounded) for the UNet. With many
steps two low levels can round to one timestep (50 steps: ..., 2, 1, 1, 0); they keep their own sigmas.

A multistep sampler remembers: this one keeps the previous x_theta (a batch tensor; every operation is per row, so
each image's history is its own), starts afresh at every `set_timesteps`, and must be stepped through `timesteps`
in order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sdviz.config import ScheduleConfig
from sdviz.samplers.base import Sampler, SamplerOutput, expand_to, first_kept_step, timestep_tensor

KARRAS_RHO = 7.0  # Karras et al.'s rho (eq. 5): the sigma^(1/rho) spacing they found best


class DPMSolverPP2MSampler(Sampler):
    """DPM-Solver++(2M). Deterministic, multistep. Option: `use_karras_sigmas` (default False)."""

    name = "dpmpp_2m"
    steps_offset = 1
    needs_noise = False

    def __init__(self, schedule: ScheduleConfig | None = None, use_karras_sigmas: bool = False):
        super().__init__(schedule)
        if not isinstance(use_karras_sigmas, bool):
            raise ValueError(f"use_karras_sigmas must be True or False, got {use_karras_sigmas!r}")
        self.use_karras_sigmas = use_karras_sigmas
        self.sigmas = torch.zeros(0)  # the sigma of each visited timestep, then 0 (set by set_timesteps)
        self._reset()

    # -- timesteps and their noise levels --------------------------------------------------------------------------

    @property
    def max_steps(self) -> int:
        """n + 1 spacing: n = T - 1 steps would reach timestep T (T - steps_offset - 1 for SD: 998)."""
        return self.schedule.num_train_timesteps - self.steps_offset - 1

    def set_timesteps(self, num_steps: int, strength: float = 1.0) -> None:
        """Pick the timesteps and their sigmas, keep the last `strength` of them, forget the previous run."""
        num_steps = self._check_steps(num_steps, strength)
        self.num_steps = num_steps
        T = self.schedule.num_train_timesteps
        if self.use_karras_sigmas:
            self.step_ratio = None  # not evenly spaced
            sigmas = karras_sigmas(self.schedule.sigmas, num_steps)  # (n,), from sigma_max down to sigma_min
            timesteps = sigmas_to_timesteps(sigmas, self.schedule.sigmas)  # (n,) the nearest training timesteps
        else:
            self.step_ratio = T // (num_steps + 1)  # "leading" spacing as DPM-Solver's scheduler counts it
            timesteps = (torch.arange(1, num_steps + 1) * self.step_ratio + self.steps_offset).flip(0)  # (n,)
            sigmas = self.schedule.sigmas[timesteps]  # (n,)

        start = first_kept_step(num_steps, strength)
        self.timesteps = timesteps[start:]  # (n,) -> (k,)
        self.sigmas = torch.cat([sigmas[start:], torch.zeros(1)])  # (k,) -> (k + 1,): then the clean image
        self._reset()

    def _reset(self) -> None:
        self._steps_taken = 0  # since set_timesteps: the position in self.timesteps of the next step
        self._x0_history: list[Tensor] = []  # x_theta of the previous step(s), oldest first, each (B, 4, h, w)

    @staticmethod
    def alpha_sigma_lambda(sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """DPM-Solver's alpha_t, sigma_t and lambda_t at the noise level sdviz calls sigma (= sigma_t / alpha_t)."""
        alpha_t = 1 / (sigma**2 + 1) ** 0.5  # sqrt(a_bar_t)
        sigma_t = sigma * alpha_t  # sqrt(1 - a_bar_t)
        lambda_t = torch.log(alpha_t) - torch.log(sigma_t)  # half log-SNR (= -log sigma; infinity at sigma = 0)
        return alpha_t, sigma_t, lambda_t

    # -- the interface ---------------------------------------------------------------------------------------------

    def predict_x0(self, model_output: Tensor, t: int, latents: Tensor) -> Tensor:
        """The data prediction x_theta = (x_t - sigma_t eps) / alpha_t at timestep t's noise level."""
        alpha_t, sigma_t, _ = self.alpha_sigma_lambda(self._sigma_of(self._timestep(t)))
        x0 = (latents.float() - sigma_t * model_output.float()) / alpha_t  # DDPM eq. 4 solved for x_0
        return x0.to(latents.dtype)

    def step(
        self,
        model_output: Tensor,
        t: int,
        latents: Tensor,
        noise: Tensor | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> SamplerOutput:
        """x at this step's sigma -> x at the next one: Algorithm 2 (first order on the first and last step)."""
        i = self._next_position(t)
        x = latents.float()  # (B, 4, h, w)
        x0 = self.predict_x0(model_output.float(), t, x)  # x_theta(x_s)
        x_next = self._multistep_update(x, x0, i)
        self._remember(x0)
        return SamplerOutput(x_next.to(latents.dtype), x0.to(latents.dtype))

    def add_noise(self, original: Tensor, noise: Tensor, t: int | Tensor) -> Tensor:
        """x_t = alpha_t x_0 + sigma_t eps at timestep t's noise level (one t, or one per batch element)."""
        t = timestep_tensor(t, self.schedule.num_train_timesteps)
        sigma = torch.stack([self._sigma_of(int(s)) for s in t.flatten()]).reshape(t.shape)  # () or (B,)
        alpha_t, sigma_t, _ = self.alpha_sigma_lambda(sigma)
        x_t = expand_to(alpha_t, original) * original.float() + expand_to(sigma_t, original) * noise.float()
        return x_t.to(original.dtype)

    # -- the solver ------------------------------------------------------------------------------------------------

    def _multistep_update(self, x: Tensor, x0: Tensor, i: int) -> Tensor:
        """From x at position i (sigmas[i]) to position i + 1, given x_theta there: Algorithm 2's update."""
        alpha_s, sigma_s, lambda_s = self.alpha_sigma_lambda(self.sigmas[i])
        alpha_t, sigma_t, lambda_t = self.alpha_sigma_lambda(self.sigmas[i + 1])
        h = lambda_t - lambda_s  # this step's length in lambda

        last_step = i == len(self.timesteps) - 1
        step = alpha_t * (torch.exp(-h) - 1)  # how much of x_theta the step mixes in
        x_next = (sigma_t / sigma_s) * x - step * x0  # first order: x_theta constant (DPM-Solver++(1) = DDIM)
        if self._x0_history and not last_step:  # second order: x_theta linear in lambda (Algorithm 2)
            lambda_prev = self.alpha_sigma_lambda(self.sigmas[i - 1])[2]
            r = (lambda_s - lambda_prev) / h  # r_i = h_{i-1} / h_i
            slope = (x0 - self._x0_history[-1]) / r  # x_theta's change over one step of length h
            # D = (1 + 1/(2r)) x_theta(x_s) - 1/(2r) x_theta(x_prev) = x_theta(x_s) + slope / 2   (Algorithm 2)
            x_next = x_next - 0.5 * step * slope
        return x_next  # on the last step (sigma_t = 0, e^-h = 0) this is x_theta itself

    def _remember(self, x0: Tensor) -> None:
        self._x0_history = [*self._x0_history[-1:], x0]  # the last two predictions (UniPC's corrector uses both)
        self._steps_taken += 1

    def _next_position(self, t: int | Tensor) -> int:
        """The position of the step about to be taken; t must be the timestep there (steps go in order)."""
        self._check_ready()
        t, i = self._timestep(t), self._steps_taken
        if i >= len(self.timesteps) or t != int(self.timesteps[i]):
            expected = int(self.timesteps[i]) if i < len(self.timesteps) else "none (all done)"
            raise ValueError(
                f"{self.name}: step {i} expects timestep {expected}, got {t}; a multistep sampler is stepped "
                "through sampler.timesteps in order (set_timesteps starts it again)"
            )
        return i

    def _sigma_of(self, t: int) -> Tensor:
        """The noise level at timestep t: that of its position in this run (looking from the next step on, as two
        Karras levels may share a rounded timestep), or the training schedule's if t is not visited."""
        hits = (self.timesteps == t).nonzero().flatten()
        if len(hits) == 0:
            return self.schedule.sigmas[t]
        ahead = hits[hits >= self._steps_taken]
        return self.sigmas[int(ahead[0] if len(ahead) else hits[0])]


def karras_sigmas(schedule_sigmas: Tensor, num_steps: int, rho: float = KARRAS_RHO) -> Tensor:
    """n noise levels from the schedule's largest sigma to its smallest, evenly spaced in sigma^(1/rho) (Karras eq. 5:
    sigma_i = (sigma_max^(1/rho) + i / (n - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho), as float32."""
    sigma_min, sigma_max = schedule_sigmas[0].double(), schedule_sigmas[-1].double()
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)  # i / (n - 1)
    max_inv, min_inv = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return ((max_inv + ramp * (min_inv - max_inv)) ** rho).float()  # (eq. 5)


def sigmas_to_timesteps(sigmas: Tensor, schedule_sigmas: Tensor) -> Tensor:
    """For each sigma, the training timestep with that noise level: linear interpolation of t in log sigma between
    the two neighbouring training timesteps, rounded (what diffusers does for Karras sigmas)."""
    log_table = schedule_sigmas.log()  # (T,), increasing with t
    log_sigma = sigmas.double().clamp(min=1e-10).log()  # (n,)
    # below: the last training timestep whose log sigma is <= this one (0 if none), kept below T - 1
    below = (torch.searchsorted(log_table.double(), log_sigma, right=True) - 1).clamp(0, len(log_table) - 2)
    low, high = log_table[below], log_table[below + 1]  # (n,) each
    w = ((low.double() - log_sigma) / (low - high).double()).clamp(0, 1)  # how far towards `high`
    return (below + w).round().long()  # (n,)

"""PNDM in its PLMS form: DDIM's step, fed a noise estimate extrapolated from the last few steps (Liu, Ren, Lin &
Zhao 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds"; equation numbers are that paper's).

PNDM splits a numerical method for the reverse process in two parts:

- the "transfer part" phi(x_t, eps, t, t - delta) (eq. 9): move x_t to the lower noise level t - delta as if eps
  were exactly its noise. It is DDIM's deterministic step (DDIM eq. 12 with eta = 0), rearranged:

      phi = sqrt(a_bar_prev / a_bar_t) x_t - (a_bar_prev - a_bar_t) / denominator * eps
      denominator = sqrt(a_bar_t) (sqrt((1 - a_bar_prev) a_bar_t) + sqrt((1 - a_bar_t) a_bar_prev))

- the "gradient part": which eps to hand it. DDIM hands it the model's prediction at x_t. A linear multistep method
  (Adams-Bashforth) hands it a weighted sum of this prediction and the previous ones, which follows the curve of the
  trajectory instead of its tangent (section 3.3, "pseudo linear multi-step"):

      e' = (55 e_t - 59 e_{t+d} + 37 e_{t+2d} - 9 e_{t+3d}) / 24        (fourth order, from the fourth step on)

The multistep formula needs earlier predictions, which the first steps do not have. The paper starts with
Runge-Kutta steps (4 model calls each); Stable Diffusion's "PLMS" sampler (CompVis' latent-diffusion code, and
diffusers' PNDMScheduler with `skip_prk_steps=True`, SD 1.5's default scheduler) starts more cheaply:

    step 1:  e' = e_1                                 a plain DDIM step, from x_1 to a guess of x_2;
    step 1 again: e' = (e_1 + e_2) / 2                 e_2 is predicted at that guess; DDIM from x_1 again with the mean
                                                       (Heun's "improved Euler": second order; S-PNDM's first step)
    step 2:  e' = (3 e_2 - e_1) / 2                   second-order Adams-Bashforth
    step 3:  e' = (23 e_3 - 16 e_2 + 5 e_1) / 12      third order
    step 4+: e' = (55 e_k - 59 e_{k-1} + 37 e_{k-2} - 9 e_{k-3}) / 24   fourth order

(e_2 here is the prediction at the guessed x_2; the one at the final x_2 replaces it in the history.) So the first
timestep after the start is visited twice: with 50 steps, `timesteps` is 981, 961, 961, 941, ..., 1, and a picture
costs 51 UNet calls. Each call's prediction enters `step` as usual; the sampler keeps what it needs between calls.

Image-to-image starts at the same timestep as the other samplers (strength 0.6 of 50 steps: 581) and repeats the
second one: 581, 561, 561, 541, ..., 1. (diffusers' img2img pipeline instead slices its text-to-image list, which
starts one step earlier and repeats nothing: 601, 581, 561, ...; its scheduler takes 581 for the repeat, so from
then on the latents are one step noisier than the timestep the UNet is told.) Fed the same timesteps, sdviz and
diffusers' PNDMScheduler agree step for step (tests/test_samplers.py).

Settings are SD 1.5's: timesteps offset by 1, and the step after the last timestep lands on a_bar_0 of training step
0 (`set_alpha_to_one=False`), as in DDIM.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sdviz.config import ScheduleConfig
from sdviz.samplers.base import SamplerOutput
from sdviz.samplers.ddpm import DDPMSampler

# Adams-Bashforth weights of the newest, then older, predictions (numerators, denominator), by how many there are
ADAMS_BASHFORTH = {
    2: ((3, -1), 2),
    3: ((23, -16, 5), 12),
    4: ((55, -59, 37, -9), 24),
}


class PNDMSampler(DDPMSampler):
    """PLMS. Inherits from DDPM the forward process (`add_noise`, DDPM eq. 4) and the x_0 each prediction implies
    (`predict_x0`, DDPM eq. 15). Deterministic, multistep: it remembers the last predictions of each image (as batch
    rows) and starts afresh at every `set_timesteps`. Options: none."""

    name = "pndm"
    steps_offset = 1
    needs_noise = False

    def __init__(self, schedule: ScheduleConfig | None = None):
        super().__init__(schedule)
        self.final_alpha_bar = self.schedule.alphas_cumprod[0]  # a_bar after the last step (set_alpha_to_one=False)
        self._reset()

    def set_timesteps(self, num_steps: int, strength: float = 1.0) -> None:
        """The timesteps of DDIM's "leading" spacing, with the second one visited twice (the Heun correction)."""
        super().set_timesteps(num_steps, strength)
        t = self.timesteps
        if len(t) >= 2:
            self.timesteps = torch.cat([t[:2], t[1:]])  # (k,) -> (k + 1,): t_1, t_2, t_2, t_3, ...
        self._reset()

    def _reset(self) -> None:
        self._calls = 0  # how many predictions `step` has received since set_timesteps
        self._eps_history: list[Tensor] = []  # the predictions the multistep formula uses, oldest first, (B, 4, h, w)
        self._start: Tensor | None = None  # x at the first timestep, where the Heun correction starts again

    def step(
        self,
        model_output: Tensor,
        t: int,
        latents: Tensor,
        noise: Tensor | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> SamplerOutput:
        """One call: the prediction at (x_t, t) -> x at the next timestep, through phi (eq. 9) with a multistep e'."""
        self._check_ready()
        t = self._timestep(t)
        if self._calls >= len(self.timesteps) or t != int(self.timesteps[self._calls]):
            expected = int(self.timesteps[self._calls]) if self._calls < len(self.timesteps) else "none (all done)"
            raise ValueError(
                f"{self.name}: call {self._calls} expects timestep {expected}, got {t}; a multistep sampler is "
                "stepped through sampler.timesteps in order (set_timesteps starts it again)"
            )
        x, eps = latents.float(), model_output.float()  # (B, 4, h, w)
        x0 = self.predict_x0(eps, t, x)  # what this prediction says the clean latents are (DDPM eq. 15)

        if self._calls == 0:  # the first step: a DDIM step with e_1, to a guess of the next x
            self._eps_history = [eps]
            self._start = x
            e_prime, t_from, t_to = eps, t, t - self.step_ratio
        elif self._calls == 1:  # the first step again, from the same x, with the mean of e_1 and e_2 (Heun)
            e_prime = (self._eps_history[-1] + eps) / 2
            x, t_from, t_to = self._start, t + self.step_ratio, t  # t is already the step's target
            self._start = None
        else:  # linear multistep: extrapolate e' from this prediction and up to three earlier ones
            self._eps_history = [*self._eps_history[-3:], eps]
            weights, denominator = ADAMS_BASHFORTH[len(self._eps_history)]
            newest_first = reversed(self._eps_history)
            e_prime = sum(w * e for w, e in zip(weights, newest_first, strict=True)) / denominator  # (section 3.3)
            t_from, t_to = t, t - self.step_ratio
        self._calls += 1

        x_next = self.transfer(x, e_prime, t_from, t_to)  # (eq. 9)
        return SamplerOutput(x_next.to(latents.dtype), x0.to(latents.dtype))

    def transfer(self, x: Tensor, eps: Tensor, t: int, t_to: int) -> Tensor:
        """phi(x_t, eps, t, t_to) (eq. 9): x at timestep t to timestep t_to (below 0: the end), given its noise eps."""
        a_bar = self.schedule.alphas_cumprod[t]
        a_bar_to = self.schedule.alphas_cumprod[t_to] if t_to >= 0 else self.final_alpha_bar
        x_coef = (a_bar_to / a_bar) ** 0.5  # sqrt(a_bar_{t-d} / a_bar_t)
        eps_denominator = a_bar * (1 - a_bar_to) ** 0.5 + (a_bar * (1 - a_bar) * a_bar_to) ** 0.5
        return x_coef * x - (a_bar_to - a_bar) * eps / eps_denominator  # (eq. 9)

"""DDIM: the same trained model, a different (and by default deterministic) way down (Song, Meng & Ermon 2021,
"Denoising Diffusion Implicit Models"; equation numbers are that paper's).

DDPM's training objective only ever looks at the marginals q(x_t | x_0) (DDPM eq. 4), never at how consecutive steps
are linked. DDIM picks a different family of processes with the same marginals, so the same eps-model serves, and
derives the step (eq. 12):

    x_{t-1} = sqrt(a_bar_{t-1}) * x0_pred                          "predicted x_0"
            + sqrt(1 - a_bar_{t-1} - sigma_t^2) * eps               "direction pointing to x_t"
            + sigma_t * z                                           "random noise"
    with x0_pred = (x_t - sqrt(1 - a_bar_t) eps) / sqrt(a_bar_t)

Read it as: guess the clean image, then re-noise it to the lower noise level using the *same* noise the model
just predicted (plus, optionally, some fresh noise). How much is fresh is eta (eq. 16):

    sigma_t(eta) = eta * sqrt((1 - a_bar_{t-1}) / (1 - a_bar_t)) * sqrt(1 - a_bar_t / a_bar_{t-1})

eta = 0 is DDIM proper: no fresh noise, the same start noise always gives the same image, and 50 steps are enough
(the update is an Euler step of an ODE in sigma space, section 4.3). eta = 1 makes sigma_t the DDPM posterior
standard deviation sqrt(beta~_t), a DDPM-like sampler.

Settings are SD 1.5's (diffusers' `DDIMScheduler` as shipped with it): timesteps offset by 1 (50 steps: 981 ... 1),
and `set_alpha_to_one=False`: the step after the last timestep lands on the noise level a_bar_0 of training step 0,
not on a_bar = 1 (for SD that leaves sigma = 0.029, invisible).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sdviz.config import ScheduleConfig
from sdviz.samplers.base import SamplerOutput
from sdviz.samplers.ddpm import DDPMSampler


class DDIMSampler(DDPMSampler):
    """DDIM. Inherits from DDPM what the two papers share: the forward process (`add_noise`, DDPM eq. 4) and the
    x_0 prediction (`predict_x0`, DDPM eq. 15, DDIM eq. 12's "predicted x_0"). Option: `eta` in [0, 1] (default 0)."""

    name = "ddim"
    steps_offset = 1

    def __init__(self, schedule: ScheduleConfig | None = None, eta: float = 0.0):
        super().__init__(schedule)
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be between 0 (deterministic DDIM) and 1 (DDPM-like), got {eta!r}")
        self.eta = float(eta)
        self.final_alpha_bar = self.schedule.alphas_cumprod[0]  # a_bar after the last step (set_alpha_to_one=False)

    @property
    def needs_noise(self) -> bool:
        return self.eta > 0

    def step(
        self,
        model_output: Tensor,
        t: int,
        latents: Tensor,
        noise: Tensor | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> SamplerOutput:
        """x_t -> x_{t_prev} by eq. 12, with sigma_t from eq. 16."""
        self._check_ready()
        t = self._timestep(t)
        prev_t = t - self.step_ratio  # the next timestep down the chain; < 0 after the last one

        alpha_bar_t = self.schedule.alphas_cumprod[t]
        alpha_bar_prev = self.schedule.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_bar

        eps = model_output.float()  # (B, 4, h, w)
        x0 = self.predict_x0(eps, t, latents.float())  # (x_t - sqrt(1 - a_bar_t) eps) / sqrt(a_bar_t)  (eq. 12)

        # sigma_t(eta) (eq. 16): eta times the DDPM posterior standard deviation
        variance = (1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)
        sigma_t = self.eta * variance**0.5  # (eq. 16)

        direction = (1 - alpha_bar_prev - sigma_t**2) ** 0.5 * eps  # "direction pointing to x_t"  (eq. 12)
        x_prev = alpha_bar_prev**0.5 * x0 + direction  # sqrt(a_bar_{t-1}) "predicted x_0" + direction  (eq. 12)
        if self.eta > 0:
            z = self._noise_for(latents, noise, generator).float()  # z ~ N(0, I)
            x_prev = x_prev + sigma_t * z  # "random noise"  (eq. 12)
        return SamplerOutput(x_prev.to(latents.dtype), x0.to(latents.dtype))

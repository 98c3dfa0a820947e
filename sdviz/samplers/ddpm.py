"""DDPM: ancestral sampling with the posterior q(x_{t-1} | x_t, x_0) (Ho et al. 2020, "Denoising Diffusion
Probabilistic Models"; equation numbers are that paper's).

The forward process adds Gaussian noise in T = 1000 small steps; after t steps, in closed form (eq. 4):

    q(x_t | x_0) = N(x_t; sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)
    i.e.  x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,   eps ~ N(0, I)

The UNet is trained to predict that eps from x_t. Sampling walks back: at each step

    1. guess the clean image from the predicted noise, by solving eq. 4 for x_0 (eq. 15);
    2. ask where x_{t-1} would be if that guess were right: the posterior q(x_{t-1} | x_t, x_0) is Gaussian with
       mean mu~_t(x_t, x_0) and variance beta~_t (eqs. 6-7);
    3. sample from it: x_{t-1} = mu~ + sqrt(beta~) z, with fresh noise z (no noise on the very last step).

Putting eq. 15 into eq. 7's mean gives the paper's eq. 11, mu_theta = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) /
sqrt(alpha_t): the code below is that formula, written in the two steps that make its meaning visible. The variance
is the "fixed small" choice sigma_t^2 = beta~_t (section 3.2).

With fewer steps than T (50 instead of 1000), the chain visits every (T // n)-th timestep and a step goes from t to
t_prev = t - T // n: the same formulas apply with the step's own alpha = alpha_bar_t / alpha_bar_prev and
beta = 1 - alpha (Nichol & Dhariwal 2021, section 4, "respacing"). This is the sampler of the hkproj tutorial and
equals diffusers' `DDPMScheduler` with variance_type="fixed_small", clip_sample=False, timestep spacing "leading"
and steps_offset=0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sdviz.samplers.base import Sampler, SamplerOutput, expand_to, timestep_tensor


class DDPMSampler(Sampler):
    """Stochastic: fresh noise at every step but the last (`needs_noise`). Options: none."""

    name = "ddpm"
    steps_offset = 0  # timesteps end at 0, so the last step lands exactly on x_0
    needs_noise = True

    def predict_x0(self, model_output: Tensor, t: int, latents: Tensor) -> Tensor:
        """x_0 implied by the predicted noise: eq. 4 solved for x_0."""
        alpha_bar_t = self.schedule.alphas_cumprod[self._timestep(t)]
        x_t, eps = latents.float(), model_output.float()
        x0 = (x_t - (1 - alpha_bar_t) ** 0.5 * eps) / alpha_bar_t**0.5  # solve eq. 4 for x_0  (eq. 15)
        return x0.to(latents.dtype)

    def step(
        self,
        model_output: Tensor,
        t: int,
        latents: Tensor,
        noise: Tensor | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> SamplerOutput:
        """x_t -> x_{t_prev}: sample the posterior q(x_{t_prev} | x_t, x0_predicted) (Algorithm 2, line 4)."""
        self._check_ready()
        t = self._timestep(t)
        prev_t = t - self.step_ratio  # the next timestep down the (strided) chain; < 0 after the last one

        alpha_bar_t = self.schedule.alphas_cumprod[t]
        alpha_bar_prev = self.schedule.alphas_cumprod[prev_t] if prev_t >= 0 else torch.tensor(1.0)  # below 0: x_0
        alpha_t = alpha_bar_t / alpha_bar_prev  # this step's alpha (= alpha_t when the chain is not strided)
        beta_t = 1 - alpha_t  # this step's beta

        x_t = latents.float()  # (B, 4, h, w)
        x0 = self.predict_x0(model_output.float(), t, x_t)  # eq. 15

        # Posterior mean mu~_t(x_t, x0) (eq. 7). With x0 from eq. 15 it equals mu_theta of eq. 11.
        #   mu~_t = sqrt(a_bar_{t-1}) beta_t / (1 - a_bar_t) * x0  +  sqrt(a_t) (1 - a_bar_{t-1}) / (1 - a_bar_t) * x_t
        coef_x0 = alpha_bar_prev**0.5 * beta_t / (1 - alpha_bar_t)  # (eq. 7)
        coef_xt = alpha_t**0.5 * (1 - alpha_bar_prev) / (1 - alpha_bar_t)  # (eq. 7)
        mean = coef_x0 * x0 + coef_xt * x_t  # mu~_t  (eq. 7)

        if t == 0:  # the last step returns the mean: no noise on the final image (Algorithm 2, line 3: z = 0 at t = 1)
            return SamplerOutput(mean.to(latents.dtype), x0.to(latents.dtype))

        # Posterior variance beta~_t = (1 - a_bar_{t-1}) / (1 - a_bar_t) beta_t (eq. 7), the "fixed small" sigma_t^2,
        # clamped away from 0 as the tutorial and diffusers do (it would be 0 only on a step that ends at x_0)
        variance = ((1 - alpha_bar_prev) / (1 - alpha_bar_t) * beta_t).clamp(min=1e-20)
        z = self._noise_for(latents, noise, generator).float()  # z ~ N(0, I)
        x_prev = mean + variance**0.5 * z  # x_{t-1} = mu~ + sigma_t z  (Algorithm 2, line 4)
        return SamplerOutput(x_prev.to(latents.dtype), x0.to(latents.dtype))

    def add_noise(self, original: Tensor, noise: Tensor, t: int | Tensor) -> Tensor:
        """Sample q(x_t | x_0): jump straight from clean latents to timestep t (eq. 4). `t` may hold one per sample."""
        alpha_bar = self.schedule.alphas_cumprod[timestep_tensor(t, self.schedule.num_train_timesteps)]  # () or (B,)
        sqrt_alpha_bar = expand_to(alpha_bar**0.5, original)  # (B,) -> (B, 1, 1, 1)
        sqrt_one_minus_alpha_bar = expand_to((1 - alpha_bar) ** 0.5, original)
        x_t = sqrt_alpha_bar * original.float() + sqrt_one_minus_alpha_bar * noise.float()  # (eq. 4)
        return x_t.to(original.dtype)

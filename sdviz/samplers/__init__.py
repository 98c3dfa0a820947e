"""Samplers: turning the UNet's noise predictions into a walk from pure noise to an image.

    schedule.py    the training noise schedule (betas, alpha_bar, sigmas, SNR), computed once, here only
    base.py        the interface every sampler shares, and the choice of timesteps
    ddpm.py        DDPM ancestral sampling (Ho et al. 2020)
    ddim.py        DDIM, deterministic or with eta (Song et al. 2021)
    euler.py       Euler and Euler-ancestral in sigma space (Karras et al. 2022)
    pndm.py        PNDM in its PLMS form, SD 1.5's default (Liu et al. 2022)         multistep
    dpm_solver.py  DPM-Solver++(2M), optionally with Karras sigmas (Lu et al. 2022)  multistep
    unipc.py       UniPC, bh2, order 2 (Zhao et al. 2023)                              multistep

Every sampler equals the matching diffusers scheduler with SD 1.5's settings step for step (tests/test_samplers.py).
The multistep samplers remember earlier steps: `set_timesteps` starts them afresh, and they are stepped through
`sampler.timesteps` in order.

    sampler = get_sampler("ddim", eta=0.0)
    sampler = get_sampler("dpmpp_2m", use_karras_sigmas=True)
    sampler.set_timesteps(50)
"""

from __future__ import annotations

import inspect

from sdviz.config import ScheduleConfig
from sdviz.samplers.base import Sampler, SamplerOutput
from sdviz.samplers.ddim import DDIMSampler
from sdviz.samplers.ddpm import DDPMSampler
from sdviz.samplers.dpm_solver import DPMSolverPP2MSampler
from sdviz.samplers.euler import EulerAncestralSampler, EulerSampler
from sdviz.samplers.pndm import PNDMSampler
from sdviz.samplers.schedule import NoiseSchedule
from sdviz.samplers.unipc import UniPCSampler

SAMPLERS: dict[str, type[Sampler]] = {
    "ddpm": DDPMSampler,
    "ddim": DDIMSampler,
    "euler": EulerSampler,
    "euler_a": EulerAncestralSampler,
    "pndm": PNDMSampler,
    "dpmpp_2m": DPMSolverPP2MSampler,
    "unipc": UniPCSampler,
}


def sampler_options(name: str) -> list[str]:
    """The options a sampler takes (the keyword arguments of its constructor after the schedule)."""
    parameters = list(inspect.signature(SAMPLERS[name]).parameters)
    return [p for p in parameters if p != "schedule"]


def get_sampler(name: str, schedule_config: ScheduleConfig | None = None, **options) -> Sampler:
    """A new sampler by name (one of SAMPLERS); options are its own (DDIM: eta; dpmpp_2m, unipc: use_karras_sigmas).

    An unknown name or an option the sampler does not take is a one-line ValueError that lists what is known.
    """
    if not isinstance(name, str) or name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")
    accepted = sampler_options(name)
    unknown = [k for k in options if k not in accepted]
    if unknown:
        takes = f"its options: {', '.join(accepted)}" if accepted else "it takes no options"
        hint = ""
        if "use_karras_sigmas" in unknown:
            with_sigmas = [n for n in SAMPLERS if "use_karras_sigmas" in sampler_options(n)]
            hint = f" (Karras sigmas are an option of {', '.join(with_sigmas)})"
        raise ValueError(f"sampler {name!r} has no option {', '.join(map(repr, unknown))}; {takes}{hint}")
    return SAMPLERS[name](schedule_config, **options)


__all__ = [
    "SAMPLERS",
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverPP2MSampler",
    "EulerAncestralSampler",
    "EulerSampler",
    "NoiseSchedule",
    "PNDMSampler",
    "Sampler",
    "SamplerOutput",
    "UniPCSampler",
    "get_sampler",
    "sampler_options",
]

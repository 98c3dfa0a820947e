"""sdviz's samplers against diffusers' schedulers with SD 1.5's settings: same timesteps, same steps, same numbers.

Every loop feeds both sides the same model outputs (a fixed function of the latents and t plus fixed random
tensors) and, for the stochastic samplers, the same fresh noise: sdviz gets it through `noise=`, diffusers through
`variance_noise=` (DDIM) or by replacing the `randn_tensor` its scheduler module calls (DDPM, Euler ancestral).
A separate test checks that identically seeded generators give both sides the same draws. The multistep samplers
(PNDM, DPM-Solver++, UniPC) have their own file, tests/test_samplers_multistep.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
)
from diffusers.schedulers import scheduling_ddpm, scheduling_euler_ancestral_discrete

from sdviz.config import ScheduleConfig
from sdviz.samplers import SAMPLERS, NoiseSchedule, get_sampler

# diffusers' Euler schedulers call np.array on a tensor, which NumPy 2 warns about: their noise, not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

TOL = 1e-6
SHAPE = (2, 4, 8, 8)  # (B, C, h, w): two samples, to exercise per-sample timesteps in add_noise

# (sdviz name, sampler options, diffusers scheduler class, its settings, module whose randn_tensor it calls)
COMMON = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
CASES = {
    "ddpm": (
        "ddpm",
        {},
        DDPMScheduler,
        dict(variance_type="fixed_small", clip_sample=False, timestep_spacing="leading", steps_offset=0),
        scheduling_ddpm,
    ),
    "ddim": (
        "ddim",
        {},
        DDIMScheduler,
        dict(steps_offset=1, set_alpha_to_one=False, clip_sample=False, timestep_spacing="leading"),
        None,
    ),
    "ddim_eta": (
        "ddim",
        {"eta": 0.7},
        DDIMScheduler,
        dict(steps_offset=1, set_alpha_to_one=False, clip_sample=False, timestep_spacing="leading"),
        None,
    ),
    "euler": (
        "euler",
        {},
        EulerDiscreteScheduler,
        dict(steps_offset=1, timestep_spacing="leading", interpolation_type="linear", use_karras_sigmas=False),
        None,
    ),
    "euler_a": (
        "euler_a",
        {},
        EulerAncestralDiscreteScheduler,
        dict(steps_offset=1, timestep_spacing="leading"),
        scheduling_euler_ancestral_discrete,
    ),
}


def make_pair(case: str, schedule: ScheduleConfig | None = None):
    name, options, ref_cls, settings, _ = CASES[case]
    s = schedule or ScheduleConfig()
    common = dict(COMMON, num_train_timesteps=s.num_train_timesteps, beta_start=s.beta_start, beta_end=s.beta_end)
    return get_sampler(name, schedule, **options), ref_cls(**common, **settings)


def reference_timesteps(ref, num_steps: int, strength: float) -> torch.Tensor:
    """diffusers' own img2img code picks the timesteps (and sets the Euler schedulers' begin index)."""
    ref.set_timesteps(num_steps)
    pipe = SimpleNamespace(scheduler=ref)
    timesteps, _ = StableDiffusionImg2ImgPipeline.get_timesteps(pipe, num_steps, strength, "cpu")
    return timesteps


def fake_eps(x: torch.Tensor, t: int, extra: torch.Tensor) -> torch.Tensor:
    """A deterministic stand-in for the UNet: a fixed function of the (scaled) latents and t, plus random numbers."""
    return 0.8 * torch.sin(1.3 * x + t / 150.0) + 0.1 * x + 0.5 * extra


def same(a: torch.Tensor, b: torch.Tensor) -> None:
    """Schedule tensors computed by sdviz and by diffusers: equal up to float rounding (another CPU's kernels may
    round one step differently, so not bit for bit)."""
    torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# ---------------------------------------------------------------------------------------------------------------------
# the schedule


def test_schedule_equals_diffusers():
    sched = NoiseSchedule()
    ref = DDPMScheduler(**COMMON)
    assert sched.betas.dtype == torch.float32
    same(sched.betas, ref.betas)
    same(sched.alphas, ref.alphas)
    same(sched.alphas_cumprod, ref.alphas_cumprod)
    euler = EulerDiscreteScheduler(**COMMON, timestep_spacing="leading", steps_offset=1)
    same(sched.sigmas.flip(0), euler.sigmas[:-1])
    torch.testing.assert_close(sched.snr, 1 / sched.sigmas**2)
    assert abs(sched.sigmas[-1].item() - 14.6146) < 1e-3  # SD's sigma_max
    assert len(sched) == 1000


def test_schedule_config_is_used():
    config = ScheduleConfig(num_train_timesteps=500, beta_start=0.0001, beta_end=0.02)
    sampler, ref = make_pair("ddim", config)
    sampler.set_timesteps(10)
    ref.set_timesteps(10)
    same(sampler.schedule.alphas_cumprod, ref.alphas_cumprod)
    assert sampler.timesteps.tolist() == ref.timesteps.tolist()


# ---------------------------------------------------------------------------------------------------------------------
# timesteps


@pytest.mark.parametrize("case", CASES)
def test_timesteps_equal_diffusers(case):
    sampler, ref = make_pair(case)
    for num_steps in [1, 2, 3, 4, 7, 20, 50, 333, 999]:
        for strength in [1.0, 0.75, 0.6, 0.3, 0.01, 0.0]:
            sampler.set_timesteps(num_steps, strength=strength)
            expected = reference_timesteps(ref, num_steps, strength)
            assert sampler.timesteps.dtype == torch.long
            # diffusers' Euler timesteps are floats of the same values
            assert sampler.timesteps.tolist() == expected.tolist(), (num_steps, strength)
            assert sampler.timesteps.tolist() == sorted(sampler.timesteps.tolist(), reverse=True)


def test_ddpm_full_chain():
    sampler, ref = make_pair("ddpm")
    sampler.set_timesteps(1000)
    ref.set_timesteps(1000)
    assert sampler.timesteps.tolist() == ref.timesteps.tolist() == list(range(999, -1, -1))


@pytest.mark.parametrize("case", ["euler", "euler_a"])
@pytest.mark.parametrize("num_steps", [1, 20, 50])
def test_euler_sigmas_and_init_noise_sigma(case, num_steps):
    sampler, ref = make_pair(case)
    assert sampler.init_noise_sigma == float(ref.init_noise_sigma)  # before set_timesteps: the whole chain
    sampler.set_timesteps(num_steps)
    ref.set_timesteps(num_steps)
    same(sampler.sigmas, ref.sigmas)
    assert isinstance(sampler.init_noise_sigma, float)
    assert sampler.init_noise_sigma == float(ref.init_noise_sigma)


# ---------------------------------------------------------------------------------------------------------------------
# whole sampling loops


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("num_steps", [1, 4, 20, 50])
@pytest.mark.parametrize("strength", [1.0, 0.6, 0.3])
def test_loop_equals_diffusers(case, num_steps, strength, monkeypatch):
    sampler, ref = make_pair(case)
    sampler.set_timesteps(num_steps, strength=strength)
    ref_timesteps = reference_timesteps(ref, num_steps, strength)
    assert sampler.timesteps.tolist() == ref_timesteps.tolist()

    g = torch.Generator().manual_seed(1000 * num_steps + int(100 * strength))
    start_noise = torch.randn(SHAPE, generator=g)
    model_extra = torch.randn((len(sampler.timesteps), *SHAPE), generator=g)  # the "random tensors" of the model
    step_noise = torch.randn((len(sampler.timesteps), *SHAPE), generator=g)  # fresh noise for stochastic steps

    # diffusers' DDPM and Euler ancestral draw their noise with randn_tensor: hand them ours instead
    current = {}
    randn_module = CASES[case][4]
    if randn_module is not None:

        def fake_randn(shape, generator=None, device=None, dtype=None, layout=None):
            assert tuple(shape) == SHAPE
            return current["noise"].clone()

        monkeypatch.setattr(randn_module, "randn_tensor", fake_randn)

    if strength == 1.0:
        assert sampler.init_noise_sigma == float(ref.init_noise_sigma)
        latents = start_noise * sampler.init_noise_sigma
        ref_latents = start_noise * ref.init_noise_sigma
    else:
        if len(sampler.timesteps) == 0:  # int(num_steps * strength) == 0: nothing to do
            return
        x0 = 0.5 * torch.randn(SHAPE, generator=g)  # "encoded image" latents
        latents = sampler.add_noise(x0, start_noise, sampler.timesteps[0])
        ref_latents = ref.add_noise(x0, start_noise, ref_timesteps[:1].repeat(SHAPE[0]))
    assert max_diff(latents, ref_latents) <= TOL

    for i, (t, ref_t) in enumerate(zip(sampler.timesteps, ref_timesteps, strict=True)):
        model_input = sampler.scale_model_input(latents, t)
        assert max_diff(model_input, ref.scale_model_input(ref_latents, ref_t)) <= TOL
        eps = fake_eps(model_input, int(t), model_extra[i])

        inputs = (eps.clone(), latents.clone(), step_noise[i].clone())
        new_latents, x0_step = sampler.step(eps, t, latents, noise=step_noise[i])
        x0_pred = sampler.predict_x0(eps, t, latents)
        for before, after in zip(inputs, (eps, latents, step_noise[i]), strict=True):
            assert torch.equal(before, after), "step modified its inputs"

        current["noise"] = step_noise[i]
        kwargs = {"eta": sampler.eta, "variance_noise": step_noise[i]} if case.startswith("ddim") else {}
        out = ref.step(eps, ref_t, ref_latents, **kwargs)
        assert max_diff(new_latents, out.prev_sample) <= TOL, f"step {i} (t={int(t)})"
        assert max_diff(x0_pred, out.pred_original_sample) <= TOL, f"predict_x0 at step {i} (t={int(t)})"
        assert max_diff(x0_step, out.pred_original_sample) <= TOL, f"pred_original_sample at step {i}"
        latents, ref_latents = new_latents, out.prev_sample

    assert torch.isfinite(latents).all()


@pytest.mark.parametrize("case", ["ddpm", "ddim_eta", "euler_a"])
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_same_generator_same_draws(case, strength):
    """Without `noise=`, a sampler draws torch.randn from the generator exactly when and as diffusers does."""
    sampler, ref = make_pair(case)
    assert sampler.needs_noise
    sampler.set_timesteps(10, strength=strength)
    ref_timesteps = reference_timesteps(ref, 10, strength)
    latents = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)) * sampler.init_noise_sigma
    ref_latents = latents.clone()
    g, ref_g = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for t, ref_t in zip(sampler.timesteps, ref_timesteps, strict=True):
        eps = fake_eps(sampler.scale_model_input(latents, t), int(t), torch.zeros(SHAPE))
        ref.scale_model_input(ref_latents, ref_t)
        latents = sampler.step(eps, t, latents, generator=g).prev_sample
        kwargs = {"eta": sampler.eta} if case.startswith("ddim") else {}
        ref_latents = ref.step(eps, ref_t, ref_latents, generator=ref_g, **kwargs).prev_sample
        assert max_diff(latents, ref_latents) <= TOL
    assert torch.equal(g.get_state(), ref_g.get_state())  # the same number of draws


# ---------------------------------------------------------------------------------------------------------------------
# add_noise and scale_model_input on their own


@pytest.mark.parametrize("case", CASES)
def test_add_noise_per_sample_timesteps(case):
    sampler, ref = make_pair(case)
    sampler.set_timesteps(50)
    ref.set_timesteps(50)  # no begin index: diffusers' Euler looks each t up
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.randn((4, 4, 8, 8), generator=g), torch.randn((4, 4, 8, 8), generator=g)
    picks = [0, 13, 37, 49]
    ours = sampler.add_noise(x0, noise, sampler.timesteps[picks])
    theirs = ref.add_noise(x0, noise, ref.timesteps[picks])
    assert max_diff(ours, theirs) <= TOL
    for k, p in enumerate(picks):  # one int timestep gives the same as the batch
        assert max_diff(sampler.add_noise(x0[k : k + 1], noise[k : k + 1], int(sampler.timesteps[p])), ours[k]) <= TOL


@pytest.mark.parametrize("case", ["ddpm", "ddim"])
def test_add_noise_any_timestep(case):
    sampler, ref = make_pair(case)
    g = torch.Generator().manual_seed(4)
    x0, noise = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    for t in [0, 1, 500, 998, 999]:
        theirs = ref.add_noise(x0, noise, torch.tensor([t, t]))
        assert max_diff(sampler.add_noise(x0, noise, t), theirs) <= TOL


@pytest.mark.parametrize("case", ["ddpm", "ddim"])
def test_scale_model_input_is_identity_for_ddpm_ddim(case):
    sampler, _ = make_pair(case)
    sampler.set_timesteps(10)
    x = torch.randn(SHAPE)
    assert torch.equal(sampler.scale_model_input(x, sampler.timesteps[0]), x)


# ---------------------------------------------------------------------------------------------------------------------
# interface details


def test_registry_and_flags():
    assert list(SAMPLERS) == ["ddpm", "ddim", "euler", "euler_a", "pndm", "dpmpp_2m", "unipc"]
    for name in SAMPLERS:
        sampler = get_sampler(name)
        assert sampler.name == name
        assert sampler.timesteps.dtype == torch.long
    assert get_sampler("ddpm").needs_noise
    assert not get_sampler("ddim").needs_noise
    assert get_sampler("ddim", eta=0.5).needs_noise
    assert not get_sampler("euler").needs_noise
    assert get_sampler("euler_a").needs_noise
    assert not any(get_sampler(name).needs_noise for name in ["pndm", "dpmpp_2m", "unipc"])
    assert get_sampler("ddpm").init_noise_sigma == get_sampler("ddim").init_noise_sigma == 1.0


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_dtype_is_kept(name):
    sampler = get_sampler(name)
    sampler.set_timesteps(4)
    t = sampler.timesteps[0]
    x = torch.randn(SHAPE, dtype=torch.bfloat16)
    eps = torch.randn(SHAPE, dtype=torch.bfloat16)
    out = sampler.step(eps, t, x, generator=torch.Generator().manual_seed(0))
    assert out.prev_sample.dtype == out.pred_original_sample.dtype == torch.bfloat16
    assert sampler.predict_x0(eps, t, x).dtype == torch.bfloat16
    assert sampler.scale_model_input(x, t).dtype == torch.bfloat16
    assert sampler.add_noise(x, eps, t).dtype == torch.bfloat16


def test_unknown_sampler_lists_known_ones():
    with pytest.raises(ValueError) as err:
        get_sampler("x")
    assert str(err.value) == "unknown sampler 'x'; known: ddpm, ddim, euler, euler_a, pndm, dpmpp_2m, unipc"
    with pytest.raises(ValueError, match="unknown sampler None"):
        get_sampler(None)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_bad_arguments(name):
    sampler = get_sampler(name)
    for bad_steps in [0, -3, 2.5, 1001]:
        with pytest.raises(ValueError, match="num_steps"):
            sampler.set_timesteps(bad_steps)
    for bad_strength in [1.5, -0.1, float("nan")]:
        with pytest.raises(ValueError, match="strength"):
            sampler.set_timesteps(10, strength=bad_strength)
    with pytest.raises((RuntimeError, ValueError), match="set_timesteps"):
        sampler.step(torch.zeros(SHAPE), 981, torch.zeros(SHAPE))  # no timesteps yet
    sampler.set_timesteps(10)
    with pytest.raises(ValueError, match="timesteps must lie"):
        sampler.add_noise(torch.zeros(SHAPE), torch.zeros(SHAPE), 1000)


@pytest.mark.parametrize("name", ["ddpm", "euler_a"])
def test_noise_of_the_wrong_shape(name):
    sampler = get_sampler(name)
    sampler.set_timesteps(10)
    with pytest.raises(ValueError, match="shape"):
        sampler.step(torch.zeros(SHAPE), sampler.timesteps[0], torch.zeros(SHAPE), noise=torch.zeros(1, 4, 8, 8))


def test_max_steps_depend_on_offset():
    get_sampler("ddpm").set_timesteps(1000)  # 999 ... 0
    for name in ["ddim", "euler", "euler_a", "pndm"]:  # offset 1: 1000 steps would need timestep 1000
        get_sampler(name).set_timesteps(999)
        with pytest.raises(ValueError, match="from 1 to 999"):
            get_sampler(name).set_timesteps(1000)
    for name in ["dpmpp_2m", "unipc"]:  # T // (n + 1) spacing: 999 steps would need timestep 1000
        get_sampler(name).set_timesteps(998)
        assert int(get_sampler(name).max_steps) == 998
        with pytest.raises(ValueError, match="from 1 to 998"):
            get_sampler(name).set_timesteps(999)


def test_bad_eta_and_options():
    with pytest.raises(ValueError, match="eta"):
        get_sampler("ddim", eta=-0.1)
    with pytest.raises(ValueError, match="use_karras_sigmas must be True or False"):
        get_sampler("dpmpp_2m", use_karras_sigmas="yes")


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("euler", {"eta": 0.5}, "sampler 'euler' has no option 'eta'; it takes no options"),
        ("dpmpp_2m", {"eta": 0.5}, "sampler 'dpmpp_2m' has no option 'eta'; its options: use_karras_sigmas"),
        ("ddim", {"eta": 0.1, "steps": 3}, "sampler 'ddim' has no option 'steps'; its options: eta"),
        (
            "ddim",
            {"use_karras_sigmas": True},
            "sampler 'ddim' has no option 'use_karras_sigmas'; its options: eta "
            "(Karras sigmas are an option of dpmpp_2m, unipc)",
        ),
        (
            "pndm",
            {"use_karras_sigmas": False},
            "sampler 'pndm' has no option 'use_karras_sigmas'; it takes no options "
            "(Karras sigmas are an option of dpmpp_2m, unipc)",
        ),
    ],
)
def test_an_option_the_sampler_does_not_take_is_a_one_line_error(name, options, message):
    """Issue 10: an option was silently dropped (eta) or a raw TypeError; now a ValueError that lists the options."""
    with pytest.raises(ValueError) as err:
        get_sampler(name, **options)
    assert str(err.value) == message


def test_euler_rejects_a_foreign_timestep():
    sampler = get_sampler("euler")
    sampler.set_timesteps(10)
    with pytest.raises(ValueError, match="not one of"):
        sampler.step(torch.zeros(SHAPE), 500, torch.zeros(SHAPE))

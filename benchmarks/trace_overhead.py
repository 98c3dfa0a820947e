"""What tracing costs: the embedded model's 50-step generation untraced, traced, and traced with everything.

Goals: a trace of the aggregated cross-attention (the default reduction) costs <= 1.15x the untraced run, and
an untraced run is the same before and after a trace (nothing is left behind; hook points with no listener are
one Python call each, and no attention probability is computed). The modes are interleaved rep by rep, so that a
busy machine slows them alike; medians are reported.

It also prints how many bytes a full trace of SD 1.5 at 512x512 with 50 steps takes with the default records and
reductions, computed from shapes on the meta device (no weights needed). Goal: under 200 MB.

    .venv/bin/python benchmarks/trace_overhead.py [--reps 7] [--threads 2] [--random]

--random uses random weights of the embedded model's configuration (the timing is the same; use it before the
embedded model has been trained).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import sdviz
from sdviz.config import SD15, TOY
from sdviz.hooks import HookPoint
from sdviz.tracing import estimate

PROMPT = "a large red circle above a small blue square"
MODES = {
    "untraced": None,
    "cross-attention (aggregated)": {"record": ["cross_attention"]},
    "everything": {"record": "all"},
    "untraced, after traces": None,
}


def _pipeline(random: bool):
    from sdviz.pipeline import StableDiffusion, load_pipeline
    from sdviz.weights import build_models

    if random:
        torch.manual_seed(0)
        return StableDiffusion(build_models(TOY)), "random TOY weights"
    return load_pipeline(), "the embedded model"


def _run(pipe, options, seed: int, kwargs: dict) -> float:
    start = time.perf_counter()
    if options is None:
        pipe.generate(PROMPT, seed=seed, **kwargs)
    else:
        with sdviz.trace(pipe, **options):
            pipe.generate(PROMPT, seed=seed, **kwargs)
    return time.perf_counter() - start


def _hook_point_cost(pipe, kwargs: dict) -> tuple[int, float]:
    """(hook point calls in one generation, seconds one listener-less hook point call takes)."""
    calls = 0

    def count(module, args, output):
        nonlocal calls
        calls += isinstance(module, HookPoint)

    handle = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        pipe.generate(PROMPT, seed=0, **{**kwargs, "steps": 2})
    finally:
        handle.remove()
    per_step = calls / 2
    h, x = HookPoint(), torch.zeros(1)
    n = 20000
    start = time.perf_counter()
    for _ in range(n):
        h(x)
    one = (time.perf_counter() - start) / n
    return int(per_step * kwargs["steps"]), one


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--random", action="store_true", help="random weights of the TOY configuration")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    pipe, what = _pipeline(args.random)
    kwargs = dict(steps=50, cfg_scale=5.0, sampler="ddim", progress=False)
    for options in MODES.values():  # warm-up: first calls, the meta-device layout, the latent RGB fit
        _run(pipe, options, 0, kwargs)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for rep in range(args.reps):
        for mode, options in MODES.items():
            times[mode].append(_run(pipe, options, rep, kwargs))
    base, base_min = statistics.median(times["untraced"]), min(times["untraced"])
    size = pipe.config.image_size
    print(f"{what}, {size}x{size}, 50 ddim steps, cfg 5, {args.threads} threads, {args.reps} interleaved reps")
    print(f"  {'':<30} {'median':>8} {'ratio':>7}   {'min':>7} {'ratio':>7}   {'max':>7}")
    for mode, ts in times.items():
        med, low = statistics.median(ts), min(ts)
        print(f"  {mode:<30} {med:7.3f}s {med / base:6.3f}x   {low:6.3f}s {low / base_min:6.3f}x   {max(ts):6.3f}s")
    cross = statistics.median(times["cross-attention (aggregated)"]) / base
    again = statistics.median(times["untraced, after traces"]) / base
    calls, one = _hook_point_cost(pipe, kwargs)
    print(f"  goal: aggregated cross-attention <= 1.15x -> {cross:.3f}x, {'met' if cross <= 1.15 else 'NOT met'}")
    print(f"  untraced after traces / before: {again:.3f}x (identical within noise: {abs(again - 1) < 0.05})")
    print(
        f"  hook points with no listener: {calls} calls per generation x {one * 1e6:.2f} us = "
        f"{calls * one * 1e3:.1f} ms ({calls * one / base:.1%} of the untraced run)"
    )

    est = estimate(SD15, height=512, width=512, num_steps=50)
    print("\nSD 1.5, 512x512, 50 steps, guided, default records and reductions (from shapes, no weights):")
    print(est)
    print(f"  goal: under 200 MB -> {est.total / 1e6:.1f} MB, {'met' if est.total < 200e6 else 'NOT met'}")
    keep = estimate(SD15, height=512, width=512, num_steps=50, keep=["step"])
    print(f"  (cross-attention kept per step as well: {keep.total / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()

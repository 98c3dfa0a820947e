"""How long one picture takes with the embedded model: 64x64 text-to-image with guidance (cfg 5), 2 CPU threads.

Two settings, timed in alternation in one run (so that a busy machine slows both alike):

    DDIM, 50 steps              the embedded model's evaluation setting; goal: under 1.5 s
    DPM-Solver++(2M), 20 steps  goal: under 0.6 s, with colour and shape accuracy within 2 points of DDIM's at 50

The accuracies are not measured here (100 held-out pictures per setting take minutes): they are read from the
measured record `readme-images/sampler_quality.json` (`python -m sdviz.viz.sampler_figures --measure`).
Also prints the time of one UNet call and of the VAE decode, to show where the time goes.

    .venv/bin/python benchmarks/toy_generate.py [--reps 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sdviz.pipeline import load_pipeline

SETTINGS = {  # label -> (sampler, steps, goal in seconds)
    "ddim 50": ("ddim", 50, 1.5),
    "dpmpp_2m 20": ("dpmpp_2m", 20, 0.6),
}
ACCURACY_GOAL = 2.0  # points of colour and shape accuracy that dpmpp_2m 20 may lose against ddim 50


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    pipe = load_pipeline()
    prompt = "a large red circle above a small blue square"
    times: dict[str, list[float]] = {label: [] for label in SETTINGS}
    for rep in range(-1, args.reps):  # rep -1: warm-up, not counted
        for label, (sampler, steps, _) in SETTINGS.items():
            start = time.perf_counter()
            pipe.generate(prompt, seed=max(rep, 0), steps=steps, cfg_scale=5.0, sampler=sampler, progress=False)
            if rep >= 0:
                times[label].append(time.perf_counter() - start)

    size = pipe.config.image_size
    latent = size // pipe.config.vae.downsampling_factor
    x, ctx = torch.randn(2, 4, latent, latent), torch.randn(2, 77, pipe.config.unet.context_dim)
    with torch.no_grad():
        unet = statistics.median(_time(lambda: pipe.unet(x, torch.tensor([500, 500]), ctx)) for _ in range(20))
        decode = statistics.median(_time(lambda: pipe.vae.decode(x[:1])) for _ in range(5))

    print(f"embedded model, {size}x{size}, cfg 5, {args.threads} threads, {args.reps} reps (median, min, max)")
    for label, (_, _, goal) in SETTINGS.items():
        t = times[label]
        met = "met" if statistics.median(t) < goal else "NOT met"
        print(f"  {label:12s} one picture: {statistics.median(t):.3f} s ({min(t):.3f}, {max(t):.3f}); "
              f"goal < {goal} s: {met}")  # fmt: skip
    print(f"  one guided UNet call (batch 2): {unet * 1000:.1f} ms; VAE decode: {decode * 1000:.1f} ms")
    _print_accuracy()


def _print_accuracy() -> None:
    """Colour / shape / position accuracy of both settings, from the measured record."""
    from sdviz.viz.sampler_figures import QUALITY_JSON, load_quality

    if not QUALITY_JSON.is_file():
        print(f"  accuracy: no measured record at {QUALITY_JSON}")
        return
    runs = {run["label"]: run for run in load_quality()["runs"]}
    rates = {label: runs[sampler]["rates"][str(steps)] for label, (sampler, steps, _) in SETTINGS.items()}
    for label, r in rates.items():
        print(f"  {label:12s} accuracy (held-out prompts): colour {100 * r['colour']:.0f}%, "
              f"shape {100 * r['shape']:.0f}%, position {100 * r['position']:.0f}%")  # fmt: skip
    base, fast = rates["ddim 50"], rates["dpmpp_2m 20"]
    loss = max(100 * (base[k] - fast[k]) for k in ("colour", "shape"))  # negative: dpmpp_2m 20 does better
    met = "met" if loss <= ACCURACY_GOAL else "NOT met"
    print(f"  colour/shape points lost by dpmpp_2m 20 against ddim 50: {loss:+.1f} (goal <= +2): {met}")


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()

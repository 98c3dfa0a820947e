"""How long one picture takes with the embedded model: 64x64 text-to-image, 50 steps, guidance, 2 CPU threads.

Goal: under 1.5 s. Also prints the time of one UNet call and of the VAE decode, to show where the time goes.

    .venv/bin/python benchmarks/toy_generate.py [--reps 7] [--threads 2] [--sampler ddim]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sdviz.pipeline import load_pipeline


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sampler", default="ddim")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    pipe = load_pipeline()
    prompt = "a large red circle above a small blue square"
    kwargs = dict(steps=50, cfg_scale=5.0, sampler=args.sampler, progress=False)
    pipe.generate(prompt, seed=0, **kwargs)  # warm-up
    totals = []
    for rep in range(args.reps):
        start = time.perf_counter()
        pipe.generate(prompt, seed=rep, **kwargs)
        totals.append(time.perf_counter() - start)

    size = pipe.config.image_size
    latent = size // pipe.config.vae.downsampling_factor
    x, ctx = torch.randn(2, 4, latent, latent), torch.randn(2, 77, pipe.config.unet.context_dim)
    with torch.no_grad():
        unet = statistics.median(_time(lambda: pipe.unet(x, torch.tensor([500, 500]), ctx)) for _ in range(20))
        decode = statistics.median(_time(lambda: pipe.vae.decode(x[:1])) for _ in range(5))
    print(f"embedded model, {size}x{size}, 50 {args.sampler} steps, cfg 5, {args.threads} threads, {args.reps} reps")
    print(f"  one picture: median {statistics.median(totals):.3f} s (min {min(totals):.3f}, max {max(totals):.3f})")
    print(f"  one guided UNet call (batch 2): {unet * 1000:.1f} ms; VAE decode: {decode * 1000:.1f} ms")
    print(f"  goal: < 1.5 s -> {'met' if statistics.median(totals) < 1.5 else 'NOT met'}")


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()

"""sdviz's UNet against diffusers' UNet2DConditionModel on identical SD 1.5 weights, side by side in one process.

One denoising step each on a 2x4x32x32 latent (a guided 256x256 image) with a 2x77x768 context, 2 CPU threads,
float32, alternating sdviz / diffusers so that both see the same machine state; prints the median seconds of each
and the ratio sdviz / diffusers (goal: <= 1.00).

    .venv/bin/python benchmarks/unet_vs_diffusers.py [--reps 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference import diffusers_unet  # noqa: E402

from sdviz.config import SD15  # noqa: E402
from sdviz.models.unet import UNet  # noqa: E402
from sdviz.weights import from_diffusers  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    reference = diffusers_unet(SD15).eval()
    with torch.device("meta"):
        ours = UNet(SD15.unet)
    ours.load_state_dict(from_diffusers("unet", reference.state_dict()), assign=True)
    ours.eval()

    x, t, ctx = torch.randn(2, 4, 32, 32), torch.tensor([500, 500]), torch.randn(2, 77, 768)
    with torch.no_grad():
        err = (ours(x, t, ctx) - reference(x, t, ctx).sample).abs().max().item()  # also the warm-up
        times: dict[str, list[float]] = {"sdviz": [], "diffusers": []}
        for _ in range(args.reps):
            for name, run in (("sdviz", lambda: ours(x, t, ctx)), ("diffusers", lambda: reference(x, t, ctx).sample)):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"SD 1.5 UNet, one step on 2x4x32x32, {args.threads} threads, {args.reps} reps (max abs diff {err:.2e})")
    for name, m in med.items():
        print(f"  {name:10s} median {m:.3f} s   (min {min(times[name]):.3f}, max {max(times[name]):.3f})")
    print(f"  ratio sdviz / diffusers = {med['sdviz'] / med['diffusers']:.3f}  (goal <= 1.00)")


if __name__ == "__main__":
    main()

"""What an intervention costs: the embedded model's generation plain, and inside each kind of `sdviz.causal` block.

Goal: an intervened generation costs <= 1.5x a plain one on 2 cores. The modes are interleaved rep by rep, so that a
busy machine slows them alike; medians are reported, with the ratio to the plain run. The patch is timed without
the recording of its source run (recorded once, before the reps: a sweep records one clean run for many patches).

    .venv/bin/python benchmarks/intervention_overhead.py [--reps 5] [--threads 2] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import sdviz
from sdviz.causal import AblateBlock, AblateCrossAttention, AblateHead, AblateWord, Patch, PatchText, intervene, record

MID = "unet.mid_block.attentions.0.hook_block_out"
CLEAN, CORRUPT = "a large red circle above a small blue square", "a large green circle above a small blue square"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = sdviz.load_pipeline()
    kw = dict(seed=1, steps=args.steps, sampler="ddim", cfg_scale=5.0, progress=False)
    clean = record(pipe, CLEAN, hooks=MID, **kw)
    clean_all = record(pipe, CLEAN, **kw)
    modes = {
        "plain": lambda: [],
        "AblateWord zero, every layer and step": lambda: [AblateWord("red")],
        "AblateWord padding, every layer and step": lambda: [AblateWord("red", mode="padding")],
        "AblateHead 0, every cross-attention layer": lambda: [AblateHead(None, 0)],
        "AblateCrossAttention, every layer": lambda: [AblateCrossAttention()],
        "AblateBlock mid, every step": lambda: [AblateBlock("unet.mid_block")],
        "Patch a block, first half of the steps": lambda: [Patch(clean, MID, window=0.5)],
        "Patch every UNet hook point, every step": lambda: [Patch(clean_all)],
        "PatchText layer 0, colour token": lambda: [PatchText(CLEAN, CORRUPT, 0, [3])],
    }
    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.reps):
        for mode, make in modes.items():
            start = time.perf_counter()
            with intervene(pipe, *make()):
                pipe.generate(CORRUPT if "Patch" in mode else CLEAN, **kw)
            times[mode].append(time.perf_counter() - start)
    base = statistics.median(times["plain"])
    print(f"embedded model, {args.steps} DDIM steps, cfg 5, {args.threads} threads, median of {args.reps} reps")
    for mode, ts in times.items():
        t = statistics.median(ts)
        print(f"  {mode:45s} {t:7.3f} s  {t / base:5.2f}x")


if __name__ == "__main__":
    main()

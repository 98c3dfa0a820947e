"""`sdviz sae ...`: collect activations, train an SAE, grade its features, check them causally.

    sdviz sae collect runs/sae/train --pairs 240 --split train --budget-mb 500 --threads 1
    sdviz sae collect runs/sae/held_out --pairs 100 --split held_out --budget-mb 300 --threads 1
    sdviz sae train runs/sae/train runs/sae/up0 --point unet.up_blocks.0.attentions.1.hook_block_out
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import numpy as np

# The hook points the shipped SAEs are trained on: the second transformer block of the first up level (the analogue of
# SAeUron's up_blocks.1.attentions.1 in SD 1.x: the lowest-resolution up level with attention), and the last one.
POINTS = (
    "unet.up_blocks.0.attentions.1.hook_block_out",  # (B, 96, 8, 8)
    "unet.up_blocks.1.attentions.1.hook_block_out",  # (B, 48, 16, 16)
)


def world_pairs(n: int, split: str = "train", seed: int = 0) -> list[tuple[str, int]]:
    """`n` (prompt, seed) pairs of the toy world: random captions of `split` ("train": combinations training showed;
    "held_out": `world.held_out_prompts`, the evaluation's pairs), each with a generation seed."""
    from sdviz.toy import world

    if split == "held_out":
        return world.held_out_prompts(n, seed)
    if split != "train":
        raise ValueError(f"split must be 'train' or 'held_out', not {split!r}")
    rng = np.random.default_rng([seed, 26])
    return [(world.random_spec(rng, "train").caption(), int(rng.integers(2**31 - 1))) for _ in range(n)]


def _collect(a: argparse.Namespace) -> int:
    from sdviz.concepts.collect import CollectSettings, collect
    from sdviz.pipeline import load_pipeline

    pipe = load_pipeline(a.model)
    settings = CollectSettings(a.steps, a.cfg, a.sampler, a.every)
    out = collect(pipe, a.point or list(POINTS), world_pairs(a.pairs, a.split, a.seed), a.out, settings, a.budget_mb)
    print(f"collected into {out}")
    return 0


def _train(a: argparse.Namespace) -> int:
    from sdviz.concepts.collect import Activations
    from sdviz.concepts.train import TrainSettings, train

    acts = Activations(a.collection)
    point = a.point or POINTS[0]
    if a.quick:
        settings = TrainSettings.quick()
    else:
        settings = TrainSettings(expansion=a.expansion, k=a.k, steps=a.steps, batch=a.batch, lr=a.lr)
    rows = acts.load(point)["x"]
    sae = train(rows, a.out, settings, point, acts.record["model"])
    print(json.dumps(sae.info["train"]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sdviz sae", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="generate pictures and store activations at hook points")
    c.add_argument("out")
    c.add_argument("--model", default=None, help="weights (default: the embedded model)")
    c.add_argument("--point", action="append", help=f"hook point (repeatable; default {', '.join(POINTS)})")
    c.add_argument("--pairs", type=int, default=240)
    c.add_argument("--split", default="train", choices=("train", "held_out"))
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--steps", type=int, default=20)
    c.add_argument("--cfg", type=float, default=5.0)
    c.add_argument("--sampler", default="ddim")
    c.add_argument("--every", type=int, default=1)
    c.add_argument("--budget-mb", type=float, default=1000.0)
    c.add_argument("--threads", type=int, default=None)
    c.set_defaults(func=_collect)
    t = sub.add_parser("train", help="train a TopK SAE on a collection (resumes a run folder)")
    t.add_argument("collection")
    t.add_argument("out")
    t.add_argument("--point", default=None, help=f"hook point (default {POINTS[0]})")
    t.add_argument("--expansion", type=int, default=16)
    t.add_argument("--k", type=int, default=16)
    t.add_argument("--steps", type=int, default=3000)
    t.add_argument("--batch", type=int, default=4096)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--quick", action="store_true", help="a few seconds' run (tests)")
    t.add_argument("--threads", type=int, default=None)
    t.set_defaults(func=_train)
    a = p.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    try:
        return a.func(a)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"sdviz sae {a.command}: error: {e}")
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

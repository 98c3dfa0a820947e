"""Are the attention maps trustworthy? Compare them with ground truth, which only a synthetic world can give.

The embedded model draws flat-coloured shapes on a plain background, so the pixels of each object it was asked for
can be read off a generated picture exactly (`attention_scores.py` says how, and what each metric means). The check:

1. Generate each of the 100 held-out (prompt, seed) pairs of the toy world (`world.held_out_prompts`: half of them
   one object, half two) inside a trace that records what the word-map method needs (`Aggregator.needs`), with the
   evaluation's settings (`evaluate.EVAL`: 50 DDIM steps, cfg 5).
2. For every object the prompt names, take the map of its noun (the shape word, e.g. "circle"; the object's own
   occurrence when a prompt names two circles, for every method), upsampled to 64x64, normalise it to [0, 1] and
   threshold it at the method's tau: 0.4 for "sdviz" and "daam" (DAAM's choice, fixed in advance); "best" carries
   the one chosen on the training split by the ladder.
3. Compare with the object's colour segmentation in the generated picture (`judge.iou`); the same for the colour
   word's map, their mean, and two baselines that know nothing of attention (the whole picture; a centred disc of
   the object's area). Objects the model did not draw have no ground truth and are skipped (and counted).

The goal is a noun-map mIoU of 0.50 for the default method. `--ladder` runs the other tool instead, the ablation
ladder of the aggregators (`attention_ladder.py`); this module's `main` is the command line of both.

    sdviz validate-attention [MODEL] [--method best] [--n 100] [--steps 50] [--cfg 5] [--json report.json]
    sdviz validate-attention --ladder [--train 40] [--threads 1] [--out sdviz/toy/attention_ladder.md]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdviz.toy import world
from sdviz.toy.attention_ladder import format_ladder, ladder
from sdviz.toy.attention_scores import Scores, f3, normalise, scenes
from sdviz.toy.evaluate import EVAL, EvalSettings, load_model
from sdviz.toy.judge import iou
from sdviz.tracing import aggregate
from sdviz.tracing.aggregate import Aggregator

GOAL = 0.50
SWEEP = (0.2, 0.3, 0.4, 0.5, 0.6)


def _disc(shape: tuple[int, int], area: float) -> np.ndarray:
    """A disc of the given area in the centre of a picture: a baseline that knows the object's size, not its place."""
    y, x = np.mgrid[: shape[0], : shape[1]]
    r2 = area / np.pi
    return (y - (shape[0] - 1) / 2) ** 2 + (x - (shape[1] - 1) / 2) ** 2 <= r2


@torch.no_grad()
def validate(
    model: Any = None,
    n: int = 100,
    seed: int = 0,
    steps: int = EVAL.steps,
    cfg_scale: float = EVAL.cfg_scale,
    sampler: str = EVAL.sampler,
    threshold: float | None = None,
    progress: bool = True,
    method: str | Aggregator | None = "best",
) -> dict[str, Any]:
    """Run the check (see the module docstring) with one word-map method (default "best", the one measured best on
    this model; `Trace.word_map`'s default is "sdviz") and return the report: mIoU for noun, colour and phrase maps,
    the metrics per scene type, the threshold sweep, the baselines, and per-object details. `threshold`: default the
    method's own."""
    agg = aggregate.get(method)
    threshold = agg.threshold if threshold is None else threshold
    settings = EvalSettings(steps, cfg_scale, sampler)
    pipe = load_model(model)
    rows, skipped, seconds = [], 0, []
    scores = Scores()
    pairs = world.held_out_prompts(n, seed)
    for scene in scenes(pipe, pairs, agg.needs(), settings, progress, desc="validate"):
        seconds.append(scene.seconds)
        skipped += scene.skipped
        if not scene.targets:
            continue
        maps = scene.trace.token_maps(0, method=agg)  # (77, H, W)
        for target in scene.targets:
            truth = target.truth
            noun_map, colour_map = maps[target.positions].mean(0), maps[target.colour_positions].mean(0)
            noun, adjective, phrase = normalise(noun_map), normalise(colour_map), normalise(noun_map + colour_map)
            scores.add(scene, target, noun, threshold)
            rows.append(
                {
                    "prompt": scene.prompt,
                    "seed": scene.seed,
                    "object": target.name,
                    "area": int(truth.sum()),
                    "noun": iou(noun > threshold, truth),
                    "colour": iou(adjective > threshold, truth),
                    "phrase": iou(phrase > threshold, truth),
                    "sweep": {str(tau): iou(noun > tau, truth) for tau in SWEEP},
                    "whole_image": iou(np.ones_like(truth), truth),
                    "centre_disc": iou(_disc(truth.shape, truth.sum()), truth),
                }
            )
    if not rows:
        raise RuntimeError(f"none of the {n} generated pictures drew any of its objects: nothing to compare with")
    report = {
        "method": agg.name,
        "miou": {k: float(np.mean([r[k] for r in rows])) for k in ("noun", "colour", "phrase")},
        "metrics": scores.summary(),
        "sweep": {tau: float(np.mean([r["sweep"][tau] for r in rows])) for tau in map(str, SWEEP)},
        "baseline": {k: float(np.mean([r[k] for r in rows])) for k in ("whole_image", "centre_disc")},
        "objects": len(rows),
        "skipped_not_drawn": skipped,
        "threshold": threshold,
        "goal": GOAL,
        "passed": None,
        "seconds_per_image": float(np.median(seconds)),
        "settings": {"n": n, "seed": seed, **settings.generate_kwargs()},
        "rows": rows,
    }
    report["passed"] = report["miou"]["noun"] >= GOAL
    return report


def report_text(r: dict[str, Any]) -> str:
    """The plain check's report, as printed."""
    m = r["metrics"]
    lines = [
        f"method: {r['method']}; objects compared: {r['objects']} (skipped, not drawn: {r['skipped_not_drawn']})",
        f"mIoU, noun maps (tau={r['threshold']}):   {r['miou']['noun']:.3f}   goal >= {GOAL:.2f}",
        f"  one-object scenes: {f3(m['single_miou'])}; two-object scenes, per object: {f3(m['pair_iou'])}",
        f"  2-class mIoU (mean threshold, ImageNet-Segmentation protocol): {f3(m['two_class_miou'])}",
        f"  leakage onto the other object (two-object scenes): {f3(m['leakage'])}",
        f"mIoU, colour-word maps:          {r['miou']['colour']:.3f}",
        f"mIoU, mean of colour and noun:   {r['miou']['phrase']:.3f}",
        "threshold sweep (noun): " + ", ".join(f"{t}: {v:.3f}" for t, v in r["sweep"].items()),
        f"baseline, the whole picture:     {r['baseline']['whole_image']:.3f}",
        f"baseline, a centred disc of the object's area: {r['baseline']['centre_disc']:.3f}",
        f"seconds per traced image:        {r['seconds_per_image']:.2f}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """`sdviz validate-attention [MODEL] [--method M] [--n 100] [--seed 0] [--steps 50] [--cfg 5] [--sampler ddim]
    [--threads N] [--out FILE] [--json FILE] [--ladder [--train 40] [--timing 5]]`"""
    p = argparse.ArgumentParser(
        prog="sdviz validate-attention",
        description="Compare the embedded model's cross-attention word maps with ground-truth object masks (mIoU).",
    )
    p.add_argument("model", nargs="?", default=None, help="weights folder (default: the shipped model)")
    p.add_argument("--method", default="best", help=f"word-map method: {', '.join(aggregate.METHODS)} (default best)")
    p.add_argument("--n", type=int, default=100, help="held-out (prompt, seed) pairs")
    p.add_argument("--seed", type=int, default=0, help="which fixed list of held-out pairs")
    p.add_argument("--steps", type=int, default=EVAL.steps)
    p.add_argument("--cfg", type=float, default=EVAL.cfg_scale)
    p.add_argument("--sampler", default=EVAL.sampler)
    p.add_argument("--threshold", type=float, default=None, help="default: the method's (0.4 for sdviz and daam)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--ladder", action="store_true", help="measure the aggregators one trick at a time")
    p.add_argument("--train", type=int, default=40, help="--ladder: training pictures for its choices")
    p.add_argument("--timing", type=int, default=5, help="--ladder: pictures generated once per trace plan, timed")
    p.add_argument("--out", default=None, help="also write the printed report here (e.g. attention_ladder.md)")
    p.add_argument("--json", default=None, help="write the full report (JSON) here")
    a = p.parse_args(argv)
    if a.method not in aggregate.METHODS:
        p.error(f"unknown --method {a.method!r}; known: {', '.join(aggregate.METHODS)}")
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.ladder:
        r = ladder(a.model, a.n, a.train, a.seed, a.steps, a.cfg, a.sampler, a.timing)
        text, status = format_ladder(r), 0
    else:
        r = validate(a.model, a.n, a.seed, a.steps, a.cfg, a.sampler, a.threshold, method=a.method)
        text, status = report_text(r), 0 if r["passed"] else 1
    print(text, end="")
    if a.out:
        Path(a.out).write_text(text)
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=2) + "\n")
    return status


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

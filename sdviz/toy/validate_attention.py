"""Are the attention maps trustworthy? Compare them with ground truth, which only a synthetic world can give.

On real Stable Diffusion nobody knows which pixels "the dog" is, except by drawing masks by hand (DAAM, Tang et al.
2022, did: its noun maps reach 0.59-0.65 mIoU against human masks). The embedded model draws flat-coloured shapes on
a plain background, so the pixels of "the red circle" in a *generated* picture can be read off exactly: they are the
red ones (`sdviz.toy.judge.segment`). The check:

1. Generate each of the 100 held-out (prompt, seed) pairs of the toy world inside a trace that records
   cross-attention with the default reduction (sum over heads, layers and steps, as DAAM). The generation loop is
   the evaluation's (`evaluate.held_out_pictures`), which also gives each picture's ground truth.
2. For every object the prompt names, take the map of its noun (the shape word, e.g. "circle"; the right occurrence
   when a prompt names two circles), upsampled to 64x64, normalise it to [0, 1] and threshold it at tau = 0.4
   (DAAM's choice, fixed in advance).
3. Compare with the object's colour segmentation in the generated picture: intersection over union. Objects the
   model did not draw (fewer than `judge.MIN_AREA` pixels of their colour) have no ground truth and are skipped
   (and counted).

The mean over objects is the mIoU; the goal is 0.50. For context the report also gives the colour word's maps, the
mean of colour and noun, a sweep of thresholds, and two baselines a map must beat: the whole picture, and a disc in
the centre of the picture with the object's own area.

    sdviz validate-attention [MODEL] [--n 100] [--steps 50] [--cfg 5] [--sampler ddim] [--out report.json]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdviz.toy import judge, world
from sdviz.toy.evaluate import held_out_pictures

THRESHOLD = 0.4  # DAAM's tau for binarising a normalised map
GOAL = 0.50
SWEEP = (0.2, 0.3, 0.4, 0.5, 0.6)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def normalise(m: torch.Tensor) -> np.ndarray:
    m = m.float().numpy()
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def object_words(words: list[str], spec: world.SceneSpec) -> list[tuple[str, int, int]]:
    """For each object of a scene spec: (colour, index of its colour word, index of its shape word) in `words`
    (`world.word_indices`: the colour word finds the object, its shape word is the first one after it)."""
    indices = world.word_indices(spec, words)
    return [(o.colour, w["colour"], w["shape"]) for o, w in zip(spec.objects, indices, strict=True)]


def _word_map(maps: torch.Tensor, word_index: np.ndarray, i: int) -> torch.Tensor:
    """The mean map of the tokens of word i (a word may be split into several tokens)."""
    return maps[torch.from_numpy(np.flatnonzero(word_index == i))].mean(0)


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
    steps: int = 50,
    cfg_scale: float = 5.0,
    sampler: str = "ddim",
    threshold: float = THRESHOLD,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the check (see the module docstring) and return the report: mIoU for noun, colour and phrase maps, the
    threshold sweep, the baselines, and per-prompt details."""
    rows, skipped, seconds = [], 0, []
    record = {"record": ["cross_attention"]}
    for pic in held_out_pictures(model, n, seed, steps, cfg_scale, sampler, record, progress, desc="validate"):
        seconds.append(pic.seconds)
        size = pic.image.size[1], pic.image.size[0]
        maps = pic.trace.token_maps(0, size)  # (77, H, W)
        e = pic.trace.encodings[0]
        word_index = np.array(e["word_index"])
        min_area = judge.MIN_AREA * size[0] * size[1] / (64 * 64)
        for (colour, ci, si), truth in zip(object_words(e["words"], pic.spec), pic.masks, strict=True):
            if truth.sum() < min_area:
                skipped += 1
                continue
            noun_map, colour_map = _word_map(maps, word_index, si), _word_map(maps, word_index, ci)
            noun, adjective, phrase = normalise(noun_map), normalise(colour_map), normalise(noun_map + colour_map)
            rows.append(
                {
                    "prompt": pic.prompt,
                    "seed": pic.seed,
                    "object": f"{colour} {e['words'][si]}",
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
        "miou": {k: float(np.mean([r[k] for r in rows])) for k in ("noun", "colour", "phrase")},
        "sweep": {tau: float(np.mean([r["sweep"][tau] for r in rows])) for tau in map(str, SWEEP)},
        "baseline": {k: float(np.mean([r[k] for r in rows])) for k in ("whole_image", "centre_disc")},
        "objects": len(rows),
        "skipped_not_drawn": skipped,
        "threshold": threshold,
        "goal": GOAL,
        "passed": None,
        "seconds_per_image": float(np.median(seconds)),
        "settings": {"n": n, "seed": seed, "steps": steps, "cfg_scale": cfg_scale, "sampler": sampler},
        "rows": rows,
    }
    report["passed"] = report["miou"]["noun"] >= GOAL
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """`sdviz validate-attention [MODEL] [--n 100] [--seed 0] [--steps 50] [--cfg 5] [--sampler ddim] [--out FILE]`"""
    p = argparse.ArgumentParser(
        prog="sdviz validate-attention",
        description="Compare the embedded model's cross-attention word maps with ground-truth object masks (mIoU).",
    )
    p.add_argument("model", nargs="?", default=None, help="weights folder (default: the shipped model)")
    p.add_argument("--n", type=int, default=100, help="held-out (prompt, seed) pairs")
    p.add_argument("--seed", type=int, default=0, help="which fixed list of held-out pairs")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--threshold", type=float, default=THRESHOLD)
    p.add_argument("--out", default=None, help="write the full report (JSON) here")
    a = p.parse_args(argv)
    r = validate(a.model, a.n, a.seed, a.steps, a.cfg, a.sampler, a.threshold)
    print(f"objects compared: {r['objects']} (skipped, not drawn: {r['skipped_not_drawn']})")
    print(f"mIoU, noun maps (tau={r['threshold']}):   {r['miou']['noun']:.3f}   goal >= {GOAL:.2f}")
    print(f"mIoU, colour-word maps:          {r['miou']['colour']:.3f}")
    print(f"mIoU, mean of colour and noun:   {r['miou']['phrase']:.3f}")
    print("threshold sweep (noun): " + ", ".join(f"{t}: {v:.3f}" for t, v in r["sweep"].items()))
    print(f"baseline, the whole picture:     {r['baseline']['whole_image']:.3f}")
    print(f"baseline, a centred disc of the object's area: {r['baseline']['centre_disc']:.3f}")
    print(f"seconds per traced image:        {r['seconds_per_image']:.2f}")
    if a.out:
        Path(a.out).write_text(json.dumps(r, indent=2) + "\n")
    return 0 if r["passed"] else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

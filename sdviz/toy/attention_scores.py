"""What the attention check (`validate_attention.py`) and the ablation ladder (`attention_ladder.py`) share: the
scenes, generated pictures with their traces and the true pixels of each object they name, and the scoring of a
word map against those pixels.

On real Stable Diffusion nobody knows which pixels "the dog" is, except by drawing masks by hand (DAAM, Tang et al.
2022, did: its noun maps reach 0.59-0.65 mIoU against human masks). The embedded model draws flat-coloured shapes on
a plain background, so the pixels of "the red circle" in a *generated* picture can be read off exactly: they are the
red ones (`sdviz.toy.judge.segment`). A noun's map (the shape word, e.g. "circle"; the object's own occurrence when
a prompt names two circles), upsampled to 64x64 and normalised to [0, 1], is thresholded at a method's tau and
compared with those pixels. Objects the model did not draw (fewer than `judge.MIN_AREA` pixels of their colour) have
no ground truth and are skipped (and counted).

Metrics, per scene type (one object, two objects; the world has no scenes of three or more), as `Scores.summary`
returns them:

    mIoU          the mean over objects of the foreground IoU (`judge.iou`, thresholded map vs the object's pixels)
    per-object    the same on two-object scenes: does each noun find its own object?
    2-class mIoU  the mean of foreground and background IoU, intersections and unions summed over the split, each map
                  binarised at its own mean: the protocol of the ImageNet-Segmentation papers (Chefer et al. 2021's
                  code, used by ConceptAttention), so that the numbers can be set beside theirs
    leakage       on two-object scenes, the share of a noun's (normalised) map that lies on the *other* object's
                  pixels; a map spread evenly over the picture would put the other object's share of the picture
                  there, 3-10%
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sdviz.toy import judge, world
from sdviz.toy.evaluate import EVAL, EvalSettings, pictures
from sdviz.toy.judge import iou

THRESHOLD = 0.4  # DAAM's tau for binarising a normalised map
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.1, 0.95, 0.05))  # the sweep of tau each object's row keeps


def normalise(m: torch.Tensor) -> np.ndarray:
    """A map scaled to [0, 1] (all zeros where it is flat), as a NumPy array of the same shape."""
    m = m.float().numpy()
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def object_words(words: list[str], spec: world.SceneSpec) -> list[tuple[str, int, int]]:
    """For each object of a scene spec: (colour, index of its colour word, index of its shape word) in `words`
    (`world.word_indices`: the colour word finds the object, its shape word is the first one after it)."""
    indices = world.word_indices(spec, words)
    return [(o.colour, w["colour"], w["shape"]) for o, w in zip(spec.objects, indices, strict=True)]


# --------------------------------------------------------------------------------------------------------------------
# Scenes: the pictures, their traces and their ground truth
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Target:
    """One drawn object of a scene: where its noun's tokens are, its pixels, and the other objects' pixels."""

    name: str  # "red circle"
    positions: list[int]  # the token positions of its noun (its own occurrence)
    colour_positions: list[int]  # and of its colour word
    truth: np.ndarray  # (H, W) bool
    others: np.ndarray  # (H, W) bool: the pixels of the scene's other named objects


@dataclass
class Scene:
    """A generated picture with its trace and the objects to compare maps with."""

    prompt: str
    seed: int
    objects: int  # named in the prompt
    targets: list[Target]
    skipped: int  # named but not drawn
    seconds: float
    trace: Any = None


def scenes(
    pipe: Any,
    pairs: Sequence[tuple[str, int]],
    needs: dict[str, Any],
    settings: EvalSettings = EVAL,
    progress: bool = True,
    desc: str = "pictures",
) -> Iterator[Scene]:
    """Generate each (prompt, seed) with `settings`, traced with `needs` (`Aggregator.needs()`), and read its ground
    truth (`evaluate.pictures` is the loop)."""
    made = pictures(pipe, pairs, settings.steps, settings.cfg_scale, settings.sampler, needs, progress, desc)
    for pic in made:
        tr = pic.trace
        e = tr.encodings[0]
        word_index = np.array(e["word_index"])
        size = pic.image.size[1], pic.image.size[0]
        min_area = judge.MIN_AREA * size[0] * size[1] / (64 * 64)
        masks = pic.masks
        targets, skipped = [], 0
        for k, ((colour, ci, si), truth) in enumerate(zip(object_words(e["words"], pic.spec), masks, strict=True)):
            if truth.sum() < min_area:
                skipped += 1
                continue
            others = np.zeros_like(truth)
            for other in masks[:k] + masks[k + 1 :]:
                others |= other & ~truth
            noun, adjective = (np.flatnonzero(word_index == i).tolist() for i in (si, ci))
            targets.append(Target(f"{colour} {e['words'][si]}", noun, adjective, truth, others))
        yield Scene(pic.prompt, pic.seed, len(masks), targets, skipped, pic.seconds, tr)


# --------------------------------------------------------------------------------------------------------------------
# Scoring maps
# --------------------------------------------------------------------------------------------------------------------


def _class_counts(pred: np.ndarray, truth: np.ndarray) -> list[int]:
    """Intersection and union of foreground, then of background: what the 2-class mIoU sums over a split."""
    return [
        int((pred & truth).sum()),
        int((pred | truth).sum()),
        int((~pred & ~truth).sum()),
        int((~pred | ~truth).sum()),
    ]


@dataclass
class Scores:
    """Per object: foreground IoU at the threshold, the pixel counts the 2-class mIoU sums, leakage, a sweep."""

    rows: list[dict] = field(default_factory=list)

    def add(self, scene: Scene, target: Target, m: np.ndarray, threshold: float) -> None:
        pred = m > threshold
        mean = m > m.mean()  # the ImageNet-Segmentation protocol binarises at the map's mean
        t = target.truth
        total = float(m.sum())
        self.rows.append(
            {
                "prompt": scene.prompt,
                "seed": scene.seed,
                "objects": scene.objects,
                "object": target.name,
                "area": int(t.sum()),
                "iou": iou(pred, t),
                "sweep": {f"{tau:g}": iou(m > tau, t) for tau in THRESHOLDS},
                "counts": _class_counts(mean, t),  # binarised at the map's mean (ImageNet-Segmentation protocol)
                "counts_tau": _class_counts(pred, t),  # at the threshold
                "leakage": float(m[target.others].sum() / total) if scene.objects > 1 and total > 0 else None,
            }
        )

    def summary(self, threshold: float | None = None) -> dict[str, Any]:
        """mIoU over all objects and per scene type, 2-class mIoU (summed counts), mean leakage."""
        key = None if threshold is None else f"{threshold:g}"

        def miou(rows: list[dict]) -> float | None:
            if not rows:
                return None
            return float(np.mean([r["iou"] if key is None else r["sweep"][key] for r in rows]))

        def two_class(rows: list[dict], which: str = "counts") -> float | None:
            if not rows:
                return None
            c = np.array([r[which] for r in rows], dtype=np.float64).sum(0)
            return float((c[0] / max(c[1], 1) + c[2] / max(c[3], 1)) / 2)

        single = [r for r in self.rows if r["objects"] == 1]
        pair = [r for r in self.rows if r["objects"] == 2]
        leak = [r["leakage"] for r in pair if r["leakage"] is not None]
        return {
            "miou": miou(self.rows),
            "single_miou": miou(single),
            "pair_iou": miou(pair),
            "two_class_miou": two_class(self.rows),
            "single_two_class_miou": two_class(single),
            "pair_two_class_miou": two_class(pair),
            "two_class_miou_tau": two_class(self.rows, "counts_tau"),
            "single_two_class_miou_tau": two_class(single, "counts_tau"),
            "pair_two_class_miou_tau": two_class(pair, "counts_tau"),
            "leakage": float(np.mean(leak)) if leak else None,
            "objects": len(self.rows),
            "single_objects": len(single),
            "pair_objects": len(pair),
        }


def f3(x: float | None) -> str:
    """A metric in a report: three decimals, "-" where there is none."""
    return "-" if x is None else f"{x:.3f}"

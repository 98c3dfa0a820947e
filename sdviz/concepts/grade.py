"""Grading features against the toy world's truth: which feature detects which concept, and how well.

Every picture the embedded model draws can be read back by the judge (`sdviz.toy.judge`), so each pixel's concepts
are known: the colour, shape, size and position of the object there, its relation to the other object, and how many
objects the picture holds. A concept's *pixels* are its objects' pixels (the judge's blobs). This module:

1. keeps the pictures the judge calls correct (then every concept the prompt names is what was drawn, and the blob
   of each named object says where), and labels each pixel of a hook point's feature map, per concept: positive
   where an object with that concept covers at least half of the pixel's patch of the picture, negative where an
   object *without* it covers at least half (and none with it touches), ignored elsewhere, the background included:
   a detector must tell a red object from a blue one, not an object from the empty canvas;
2. scores every SAE feature as a detector of every concept over those pixels: the AUROC of its activation (the
   chance that a positive pixel's activation beats a negative one's, ties counting half);
3. picks each concept's best feature on one collection (the SAE's own training pictures) and measures it on
   another (held-out prompts and seeds), pooled over the late steps and step by step, which says when it switches on;
   it also keeps the concept's GROUP best features there (a concept split over many features is ablated as a group).

Concepts (22): six colours, three shapes, two sizes, five positions (of a single object), four relations ("above"
is the upper object of "X above Y" or "Y below X"), and the count ("one object", "two objects", at all its objects).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sdviz.concepts.collect import Activations
from sdviz.concepts.sae import SAE
from sdviz.toy import judge as judging
from sdviz.toy import world

COUNTS = ("one object", "two objects")
CONCEPTS: dict[str, tuple[str, ...]] = {
    "colour": world.COLOURS,
    "shape": world.SHAPES,
    "size": world.SIZES,
    "position": world.POSITIONS,
    "relation": world.RELATIONS,
    "count": COUNTS,
}
ALL_CONCEPTS: tuple[str, ...] = tuple(c for names in CONCEPTS.values() for c in names)
GROUP = 16  # a concept's feature group: its best features on the selection pictures (the causal check ablates them)
_INVERSE = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}


def picture_objects(image: np.ndarray, prompt: str) -> list[tuple[np.ndarray, set[str]]] | None:
    """Each drawn object's pixels (H, W) bool and its concepts, for a picture the judge calls correct (else None)."""
    verdict = judging.judge(image, prompt)
    if not verdict.correct:
        return None
    spec, out = verdict.spec, []
    count = COUNTS[len(spec.objects) - 1]
    for i, o in enumerate(verdict.objects):
        size = "large" if o.area >= judging.SIZE_AREA * image.shape[0] * image.shape[1] / 64**2 else "small"
        concepts = {o.colour, o.shape, size, count}
        if len(spec.objects) == 1 and spec.position is not None:
            concepts.add(spec.position)
        elif spec.relation is not None:
            concepts.add(spec.relation if i == 0 else _INVERSE[spec.relation])
        out.append((o.mask, concepts))
    return out


def cell_labels(objects: list[tuple[np.ndarray, set[str]]], hw: tuple[int, int]) -> np.ndarray:
    """(len(ALL_CONCEPTS), h*w) int8 labels of a feature map's pixels: 1 positive, 0 negative, -1 ignored.

    Positive: an object with the concept covers at least half of the pixel's patch. Negative: an object *without*
    the concept covers at least half of it and no object with the concept touches it. Everything else, the
    background included, is ignored: a feature must tell this object from other objects, not objects from the
    empty canvas (a foreground detector would otherwise "detect" every concept at once)."""
    h, w = hw
    labels = np.full((len(ALL_CONCEPTS), h * w), -1, dtype=np.int8)
    covers = []
    for mask, _ in objects:
        H, W = mask.shape
        covers.append(mask.reshape(h, H // h, w, W // w).mean(axis=(1, 3)).reshape(-1))  # (H, W) -> (h*w,) share
    for i, c in enumerate(ALL_CONCEPTS):
        touched = np.zeros(h * w, dtype=bool)
        for (_, concepts), cover in zip(objects, covers, strict=True):
            if c in concepts:
                touched |= cover > 0
        for (_, concepts), cover in zip(objects, covers, strict=True):
            if c not in concepts:
                labels[i, (cover >= 0.5) & ~touched] = 0
        for (_, concepts), cover in zip(objects, covers, strict=True):
            if c in concepts:
                labels[i, cover >= 0.5] = 1
    return labels


@torch.no_grad()
def sparse_codes(sae: SAE, x: Tensor, batch: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """The SAE's active features per row: indices (N, k) int32 and activations (N, k) float32 (0: did not fire)."""
    idx, val = [], []
    for i in range(0, len(x), batch):
        top = sae.pre_activations(x[i : i + batch].float()).topk(sae.k, dim=-1)
        idx.append(top.indices.int().numpy())
        val.append(top.values.clamp_min(0).numpy())
    return np.concatenate(idx), np.concatenate(val)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUROC of scores (M,) for boolean labels (M,): P(positive beats negative) + half P(tie); nan without both."""
    pos, neg = scores[labels], np.sort(scores[~labels])
    if not len(pos) or not len(neg):
        return float("nan")
    less = np.searchsorted(neg, pos, "left")
    equal = np.searchsorted(neg, pos, "right") - less
    return float((less + 0.5 * equal).sum() / (len(pos) * len(neg)))


def auroc_all(idx: np.ndarray, val: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """AUROC of every feature (n,) for labels (M,) in {1, 0, -1 ignored}, from sparse codes (M, k).

    A feature is 0 on the rows where it is not active, so only its active rows need sorting: a positive row with
    activation v beats every negative row where the feature is silent and the active negatives below v."""
    rows = np.repeat(np.arange(len(idx)), idx.shape[1])
    feat, act = idx.reshape(-1), val.reshape(-1)
    keep = (act > 0) & (labels[rows] >= 0)
    feat, act, lab = feat[keep], act[keep], labels[rows[keep]] == 1
    n_pos, n_neg = int((labels == 1).sum()), int((labels == 0).sum())
    out = np.full(n, np.nan)
    if not n_pos or not n_neg:
        return out
    order = np.argsort(feat, kind="stable")
    feat, act, lab = feat[order], act[order], lab[order]
    bounds = np.searchsorted(feat, np.arange(n + 1))
    for f in range(n):
        a, b = bounds[f], bounds[f + 1]
        pos, neg = act[a:b][lab[a:b]], np.sort(act[a:b][~lab[a:b]])
        silent_pos, silent_neg = n_pos - len(pos), n_neg - len(neg)
        less = np.searchsorted(neg, pos, "left")
        equal = np.searchsorted(neg, pos, "right") - less
        wins = (silent_neg + less + 0.5 * equal).sum() + 0.5 * silent_pos * silent_neg
        out[f] = wins / (n_pos * n_neg)
    return out


class Graded:
    """One collection seen through one SAE: the sparse codes and labels of the correct pictures' pixels."""

    def __init__(self, acts: Activations, sae: SAE, steps: Sequence[int] | None = None):
        point = sae.point
        sae.check(point, acts.record.get("model"))
        _, h, w = acts.points[point]
        images = acts.pictures().numpy()
        per_pair = [picture_objects(img, prompt) for img, (prompt, _) in zip(images, acts.pairs, strict=True)]
        self.correct = [i for i, o in enumerate(per_pair) if o is not None]
        labels = {i: cell_labels(per_pair[i], (h, w)) for i in self.correct}  # (concepts, h*w) each
        rows = acts.load(point, steps)
        keep = torch.isin(rows["pair"], torch.tensor(self.correct, dtype=torch.int32)).numpy()
        pair, pos = rows["pair"].numpy()[keep], rows["pos"].numpy()[keep].astype(np.int64)
        self.step = rows["step"].numpy()[keep]
        self.labels = np.stack([labels[int(p)][:, q] for p, q in zip(pair, pos, strict=True)], axis=1)  # (C, M)
        self.x = rows["x"][torch.from_numpy(keep)]  # (M, d) float16: the activations themselves
        self.idx, self.val = sparse_codes(sae, self.x)
        self.sae, self.n_pictures = sae, len(per_pair)

    def column(self, feature: int) -> np.ndarray:
        """One feature's activation on every row (M,)."""
        return np.where(self.idx == feature, self.val, 0.0).sum(axis=1)

    def best_features(self, top: int = 1) -> dict[str, list[tuple[int, float]]]:
        """Each concept's `top` best features and their AUROCs here, best first (empty without labels)."""
        out = {}
        for c, labels in zip(ALL_CONCEPTS, self.labels, strict=True):
            scores = auroc_all(self.idx, self.val, labels, self.sae.n)
            order = [int(f) for f in np.argsort(-np.nan_to_num(scores, nan=-1.0))[:top] if np.isfinite(scores[f])]
            out[c] = [(f, float(scores[f])) for f in order]
        return out

    def typical(self, concept: str, feature: int) -> float:
        """The feature's mean activation where it fires on the concept's pixels (the unit of a clamp or a push)."""
        col = self.column(feature)[self.labels[ALL_CONCEPTS.index(concept)] == 1]
        return float(col[col > 0].mean()) if (col > 0).any() else 0.0

    def auroc(self, concept: str, feature: int, steps: Sequence[int] | None = None) -> float:
        labels = self.labels[ALL_CONCEPTS.index(concept)]
        keep = labels >= 0 if steps is None else (labels >= 0) & np.isin(self.step, list(steps))
        return auroc(self.column(feature)[keep], labels[keep] == 1)


def channel_baseline(select: Graded, test: Graded, steps: Sequence[int]) -> dict[str, dict[str, float]]:
    """The baseline an SAE feature should beat: each concept's best single *channel* of the activation (either sign,
    chosen on `select`, measured on `test` at `steps`: the same pixels and steps as the features)."""
    out = {}
    xs, xt = select.x.float().numpy(), test.x.float().numpy()
    late = np.isin(test.step, list(steps))
    for i, c in enumerate(ALL_CONCEPTS):
        ls, lt = select.labels[i], test.labels[i]
        ms, mt = ls >= 0, (lt >= 0) & late
        scores = [auroc(xs[ms, j], ls[ms] == 1) for j in range(xs.shape[1])]
        signed = [max(a, 1 - a) for a in scores]
        j = int(np.nanargmax(signed))
        sign = 1.0 if scores[j] >= 0.5 else -1.0
        out[c] = {"channel": j, "sign": sign, "auroc": round(auroc(sign * xt[mt, j], lt[mt] == 1), 4)}
    return out


def grade(
    sae: SAE, select_on: Activations, test_on: Activations, late_steps: int = 5, on_at: float = 0.9
) -> dict[str, Any]:
    """Each concept's best feature, chosen on `select_on` over the last `late_steps` kept steps and measured on
    `test_on` (pooled over those steps, and per step: the first step from which it stays >= `on_at` is when it
    switches on). Returns the table and the summary."""
    kept = test_on.record["kept_steps"]
    late = kept[-late_steps:]
    select = Graded(select_on, sae, late)
    chosen = select.best_features(top=GROUP)
    test = Graded(test_on, sae)
    channels = channel_baseline(select, test, late)
    table = []
    for kind, names in CONCEPTS.items():
        for c in names:
            f, select_auc = chosen[c][0] if chosen[c] else (-1, float("nan"))
            per_step = [test.auroc(c, f, [s]) for s in kept] if f >= 0 else [float("nan")] * len(kept)
            on = next((s for j, s in enumerate(kept) if all(a >= on_at for a in per_step[j:])), None)
            table.append(  # auroc: on `test_on` over the late steps; activation: its mean where it fires on c
                {
                    "concept": c,
                    "kind": kind,
                    "feature": f,
                    "auroc_select": round(select_auc, 4),
                    "auroc": round(test.auroc(c, f, late), 4) if f >= 0 else float("nan"),
                    "per_step": [round(a, 3) for a in per_step],
                    "switches_on": on,
                    "activation": round(test.typical(c, f), 4) if f >= 0 else 0.0,
                    "group": [g for g, _ in chosen[c]],  # the concept's GROUP best features on `select_on`
                    "channel": channels[c]["channel"],
                    "channel_auroc": channels[c]["auroc"],
                }
            )
    good = [r for r in table if r["auroc"] >= 0.95]
    return {
        "point": sae.point,
        "late_steps": late,
        "table": table,
        "share_at_0.95": round(len(good) / len(table), 3),
        "without_feature_0.95": [r["concept"] for r in table if not r["auroc"] >= 0.95],
        "correct_pictures": {
            "select": len(select.correct), "select_of": select.n_pictures,
            "test": len(test.correct), "test_of": test.n_pictures,
        },
    }

"""Are the attention maps trustworthy? Compare them with ground truth, which only a synthetic world can give.

On real Stable Diffusion nobody knows which pixels "the dog" is, except by drawing masks by hand (DAAM, Tang et al.
2022, did: its noun maps reach 0.59-0.65 mIoU against human masks). The embedded model draws flat-coloured shapes on
a plain background, so the pixels of "the red circle" in a *generated* picture can be read off exactly: they are the
red ones (`sdviz.toy.judge.segment`). The check:

1. Generate each of the 100 held-out (prompt, seed) pairs of the toy world (`world.held_out_prompts`: half of them
   one object, half two) inside a trace that records what the word-map method needs (`Aggregator.needs`).
2. For every object the prompt names, take the map of its noun (the shape word, e.g. "circle"; the object's own
   occurrence when a prompt names two circles, for every method), upsampled to 64x64, normalise it to [0, 1] and
   threshold it at the method's tau: 0.4 for "sdviz" and "daam" (DAAM's choice, fixed in advance); "best" carries
   the one chosen on the training split.
3. Compare with the object's colour segmentation in the generated picture. Objects the model did not draw (fewer
   than `judge.MIN_AREA` pixels of their colour) have no ground truth and are skipped (and counted).

Metrics, per scene type (one object, two objects; the world has no scenes of three or more):

    mIoU          the mean over objects of the foreground IoU (thresholded map vs the object's pixels): the goal
                  is 0.50 for the default method, 0.75 on one-object scenes for the best one
    per-object    the same on two-object scenes (goal 0.60): does each noun find its own object?
    2-class mIoU  the mean of foreground and background IoU, intersections and unions summed over the split, each map
                  binarised at its own mean: the protocol of the ImageNet-Segmentation papers (Chefer et al. 2021's
                  code, used by ConceptAttention), so that the numbers can be set beside theirs
    leakage       on two-object scenes, the share of a noun's (normalised) map that lies on the *other* object's
                  pixels (goal <= 0.20); a map spread evenly over the picture would put the other object's share of
                  the picture there, 3-10%

`--ladder` measures the aggregators of `sdviz.tracing.aggregate` as an ablation ladder: sdviz's original maps and
DAAM 0.2.0's at tau = 0.4, then one published trick per row, each added to the row above if it helped on a separate
*training* split (40 pictures of caption combinations the model was trained on, `training_prompts`, disjoint from the
held-out evaluation split). Every choice is made on that training split only: which layers, which steps, which heads
(ranked by their own maps there), the propagation's knobs, and each candidate's threshold (swept over 0.1..0.9). The
evaluation split is generated once, after every choice, and scored once per row.

    sdviz validate-attention [MODEL] [--method best] [--n 100] [--steps 50] [--cfg 5] [--json report.json]
    sdviz validate-attention --ladder [--train 40] [--threads 1] [--out sdviz/toy/attention_ladder.md]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdviz.toy import judge, world
from sdviz.toy.evaluate import HeldOutPicture, load_model
from sdviz.tracing import aggregate
from sdviz.tracing.aggregate import DAAM, SDVIZ, Aggregator

THRESHOLD = 0.4  # DAAM's tau for binarising a normalised map
GOAL = 0.50
GOALS = {"single_miou": 0.75, "pair_iou": 0.60, "leakage": 0.20}  # for the best aggregator (issue 13)
SWEEP = (0.2, 0.3, 0.4, 0.5, 0.6)
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.1, 0.95, 0.05))  # the training split's choice of tau

# The choices each ladder row tries on the training split (the first of each is "no change").
LAYER_CHOICES: tuple[Any, ...] = ("daam", "all", ("up",), ("down",), ("mid",), (16,), (8,))
STEP_CHOICES = ((0.0, 1.0), (0.0, 0.25), (0.0, 0.5), (0.0, 0.75), (0.25, 1.0), (0.5, 1.0), (0.75, 1.0), (0.25, 0.75))
HEAD_FRACTIONS = (1.0, 0.5, 0.25, 0.125)
# self-attention propagation: passes, which self-attention steps, the seed's exponent in the gate (and which layers:
# "all" or each layer of the finest grid), tried one knob at a time from the first value of each
PASSES = (1, 2)
SELF_STEPS = ((0.0, 1.0), (0.5, 1.0), (0.75, 1.0))
GATES = (0.0, 0.1, 0.25, 0.5, 1.0)


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


def _disc(shape: tuple[int, int], area: float) -> np.ndarray:
    """A disc of the given area in the centre of a picture: a baseline that knows the object's size, not its place."""
    y, x = np.mgrid[: shape[0], : shape[1]]
    r2 = area / np.pi
    return (y - (shape[0] - 1) / 2) ** 2 + (x - (shape[1] - 1) / 2) ** 2 <= r2


# --------------------------------------------------------------------------------------------------------------------
# Scenes: the pictures, their traces and their ground truth
# --------------------------------------------------------------------------------------------------------------------


def training_prompts(n: int = 40, seed: int = 0) -> list[tuple[str, int]]:
    """The training split: `n` (prompt, seed) pairs of caption combinations the model was trained on
    (`world.train_specs`), half of them one object, drawn from a random stream of their own. Disjoint from the
    held-out evaluation split by construction (no caption is in both)."""
    rng = np.random.default_rng([seed, 13])
    specs = world.train_specs()
    singles = [s for s in specs if len(s.objects) == 1]
    pairs = [s for s in specs if len(s.objects) == 2]
    out = []
    for i in range(n):
        pool = singles if i % 2 == 0 else pairs
        out.append((pool[int(rng.integers(len(pool)))].caption(), int(rng.integers(2**31 - 1))))
    return out


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
    steps: int,
    cfg_scale: float,
    sampler: str,
    progress: bool = True,
    desc: str = "pictures",
) -> Iterator[Scene]:
    """Generate each (prompt, seed), traced with `needs` (`Aggregator.needs()`), and read its ground truth."""
    from sdviz.tracing import trace

    if progress:
        from tqdm.auto import tqdm

        pairs = tqdm(pairs, desc=desc)
    for prompt, s in pairs:
        t0 = time.perf_counter()
        with trace(pipe, **needs) as tr:
            image = pipe.generate(prompt, seed=s, steps=steps, cfg_scale=cfg_scale, sampler=sampler, progress=False)
        pic = HeldOutPicture(prompt, s, image.image, time.perf_counter() - t0, tr)
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
        yield Scene(prompt, s, len(masks), targets, skipped, pic.seconds, tr)


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


def score_method(
    scene_list: Sequence[Scene], method: Aggregator, threshold: float | None = None, scores: Scores | None = None
) -> tuple[Scores, float]:
    """Score one aggregator on scenes: (scores, median CPU seconds per picture to compute its maps)."""
    scores = scores or Scores()
    seconds = []
    for scene in scene_list:
        if not scene.targets:
            continue
        t0 = time.process_time()  # this process's CPU time: steadier than the wall clock on a shared machine
        maps = scene.trace.token_maps(0, method=method)  # (77, H, W)
        seconds.append(time.process_time() - t0)
        for target in scene.targets:
            scores.add(scene, target, normalise(maps[target.positions].mean(0)), method.threshold)
    return scores, float(np.median(seconds)) if seconds else 0.0


def tuned(scene_list: Sequence[Scene], method: Aggregator) -> tuple[Aggregator, float]:
    """The aggregator with its threshold chosen on these (training) scenes, and its mIoU there. Ties go to the
    threshold nearest DAAM's 0.4."""
    scores = score_method(scene_list, method)[0]
    sweep = {tau: scores.summary(tau)["miou"] for tau in THRESHOLDS}
    tau = max(sweep, key=lambda t: (sweep[t], -abs(t - THRESHOLD)))
    return replace(method, threshold=float(tau)), sweep[tau]


# --------------------------------------------------------------------------------------------------------------------
# The plain check (one method)
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def validate(
    model: Any = None,
    n: int = 100,
    seed: int = 0,
    steps: int = 50,
    cfg_scale: float = 5.0,
    sampler: str = "ddim",
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
    pipe = load_model(model)
    rows, skipped, seconds = [], 0, []
    scores = Scores()
    pairs = world.held_out_prompts(n, seed)
    for scene in scenes(pipe, pairs, agg.needs(), steps, cfg_scale, sampler, progress, desc="validate"):
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
        "settings": {"n": n, "seed": seed, "steps": steps, "cfg_scale": cfg_scale, "sampler": sampler},
        "rows": rows,
    }
    report["passed"] = report["miou"]["noun"] >= GOAL
    return report


# --------------------------------------------------------------------------------------------------------------------
# The ladder
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Rung:
    """One row of the ladder: a trick, the aggregator with it, whether the training split kept it."""

    trick: str
    method: Aggregator
    kept: bool = True
    chose: str = ""
    train: float = 0.0
    scores: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # computing the maps, per picture (median)
    recording: float = 0.0  # extra generation time of what the trace must record, per picture


def _needs_all(methods: Sequence[Aggregator]) -> dict[str, Any]:
    """One trace plan that serves every aggregator in the list."""
    record: set[str] = set()
    keep: dict[str, set[str]] = {}
    for m in methods:
        n = m.needs()
        record |= set(n["record"])
        for kind, axes in n["keep"].items():
            keep.setdefault(kind, set()).update(axes)
    return {"record": sorted(record), "keep": {k: sorted(v) for k, v in keep.items()}}


# what the ladder records once per picture: every axis of cross-attention, the values, self-attention per step
LADDER_NEEDS = _needs_all([DAAM.with_(propagate=1, self_steps=(0.5, 1.0), source="output")])


def _compact(tr: Any) -> None:
    """Shrink a training trace kept for the ladder's choices (about 100 MB -> 70 MB): float16 cross-attention sums
    (the aggregators sum them in float32), and only the finest grid's self-attention (the only one propagated)."""
    rec = tr.cross_attention
    rec.sums = {k: v.half() for k, v in rec.sums.items()}
    sa = tr.self_attention
    for k in [k for k in sa.sums if sa.grid[k] != sa.resolutions[0]]:
        del sa.sums[k], sa.counts[k]


def rank_heads(train: Sequence[Scene], method: Aggregator) -> list[tuple[tuple[str, int], float]]:
    """Every (layer, head) of the method's layers, with the training split's mIoU of its map alone, best first."""
    rec = train[0].trace.cross_attention
    latent = aggregate.latent_size(train[0].trace)
    pairs = [
        (key, h)
        for key in rec.sums
        for h in range(rec.sums[key].shape[2])
        if aggregate.layer_chosen(key, rec.grid[key], method.layers, latent)
    ]
    ranked = [(p, tuned(train, method.with_(heads=(p,)))[1]) for p in pairs]
    return sorted(ranked, key=lambda x: -x[1])


def choose(train: Sequence[Scene], trick: str, candidates: list[tuple[str, Aggregator]]) -> Rung:
    """The candidate with the best training mIoU, each at its own training threshold (the first, "no change", on
    ties), as the rung of `trick`."""
    scored = [(label, *tuned(train, m)) for label, m in candidates]
    label, method, value = max(scored, key=lambda x: x[2])  # max keeps the first of equals
    return Rung(trick, method, chose=label, train=value)


def propagation(train: Sequence[Scene], base: Aggregator) -> Rung:
    """Self-attention propagation, its knobs chosen on the training split one at a time (coordinate ascent from 1
    pass, every layer of the finest grid, every step, no gate): which layers, which steps, the gate, the passes."""
    rec = train[0].trace.self_attention
    finest = rec.resolutions[0]
    layers: list[Any] = ["all"] + [
        (k.removesuffix(".transformer_blocks.0.attn1.hook_probs"),) for k in rec.sums if rec.grid[k] == finest
    ]
    current = base.with_(propagate=PASSES[0])
    method, value = tuned(train, current)
    knobs = (
        ("self_layers", layers),
        ("self_steps", list(SELF_STEPS)),
        ("gate", list(GATES)),
        ("propagate", list(PASSES)),
    )
    for knob, values in knobs:
        for x in values:
            if getattr(current, knob) == x:
                continue
            m, v = tuned(train, current.with_(**{knob: x}))
            if v > value:
                method, value = m, v
        current = method
    steps = f"{method.self_steps[0]:g}-{method.self_steps[1]:g}"
    chose = f"{method.propagate} pass, {_short(method.self_layers)}, steps {steps}, gate {method.gate:g}"
    return Rung("+ self-attention propagation", method, chose=chose, train=value)


def _short(layers: Any) -> str:
    if layers == "all":
        return "all layers"
    short = (str(x).removeprefix("unet.").split(".transformer_blocks")[0] for x in layers)
    return ",".join(x.replace("_blocks.", "").replace(".attentions.", ".") for x in short)


def ladder_rungs(train: Sequence[Scene], progress: bool = True) -> tuple[list[Rung], Aggregator]:
    """Climb the ladder on the training split: DAAM, then each trick, its choices made on the training split, each
    candidate at its own threshold chosen there. Returns the rungs and the best aggregator (DAAM with every trick
    that helped)."""
    say = print if progress else (lambda *a, **k: None)
    rungs = [Rung("sdviz's original reduction", SDVIZ, chose="-"), Rung("DAAM 0.2.0 (the base)", DAAM, chose="-")]
    rungs[0].train = score_method(train, SDVIZ)[0].summary()["miou"]
    rungs[1].train = score_method(train, DAAM)[0].summary()["miou"]
    current, best = DAAM.with_(name="ladder"), rungs[1].train

    def climb(rung: Rung) -> None:
        nonlocal current, best
        rung.kept = rung.train > best
        if rung.kept:
            current, best = rung.method, rung.train
        rungs.append(rung)
        say(f"  train: {rung.trick}: {rung.chose} -> {rung.train:.3f} ({'kept' if rung.kept else 'not kept'})")

    method, value = tuned(train, current)
    climb(Rung("+ threshold chosen on the training split", method, chose=f"{method.threshold:g}", train=value))
    climb(choose(train, "+ renormalise over the word tokens", [("on", current.with_(renormalise=True))]))
    climb(
        choose(
            train,
            "+ layer / resolution selection",
            [(_short(x) if x not in ("daam", "all") else x, current.with_(layers=x)) for x in LAYER_CHOICES],
        )
    )
    window = [(f"steps {a:g}-{b:g}", current.with_(steps=(a, b))) for a, b in STEP_CHOICES]
    climb(choose(train, "+ timestep window", window))
    ranked = rank_heads(train, current)
    heads = []
    for f in HEAD_FRACTIONS:
        k = max(1, round(f * len(ranked)))
        heads.append(
            (f"top {k} of {len(ranked)}", current.with_(heads=None if f == 1.0 else tuple(p for p, _ in ranked[:k])))
        )
    climb(choose(train, "+ head selection (ranked on training scenes)", heads))
    climb(propagation(train, current))
    climb(choose(train, "+ attention-output projection", [("on", current.with_(source="output"))]))
    return rungs, current


def _recipe(m: Aggregator) -> str:
    """An aggregator in one line: what it does, its threshold and the heads it reads."""
    heads = "" if m.heads is None else "; heads " + ", ".join(f"{_short((layer,))}/{h}" for layer, h in m.heads)
    return f"{m.describe()}; tau {m.threshold:g}{heads}"


def same_recipe(a: Aggregator, b: Aggregator) -> bool:
    """Do two aggregators compute the same maps at the same threshold (names, notes and word lookup aside)?"""
    ignore = {"name", "note", "positions", "model"}
    return all(getattr(a, f.name) == getattr(b, f.name) for f in fields(Aggregator) if f.name not in ignore)


def recording_costs(
    pipe: Any, pairs: Sequence[tuple[str, int]], plans: Sequence[dict[str, Any] | None], **settings: Any
) -> list[float]:
    """Per trace plan (None: untraced), the median CPU time of generating a picture traced so (the same pictures,
    the plans in turns). CPU time of this process, not wall-clock time: on a shared machine the wall clock measures
    the neighbours."""
    from sdviz.tracing import trace

    times: list[list[float]] = [[] for _ in plans]
    for prompt, s in pairs:
        for i, plan in enumerate(plans):
            t0 = time.process_time()
            if plan is None:
                pipe.generate(prompt, seed=s, progress=False, **settings)
            else:
                with trace(pipe, **plan):
                    pipe.generate(prompt, seed=s, progress=False, **settings)
            times[i].append(time.process_time() - t0)
    return [float(np.median(t)) for t in times]


@torch.no_grad()
def ladder(
    model: Any = None,
    n: int = 100,
    n_train: int = 40,
    seed: int = 0,
    steps: int = 50,
    cfg_scale: float = 5.0,
    sampler: str = "ddim",
    timing: int = 5,
    progress: bool = True,
) -> dict[str, Any]:
    """The ablation ladder (see the module docstring): choices on `n_train` training pictures, then every rung scored
    once on the `n` held-out pictures. Returns the rungs, the metrics per scene type of the best and of DAAM, and
    the time each trick costs."""
    pipe = load_model(model)
    settings = {"steps": steps, "cfg_scale": cfg_scale, "sampler": sampler}
    everything = LADDER_NEEDS
    train = []
    for scene in scenes(pipe, training_prompts(n_train, seed), everything, **settings, progress=progress, desc="train"):
        _compact(scene.trace)
        train.append(scene)
    rungs, best = ladder_rungs(train, progress)
    del train  # the kept training traces (about 30 MB each)
    eval_methods = [r.method for r in rungs]
    all_scores = [Scores() for _ in rungs]
    seconds: list[list[float]] = [[] for _ in rungs]
    skipped, n_scenes = 0, 0
    pairs = world.held_out_prompts(n, seed)
    for scene in scenes(pipe, pairs, everything, **settings, progress=progress, desc="evaluate"):
        skipped += scene.skipped
        n_scenes += 1
        for i, m in enumerate(eval_methods):
            _, t = score_method([scene], m, scores=all_scores[i])
            seconds[i].append(t)
        scene.trace = None  # a kept trace is 64 MB: let it go
    for r, s, t in zip(rungs, all_scores, seconds, strict=True):
        r.scores, r.seconds = s.summary(), float(np.median(t))
    plans = {json.dumps(m.needs(), sort_keys=True): m.needs() for m in eval_methods}  # one timing per trace plan
    plans = {"untraced": None, **plans}
    timed = recording_costs(pipe, pairs[:timing], list(plans.values()), **settings) if timing else [0.0] * len(plans)
    cost = dict(zip(plans, timed, strict=True))
    base = cost["untraced"]
    for r in rungs:
        r.recording = cost[json.dumps(r.method.needs(), sort_keys=True)] - base
    best_rung = next(r for r in reversed(rungs) if r.method is best)
    return {
        "rungs": [
            {
                "trick": r.trick,
                "chose": r.chose,
                "kept": r.kept,
                "train_miou": r.train,
                "aggregator": r.method.describe(),
                "threshold": r.method.threshold,
                **r.scores,
                "map_seconds": r.seconds,
                "recording_seconds": r.recording,
            }
            for r in rungs
        ],
        "best": {
            "aggregator": _recipe(best),
            "metrics": best_rung.scores,
            "is_BEST": same_recipe(best, aggregate.BEST),
        },
        "daam": rungs[1].scores,
        "sdviz": rungs[0].scores,
        "goals": GOALS,
        "skipped_not_drawn": skipped,
        "scenes": n_scenes,
        "untraced_generation_cpu_seconds": base,
        "settings": {
            "n": n,
            "n_train": n_train,
            "seed": seed,
            "timing": timing,
            "torch_threads": torch.get_num_threads(),
            **settings,
        },
    }


def _f3(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def format_ladder(r: dict[str, Any]) -> str:
    """The ladder and the metrics per scene type as Markdown tables (what the README quotes)."""
    s = r["settings"]
    lines: list[str] = []
    print = lines.append  # noqa: A001  each print below is one line of the text
    print(
        f"Ablation ladder on the toy world: {r['scenes']} held-out pictures (the evaluation split, used once); every "
        f"choice made on {s['n_train']} training pictures. {s['steps']} {s['sampler']} steps, cfg {s['cfg_scale']:g}, "
        f"{s['torch_threads']} torch threads.\n"
    )
    print("| | trick | chose (on training pictures) | tau | train mIoU | mIoU | change | ms/picture | change | kept |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    prev_miou = prev_cost = None
    for i, g in enumerate(r["rungs"]):
        cost = 1000 * (g["map_seconds"] + g["recording_seconds"])
        change = "" if prev_miou is None or i == 1 else f"{g['miou'] - prev_miou:+.3f}"
        extra = "" if prev_cost is None or i == 1 else f"{cost - prev_cost:+.0f}"
        kept = "" if i < 2 else ("yes" if g["kept"] else "no")
        print(
            f"| {i} | {g['trick']} | {g['chose']} | {g['threshold']:g} | {g['train_miou']:.3f} | {g['miou']:.3f} | "
            f"{change} | {cost:.0f} | {extra} | {kept} |"
        )
        if i >= 1 and (g["kept"] or i == 1):
            prev_miou, prev_cost = g["miou"], cost
    print(
        "\nmIoU: mean foreground IoU over the objects of the evaluation pictures. Changes against the last kept row. "
        f"ms/picture: CPU time (this process, {s['torch_threads']} torch threads) of computing the maps plus what "
        f"recording them adds to a generation ({1000 * r['untraced_generation_cpu_seconds']:.0f} ms untraced; median "
        f"of {s['timing']} pictures per trace plan; CPU time, as the shared machine was loaded).\n"
    )
    print(
        "| method | scenes | objects | mIoU (per object) | 2-class mIoU (mean threshold) | 2-class at tau | leakage |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, m in (("sdviz", r["sdviz"]), ("DAAM 0.2.0", r["daam"]), ("best", r["best"]["metrics"])):
        for kind, label in (("single", "one object"), ("pair", "two objects")):
            miou = m["single_miou" if kind == "single" else "pair_iou"]
            leak = "-" if kind == "single" else _f3(m["leakage"])
            print(
                f"| {name} | {label} | {m[f'{kind}_objects']} | {_f3(miou)} | {_f3(m[f'{kind}_two_class_miou'])} | "
                f"{_f3(m[f'{kind}_two_class_miou_tau'])} | {leak} |"
            )
    print("\nThree or more objects: the world draws at most two (not measured).")
    g, b = r["goals"], r["best"]["metrics"]
    said = []
    for k, v in g.items():
        ok = b[k] is not None and (b[k] <= v if k == "leakage" else b[k] >= v)
        said.append(f"{k} {_f3(b[k])} {'<=' if k == 'leakage' else '>='} {v}: {'met' if ok else 'NOT met'}")
    print("Goals for the best: " + "; ".join(said))
    same = "the recipe of" if r["best"]["is_BEST"] else "NOT yet the recipe of (copy it there)"
    print(f"best: {r['best']['aggregator']}; {same} sdviz.tracing.aggregate.BEST, `method='best'`.")
    return "\n".join(lines) + "\n"


def report_text(r: dict[str, Any]) -> str:
    """The plain check's report, as printed."""
    m = r["metrics"]
    lines = [
        f"method: {r['method']}; objects compared: {r['objects']} (skipped, not drawn: {r['skipped_not_drawn']})",
        f"mIoU, noun maps (tau={r['threshold']}):   {r['miou']['noun']:.3f}   goal >= {GOAL:.2f}",
        f"  one-object scenes: {_f3(m['single_miou'])}; two-object scenes, per object: {_f3(m['pair_iou'])}",
        f"  2-class mIoU (mean threshold, ImageNet-Segmentation protocol): {_f3(m['two_class_miou'])}",
        f"  leakage onto the other object (two-object scenes): {_f3(m['leakage'])}",
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
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--sampler", default="ddim")
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

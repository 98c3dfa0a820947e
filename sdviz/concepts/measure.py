"""Measured with the judge: what splicing an SAE in costs, and what a concept's feature causes.

Three measurements, each on generated pictures read by the judge (`sdviz.toy.judge`), all with one set of settings
(a collection's: 20 DDIM steps, cfg 5, unless told otherwise):

- `splice_effect`: the judge's rates with the SAE's reconstruction in place of the activation, against without;
- `ablation_effect`: a concept's feature ablated (or clamped below zero). The *target* is the concept's rate on
  prompts that name it (a colour: the object of that colour is drawn; a shape: the object of that shape has it;
  a position or relation: the object is where it should be; a size: it has that size; a count: exactly the named
  objects are drawn). The *others* are every judged rate (colour, shape, position, count, correct) on control
  prompts that do not name the concept: what the feature must not touch;
- `steering_rate`: "a red circle ..." prompts with the red feature's place taken by the blue one (or the blue feature
  added everywhere); the rate at which the judge then reads a blue circle and no red object.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from sdviz.concepts.collect import CollectSettings
from sdviz.concepts.grade import CONCEPTS, COUNTS
from sdviz.concepts.intervene import intervene
from sdviz.concepts.sae import SAE
from sdviz.toy import judge as judging
from sdviz.toy import world


def kind_of(concept: str) -> str:
    for kind, names in CONCEPTS.items():
        if concept in names:
            return kind
    known = ", ".join(c for v in CONCEPTS.values() for c in v)
    raise ValueError(f"concept: {concept!r} is not a world concept; known: {known}")


def object_concepts(spec: world.SceneSpec) -> list[set[str]]:
    """What a prompt says about each of its objects (the size only where it says one)."""
    count = COUNTS[len(spec.objects) - 1]
    inverse = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}
    out = []
    for i, o in enumerate(spec.objects):
        c = {o.colour, o.shape, count} | ({o.size} if o.size else set())
        if len(spec.objects) == 1 and spec.position:
            c.add(spec.position)
        elif spec.relation:
            c.add(spec.relation if i == 0 else inverse[spec.relation])
        out.append(c)
    return out


def concept_prompts(concept: str, n: int, seed: int = 0, name_it: bool = True) -> list[tuple[str, int]]:
    """`n` (prompt, seed) pairs of fully specified captions that name the concept (or, `name_it=False`, do not)."""
    kind_of(concept)
    specs = [s for s in world.all_specs() if any(concept in c for c in object_concepts(s)) == name_it]
    rng = np.random.default_rng([seed, sum(map(ord, concept))])
    return [(specs[int(i)].caption(), int(rng.integers(2**31 - 1))) for i in rng.choice(len(specs), n, replace=False)]


def target_ok(verdict: judging.Verdict, concept: str) -> list[bool]:
    """Per object that the prompt gives the concept: did the picture get it right?"""
    kind = kind_of(concept)
    out = []
    for o, said in zip(verdict.objects, object_concepts(verdict.spec), strict=True):
        if concept not in said:
            continue
        if kind == "colour":
            out.append(o.colour_ok)
        elif kind == "shape":
            out.append(o.colour_ok and o.shape_ok)
        elif kind == "size":
            out.append(bool(o.size_ok))
        elif kind in ("position", "relation"):
            out.append(bool(o.position_ok))
        else:
            out.append(verdict.count_ok)
    return out


def rates(verdicts: Iterable[judging.Verdict]) -> dict[str, float]:
    r = judging.summarise(verdicts)
    return {k: round(float(r[k]), 4) for k in ("colour", "shape", "position", "count", "correct")}


def pictures(pipe: Any, pairs: Sequence[tuple[str, int]], settings: CollectSettings, **edit: Any) -> list:
    """`pairs` generated with `settings`, inside `intervene(pipe, **edit)` when an edit is given (`sae=` and the
    edit's arguments)."""
    from contextlib import nullcontext

    kwargs = {"steps": settings.steps, "cfg_scale": settings.cfg_scale, "sampler": settings.sampler, "progress": False}
    with intervene(pipe, **edit) if edit else nullcontext():
        return [pipe.generate(p, seed=s, **kwargs).image for p, s in pairs]


def generate(pipe: Any, pairs: Sequence[tuple[str, int]], settings: CollectSettings, **edit: Any) -> list:
    """The judge's verdicts on `pictures(pipe, pairs, settings, **edit)`."""
    images = pictures(pipe, pairs, settings, **edit)
    return [judging.judge(im, p) for im, (p, _) in zip(images, pairs, strict=True)]


def splice_effect(pipe: Any, sae: SAE, pairs: Sequence[tuple[str, int]], settings: CollectSettings, base=None):
    """The judge's rates without and with the SAE's reconstruction spliced in (`base`: verdicts already had)."""
    base = base if base is not None else generate(pipe, pairs, settings)
    spliced = generate(pipe, pairs, settings, sae=sae, splice=True)
    return {"pairs": len(pairs), "without": rates(base), "with": rates(spliced)}


def ablation_effect(
    pipe: Any,
    sae: SAE,
    concept: str,
    feature: int | Sequence[int],
    settings: CollectSettings,
    n: int = 8,
    clamp: float | None = None,
    control: Sequence[tuple[str, int]] | None = None,
    cache: dict | None = None,
) -> dict[str, Any]:
    """The concept's rate and the control prompts' rates, with and without the feature (or a group of features:
    a list) ablated, or clamped to `clamp` (a negative value). `cache` keeps the unedited verdicts between concepts
    (keyed by pair)."""
    features = [feature] if isinstance(feature, int) else list(feature)
    cache = {} if cache is None else cache
    targets = concept_prompts(concept, n)
    control = [
        p
        for p in (control or concept_prompts(concept, n, name_it=False))
        if not any(concept in c for c in object_concepts(world.parse_caption(p[0])))
    ]
    missing = [p for p in [*targets, *control] if p not in cache]
    for p, v in zip(missing, generate(pipe, missing, settings), strict=True):
        cache[p] = v
    edit = {"sae": sae, **({"clamp": dict.fromkeys(features, clamp)} if clamp is not None else {"ablate": features})}
    edited = generate(pipe, [*targets, *control], settings, **edit)
    before_t = [x for p in targets for x in target_ok(cache[p], concept)]
    after_t = [x for v in edited[: len(targets)] for x in target_ok(v, concept)]
    before_c, after_c = rates(cache[p] for p in control), rates(edited[len(targets) :])
    moved = {k: round(100 * (after_c[k] - before_c[k]), 1) for k in before_c}
    drop = round(100 * (np.mean(before_t) - np.mean(after_t)), 1)
    group = f" {len(features)} best" if len(features) > 1 else ""  # "ablate 16 best": the concept's 16 best features
    return {
        "concept": concept,
        "feature": features[0] if len(features) == 1 else features,
        "edit": ("ablate" if clamp is None else f"clamp {clamp:g}") + group,
        "target_before": round(float(np.mean(before_t)), 4),
        "target_after": round(float(np.mean(after_t)), 4),
        "target_drop_points": drop,
        "control_before": before_c,
        "control_after": after_c,
        "control_moved_points": moved,
        "passes": bool(drop >= 50 and all(abs(m) <= 5 for m in moved.values())),
        "prompts": {"target": len(targets), "control": len(control)},
    }


RED_CIRCLES = [f"a {z} red circle {world.POSITION_PHRASES[p]}" for z in world.SIZES for p in world.POSITIONS]


def steering_rate(
    pipe: Any,
    sae: SAE,
    red: int | Sequence[int],
    blue: int | Sequence[int],
    settings: CollectSettings,
    how: str = "swap",
    amount: float = 1.0,
    n: int = 10,
) -> dict[str, Any]:
    """How often "a ... red circle ..." becomes a blue circle (no red object) as the judge reads it, with the red
    feature swapped for the blue one (`how="swap"`, gain `amount`) or the blue one added everywhere (`"add"`).
    Groups (lists, best first) swap pairwise: red's best for blue's best, the second for the second, and so on."""
    rng = np.random.default_rng(26)
    pairs = [(RED_CIRCLES[i % len(RED_CIRCLES)], int(rng.integers(2**31 - 1))) for i in range(n)]
    reds, blues = ([f] if isinstance(f, int) else list(f) for f in (red, blue))
    if how == "swap":
        edit = {"swap": dict(zip(reds, blues, strict=True)), "gain": amount}
    else:
        edit = {"add": dict.fromkeys(blues, amount)}
    images = pictures(pipe, pairs, settings, sae=sae, **edit)
    verdicts = [judging.judge(im, p.replace("red", "blue")) for im, (p, _) in zip(images, pairs, strict=True)]
    blue_circle = [v.objects[0].colour_ok and v.objects[0].shape_ok and "red" not in v.counts for v in verdicts]
    red_gone = ["red" not in v.counts for v in verdicts]
    return {
        "how": how, "amount": amount, "red_feature": red, "blue_feature": blue, "n": n,
        "blue_circle_rate": round(float(np.mean(blue_circle)), 4), "red_gone_rate": round(float(np.mean(red_gone)), 4),
    }

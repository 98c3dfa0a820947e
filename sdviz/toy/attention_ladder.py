"""The ablation ladder: which published tricks make the cross-attention word maps find their objects?

`sdviz validate-attention --ladder` measures the aggregators of `sdviz.tracing.aggregate` one trick at a time:
sdviz's original maps and DAAM 0.2.0's at tau = 0.4, then one published trick per row, each added to the row above
if it helped on a separate *training* split (40 pictures of caption combinations the model was trained on,
`training_prompts`, disjoint from the held-out evaluation split). Every choice is made on that training split only:
which layers, which steps, which heads (ranked by their own maps there), the propagation's knobs, and each
candidate's threshold (swept over 0.1..0.9). The evaluation split is generated once, after every choice, and scored
once per row, with the metrics of `attention_scores.py` and the evaluation's settings (`evaluate.EVAL`).

The goals for the best aggregator (issue 13): mIoU 0.75 on one-object scenes, 0.60 per object on two-object scenes,
leakage onto the other object at most 0.20. `format_ladder` writes the tables that `attention_ladder.md` holds and
the README quotes.

    sdviz validate-attention --ladder [--train 40] [--threads 1] [--out sdviz/toy/attention_ladder.md]
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch

from sdviz.toy import world
from sdviz.toy.attention_scores import THRESHOLD, THRESHOLDS, Scene, Scores, f3, normalise, scenes
from sdviz.toy.evaluate import EVAL, EvalSettings, load_model
from sdviz.tracing import aggregate
from sdviz.tracing.aggregate import DAAM, SDVIZ, Aggregator, needs_of

GOALS = {"single_miou": 0.75, "pair_iou": 0.60, "leakage": 0.20}  # for the best aggregator (issue 13)

# The choices each ladder row tries on the training split (the first of each is "no change").
LAYER_CHOICES: tuple[Any, ...] = ("daam", "all", ("up",), ("down",), ("mid",), (16,), (8,))
STEP_CHOICES = ((0.0, 1.0), (0.0, 0.25), (0.0, 0.5), (0.0, 0.75), (0.25, 1.0), (0.5, 1.0), (0.75, 1.0), (0.25, 0.75))
HEAD_FRACTIONS = (1.0, 0.5, 0.25, 0.125)
# self-attention propagation: passes, which self-attention steps, the seed's exponent in the gate (and which layers:
# "all" or each layer of the finest grid), tried one knob at a time from the first value of each
PASSES = (1, 2)
SELF_STEPS = ((0.0, 1.0), (0.5, 1.0), (0.75, 1.0))
GATES = (0.0, 0.1, 0.25, 0.5, 1.0)


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


# what the ladder records once per picture: every axis of cross-attention, the values, self-attention per step
LADDER_NEEDS = needs_of([DAAM.with_(propagate=1, self_window=(0.5, 1.0), source="output")])


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
    latent = train[0].trace.latent_hw
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
        ("self_window", list(SELF_STEPS)),
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
    steps = f"{method.self_window[0]:g}-{method.self_window[1]:g}"
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
    window = [(f"steps {a:g}-{b:g}", current.with_(window=(a, b))) for a, b in STEP_CHOICES]
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
    steps: int = EVAL.steps,
    cfg_scale: float = EVAL.cfg_scale,
    sampler: str = EVAL.sampler,
    timing: int = 5,
    progress: bool = True,
) -> dict[str, Any]:
    """The ablation ladder (see the module docstring): choices on `n_train` training pictures, then every rung scored
    once on the `n` held-out pictures. Returns the rungs, the metrics per scene type of the best and of DAAM, and
    the time each trick costs."""
    pipe = load_model(model)
    settings = EvalSettings(steps, cfg_scale, sampler)
    everything = LADDER_NEEDS
    train = []
    for scene in scenes(pipe, training_prompts(n_train, seed), everything, settings, progress, desc="train"):
        _compact(scene.trace)
        train.append(scene)
    rungs, best = ladder_rungs(train, progress)
    del train  # the kept training traces (about 30 MB each)
    eval_methods = [r.method for r in rungs]
    all_scores = [Scores() for _ in rungs]
    seconds: list[list[float]] = [[] for _ in rungs]
    skipped, n_scenes = 0, 0
    pairs = world.held_out_prompts(n, seed)
    for scene in scenes(pipe, pairs, everything, settings, progress, desc="evaluate"):
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
    timed = (
        recording_costs(pipe, pairs[:timing], list(plans.values()), **settings.generate_kwargs())
        if timing
        else [0.0] * len(plans)
    )
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
            **settings.generate_kwargs(),
        },
    }


FAITH_KEYS = {"sdviz": "sdviz", "DAAM 0.2.0": "daam", "best": "best"}  # table row -> faithfulness record method


def faithfulness_summary() -> dict[str, Any] | None:
    """The faithfulness of each map method (`sdviz.toy.faithfulness`), from its committed record; None without one.
    It is measured separately from the ladder (its own pictures and ablations), and read here for the column."""
    from sdviz.toy import faithfulness

    return faithfulness.load()["summary"] if faithfulness.RECORD.is_file() else None


def faithfulness_note(faith: dict[str, Any]) -> str:
    """The line under the table that says what the faithfulness column is."""
    from sdviz.toy import faithfulness

    data = faithfulness.load()
    s = data["settings"]
    return (
        "\nfaithfulness: median over held-out pictures of the pixel change inside the map's top "
        f"{100 * s['region']:.0f} % when its word is ablated, divided by the change there when another object word "
        f"of the prompt is ablated (1 = no better than chance; a map of uniform noise scores "
        f"{faith['random']['all']['ratio']:.2f}; in a one-object scene both words cause the same object, so ratios "
        "near 1 are expected there). The share of the ablation's pixel change that lies in the map's top 10 %: "
        + ", ".join(f"{k} {v['all']['deletion'][data['fractions'].index(0.1)]:.2f}" for k, v in faith.items())
        + ". Measured separately from the ladder (sdviz/toy/faithfulness.json: "
        f"{len(data['pictures'])} held-out pictures, {s['steps']} {s['sampler']} steps, cfg {s['cfg_scale']:g}, "
        f"{data['threads']} torch thread)."
    )


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
    faith = faithfulness_summary()
    print(
        "| method | scenes | objects | mIoU (per object) | 2-class mIoU (mean threshold) | 2-class at tau | leakage | "
        "faithfulness |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, m in (("sdviz", r["sdviz"]), ("DAAM 0.2.0", r["daam"]), ("best", r["best"]["metrics"])):
        for kind, label in (("single", "one object"), ("pair", "two objects")):
            miou = m["single_miou" if kind == "single" else "pair_iou"]
            leak = "-" if kind == "single" else f3(m["leakage"])
            ratio = faith.get(FAITH_KEYS[name], {}).get(kind, {}).get("ratio") if faith else None
            print(
                f"| {name} | {label} | {m[f'{kind}_objects']} | {f3(miou)} | {f3(m[f'{kind}_two_class_miou'])} | "
                f"{f3(m[f'{kind}_two_class_miou_tau'])} | {leak} | {'-' if ratio is None else f'{ratio:.2f}'} |"
            )
    if faith:
        print(faithfulness_note(faith))
    print("\nThree or more objects: the world draws at most two (not measured).")
    g, b = r["goals"], r["best"]["metrics"]
    said = []
    for k, v in g.items():
        ok = b[k] is not None and (b[k] <= v if k == "leakage" else b[k] >= v)
        said.append(f"{k} {f3(b[k])} {'<=' if k == 'leakage' else '>='} {v}: {'met' if ok else 'NOT met'}")
    print("Goals for the best: " + "; ".join(said))
    same = "the recipe of" if r["best"]["is_BEST"] else "NOT yet the recipe of (copy it there)"
    print(f"best: {r['best']['aggregator']}; {same} sdviz.tracing.aggregate.BEST, `method='best'`.")
    return "\n".join(lines) + "\n"

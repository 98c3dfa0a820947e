"""`sdviz sae ...`: collect activations, train an SAE, grade its features, check them causally.

    sdviz sae collect runs/sae/train --pairs 240 --split train --budget-mb 500 --threads 1
    sdviz sae collect runs/sae/held_out --pairs 100 --split held_out --budget-mb 300 --threads 1
    sdviz sae train runs/sae/train runs/sae/up0 --point unet.up_blocks.0.attentions.1.hook_block_out
    sdviz sae grade runs/sae/up0 --select runs/sae/train --test runs/sae/held_out
    sdviz sae causal runs/sae/up0 --collection runs/sae/held_out --splice 40 --concepts red,blue,circle --steer 1
    sdviz sae ship runs/sae/up0 runs/sae/up1 --train runs/sae/train --held-out runs/sae/held_out
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

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


def _grade(a: argparse.Namespace) -> int:
    from sdviz.concepts.collect import Activations
    from sdviz.concepts.grade import grade
    from sdviz.concepts.sae import SAE, measure

    sae = SAE.load(Path(a.run) / "sae.safetensors")
    test = Activations(a.test)
    report = grade(sae, Activations(a.select), test)
    rows = test.load(sae.point)
    report["held_out"] = measure(sae, rows["x"].float())  # reconstruction on held-out pictures
    report["held_out_fvu_by_step"] = [  # the same, step by step (the variance is each step's own)
        round(measure(sae, rows["x"][rows["step"] == s].float())["fvu"], 4) for s in test.record["kept_steps"]
    ]
    (Path(a.run) / "grade.json").write_text(json.dumps(report, indent=1) + "\n")
    for row in report["table"]:
        print(f"{row['concept']:>12} feature {row['feature']:>5}  AUROC {row['auroc']:.3f}  on at {row['switches_on']}")
    print(f"share >= 0.95: {report['share_at_0.95']}; held out: {report['held_out']}")
    return 0


def _causal(a: argparse.Namespace) -> int:
    from sdviz.concepts.collect import Activations, CollectSettings
    from sdviz.concepts.measure import ablation_effect, splice_effect, steering_rate
    from sdviz.concepts.sae import SAE
    from sdviz.pipeline import load_pipeline
    from sdviz.toy import judge

    run = Path(a.run)
    sae = SAE.load(run / "sae.safetensors")
    pipe = load_pipeline(a.model)
    acts = Activations(a.collection)
    settings = CollectSettings(**acts.record["settings"])
    rows = {r["concept"]: r for r in json.loads((run / "grade.json").read_text())["table"]}
    path = run / "causal.json"
    report = json.loads(path.read_text()) if path.exists() else {"settings": acts.record["settings"]}

    def save() -> None:
        path.write_text(json.dumps(report, indent=1) + "\n")

    if a.splice and "splice" not in report:
        pairs = acts.pairs[: a.splice]
        base = [judge.judge(im.numpy(), p) for im, (p, _) in zip(acts.pictures()[: a.splice], pairs, strict=True)]
        report["splice"] = splice_effect(pipe, sae, pairs, settings, base)
        save()
        print("splice", report["splice"])
    sizes = [1, *([a.group] if a.group > 1 else [])]  # one feature, and the concept's best `--group` together

    def features(concept: str, m: int) -> int | list[int]:
        return rows[concept]["feature"] if m == 1 else rows[concept]["group"][:m]

    for gain in a.steer or []:
        for m in sizes:
            key = f"swap {gain:g}" + (f" group {m}" if m > 1 else "")
            if key not in report.get("steering", {}):
                red, blue = features("red", m), features("blue", m)
                result = steering_rate(pipe, sae, red, blue, settings, "swap", gain, a.n)
                report.setdefault("steering", {})[key] = result
                save()
                print(key, report["steering"][key])
    cache: dict = {}
    control = world_pairs(a.control, "train", seed=7)  # one pool of control prompts, filtered per concept
    for concept in a.concepts.split(",") if a.concepts else []:
        clamp = -a.clamp * rows[concept]["activation"]
        edits = [(None, 1), *([(clamp, 1)] if a.clamp else []), *[(None, m) for m in sizes[1:]]]  # (clamp, size)
        for value, m in edits:
            key = f"{concept} {'ablate' if value is None else 'clamp'}" + (f" {m}" if m > 1 else "")
            if key in report.get("ablation", {}):
                continue
            result = ablation_effect(pipe, sae, concept, features(concept, m), settings, a.n, value, control, cache)
            report.setdefault("ablation", {})[key] = result
            save()
            print(key, {k: result[k] for k in ("target_before", "target_after", "control_moved_points", "passes")})
    return 0


def _ship(a: argparse.Namespace) -> int:
    from sdviz.concepts.card import SHIPPED, ship

    record = ship(a.runs, a.train, a.held_out, a.out or SHIPPED, a.sweep or [])
    print(f"shipped {', '.join(record['saes'])} to {a.out or SHIPPED}")
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
    g = sub.add_parser("grade", help="each world concept's best feature and its AUROC (writes RUN/grade.json)")
    g.add_argument("run", help="a training run folder (holds sae.safetensors)")
    g.add_argument("--select", required=True, help="the collection the best features are chosen on")
    g.add_argument("--test", required=True, help="the held-out collection they are measured on")
    g.add_argument("--threads", type=int, default=None)
    g.set_defaults(func=_grade)
    k = sub.add_parser("causal", help="splice, ablate, clamp and steer with the judge (writes RUN/causal.json)")
    k.add_argument("run")
    k.add_argument("--collection", required=True, help="the held-out collection (its settings and first pairs)")
    k.add_argument("--model", default=None)
    k.add_argument("--splice", type=int, default=0, help="splice the reconstruction into the first N pairs")
    k.add_argument("--concepts", default="", help="comma-separated concepts to ablate, e.g. red,blue,circle")
    k.add_argument("--clamp", type=float, default=0.0, help="also clamp at -CLAMP x the feature's activation")
    k.add_argument("--group", type=int, default=0, help="also ablate (and steer) a concept's GROUP best features")
    k.add_argument("--steer", type=float, action="append", help="swap red for blue with this gain (repeatable)")
    k.add_argument("--n", type=int, default=8, help="prompts per concept (and per steering run)")
    k.add_argument("--control", type=int, default=16, help="control prompts (those naming the concept left out)")
    k.add_argument("--threads", type=int, default=None)
    k.set_defaults(func=_causal)
    s = sub.add_parser("ship", help="copy graded runs to sdviz/toy/sae with sae_record.json and SAE_CARD.md")
    s.add_argument("runs", nargs="+")
    s.add_argument("--train", required=True)
    s.add_argument("--held-out", required=True)
    s.add_argument("--out", default=None)
    s.add_argument("--sweep", nargs="*", help="more graded runs the card compares (not shipped)")
    s.set_defaults(func=_ship)
    a = p.parse_args(argv)
    if getattr(a, "threads", None):
        import torch

        torch.set_num_threads(a.threads)
    try:
        return a.func(a)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"sdviz sae {a.command}: error: {e}")
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

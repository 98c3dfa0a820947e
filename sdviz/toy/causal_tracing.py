"""Causal tracing on the toy world, graded by the judge: where is a colour, a shape, a size, a position carried?

For each attribute the judge reads, take held-out prompts ("a large purple triangle on the left"), corrupt that one
attribute ("a large yellow triangle on the left"), and generate both from the same seed. Then generate the corrupted
prompt again with one *cell* restored from the clean run (`sdviz.causal.Patch`, `PatchText`):

    a UNet block's output (`...attentions.k.hook_block_out`) in a window of steps (early, middle, late thirds)
    the context one cross-attention layer reads (`...hook_context`) in a window of steps
    the text encoder's residual stream after layer L at one token position: the attribute's token(s), the subject's
    last token (the noun of the first object), or the end token

and let the judge read the patched picture. A cell's score is the *share of the clean attribute restored*: among the
pairs whose clean picture shows the attribute and whose corrupted picture does not, the fraction whose patched
picture shows it again. The record keeps, per cell, that share and the number of pairs (`pairs`); the prompts,
seeds and settings are at its top, so the figure (`sdviz.viz.causal_figures`) is drawn from the record alone.

    python -m sdviz.toy.causal_tracing --threads 1 --out readme-images/causal_tracing.json   (the measured one-off)
    python -m sdviz.toy.causal_tracing --quick                                             (a few pairs and cells)

The pictures of one cell are generated as one batch (`batch_invariant` off: the whole batch in one UNet call), which
is what makes the sweep affordable on a CPU; clean, corrupted and patched runs are batched alike, so they stay
comparable. The reference to compare with: Basu et al. 2024 (ICLR), on SD 1.5 an attribute is spread over the UNet
but carried by one state of the text encoder (the first layer, at the last subject token).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sdviz.causal import Patch, PatchText, intervene, record
from sdviz.toy import judge, world

ATTRIBUTES = ("colour", "shape", "size", "position", "relation")
WINDOWS = {"early": (0.0, 0.5), "late": (0.5, 1.0)}  # halves of the steps
TOKENS = ("attribute", "subject")  # the changed token(s); the first object's noun (Basu et al.'s last subject token)
# the blocks patched: the middle (8x8), the last up block (16x16) and the first down block (16x16)
BLOCKS = (
    "unet.mid_block.attentions.0.hook_block_out",
    "unet.up_blocks.1.attentions.1.hook_block_out",
    "unet.down_blocks.0.attentions.0.hook_block_out",
)
# candidate pairs per attribute: more where the model draws the attribute less often (the judge keeps those it reads)
CANDIDATES = {"colour": 44, "shape": 44, "size": 44, "position": 64, "relation": 72}
MIN_PAIRS = 40  # an attribute with fewer valid pairs is recorded, but its shares are not drawn as measured
RECORD = Path(__file__).resolve().parents[2] / "readme-images" / "causal_tracing.json"
OPPOSITE = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}


@dataclass(frozen=True)
class Settings:
    """How every picture of the sweep is generated (fewer steps than the model card's 50: see the record)."""

    steps: int = 10
    cfg_scale: float = 5.0
    sampler: str = "ddim"
    pairs: int = 0  # candidate prompt/seed pairs per attribute (0: CANDIDATES; the judge keeps those it reads)
    seed: int = 0

    def generate_kwargs(self) -> dict[str, Any]:
        return {"steps": self.steps, "cfg_scale": self.cfg_scale, "sampler": self.sampler, "progress": False}


def corrupt(spec: world.SceneSpec, attribute: str, rng: random.Random) -> world.SceneSpec | None:
    """The scene with one attribute changed (of the first object; the relation's direction), or None if the
    prompt does not say that attribute."""
    first, rest = spec.objects[0], spec.objects[1:]
    if attribute == "relation":
        return world.SceneSpec(spec.objects, relation=OPPOSITE[spec.relation]) if spec.relation else None
    if len(spec.objects) != 1:
        return None
    if attribute == "colour":
        obj = world.ObjectSpec(rng.choice([c for c in world.COLOURS if c != first.colour]), first.shape, first.size)
    elif attribute == "shape":
        obj = world.ObjectSpec(first.colour, rng.choice([s for s in world.SHAPES if s != first.shape]), first.size)
    elif attribute == "size":
        if first.size is None:
            return None
        obj = world.ObjectSpec(first.colour, first.shape, "small" if first.size == "large" else "large")
    elif attribute == "position":
        if spec.position is None:
            return None
        return world.SceneSpec((first,), position=rng.choice([p for p in world.POSITIONS if p != spec.position]))
    else:
        raise ValueError(f"attribute must be one of {ATTRIBUTES}, got {attribute!r}")
    return world.SceneSpec((obj, *rest), position=spec.position)


def pairs_for(attribute: str, n: int, tokenizer: Any, seed: int = 0) -> list[tuple[str, str, int]]:
    """n (clean prompt, corrupted prompt, seed) triples from the held-out split, with as many tokens in both."""
    rng = random.Random(f"{attribute}-{seed}")
    specs = world.held_out_specs()
    rng.shuffle(specs)
    out: list[tuple[str, str, int]] = []
    while len(out) < n:
        before = len(out)
        for spec in specs:
            bad = corrupt(spec, attribute, rng)
            if bad is None:
                continue
            clean, dirty = spec.caption(), bad.caption()
            if tokenizer.encode(clean).length == tokenizer.encode(dirty).length:
                out.append((clean, dirty, rng.randrange(2**31)))
                if len(out) == n:
                    break
        if len(out) == before:
            raise ValueError(f"no held-out prompt says a {attribute} that can be corrupted")
    return out


def holds(picture: Any, prompt: str, attribute: str) -> bool:
    """Does the judge read `attribute` of `prompt` (its first object; the relation) in the picture?"""
    v = judge.judge(picture, prompt)
    o = v.objects[0]
    if attribute == "colour":
        return o.colour_ok
    if attribute == "shape":
        return o.colour_ok and o.shape_ok
    if attribute == "size":
        return o.colour_ok and bool(o.size_ok)
    return bool(o.position_ok)  # a position, or the relation (both objects carry the same verdict)


def token_positions(tokenizer: Any, clean: str, dirty: str) -> dict[str, list[int]]:
    """The positions patched in the text encoder: where the two prompts' tokens differ, the first object's noun,
    the end token."""
    a, b = tokenizer.encode(clean), tokenizer.encode(dirty)
    spec = world.parse_caption(clean)
    changed = [i for i in range(a.length) if a.ids[i] != b.ids[i]]
    noun = a.positions(spec.objects[0].shape)[0]  # its first occurrence: the first object's (one token)
    return {"attribute": changed, "subject": [noun], "end": [a.length - 1]}


def cells(pipe: Any, attribute: str, quick: bool) -> list[dict[str, Any]]:
    """Every cell of the sweep for one attribute, most telling first (a run cut short keeps the first ones): the
    text encoder's first and last layer at the subject's last token (Basu et al.'s causal state), the middle and the
    last up block in each half of the steps, the first layer at the attribute's token, then the others."""
    from sdviz.hooks import hook_names

    hook_names(pipe, list(BLOCKS))  # each exists (a renamed layer raises, listing close names)
    mid, up, down = BLOCKS
    last = pipe.config.clip.layers - 1
    if quick:
        return [{"kind": "block", "hook": mid, "window": "early"}, {"kind": "text", "layer": 0, "token": "subject"}]
    out = [{"kind": "text", "layer": 0, "token": "subject"}]
    out += [{"kind": "block", "hook": h, "window": w} for h in (mid, up) for w in WINDOWS]
    out += [{"kind": "text", "layer": last, "token": "subject"}]
    if attribute != "shape":  # for a shape the attribute's token is the subject's
        out += [{"kind": "text", "layer": 0, "token": "attribute"}]
    out += [{"kind": "block", "hook": down, "window": w} for w in WINDOWS]
    out += [{"kind": "text", "layer": i, "token": "subject"} for i in range(1, last)]
    if attribute != "shape":
        out += [{"kind": "text", "layer": last, "token": "attribute"}]
    return out


def trace_attribute(
    pipe: Any, attribute: str, settings: Settings, quick: bool, bar: Any, partial: Any = None, done: Any = None
) -> dict[str, Any]:
    """The clean and corrupted runs of one attribute's pairs, and every cell's share restored. `done`: this
    attribute's entry from an earlier run with the same settings; its cells are kept, not measured again (its pairs
    and the judge's valid ones must come out the same, or it is an error)."""
    triples = pairs_for(attribute, settings.pairs or CANDIDATES[attribute], pipe.tokenizer, settings.seed)
    clean_prompts, dirty_prompts, seeds = (list(x) for x in zip(*triples, strict=True))
    kw = settings.generate_kwargs()
    clean = record(pipe, clean_prompts, hooks=list(BLOCKS), seed=seeds, **kw)
    dirty = pipe.generate(dirty_prompts, seed=seeds, **kw)
    valid = [
        i
        for i in range(len(triples))
        if holds(clean.result.images[i], clean_prompts[i], attribute)
        and not holds(dirty.images[i], clean_prompts[i], attribute)
    ]
    positions = [token_positions(pipe.tokenizer, c, d) for c, d in zip(clean_prompts, dirty_prompts, strict=True)]
    results: list[dict[str, Any]] = []
    entry = {
        "pairs": [{"clean": c, "corrupted": d, "seed": s} for c, d, s in triples],
        "valid": valid,
        "clean_rate": sum(holds(clean.result.images[i], clean_prompts[i], attribute) for i in range(len(triples)))
        / len(triples),
        "cells": results,
    }
    if done is not None:
        if done["pairs"] != entry["pairs"] or done["valid"] != valid:
            raise ValueError(
                f"{attribute}: the earlier record's pairs or valid pairs differ from this run's; "
                "measure it again without --resume"
            )
        results += done["cells"]
        bar.update(len(done["cells"]))
    key = [{k: v for k, v in c.items() if k not in ("restored", "pairs")} for c in results]
    for cell in cells(pipe, attribute, quick):
        if cell in key:
            continue
        if cell["kind"] == "text":
            pos = [p[cell["token"]] for p in positions]
            iv = PatchText(clean_prompts, dirty_prompts, cell["layer"], pos)
        else:
            iv = Patch(clean, hooks=cell["hook"], window=WINDOWS[cell["window"]])
        with intervene(pipe, iv):
            patched = pipe.generate(dirty_prompts, seed=seeds, **kw).images
        restored = [holds(patched[i], clean_prompts[i], attribute) for i in valid]
        results.append({**cell, "restored": sum(restored) / max(1, len(valid)), "pairs": len(valid)})
        bar.update(1)
        if partial is not None:
            partial(attribute, entry)  # a run cut short keeps every cell measured so far
    return entry


def run(
    pipe: Any = None,
    attributes: Sequence[str] = ATTRIBUTES,
    settings: Settings = Settings(),
    quick: bool = False,
    threads: int | None = None,
    out: str | Path | None = None,
    resume: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The sweep for each attribute; returns the record (see the module docstring), and writes it to `out` (if
    given) after every cell, so that a run cut short keeps what it measured. `resume`: an earlier record with the
    same settings, whose cells are kept (only the missing ones are measured)."""
    from sdviz.pipeline import load_pipeline

    if threads:
        torch.set_num_threads(threads)
    pipe = load_pipeline() if pipe is None else pipe
    before = pipe.batch_invariant
    pipe.batch_invariant = False  # one UNet call per batch: the sweep's speed (see the module docstring)
    if resume is not None and (resume["settings"] != asdict(settings) or resume["quick"] != quick):
        raise ValueError("--resume needs a record made with the same settings")
    earlier = {a: e for a, e in (resume or {}).get("attributes", {}).items() if a in attributes}
    start = time.time()  # a resumed run's seconds are its own: the earlier runs' stay in their records
    measured: dict[str, Any] = {}

    def record_of() -> dict[str, Any]:
        return {
            "what": "share of the clean attribute restored by patching one cell of the clean run into the corrupted "
            "run",
            "settings": asdict(settings),
            "windows": WINDOWS,
            "quick": quick,
            "threads": torch.get_num_threads(),
            "seconds": round(time.time() - start, 1),
            "attributes": measured,
        }

    def keep(attribute: str, entry: dict[str, Any]) -> None:
        measured[attribute] = entry
        if out:
            Path(out).write_text(json.dumps(record_of(), indent=1) + "\n")

    total = sum(len(cells(pipe, a, quick)) for a in attributes)
    try:
        with tqdm(total=total, desc="causal tracing", unit="cell") as bar:
            for a in attributes:
                keep(a, trace_attribute(pipe, a, settings, quick, bar, keep, earlier.get(a)))
    finally:
        pipe.batch_invariant = before
    return record_of()


def merge(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One record from runs of the sweep over different attributes (run side by side, one process each): their
    attributes together, each run's attributes, seconds and threads in `runs`, `seconds` the longest run's."""
    first = records[0]
    if any(r["settings"] != first["settings"] or r["quick"] != first["quick"] for r in records):
        raise ValueError("only runs with the same settings can be merged into one record")
    out = {k: v for k, v in first.items() if k != "attributes"}
    out["attributes"] = {a: e for r in records for a, e in r["attributes"].items()}
    out["runs"] = [{"attributes": list(r["attributes"]), "seconds": r["seconds"], "threads": r["threads"]}
                   for r in records]  # fmt: skip
    out["seconds"] = max(r["seconds"] for r in records)
    out["threads"] = max(r["threads"] for r in records)
    return out


def load(path: str | Path = RECORD) -> dict[str, Any]:
    """The committed record, checked: every attribute has its pairs, every cell a share in [0, 1] and `pairs`."""
    data = json.loads(Path(path).read_text())
    for key in ("settings", "attributes", "seconds", "threads"):
        if key not in data:
            raise ValueError(f"{path}: the causal tracing record lacks {key!r}")
    for attribute, entry in data["attributes"].items():
        if not entry.get("pairs") or not entry.get("cells"):
            raise ValueError(f"{path}: {attribute} has no pairs or no cells")
        for cell in entry["cells"]:
            if not 0.0 <= cell.get("restored", -1) <= 1.0 or cell.get("pairs") != len(entry["valid"]):
                raise ValueError(f"{path}: a {attribute} cell is damaged: {cell}")
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sdviz causal", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few pairs and cells (for tests)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 to run beside other work)")
    parser.add_argument("--steps", type=int, default=Settings.steps)
    parser.add_argument("--pairs", type=int, default=None, help="candidate pairs per attribute")
    parser.add_argument("--attributes", nargs="+", default=list(ATTRIBUTES), choices=ATTRIBUTES)
    parser.add_argument("--out", default=None, help="write the record here (default: print a summary only)")
    parser.add_argument("--merge", nargs="+", default=None, help="merge the records of runs side by side (to --out)")
    parser.add_argument("--resume", default=None, help="an earlier record: keep its cells, measure the missing ones")
    args = parser.parse_args(argv)
    if args.merge:
        data = merge([json.loads(Path(p).read_text()) for p in args.merge])
        Path(args.out or RECORD).write_text(json.dumps(data, indent=1) + "\n")
        return 0
    pairs = args.pairs or (4 if args.quick else 0)
    resume = json.loads(Path(args.resume).read_text()) if args.resume else None
    settings = Settings(steps=args.steps, pairs=pairs)
    data = run(None, args.attributes, settings, args.quick, args.threads, args.out, resume)
    for attribute, entry in data["attributes"].items():
        best = max(entry["cells"], key=lambda c: c["restored"])
        where = best.get("hook") or f"text layer {best.get('layer')}"
        print(
            f"{attribute}: {best['pairs']} pairs; best cell {where} {best.get('window', best.get('token'))}: "
            f"{best['restored']:.2f} restored"
        )
    print(f"{data['seconds']} s on {data['threads']} thread(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Inversion measured on ground truth: the toy world's own scenes, never drawn by the model, with their masks.

    python -m sdviz.inversion.measure --n 40 --threads 1 [--partial runs/inversion.partial.json]   # the record
    python -m sdviz.inversion.measure --quick --out /tmp/inversion.json                             # tests: 2 scenes

For each held-out (caption, seed) pair of the evaluation (`world.held_out_prompts`), the world renders the scene
(`world.scene_from_spec`: flat shapes, exact masks); the embedded model never drew it. Per scene:

- reconstruction PSNR (dB, the 64x64 RGB picture) of DDIM inversion redrawn at cfg 1 and at cfg 5, of null-text
  inversion and of negative-prompt inversion (both redrawn at cfg 5), beside the VAE's own round trip (the ceiling:
  the redraw decodes latents, so it cannot beat the VAE), and the seconds each inversion took;
- word-map IoU: the null-text redraw is traced, and each object's noun map (its shape word) per map method
  (`aggregate.METHODS`), normalised and thresholded at the method's tau, is compared with the object's true mask;
  beside it the same scores on the picture the model *generates* from the same caption and seed (the attention
  check's protocol, `sdviz.toy.validate_attention`: there the truth is the colour segmentation of the generated
  picture);
- editing: replace the colour word of object 0 by a colour the scene lacks, prompt-to-prompt on the null-text
  inversion with a local blend of the two colour words; the judge must read the new colour, and the PSNR against the
  original picture outside the object's true mask (widened by one pixel: the anti-aliased edge) is kept.

The record is written after every scene (`--partial`, resumable: scenes already there are skipped), so a long run can
stop and go on. `summarise` turns its rows into the record's summary.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdviz.inversion.explain import edit_inverted
from sdviz.inversion.inversion import invert, psnr
from sdviz.inversion.walk import EARLY_STOP, INNER_STEPS
from sdviz.pipeline import image_to_tensor, load_pipeline, tensor_to_images
from sdviz.toy import judge, world
from sdviz.toy.attention_scores import normalise, object_words
from sdviz.tracing import aggregate, trace

FORMAT = 1
STEPS, CFG = 50, 5.0  # the evaluation's settings (sdviz.toy.evaluate.EVAL)
PROMPT_SEED = 0
INVERSIONS = ("ddim_cfg1", "ddim_cfg5", "null_text", "negative_prompt")
# miou_gap: generated - inverted mIoU at most this (the maps of an inverted scene no worse than a generated picture's)
GOALS = {"null_text_psnr_db": 30.0, "miou_gap": 0.05, "edit_colour_rate": 0.90, "edit_outside_psnr_db": 27.0}


def _ious(tr: Any, spec: world.SceneSpec, truths: list[np.ndarray]) -> dict[str, list[float]]:
    """Per map method, the IoU of each object's noun map with its truth (objects with no truth skipped)."""
    words = tr.encodings[0]["words"]
    word_index = np.array(tr.encodings[0]["word_index"])
    out: dict[str, list[float]] = {}
    for name, agg in aggregate.METHODS.items():
        maps = tr.token_maps(0, method=agg)  # (77, H, W)
        scores = []
        for (_, _, si), truth in zip(object_words(words, spec), truths, strict=True):
            if truth.sum() < judge.MIN_AREA:
                continue
            noun = normalise(maps[np.flatnonzero(word_index == si).tolist()].mean(0))
            scores.append(judge.iou(noun > agg.threshold, truth))
        out[name] = scores
    return out


def _edit_target(spec: world.SceneSpec, rng: np.random.Generator) -> tuple[str, str, str]:
    """Object 0 in a colour the scene lacks: (target caption, old colour, new colour)."""
    old = spec.objects[0].colour
    free = [c for c in world.COLOURS if c not in {o.colour for o in spec.objects}]
    new = free[int(rng.integers(len(free)))]
    objects = (world.ObjectSpec(new, spec.objects[0].shape, spec.objects[0].size), *spec.objects[1:])
    return world.SceneSpec(objects, spec.position, spec.relation).caption(), old, new


@torch.no_grad()
def _vae_psnr(pipe: Any, picture: Any) -> float:
    z = pipe.encode_images(image_to_tensor(picture, *picture.size[::-1]))  # (1, 3, H, W) -> (1, 4, h, w)
    return psnr(picture, tensor_to_images(pipe.decode_latents(z))[0])


def measure_scene(pipe: Any, prompt: str, seed: int, steps: int = STEPS, cfg: float = CFG) -> dict[str, Any]:
    """Every measurement of one scene (see the module docstring), as one row of the record."""
    scene = world.scene_from_spec(prompt, seed)
    picture, spec = scene.pil(), scene.spec
    row: dict[str, Any] = {"prompt": scene.caption, "seed": seed, "objects": len(spec.objects)}
    ddim = invert(pipe, picture, scene.caption, "ddim", steps, cfg, progress=False)  # the cfg-1 walk alone
    inv = invert(pipe, picture, scene.caption, "null_text", steps, cfg, progress=False)  # the walk, then Alg. 1
    walk = ddim.seconds  # negative-prompt inversion is the same walk (it only changes the redraw's negative prompt)
    row["seconds"] = {"ddim_cfg1": walk, "ddim_cfg5": walk, "negative_prompt": walk, "null_text": inv.seconds}
    redraws = {
        "ddim_cfg1": ddim.redraw(pipe, cfg_scale=1.0).image,
        "ddim_cfg5": ddim.redraw(pipe).image,
        "negative_prompt": ddim.redraw(pipe, negative_prompt=scene.caption).image,
    }
    with trace(pipe, **aggregate.needs_of()) as tr:  # the null-text redraw, traced: its word maps
        redraws["null_text"] = inv.redraw(pipe).image
    row["psnr_db"] = {k: psnr(picture, redraws[k]) for k in INVERSIONS}
    row["psnr_db"]["vae"] = _vae_psnr(pipe, picture)
    row["null_text_final_loss"] = inv.losses[-1] if inv.losses else None
    row["iou_inverted"] = _ious(tr, spec, [o.mask for o in scene.objects])
    with trace(pipe, **aggregate.needs_of()) as tg:  # the model's own picture of the caption and seed
        generated = pipe.generate(scene.caption, seed=seed, steps=steps, cfg_scale=cfg, sampler="ddim",
                                  progress=False).image  # fmt: skip
    row["iou_generated"] = _ious(tg, spec, [judge.segment(generated, o.colour) for o in spec.objects])
    row["edit"] = edit_scene(pipe, scene, inv, seed)
    return row


def edit_scene(pipe: Any, scene: world.Scene, inv: Any, seed: int) -> dict[str, Any]:
    """Replace object 0's colour word on an inversion (p2p, local blend of the two colour words): does the judge read
    the new colour, and the PSNR against the picture outside the object's true mask widened by one pixel."""
    target, old, new = _edit_target(scene.spec, np.random.default_rng(seed))
    edited = edit_inverted(pipe, inv, target, blend=[old, new]).images[1]
    mask = torch.from_numpy(scene.objects[0].mask).float()[None, None]  # (1, 1, H, W)
    outside = ~(torch.nn.functional.max_pool2d(mask, 3, stride=1, padding=1)[0, 0] > 0).numpy()  # widened by 1 px
    return {
        "target": target,
        "colour_ok": bool(judge.judge(edited, target).objects[0].colour_ok),
        "outside_psnr_db": psnr(scene.pil(), edited, outside),
    }


def measure_edits(n: int, method: str = "ddim", steps: int = STEPS, cfg: float = CFG) -> list[dict[str, Any]]:
    """The colour edit alone on the first `n` scenes, on another inversion (`method`): one row each."""
    from tqdm.auto import tqdm

    pipe = load_pipeline()
    rows = []
    for prompt, seed in tqdm(world.held_out_prompts(n, PROMPT_SEED), desc=f"edits on {method}"):
        scene = world.scene_from_spec(prompt, seed)
        inv = invert(pipe, scene.pil(), scene.caption, method, steps, cfg, progress=False)
        rows.append({"prompt": scene.caption, "seed": seed, **edit_scene(pipe, scene, inv, seed)})
    return rows


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and np.isfinite(x)]
    return float(np.mean(xs)) if xs else None


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The record's summary: mean PSNR and seconds per inversion, mIoU per map method (inverted, generated, gap),
    the edit's colour rate and outside PSNR, and which goals are met."""
    methods = list(aggregate.METHODS)
    psnr_db = {k: _mean([r["psnr_db"][k] for r in rows]) for k in (*INVERSIONS, "vae")}
    seconds = {k: _mean([r["seconds"][k] for r in rows]) for k in INVERSIONS}
    miou = {}
    for m in methods:
        inv = _mean([x for r in rows for x in r["iou_inverted"][m]])
        gen = _mean([x for r in rows for x in r["iou_generated"][m]])
        gap = None if inv is None or gen is None else gen - inv
        miou[m] = {"inverted": inv, "generated": gen, "gap": gap}
    edit = {
        "colour_rate": _mean([float(r["edit"]["colour_ok"]) for r in rows]),
        "outside_psnr_db": _mean([r["edit"]["outside_psnr_db"] for r in rows]),
    }
    passed = {
        "null_text_psnr_db": (psnr_db["null_text"] or 0) >= GOALS["null_text_psnr_db"],
        "miou_gap": all(v["gap"] is not None and v["gap"] <= GOALS["miou_gap"] for v in miou.values()),
        "edit_colour_rate": (edit["colour_rate"] or 0) >= GOALS["edit_colour_rate"],
        "edit_outside_psnr_db": (edit["outside_psnr_db"] or 0) >= GOALS["edit_outside_psnr_db"],
    }
    return {"n": len(rows), "psnr_db": psnr_db, "seconds": seconds, "miou": miou, "edit": edit, "passed": passed}


def measure(
    n: int,
    partial: str | Path | None = None,
    steps: int = STEPS,
    cfg: float = CFG,
    progress: bool = True,
    note: str = "",
    shard: tuple[int, int] = (0, 1),
) -> dict[str, Any]:
    """Measure the first `n` held-out scenes (resuming from `partial` when it holds some) and return the record.

    `shard` (i, k): only scenes i, i + k, i + 2k, ... (k processes side by side; `merge` joins their records)."""
    from tqdm.auto import tqdm

    pipe = load_pipeline()
    pairs = world.held_out_prompts(n, PROMPT_SEED)[shard[0] :: shard[1]]
    rows: list[dict[str, Any]] = []
    path = Path(partial) if partial else None
    if path is not None and path.is_file():
        rows = [r for r in json.loads(path.read_text())["rows"] if [r["prompt"], r["seed"]] in map(list, pairs)]
    done = {(r["prompt"], r["seed"]) for r in rows}
    start = time.perf_counter()
    for prompt, seed in tqdm(pairs, desc="inversion record", disable=not progress):
        if (prompt, seed) in done:
            continue
        rows.append(measure_scene(pipe, prompt, seed, steps, cfg))
        if path is not None:
            path.write_text(json.dumps(record(rows, n, steps, cfg, time.perf_counter() - start, note), indent=1))
    return record(rows, n, steps, cfg, time.perf_counter() - start, note)


def merge(records: Sequence[dict[str, Any]], note: str = "") -> dict[str, Any]:
    """One record from the records of several shards: their rows in the evaluation's order (the first scenes without
    a gap: a shard stopped early leaves the later ones out), minutes summed."""
    first = records[0]["settings"]
    order = {tuple(p): i for i, p in enumerate(world.held_out_prompts(first["n_asked"], PROMPT_SEED))}
    unique = {(r["prompt"], r["seed"]): r for d in records for r in d["rows"]}  # shards resumed from one record
    rows = sorted(unique.values(), key=lambda r: order[(r["prompt"], r["seed"])])
    kept = 0
    while kept < len(rows) and order[(rows[kept]["prompt"], rows[kept]["seed"])] == kept:
        kept += 1
    rows = rows[:kept]
    minutes = sum(d["measured"]["minutes"] for d in records)
    return record(rows, first["n_asked"], first["steps"], first["cfg_scale"], 60 * minutes, note)


def add_edits(data: dict[str, Any], edits: dict[str, Any]) -> dict[str, Any]:
    """Put the rows of `--edits-with METHOD` into the record, with their colour rate and outside PSNR."""
    rows = edits["rows"]
    data[f"edit_on_{edits['method']}"] = {
        "n": len(rows),
        "colour_rate": _mean([float(r["colour_ok"]) for r in rows]),
        "outside_psnr_db": _mean([r["outside_psnr_db"] for r in rows]),
        "rows": rows,
    }
    return data


def record(rows: list[dict], n: int, steps: int, cfg: float, seconds: float, note: str = "") -> dict[str, Any]:
    """The JSON record: what was measured, how, the summary and every scene's row."""
    return {
        "format": FORMAT,
        "what": "inversion of the toy world's own held-out scenes (never drawn by the model), with their true masks",
        "settings": {"n_asked": n, "prompt_seed": PROMPT_SEED, "steps": steps, "cfg_scale": cfg, "sampler": "ddim",
                     "null_text": {"inner_steps": INNER_STEPS, "start": "caption", "early_stop": EARLY_STOP},
                     "edit": "replace object 0's colour word (p2p Replace 0.8/0.4), local blend of both colours",
                     "goals": GOALS},  # fmt: skip
        "measured": {"minutes": round(seconds / 60, 1), "torch_threads": torch.get_num_threads(), "note": note,
                     "torch": torch.__version__.split("+")[0], "machine": platform.machine()},  # fmt: skip
        "summary": summarise(rows),
        "rows": rows,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m sdviz.inversion.measure [--n 40] [--threads 1] [--partial FILE] [--out FILE] [--quick]`"""
    p = argparse.ArgumentParser(prog="python -m sdviz.inversion.measure", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--n", type=int, default=100, help="held-out scenes (the first n of the evaluation's list)")
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--partial", default=None, help="write the record here after every scene; resume from it")
    p.add_argument("--out", default=None, help="write the finished record here")
    p.add_argument("--note", default="", help="a line kept in the record (why n scenes, the machine's load)")
    p.add_argument("--quick", action="store_true", help="2 scenes at 10 steps (what the tests run)")
    p.add_argument("--shard", default="0/1", help="i/k: measure scenes i, i + k, ... only (k processes at once)")
    p.add_argument("--edits-with", default=None, help="instead: only the colour edit, on this inversion method")
    p.add_argument("--add-edits", nargs="+", default=None, help="--merge: also these --edits-with records")
    p.add_argument("--merge", nargs="+", default=None, help="instead: join these shards' records into --out")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.edits_with:
        rows = measure_edits(a.n, a.edits_with, a.steps)
        Path(a.out).write_text(json.dumps({"method": a.edits_with, "rows": rows}, indent=1) + "\n")
        return 0
    if a.merge:
        data = merge([json.loads(Path(f).read_text()) for f in a.merge], a.note)
        for f in a.add_edits or []:
            add_edits(data, json.loads(Path(f).read_text()))
    else:
        n, steps = (2, 10) if a.quick else (a.n, a.steps)
        i, k = (int(v) for v in a.shard.split("/"))
        data = measure(n, a.partial, steps, note=a.note, shard=(i, k))
    if a.out:
        Path(a.out).write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps(data["summary"], indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

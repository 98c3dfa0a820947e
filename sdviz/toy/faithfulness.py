"""Faithfulness of the word maps: does a map point at the pixels its word *causes*?

A word map is a correlation: where the pixels attended to the word. An intervention tells what the word caused:
remove the word (`sdviz.causal.AblateWord`, its attention column zeroed at every cross-attention layer and step),
generate again from the same seed, and see which pixels change. A faithful map puts its top pixels where removing
its word changes the picture, and where removing another word of the prompt does not.

For each held-out picture, each object word w (its colour and its shape) and each map method (sdviz, daam, best, and
a map of uniform noise as the baseline):

    region R      the map's top `REGION` (10 %) pixels for w: where the map says w is
    ratio         mean pixel change in R when w is ablated / when another object word of the prompt is ablated
                  (the next in the prompt, cyclically), over the picture's words; the score is its median over the
                  pictures (1: the map knows nothing of causes; higher is better)
    deletion      the share of all the pixel change that ablating w causes which lies in the map's top f of pixels,
                  for f in FRACTIONS (a map that knows the causes rises fast; the noise map follows the diagonal)

    python -m sdviz.toy.faithfulness --threads 1 --out sdviz/toy/faithfulness.json

The record is the faithfulness column of the attention ladder's table (`attention_ladder.format_ladder`).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sdviz.causal import AblateWord, intervene
from sdviz.toy import world

RECORD = Path(__file__).with_name("faithfulness.json")
METHODS = ("sdviz", "daam", "best", "random")
REGION = 0.10  # the map's top 10 % of pixels (an object of the world covers 4-10 % of the picture)
FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
SETTINGS = {"steps": 10, "cfg_scale": 5.0, "sampler": "ddim"}  # as the causal tracing's pictures


def pixels(image: Any) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3) in [0, 1]


def top(m: np.ndarray, fraction: float) -> np.ndarray:
    """The mask of a map's top `fraction` of pixels (ties broken by position)."""
    k = max(1, int(round(fraction * m.size)))
    mask = np.zeros(m.size, dtype=bool)
    mask[np.argsort(-m.ravel(), kind="stable")[:k]] = True
    return mask.reshape(m.shape)


def picture(pipe: Any, prompt: str, seed: int, rng: np.random.Generator) -> dict[str, Any]:
    """One picture's ratios and deletion curves per method."""
    from sdviz.tracing import aggregate, trace

    spec = world.parse_caption(prompt)
    words = [w for o in spec.objects for w in (o.colour, o.shape)]
    words = list(dict.fromkeys(words))  # a shape named twice ("a circle above a circle") is one word
    with trace(pipe, **aggregate.needs_of()) as tr:
        clean = pixels(pipe.generate(prompt, seed=seed, progress=False, **SETTINGS).image)
    size = clean.shape[:2]
    change = {}
    for w in words:  # (H, W) how much each pixel changes when w is removed
        with intervene(pipe, AblateWord(w, mode="zero")):
            ablated = pixels(pipe.generate(prompt, seed=seed, progress=False, **SETTINGS).image)
        change[w] = np.abs(ablated - clean).mean(-1)
    out: dict[str, Any] = {"prompt": prompt, "seed": seed, "words": words, "objects": len(spec.objects)}
    for method in METHODS:
        if method == "random":
            maps = {w: rng.random(size) for w in words}
        else:
            maps = {w: m.float().numpy() for w, m in tr.word_maps(words, size=size, method=method).items()}
        own, other = [], []
        curves = []
        for i, w in enumerate(words):
            region = top(maps[w], REGION)
            own.append(float(change[w][region].mean()))
            other.append(float(change[words[(i + 1) % len(words)]][region].mean()))
            total = max(float(change[w].sum()), 1e-12)
            curves.append([float(change[w][top(maps[w], f)].sum()) / total for f in FRACTIONS])
        out[method] = {
            "ratio": float(np.mean(own) / max(np.mean(other), 1e-12)),
            "own": float(np.mean(own)),
            "other": float(np.mean(other)),
            "deletion": np.mean(curves, 0).round(4).tolist(),
        }
    return out


def measure(pipe: Any = None, n: int = 40, threads: int | None = None) -> dict[str, Any]:
    """The faithfulness of every map method over the first n held-out (prompt, seed) pairs: the record."""
    from sdviz.pipeline import load_pipeline

    if threads:
        torch.set_num_threads(threads)
    pipe = load_pipeline() if pipe is None else pipe
    rng = np.random.default_rng(0)
    start = time.time()
    rows = [picture(pipe, p, s, rng) for p, s in tqdm(world.held_out_prompts(n), desc="faithfulness", unit="picture")]
    return {
        "what": __doc__.split("\n")[0],
        "settings": {**SETTINGS, "region": REGION, "ablation": "AblateWord(mode='zero'), every layer and step"},
        "fractions": list(FRACTIONS),
        "threads": torch.get_num_threads(),
        "seconds": round(time.time() - start, 1),
        "summary": summarise(rows),
        "pictures": rows,
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method and scene kind ("all", "single", "pair"): the median ratio, the pictures, the mean deletion curve."""
    out: dict[str, Any] = {}
    for method in METHODS:
        out[method] = {}
        for kind, chosen in (("all", rows), ("single", [r for r in rows if r["objects"] == 1])):
            chosen = chosen if kind != "pair" else chosen
            if not chosen:
                continue
            out[method][kind] = {
                "ratio": float(np.median([r[method]["ratio"] for r in chosen])),
                "pictures": len(chosen),
                "deletion": np.mean([r[method]["deletion"] for r in chosen], 0).round(4).tolist(),
            }
        pairs = [r for r in rows if r["objects"] == 2]
        if pairs:
            out[method]["pair"] = {
                "ratio": float(np.median([r[method]["ratio"] for r in pairs])),
                "pictures": len(pairs),
                "deletion": np.mean([r[method]["deletion"] for r in pairs], 0).round(4).tolist(),
            }
    return out


def load(path: str | Path = RECORD) -> dict[str, Any]:
    """The committed record, checked (every method summarised, with its number of pictures)."""
    data = json.loads(Path(path).read_text())
    for method in METHODS:
        entry = data.get("summary", {}).get(method, {}).get("all")
        if not entry or entry.get("pictures") != len(data["pictures"]):
            raise ValueError(f"{path}: the faithfulness record lacks {method}'s summary over its pictures")
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdviz.toy.faithfulness", description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=40, help="held-out pictures")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    data = measure(None, args.n, args.threads)
    if args.out:
        Path(args.out).write_text(json.dumps(data, indent=1) + "\n")
    for method, entry in data["summary"].items():
        print(f"{method}: median ratio {entry['all']['ratio']:.2f} over {entry['all']['pictures']} pictures")
    print(f"{data['seconds']} s on {data['threads']} thread(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

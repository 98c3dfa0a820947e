"""`word_map(method="daam")` against DAAM 0.2.0's own aggregation functions, on the same attention probabilities.

DAAM (Tang et al. 2022, PyPI `daam`) is not a dependency of sdviz, not even for tests: it pins old diffusers and
needs spaCy. This script runs in a throwaway virtual environment that sees the project's packages and holds
`daam==0.2.0` installed without its dependencies:

    python -m venv /tmp/daamvenv
    echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/daamvenv/lib/python3.11/site-packages/project.pth
    /tmp/daamvenv/bin/python -m pip install --no-deps daam==0.2.0
    PYTHONPATH=.:tests /tmp/daamvenv/bin/python benchmarks/daam_reference.py

It generates a few pictures with the embedded model, traced with keep=["step", "layer", "head"], and hands DAAM's
code the probabilities sdviz recorded, step by step and layer by layer, in the layout of diffusers' attention
processor ((2 x heads, pixels, 77), unconditional rows first): `UNetCrossAttentionHooker._unravel_attn` unravels
them, `RawHeatMapCollection.update` sums them over steps, `DiffusionHeatMapHooker.compute_global_heat_map` upsamples
and averages them (with DAAM's size factor set for the 16x16 latents: `latent_hw = 256`), and
`GlobalHeatMap.compute_word_heat_map(word).expand_as(image, absolute=True)` gives the word's map at 64x64. spaCy and
SciPy, which DAAM imports but these functions do not use, are stubbed. Prints the largest difference per word.
"""

from __future__ import annotations

import importlib.machinery
import math
import sys
import types
from types import SimpleNamespace

import torch

PROMPTS = [
    ("a small cyan triangle above a purple circle", 3),
    ("a large red circle on the left", 1),
    ("a yellow square to the right of a green triangle", 7),
]


def _stub(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules[name] = module
    return module


def daam_modules():
    _stub("spacy", load=None, tokens=_stub("spacy.tokens", Token=object))
    _stub("scipy")
    _stub("scipy.optimize", linear_sum_assignment=None)
    import daam  # noqa: F401  (its package exports `trace`, a class, which hides the module of that name)

    return sys.modules["daam.trace"], sys.modules["daam.heatmap"]


def main() -> int:
    from reference import hf_tokenizer  # tests/reference.py: transformers' CLIPTokenizer over sdviz's vocabulary

    import sdviz
    from sdviz.pipeline import load_pipeline
    from sdviz.tracing.aggregate import block_of

    trace_mod, heatmap_mod = daam_modules()
    pipe = load_pipeline()
    tokenizer = hf_tokenizer()
    worst = 0.0
    for prompt, seed in PROMPTS:
        with sdviz.trace(pipe, record=["cross_attention"], keep=["step", "layer", "head"]) as tr:
            pipe.generate(prompt, seed=seed, steps=20, cfg_scale=5, sampler="ddim", progress=False)
        rec = tr.cross_attention
        latent_hw = 16 * 16
        collection = heatmap_mod.RawHeatMapCollection()
        # DAAM's locator order: up blocks, then down blocks; no mid block
        located = [k for k in rec.sums if block_of(k) == "up"] + [k for k in rec.sums if block_of(k) == "down"]
        for slot in range(len(rec.steps)):
            for layer_idx, key in enumerate(located):
                cond = rec.sums[key][slot, 0]  # (heads, n, 77): one step's probabilities, conditional row
                probs = torch.cat([torch.full_like(cond, float("nan")), cond])  # (2 x heads, n, 77), uncond first
                factor = int(math.sqrt(latent_hw // probs.shape[1]))
                if factor == 8:
                    continue
                maps = trace_mod.UNetCrossAttentionHooker._unravel_attn(None, probs)  # (heads, 77, h, w)
                for head_idx, heat_map in enumerate(maps):
                    collection.update(factor, layer_idx, head_idx, heat_map)
        pipeline = SimpleNamespace(tokenizer=tokenizer)
        hooker = SimpleNamespace(all_heat_maps=collection, latent_hw=latent_hw, pipe=pipeline)
        global_map = trace_mod.DiffusionHeatMapHooker.compute_global_heat_map(hooker, prompt)
        for word in dict.fromkeys(tr.words + ["an"] if "cyan" in prompt else tr.words):
            theirs = global_map.compute_word_heat_map(word).expand_as(tr.images[0], absolute=True)
            ours = tr.word_map(word, method="daam")
            diff = float((ours - theirs).abs().max() / theirs.abs().max())
            worst = max(worst, diff)
            print(f"{prompt!r:55} {word!r:12} max |sdviz - daam| / max |daam| = {diff:.2e}")
    print(f"largest relative difference: {worst:.2e}")
    return 0 if worst < 1e-5 else 1


if __name__ == "__main__":
    raise SystemExit(main())

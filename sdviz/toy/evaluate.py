"""Evaluating the embedded model: generate the held-out prompts and let the judge read the pictures.

The held-out prompts (`world.held_out_prompts`) name combinations that training never showed (a purple triangle
alone, a red object next to a blue one, ...). Each prompt comes with its own seed, so the evaluation is the same
100 pictures on every run. The judge (`judge.py`) checks, per object named in the prompt, its colour, shape and
position; `evaluate` returns the rates, and the VAE's reconstruction PSNR on held-out scenes.

    from sdviz.toy.evaluate import evaluate
    report = evaluate()            # the shipped model; or evaluate("runs/toy/model")
    report["rates"]                # {"colour": 0.97, "shape": 0.85, "position": 0.93, ...}
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
from PIL import Image

from sdviz.toy import judge, world

TARGETS = {"colour": 0.90, "position": 0.85, "shape": 0.75, "vae_psnr": 28.0}


def _pipeline(model: Any):
    from sdviz.pipeline import StableDiffusion, load_pipeline

    if isinstance(model, StableDiffusion):
        return model
    return load_pipeline(model)


@torch.no_grad()
def vae_psnr(pipe: Any, n: int = 256, seed: int = 0, batch_size: int = 32) -> float:
    """PSNR (dB) of VAE reconstructions (encode to the mean latent, decode) of `n` held-out scenes."""
    rng = np.random.default_rng(seed)
    errors = []
    for i in range(0, n, batch_size):
        x, _ = world.batch(min(batch_size, n - i), rng, split="held_out")
        x = x.to(pipe.device, pipe.dtype)
        y = pipe.vae.decode(pipe.vae.encode(x)[0]).float().clamp(-1, 1)
        errors.append(((y - x.float()) ** 2).mean().item() * len(x))
    return 10 * float(np.log10(4.0 / (sum(errors) / n)))


def grid(images: Sequence[Image.Image], columns: int = 10) -> Image.Image:
    """Tile images into one picture, row by row."""
    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    out = Image.new("RGB", (columns * w, rows * h))
    for i, im in enumerate(images):
        out.paste(im, ((i % columns) * w, (i // columns) * h))
    return out


def evaluate(
    model: Any = None,
    n: int = 100,
    seed: int = 0,
    steps: int = 50,
    cfg_scale: float = 5.0,
    sampler: str = "ddim",
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate `n` held-out (prompt, seed) pairs and judge them; returns rates, targets, timing and the verdicts.

    `model`: a `StableDiffusion` pipeline, a weights path, or None for the shipped model. With `out_dir`, the
    pictures (`held_out_grid.png`) and the report (`evaluation.json`) are written there.
    """
    pipe = _pipeline(model)
    pairs = world.held_out_prompts(n, seed)
    images: list[Image.Image] = []
    verdicts: list[judge.Verdict] = []
    seconds = []
    iterator = pairs
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(pairs, desc="evaluate")
    for prompt, s in iterator:
        t0 = time.perf_counter()
        image = pipe.generate(prompt, steps=steps, cfg_scale=cfg_scale, sampler=sampler, seed=s, progress=False).image
        seconds.append(time.perf_counter() - t0)
        images.append(image)
        verdicts.append(judge.judge(image, prompt))
    rates = judge.summarise(verdicts)
    rates["vae_psnr"] = vae_psnr(pipe)
    report = {
        "rates": rates,
        "targets": TARGETS,
        "passed": {k: rates[k] >= v for k, v in TARGETS.items()},
        "seconds_per_image": float(np.median(seconds)),
        "settings": {"n": n, "seed": seed, "steps": steps, "cfg_scale": cfg_scale, "sampler": sampler},
        "torch_threads": torch.get_num_threads(),
        "prompts": [
            {
                "prompt": p,
                "seed": s,
                "correct": v.correct,
                "objects": [
                    {"colour": o.colour_ok, "shape": o.shape_ok, "position": o.position_ok, "saw": o.found_shape}
                    for o in v.objects
                ],
            }
            for (p, s), v in zip(pairs, verdicts, strict=True)
        ],
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        grid(images).save(out / "held_out_grid.png")
        (out / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
    report["images"] = images
    report["verdicts"] = verdicts
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """`sdviz evaluate [MODEL] [--n 100] [--steps 50] [--cfg 5] [--sampler ddim] [--out DIR]`"""
    p = argparse.ArgumentParser(prog="sdviz evaluate", description="Judge the toy model on held-out prompts.")
    p.add_argument("model", nargs="?", default=None, help="weights folder (default: the shipped model)")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    report = evaluate(a.model, a.n, a.seed, a.steps, a.cfg, a.sampler, a.out)
    print(json.dumps({k: report[k] for k in ("rates", "passed", "seconds_per_image")}, indent=2))
    return 0 if all(report["passed"].values()) else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

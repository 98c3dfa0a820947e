"""The README's figures, drawn by sdviz's own code from a real traced run (`sdviz figures`).

    sdviz figures [--out readme-images/] [--weights PATH] [--steps 50]

One generation of the embedded model, traced with every step kept, gives the attention figures and the denoising
strip; the noise schedule and the time embedding need no generation. Everything is seeded and the pictures are
written without a timestamp or version stamp, so the same code and weights give the same PNG bytes.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROMPT = "a large red circle above a small blue square"
IMG2IMG_PROMPT = "a large green triangle above a small yellow circle"
SEED = 1
SETTINGS = {"steps": 50, "cfg_scale": 5.0, "sampler": "ddim"}  # the embedded model's evaluation settings


def render(pipe: Any = None, prompt: str = PROMPT, seed: int = SEED, steps: int = SETTINGS["steps"]) -> dict[str, Any]:
    """The README figures as {file name: matplotlib Figure}, for `pipe` (default: the embedded model)."""
    from sdviz.pipeline import load_pipeline
    from sdviz.tracing import trace
    from sdviz.viz import plots

    pipe = load_pipeline() if pipe is None else pipe
    settings = {**SETTINGS, "steps": steps}
    with trace(pipe, keep=["step"]) as tr:
        picture = pipe.generate(prompt, seed=seed, progress=False, **settings).image
    sampling = {k: v for k, v in settings.items() if k != "cfg_scale"}
    return {
        "guidance.png": plots.guidance_figure(pipe, prompt, seed=seed, **sampling),
        "img2img_strength.png": plots.strength_figure(pipe, picture, IMG2IMG_PROMPT, seed=seed, **settings),
        "noise_schedule.png": plots.noise_schedule_figure(pipe, tr.timesteps),
        "time_embedding.png": plots.time_embedding_figure(pipe),
        "attention_words.png": plots.attention_overlay(tr),
        "attention_steps.png": plots.attention_grid(tr),
        "denoising_strip.png": plots.denoising_strip(tr),
        "groupnorm.png": plots.groupnorm_figure(tr),
    }


def save(fig: Any, path: Path, dpi: int = 100) -> Path:
    """Write a figure as PNG without metadata that changes between runs or versions."""
    fig.savefig(path, dpi=dpi, metadata={"Software": None})
    return path


def write_readme_figures(out_dir: str | Path = "readme-images", pipe: Any = None, steps: int = SETTINGS["steps"]):
    """Render the README figures into `out_dir` (created if needed); returns the paths written.

    With the embedded model (pipe=None), also its training losses, from the logs shipped beside its weights.
    """
    from sdviz.pipeline import EMBEDDED_MODEL
    from sdviz.toy.train import plot_losses

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = render(pipe, steps=steps)
    if pipe is None and (EMBEDDED_MODEL / "log_unet.csv").is_file():
        figures["training_losses.png"] = plot_losses(EMBEDDED_MODEL)
    return [save(fig, out / name) for name, fig in figures.items()]


def main(argv: Sequence[str] | None = None) -> int:
    """`sdviz figures [--out readme-images/] [--weights PATH] [--steps 50]`"""
    p = argparse.ArgumentParser(prog="sdviz figures", description="Draw the README figures with sdviz's own code.")
    p.add_argument("--out", default="readme-images", help="folder to write the PNG files to")
    p.add_argument("--weights", default=None, help="SD 1.x weights (default: the embedded model)")
    p.add_argument("--steps", type=int, default=SETTINGS["steps"])
    a = p.parse_args(argv)
    from sdviz.pipeline import load_pipeline

    pipe = load_pipeline(a.weights) if a.weights else None  # None: the embedded model, with its training losses
    for path in write_readme_figures(a.out, pipe, a.steps):
        print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

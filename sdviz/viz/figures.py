"""The README's figures, drawn by sdviz's own code from a real traced run (`sdviz figures`).

    sdviz figures [--out readme-images/] [--weights PATH] [--steps 50]

At least one figure per section of the seed document (the README's teaching path, the notebooks' lessons). One
generation of the embedded model (the headline prompt and seed), traced with its per-step attention maps, group-norm
statistics, latents and their VAE decodes, gives the attention, group-norm, denoising and guidance figures; the
lessons' figures (`sdviz.viz.lessons`) run their own small computations; the noise schedule and the time embedding
need no generation. Everything is seeded and the pictures are written without a timestamp or version stamp, so the
same code and weights give the same pictures (up to CPU rounding: `tests/pictures.py`).

This file is the command only: it imports the figure modules, which take the headline prompt, seed and settings
from `sdviz.viz.style` and never import this file.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdviz.viz.style import PROMPT, SEED, SETTINGS, save  # the headline picture and its settings

if TYPE_CHECKING:
    from sdviz.pipeline import StableDiffusion

# image-to-image from the headline picture: another colour (a little noise is enough) and another shape (it takes
# most of the steps; at strength 1 nothing of the input is left, not even the layout)
IMG2IMG_PROMPTS = ("a large green circle above a small blue square", "a large red triangle above a small blue square")
IMG2IMG_CFG = 3.0  # at cfg 5 the prompt wins at lower strengths; at 3 the sweep shows the steps in between
# the mask covers the square; the prompt says what to draw there (with the whole scene's words, "a large red circle
# above ...", the embedded model paints the hole red: the circle's words win)
INPAINT_PROMPTS = (
    "a small yellow square at the bottom",
    "a small green triangle at the bottom",
    "a small cyan circle at the bottom",
)
# prompt-to-prompt (sdviz.editing): a word of PROMPT reweighted; a colour replaced in a prompt where, drawn alone from
# the same seed, the target would change its layout
EDIT_WORD, EDIT_WEIGHTS = "square", (0.0, 0.5, 1.0, 2.0, 4.0)
EDIT_SOURCE = "a small red circle to the left of a small green square"
EDIT_TARGET = "a small blue circle to the left of a small green square"
EDIT_SEED = 1  # drawn alone from this seed, the target puts its objects elsewhere; replace keeps the source's layout


# a 16x16 layer (its self-attention is almost uniform in the embedded model) and an 8x8 one that looks at objects
SELF_ATTENTION_LAYERS = (
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1",
    "unet.up_blocks.0.attentions.1.transformer_blocks.0.attn1",
)


def _blob_box(picture: Any, colour: str) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the pixels of `colour` in a picture of the shapes world, or None."""
    import numpy as np

    from sdviz.toy.judge import segment

    ys, xs = np.nonzero(segment(picture, colour))
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if len(xs) else None


def self_attention_pixels(picture: Any) -> list[tuple[float, float]]:
    """Query pixels for the self-attention figure, as (y, x) fractions: the red object's centre, the blue object's
    centre, and a background corner."""
    h, w = picture.size[1], picture.size[0]
    out = []
    for colour in ("red", "blue"):
        box = _blob_box(picture, colour)
        if box is not None:
            out.append((((box[1] + box[3]) / 2) / h, ((box[0] + box[2]) / 2) / w))
    return out + [(0.1, 0.1)]


def square_mask(picture: Any, colour: str = "blue", margin: int = 6) -> Any:
    """An inpainting mask: the box around the `colour` object (the headline's small square), `margin` pixels wider
    on every side, white on black."""
    from sdviz.viz.lessons import box_mask

    x0, y0, x1, y1 = _blob_box(picture, colour) or (20, 36, 44, 60)
    size = picture.size[0]
    return box_mask(size, (max(0, x0 - margin), max(0, y0 - margin), min(size, x1 + margin), min(size, y1 + margin)))


def render(
    pipe: StableDiffusion | None = None,
    prompt: str = PROMPT,
    seed: int = SEED,
    steps: int = SETTINGS["steps"],
) -> dict[str, Any]:
    """The README figures as {file name: matplotlib Figure}, for `pipe` (default: the embedded model)."""
    from sdviz.pipeline import load_pipeline
    from sdviz.tracing import trace
    from sdviz.viz import edit_figures, lessons, plots, relations_figure, sampler_figures

    pipe = load_pipeline() if pipe is None else pipe
    settings = {**SETTINGS, "steps": steps}
    record = ["cross_attention", "self_attention", "groupnorm", "time_embedding", "latents"]
    keep = {"cross_attention": ["step"]}  # per-step word maps; self-attention summed over the steps
    with trace(pipe, record=record, keep=keep, decode=True) as tr:
        picture = pipe.generate(prompt, seed=seed, progress=False, **settings).image
    sampling = {k: v for k, v in settings.items() if k != "cfg_scale"}
    strength = {**settings, "cfg_scale": IMG2IMG_CFG}
    return {
        # the course, in the order of the seed document's sections (see the README's teaching path)
        "data_distribution.png": lessons.data_distribution_figure(pipe),
        "forward_process.png": lessons.forward_process_figure(pipe, picture),
        "denoising_strip.png": plots.denoising_strip(tr),
        "training_step.png": lessons.training_step_figure(pipe),
        "classifier_guidance.png": lessons.classifier_guidance_figure(pipe),
        "guidance_internals.png": plots.guidance_internals(tr, pipe),
        "guidance.png": plots.guidance_figure(pipe, prompt, seed=seed, **sampling),
        "norm_axes.png": lessons.norm_axes_figure(pipe),
        "groupnorm.png": plots.groupnorm_figure(tr),
        "attention_words.png": plots.attention_overlay(tr),
        "attention_steps.png": plots.attention_grid(tr),
        "relations.png": relations_figure.relations_figure(pipe, **settings),  # a relation drawn wrong, its maps
        "self_attention.png": plots.self_attention_figure(tr, SELF_ATTENTION_LAYERS, self_attention_pixels(picture)),
        "clip_encoder.png": lessons.clip_figure(pipe, prompt),
        "img2img_strength.png": plots.strength_figure(pipe, picture, IMG2IMG_PROMPTS, seed=seed, **strength),
        "inpainting.png": lessons.inpainting_figure(pipe, picture, square_mask(picture), INPAINT_PROMPTS, seed=seed),
        "time_embedding.png": plots.time_embedding_figure(pipe),
        "noise_schedule.png": plots.noise_schedule_figure(pipe, tr.timesteps),
        "edit_reweight.png": edit_figures.reweight_figure(pipe, prompt, EDIT_WORD, EDIT_WEIGHTS, seed, **settings),
        "edit_replace.png": edit_figures.replace_figure(pipe, EDIT_SOURCE, EDIT_TARGET, seed=EDIT_SEED, **settings),
        "sampler_predictions.png": sampler_figures.predictions_figure(pipe, prompt, seed),  # 10 steps each
    }


def write_readme_figures(
    out_dir: str | Path = "readme-images",
    pipe: StableDiffusion | None = None,
    steps: int = SETTINGS["steps"],
):
    """Render the README figures into `out_dir` (created if needed); returns the paths written.

    With the embedded model (pipe=None), also its training losses, from the logs shipped beside its weights, and
    the samplers' accuracy per step count, from their measured record (`python -m sdviz.viz.sampler_figures`).
    """
    from sdviz.pipeline import EMBEDDED_MODEL
    from sdviz.viz.animate import readme_animation
    from sdviz.viz.causal_figures import causal_map, deletion_chart
    from sdviz.viz.inversion_figures import inversion_chart
    from sdviz.viz.sae_figure import concepts_chart
    from sdviz.viz.sampler_figures import quality_chart
    from sdviz.viz.training_figure import training_losses_figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = render(pipe, steps=steps)
    if pipe is None and (EMBEDDED_MODEL / "log_unet.csv").is_file():
        figures["training_losses.png"] = training_losses_figure(EMBEDDED_MODEL)
    if pipe is None:
        figures["sampler_quality.png"] = quality_chart()  # drawn from readme-images/sampler_quality.json
        figures["inversion.png"] = inversion_chart()  # drawn from readme-images/inversion.json
        figures["sae_concepts.png"] = concepts_chart()  # drawn from sdviz/toy/sae/sae_record.json
        figures["causal_map.png"] = causal_map()  # drawn from readme-images/causal_tracing.json
        figures["faithfulness.png"] = deletion_chart()  # drawn from sdviz/toy/faithfulness.json
    written = [save(fig, out / name) for name, fig in figures.items()]
    return written + [readme_animation(out, pipe, PROMPT, SEED, steps)]  # the README's animation of the denoising


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

"""Sweeps of one generation setting, drawn as a row of pictures: each function generates, then returns a `Figure`.

    picture_row(images, titles)             pictures side by side with a title each (any sweep you made yourself)
    guidance_figure(pipe, prompt)           the same seed at several classifier-free guidance scales
    strength_figure(pipe, image, prompts)   image-to-image at growing strength, one row per prompt
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from sdviz.viz.display import Figure  # a matplotlib Figure that notebooks display with or without pyplot
from sdviz.viz.style import no_ticks, wrap

if TYPE_CHECKING:
    from sdviz.pipeline import StableDiffusion


def picture_row(images: Sequence[Any], titles: Sequence[str], suptitle: str = "") -> Figure:
    """Pictures side by side with a title each: a sweep of one setting (guidance scale, strength, seed)."""
    fig = Figure(figsize=(1.9 * len(images), 2.3), layout="constrained")
    axes = fig.subplots(1, len(images), squeeze=False)[0]
    for ax, im, title in zip(axes, images, titles, strict=True):
        ax.imshow(np.asarray(im), interpolation="nearest")
        ax.set_title(title, fontsize=9)
        no_ticks(ax)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def guidance_figure(
    pipe: StableDiffusion,
    prompt: str,
    seed: int = 0,
    scales: Sequence[float] = (1, 2, 5, 9),
    **kw: Any,
) -> Figure:
    """Classifier-free guidance: the same seed at several `cfg_scale`s (1 = the conditional prediction alone)."""
    images = [pipe.generate(prompt, seed=seed, cfg_scale=s, progress=False, **kw).image for s in scales]
    return picture_row(images, [f"cfg {s:g}" for s in scales], f"guidance: {prompt!r}, seed {seed}")


def strength_figure(
    pipe: StableDiffusion,
    image: Any,
    prompt: str | Sequence[str],
    seed: int = 0,
    strengths: Sequence[float] = (0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0),
    **kw: Any,
) -> Figure:
    """Image-to-image: the input picture, then the result at growing `strength` ("more noise, more freedom"); one
    row per prompt. Each column title says how many of the denoising steps that strength runs."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    steps = int(kw.get("steps", 50))
    fig = Figure(figsize=(1.75 * (len(strengths) + 1) + 0.4, 2.0 * len(prompts) + 0.6), layout="constrained")
    axes = fig.subplots(len(prompts), len(strengths) + 1, squeeze=False)
    for r, p in enumerate(prompts):
        pictures = [pipe.generate(p, image=image, strength=s, seed=seed, progress=False, **kw).image for s in strengths]
        for c, (ax, pic) in enumerate(zip(axes[r], [image, *pictures], strict=True)):
            ax.imshow(np.asarray(pic), interpolation="nearest")
            no_ticks(ax)
            if r == 0:
                s = strengths[c - 1] if c else None
                title = "input" if s is None else f"strength {s:g}\n({int(steps * s)} of {steps} steps)"
                ax.set_title(title, fontsize=9)
        axes[r, 0].set_ylabel(wrap(f'"{p}"', 24), fontsize=8)
    cfg = kw.get("cfg_scale")
    title = "image-to-image: more noise, more freedom" + (f" (cfg {cfg:g})" if cfg is not None else "")
    fig.suptitle(title, fontsize=10)
    return fig

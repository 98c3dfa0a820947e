"""Figures of a traced generation's attention, each a function that returns a matplotlib `Figure`.

    attention_overlay(tr)        the picture, and beside it one map per prompt word with the objects' outlines
    attention_grid(tr)           steps x words: how each word's map forms during denoising (trace with keep=["step"])
    self_attention_figure(tr, layer, pixels)   where a few pixels looked, in one self-attention layer

Every map is drawn in `style.HEAT` (magma: dark = little attention, light = much) beside the picture, not blended
over it, with the outlines of the picture's objects on it (`style.attention_panel`). Cross-attention maps are drawn
on one absolute scale by default (`scale="shared"`: attention probability, so a word that barely looked anywhere
looks faint) or each on its own (`scale="panel"`); `scale_label` says which in words.
The functions build `sdviz.viz.display.Figure`s directly (not through pyplot): no global state, any backend, and a
notebook shows them as PNG.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sdviz.viz.display import Figure  # a matplotlib Figure that notebooks display with or without pyplot
from sdviz.viz.style import (
    attention_panel,
    default_words,
    no_ticks,
    normalise,
    pick_evenly,
    short_layer,
    trace_picture,
    upsample,
)

if TYPE_CHECKING:
    from sdviz.tracing import Trace

SCALES = ("shared", "panel")


def scale_label(tr: Trace, scale: str) -> str:
    """The colour bar's label: what a colour means under `scale`."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if scale == "panel":
        return "attention, normalised per panel\n(0 = the panel's min, 1 = its max)"
    return f"attention probability, one scale\n(uniform over the 77 tokens: {1 / _tokens(tr):.3f})"


def _tokens(tr: Trace) -> int:
    """How many keys (token positions) each query spreads its attention over (77 for SD)."""
    return len(tr.encodings[0]["ids"]) if tr.encodings and "ids" in tr.encodings[0] else 77


def _shown(maps: dict[str, Any], scale: str) -> tuple[dict[str, np.ndarray], float]:
    """The maps as drawn and the colour scale's top: raw probabilities on one scale ("shared") or each normalised
    to [0, 1] ("panel")."""
    if scale == "panel":
        return {w: normalise(m) for w, m in maps.items()}, 1.0
    arrays = {w: np.asarray(m, dtype=np.float64) for w, m in maps.items()}
    return arrays, max(float(a.max()) for a in arrays.values()) or 1.0


def attention_overlay(
    tr: Trace,
    image: int = 0,
    words: Iterable[str] | None = None,
    scale: str = "shared",
    method: Any = None,
    **select: Any,
) -> Figure:
    """The generated picture, then one panel per word: its cross-attention map, with the objects' outlines.

    `scale="shared"` (default) draws every map on one absolute scale (attention probability, 0 to the highest value
    of any panel), so a word that barely looked anywhere ("above", "small") looks faint; `scale="panel"` stretches
    each map to its own [min, max] to show its shape, and titles give each panel's max. `method` is the word-map
    aggregator and `select` chooses steps=, resolution=, layers=, heads=, as in `Trace.word_map`."""
    words = default_words(tr, image) if words is None else list(words)
    maps = tr.word_maps(words, image=image, method=method, **select)
    shown, top = _shown(maps, scale)
    picture = trace_picture(tr, image)
    fig = Figure(figsize=(2.2 * (len(words) + 1) + 0.6, 2.75), layout="constrained")
    axes = fig.subplots(1, len(words) + 1, squeeze=False)[0]
    axes[0].imshow(picture)
    axes[0].set_title("image", fontsize=10)
    no_ticks(axes[0])
    for ax, w in zip(axes[1:], words, strict=True):
        im = attention_panel(ax, shown[w], picture, 0, top)
        ax.set_title(f'"{w}"\nmax {float(maps[w].max()):.3f}', fontsize=9.5)
    fig.colorbar(im, ax=axes[-1], fraction=0.046, pad=0.04).set_label(scale_label(tr, scale), fontsize=8)
    how = "one colour scale for all words" if scale == "shared" else "each panel on its own scale"
    fig.suptitle(f"cross-attention per word ({how}): {tr.prompts[image]!r}", fontsize=10)
    return fig


def _step_picture(tr: Trace, step: int, image: int) -> np.ndarray:
    """The picture the model predicted at a step: the VAE decode of x0 when the trace holds it (decode=True), else
    the linear preview of x0, upsampled."""
    rec = tr.latents
    if rec.decoded is not None:
        return rec.decoded[step, image].permute(1, 2, 0).numpy()
    return upsample(rec.preview("x0", step, image), tr.image_size)


def attention_grid(
    tr: Trace,
    words: Iterable[str] | None = None,
    steps: Sequence[int] | None = None,
    image: int = 0,
    n: int = 6,
    scale: str = "shared",
    method: Any = None,
    **select: Any,
) -> Figure:
    """A grid: one row per step (n of the recorded ones, evenly spread, unless `steps` is given); the first column is
    the picture the model predicted at that step, then one column per word, its map at that step with the outlines
    of the final picture's objects. `scale` and `method` as in `attention_overlay` ("shared": one absolute scale for
    the whole grid). Needs a trace recorded with keep=["step"]."""
    rec = tr.cross_attention
    if "step" not in rec.keep:
        raise ValueError("attention_grid needs per-step maps: trace with sdviz.trace(pipe, keep=['step'])")
    words = default_words(tr, image) if words is None else list(words)
    steps = pick_evenly(rec.steps, n) if steps is None else list(steps)
    per_step = [tr.word_maps(words, image=image, steps=[s], method=method, **select) for s in steps]
    if scale == "shared":
        top = max(float(np.asarray(m).max()) for maps in per_step for m in maps.values()) or 1.0
        shown = [{w: np.asarray(m, dtype=np.float64) for w, m in maps.items()} for maps in per_step]
    else:
        scale_label(tr, scale)
        top, shown = 1.0, [{w: normalise(m) for w, m in maps.items()} for maps in per_step]
    picture = trace_picture(tr, image)
    fig = Figure(figsize=(1.7 * (len(words) + 1) + 1.4, 1.7 * len(steps) + 0.7), layout="constrained")
    axes = fig.subplots(len(steps), len(words) + 1, squeeze=False)
    im = None
    for r, s in enumerate(steps):
        ax = axes[r, 0]
        ax.imshow(_step_picture(tr, s, image), interpolation="nearest")
        no_ticks(ax)
        ax.set_ylabel(f"step {s}\nt={tr.timesteps[s]}", fontsize=9)
        if r == 0:
            ax.set_title("predicted x₀", fontsize=9.5)
        for c, w in enumerate(words, start=1):
            ax = axes[r, c]
            im = attention_panel(ax, shown[r][w], picture, 0, top)
            if r == 0:
                ax.set_title(f'"{w}"', fontsize=10)
    fig.colorbar(im, ax=axes[:, -1], fraction=0.08, pad=0.04, shrink=0.6).set_label(scale_label(tr, scale), fontsize=8)
    how = "one colour scale for the grid" if scale == "shared" else "each panel on its own scale"
    title = f"cross-attention over the steps ({how}), outlines of the final picture: {tr.prompts[image]!r}"
    fig.suptitle(title, fontsize=10)
    return fig


def self_attention_figure(
    tr: Trace,
    layer: str | Sequence[str],
    pixels: Sequence[tuple[float, float]] = ((0.25, 0.25), (0.5, 0.5), (0.75, 0.75)),
    image: int = 0,
    **select: Any,
) -> Figure:
    """Where a few query pixels looked in one self-attention layer (or one row per layer, for a list). `pixels`
    are (y, x) as fractions of the image (0..1), so the same call works at every resolution; each panel marks its
    query pixel. A row shares one absolute scale (attention probability, 0 to the row's highest value), and the
    colour bar marks the uniform level 1 / (pixels of the grid): a map near it looked everywhere alike."""
    rec = tr.self_attention
    layers = [layer] if isinstance(layer, str) else list(layer)
    picture = trace_picture(tr, image)
    size = tr.image_size
    fig = Figure(figsize=(2.3 * (len(pixels) + 1) + 0.9, 2.5 * len(layers) + 0.4), layout="constrained")
    axes = fig.subplots(len(layers), len(pixels) + 1, squeeze=False)
    for r, name in enumerate(layers):
        key = rec.layer_key(name)
        h, w = rec.grid[key]
        queries = [(min(int(fy * h), h - 1), min(int(fx * w), w - 1)) for fy, fx in pixels]
        maps = [rec.pixel_map(key, y, x, image=image, **select) for y, x in queries]
        top = max(float(m.max()) for m in maps)
        axes[r, 0].imshow(picture)
        axes[r, 0].set_title("image" if r == 0 else "", fontsize=10)
        axes[r, 0].set_ylabel(f"{short_layer(key.removesuffix('.hook_probs'))}\n{h}x{w} grid", fontsize=8.5)
        no_ticks(axes[r, 0])
        im = None
        for ax, (y, x), m in zip(axes[r, 1:], queries, maps, strict=True):
            up = torch.nn.functional.interpolate(m[None, None], size=size, mode="nearest")[0, 0]
            im = attention_panel(ax, up.numpy(), picture, 0, top)
            ax.plot([(x + 0.5) * size[1] / w - 0.5], [(y + 0.5) * size[0] / h - 0.5], "w+", ms=12, mew=2)
            ax.set_title(f"query ({y}, {x}): max {float(m.max()):.3f}", fontsize=8.5)
        bar = fig.colorbar(im, ax=axes[r, -1], fraction=0.05, pad=0.04)
        bar.ax.axhline(1 / (h * w), color="white", lw=1.5)
        bar.set_label(f"probability\n(white line: uniform {1 / (h * w):.4f})", fontsize=7.5)
    fig.suptitle(f"self-attention: where a pixel looks in the same picture ({tr.prompts[image]!r})", fontsize=10)
    return fig

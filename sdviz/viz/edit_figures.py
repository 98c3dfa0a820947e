"""Figures of prompt-to-prompt edits (`sdviz.editing`), each a function that returns a matplotlib `Figure`.

    reweight_figure(pipe, prompt, "red")                  one column per weight: the picture and the word's map
    replace_figure(pipe, source, target)                  source and target side by side, each with its word maps
    reweight_panel(tr, "red", 2.0)                        one picture and one word map from a trace (the widget's)

Each generation runs inside `sdviz.edit(...)` with a trace inside it, so the maps shown are the probabilities the
network actually used: a reweighted word's map is the reweighted one, a replace target's maps are the injected ones
for the first `cross_replace_steps` of the steps, and its own after.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from sdviz.viz.display import Figure
from sdviz.viz.style import SETTINGS, attention_panel, no_ticks, normalise, trace_picture

if TYPE_CHECKING:
    from sdviz.pipeline import StableDiffusion
    from sdviz.tracing import Trace


def _overlay(ax: Any, picture: np.ndarray, heat: np.ndarray, title: str) -> Any:
    """A word map, normalised to [0, 1], with the outlines of its picture's objects (`style.attention_panel`)."""
    im = attention_panel(ax, normalise(heat), picture, 0, 1)
    ax.set_title(title, fontsize=9)
    return im


def _edited_run(pipe: StableDiffusion, edits: Sequence[Any], prompts: Any, seed: Any, generate: dict) -> Any:
    """Generate inside the edits with a cross-attention trace inside them; returns the trace."""
    from sdviz.editing import edit
    from sdviz.tracing import trace

    with edit(pipe, *edits), trace(pipe, record=["cross_attention"]) as tr:
        pipe.generate(prompts, seed=seed, progress=False, **generate)
    return tr


def reweight_panel(tr: Trace, word: str, weight: float, image: int = 0) -> Figure:
    """One traced, reweighted generation: the picture and the word's map over it (what `reweight_widget` shows)."""
    fig = Figure(figsize=(4.4, 2.5), layout="constrained")
    axes = fig.subplots(1, 2)
    picture = trace_picture(tr, image)
    axes[0].imshow(picture)
    axes[0].set_title(f'"{word}" x {weight:g}', fontsize=9)
    no_ticks(axes[0])
    _overlay(axes[1], picture, tr.word_map(word, image=image), f'where "{word}" looked')
    fig.suptitle(tr.prompts[image], fontsize=9)
    return fig


def reweight_figure(
    pipe: StableDiffusion,
    prompt: str,
    word: str,
    weights: Sequence[float] = (0.5, 1.0, 2.0, 4.0),
    seed: int = 1,
    **generate: Any,
) -> Figure:
    """Reweight one word at several factors, same seed: top row the pictures, bottom row the word's map over each
    (each normalised to its own maximum: where the word looked), titled with its total attention relative to the
    factor-1 map (how much it looked)."""
    from sdviz.editing import Reweight

    generate = {**SETTINGS, **generate}
    traces = [_edited_run(pipe, [Reweight({word: w})], prompt, seed, generate) for w in weights]
    maps = [tr.word_map(word).numpy() for tr in traces]
    base = maps[list(weights).index(1.0)] if 1.0 in weights else maps[0]
    fig = Figure(figsize=(1.9 * len(weights) + 0.9, 4.3), layout="constrained")
    axes = fig.subplots(2, len(weights), squeeze=False)
    im = None
    for c, (w, tr, m) in enumerate(zip(weights, traces, maps, strict=True)):
        picture = trace_picture(tr, 0)
        axes[0, c].imshow(picture)
        axes[0, c].set_title(f'"{word}" x {w:g}', fontsize=9)
        no_ticks(axes[0, c])
        im = _overlay(axes[1, c], picture, m, f"attention {m.sum() / base.sum():.2f}x")
    axes[1, 0].set_ylabel(f'map of "{word}"', fontsize=9)
    fig.colorbar(im, ax=axes[1, -1], fraction=0.046, pad=0.04, label="attention (normalised)")
    fig.suptitle(f"reweight: {prompt!r}, seed {seed}", fontsize=10)
    return fig


def replace_figure(
    pipe: StableDiffusion,
    source: str,
    target: str,
    words: Sequence[str] | None = None,
    seed: int = 1,
    cross_replace_steps: float = 0.8,
    self_replace_steps: float = 0.4,
    local_blend_words: Sequence[Any] | None = None,
    **generate: Any,
) -> Figure:
    """Replace: the source and the target generated together from one seed (rows), each picture followed by its
    words' maps (columns; default: the words in which the prompts differ, then the source's last word). A third
    row shows the target generated alone from the same seed, without the edit: what replace keeps."""
    from sdviz.editing import LocalBlend, Replace
    from sdviz.tracing import trace

    generate = {**SETTINGS, **generate}
    edits = [Replace(cross_replace_steps, self_replace_steps)]
    if local_blend_words is not None:
        edits.append(LocalBlend(local_blend_words))
    tr = _edited_run(pipe, edits, [source, target], [seed, seed], generate)
    with trace(pipe, record=["cross_attention"]) as plain:  # the target alone, no edit
        pipe.generate(target, seed=seed, progress=False, **generate)
    a, b = source.split(), target.split()
    if words is None:
        changed = [(x, y) for x, y in zip(a, b, strict=False) if x != y]
        words = [f"{x}|{y}" for x, y in changed] + [f"{a[-1]}|{b[-1]}"]
    pairs = [tuple(w.split("|")) if "|" in w else (w, w) for w in words]
    rows = [
        (tr, 0, "source", [p[0] for p in pairs]),
        (tr, 1, "target (replace)", [p[1] for p in pairs]),
        (plain, 0, "target alone", [p[1] for p in pairs]),
    ]
    fig = Figure(figsize=(2.0 * (len(pairs) + 1) + 0.4, 7.0), layout="constrained")
    axes = fig.subplots(len(rows), len(pairs) + 1, squeeze=False)
    for r, (t, image, label, ws) in enumerate(rows):
        picture = trace_picture(t, image)
        axes[r, 0].imshow(picture)
        axes[r, 0].set_title("picture", fontsize=9)
        axes[r, 0].set_ylabel(label, fontsize=10)
        no_ticks(axes[r, 0])
        for c, w in enumerate(ws, start=1):
            _overlay(axes[r, c], picture, t.word_map(w, image=image), f'map of "{w}"')
    fig.suptitle(
        f"replace, seed {seed}\nsource: {source!r}\ntarget:  {target!r}\ncross-attention maps injected for the "
        f"first {cross_replace_steps:g} of the steps, self-attention for {self_replace_steps:g}",
        fontsize=8,
    )
    return fig

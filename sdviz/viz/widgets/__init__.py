"""Widgets for JupyterLab (and any front end that runs ipywidgets): watch a traced generation, step by step.

    from sdviz.viz.widgets import player, explorer, studio
    player(tr)       # the denoising, step by step: x_t, predicted x₀ (preview and VAE decode), the noise and guidance
                     # predictions, the latent channels, a word's attention, t / σ_t / ᾱ_t / SNR and the schedule
    explorer(tr)     # cross-attention: pick a word (or a token), a window of steps, a resolution or layer, a head;
                     # click a pixel to rank the words by their attention there
    studio()         # a front panel on the embedded model (or studio(pipe)): generate, watch it live, then the player,
                     # the explorer, a guidance sweep and a seed grid, in tabs
    reweight_widget(pipe, prompt, "red")   # a word-weight slider (prompt-to-prompt's reweight) that regenerates
    what_if.what_if(pipe, prompt)          # (from the module) ablate a word, head or layer, or patch from another
                                           # prompt: before, after, and the judge's verdict
    feature_browser(pipe)    # the shipped SAE's features: where each fires, the features at a pixel, switch one off

Each is an object whose `.widget` is the ipywidgets box; as the last expression of a cell it shows the box and below
it a static copy for renders where widgets cannot run (GitHub, nbviewer): an animated GIF of the run for the player
and the explorer, the last picture for the studio and the reweight slider (updated in place as they are used).
Attention maps are drawn in `style.HEAT` (magma) beside the picture, with the objects' outlines, never blended
over it. Frames are prepared once, as PNG bytes, so scrubbing costs a dictionary look-up and
an assignment (`benchmarks/widget_frames.py` measures it).

    frames.py       numpy / pillow pictures: colour maps, overlays, signed latents, the schedule chart with its marker
    common.py       captioned panels, colour bars, placeholders, the static animation and picture
    checks.py       what a trace must hold (one-line errors)
    denoising.py    Player (the denoising player)
    attention.py    Explorer (the cross-attention explorer)
    front_panel.py  Studio (the front panel)
    reweight.py     reweight_widget (a slider over one word's weight, sdviz.editing.Reweight)
    upload.py       the studio's "Your picture" tab (sdviz.inversion: invert, explain, edit an uploaded picture)
    what_if.py      what_if (interventions of sdviz.causal, graded by the toy judge)
    features.py     feature_browser (the sparse autoencoders of sdviz.concepts)

The names here are imported on first use (ipywidgets is not loaded by `sdviz.viz.animate` or the figures).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Player": "sdviz.viz.widgets.denoising",
    "player": "sdviz.viz.widgets.denoising",
    "Explorer": "sdviz.viz.widgets.attention",
    "explorer": "sdviz.viz.widgets.attention",
    "Studio": "sdviz.viz.widgets.front_panel",
    "studio": "sdviz.viz.widgets.front_panel",
    "reweight_widget": "sdviz.viz.widgets.reweight",
    "feature_browser": "sdviz.viz.widgets.features",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sdviz.viz.widgets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])

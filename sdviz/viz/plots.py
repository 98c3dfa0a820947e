"""sdviz's figures in one namespace: each function returns a matplotlib `Figure` (show it in a notebook, or `savefig`).

    from sdviz.viz import plots

    plots.attention_overlay(tr)        the picture, and beside it one map per prompt word with the objects' outlines
    plots.attention_grid(tr)           steps x words: how each word's map forms (trace with keep=["step"])
    plots.self_attention_figure(tr, layer, pixels)   where a few pixels looked, in one self-attention layer
    plots.denoising_strip(tr)          x_t and the predicted clean image x₀ at a few steps
    plots.guidance_internals(tr, pipe) classifier-free guidance inside a step
    plots.groupnorm_figure(tr)         group norm's input and output statistics along the UNet and over the steps
    plots.time_embedding_figure(pipe)  the sinusoidal time embedding, its MLP output, their cosine similarity over t
    plots.noise_schedule_figure()      beta_t, alpha_bar_t and the signal-to-noise ratio of the training schedule
    plots.guidance_figure(pipe, prompt)            the same seed at several guidance scales
    plots.strength_figure(pipe, image, prompts)    image-to-image at growing strength
    plots.picture_row(images, titles)              pictures side by side, a title each
    plots.training_losses_figure()     the embedded model's training logs (or a training run's folder)

This file only gathers them; each is written in the file of its topic:

    attention_figures.py   cross- and self-attention of a trace
    trace_figures.py       the denoising, guidance, group norm and time embedding of a trace; the noise schedule
    sweeps.py              a row of pictures over one setting (guidance scale, strength)
    training_figure.py     the training logs
    style.py               the headline prompt and settings, the colour map, the small drawing helpers

The figures build `matplotlib.figure.Figure` objects directly (not through pyplot), so they keep no global state
and work with any backend; they are `sdviz.viz.display.Figure`s, which notebooks show as PNG even when pyplot was
never imported.
"""

from sdviz.viz.attention_figures import SCALES, attention_grid, attention_overlay, scale_label, self_attention_figure
from sdviz.viz.style import HEAT, STOPWORDS, default_words
from sdviz.viz.sweeps import guidance_figure, picture_row, strength_figure
from sdviz.viz.trace_figures import (
    denoising_strip,
    groupnorm_figure,
    guidance_internals,
    noise_schedule_figure,
    readable_layer,
    time_embedding_figure,
)
from sdviz.viz.training_figure import training_losses_figure

__all__ = [
    "HEAT",
    "SCALES",
    "STOPWORDS",
    "attention_grid",
    "attention_overlay",
    "default_words",
    "denoising_strip",
    "groupnorm_figure",
    "guidance_figure",
    "guidance_internals",
    "noise_schedule_figure",
    "picture_row",
    "readable_layer",
    "scale_label",
    "self_attention_figure",
    "strength_figure",
    "time_embedding_figure",
    "training_losses_figure",
]

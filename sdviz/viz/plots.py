"""Figures of a trace, each a function that returns a matplotlib `Figure` (show it in a notebook, or `savefig`).

    attention_overlay(tr)        the picture, and one heat map per prompt word laid over it (DAAM's figure)
    attention_grid(tr)           steps x words: how each word's map forms during denoising (trace with keep=["step"])
    groupnorm_figure(tr)         group norm's input and output statistics along the UNet and over the steps
    time_embedding_figure(pipe)  the sinusoidal time embedding (dimension x timestep) and its MLP output
    denoising_strip(tr)          x_t and the predicted clean image x0 at a few steps (cheap RGB previews)
    noise_schedule_figure()      beta_t, alpha_bar_t and the signal-to-noise ratio of the training schedule
    self_attention_figure(tr, layer, pixels)   where a few pixels looked, in one self-attention layer

The functions build `matplotlib.figure.Figure` objects directly (not through pyplot), so they keep no global state
and work with any backend; they are `sdviz.viz.display.Figure`s, which notebooks show as PNG even when pyplot was
never imported.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from sdviz.viz.display import Figure  # a matplotlib Figure that notebooks display with or without pyplot

# Words that carry no object to point at: left out of the default overlays (ask for them by name if you like).
STOPWORDS = frozenset({"a", "an", "the", "of", "on", "in", "at", "to", "and", "with", "is", "are", "its"})

HEAT = "jet"  # DAAM's colour map: it makes the peak of a diffuse map easy to see


def _normalise(m: torch.Tensor | np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] (a constant map becomes zeros)."""
    m = np.asarray(m, dtype=np.float64)
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def _picture(tr: Any, image: int) -> np.ndarray:
    return tr.images_u8[image].permute(1, 2, 0).numpy()


def _off(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def default_words(tr: Any, image: int = 0) -> list[str]:
    """The prompt's words worth a map: every distinct word except STOPWORDS."""
    words = list(dict.fromkeys(tr.encodings[image]["words"]))
    content = [w for w in words if w.strip(".,;:!?") not in STOPWORDS]
    return content or words


def attention_overlay(
    tr: Any, image: int = 0, words: Iterable[str] | None = None, alpha: float = 0.55, **select: Any
) -> Figure:
    """The generated picture, then one panel per word: its cross-attention map (normalised to [0, 1]) over the
    picture. `select` chooses steps=, resolution=, layers=, heads= as in `Trace.word_map`."""
    words = default_words(tr, image) if words is None else list(words)
    maps = tr.word_maps(words, image=image, **select)
    picture = _picture(tr, image)
    fig = Figure(figsize=(2.2 * (len(words) + 1), 2.6), layout="constrained")
    axes = fig.subplots(1, len(words) + 1, squeeze=False)[0]
    axes[0].imshow(picture)
    axes[0].set_title("image", fontsize=10)
    _off(axes[0])
    for ax, w in zip(axes[1:], words, strict=True):
        ax.imshow(picture)
        im = ax.imshow(_normalise(maps[w]), cmap=HEAT, alpha=alpha, vmin=0, vmax=1)
        ax.set_title(f'"{w}"', fontsize=10)
        _off(ax)
    fig.colorbar(im, ax=axes[-1], fraction=0.046, pad=0.04, label="attention (normalised)")
    fig.suptitle(f"cross-attention per word: {tr.prompts[image]!r}", fontsize=10)
    return fig


def _pick(xs: Sequence[int], n: int) -> list[int]:
    """n items of xs, evenly spread, first and last included."""
    if len(xs) <= n:
        return list(xs)
    idx = np.unique(np.round(np.linspace(0, len(xs) - 1, n)).astype(int))
    return [xs[i] for i in idx]


def attention_grid(
    tr: Any,
    words: Iterable[str] | None = None,
    steps: Sequence[int] | None = None,
    image: int = 0,
    n: int = 6,
    **select: Any,
) -> Figure:
    """A grid: one row per step (n of the recorded ones, evenly spread, unless `steps` is given), one column per
    word; each cell is that word's map at that step. Needs a trace recorded with keep=["step"]."""
    rec = tr.cross_attention
    if "step" not in rec.keep:
        raise ValueError("attention_grid needs per-step maps: trace with sdviz.trace(pipe, keep=['step'])")
    words = default_words(tr, image) if words is None else list(words)
    steps = _pick(rec.steps, n) if steps is None else list(steps)
    fig = Figure(figsize=(1.7 * len(words) + 0.8, 1.7 * len(steps) + 0.6), layout="constrained")
    axes = fig.subplots(len(steps), len(words), squeeze=False)
    for r, s in enumerate(steps):
        maps = tr.word_maps(words, image=image, steps=[s], **select)
        for c, w in enumerate(words):
            ax = axes[r, c]
            ax.imshow(_normalise(maps[w]), cmap=HEAT, vmin=0, vmax=1)
            _off(ax)
            if r == 0:
                ax.set_title(f'"{w}"', fontsize=10)
            if c == 0:
                ax.set_ylabel(f"step {s}\nt={tr.timesteps[s]}", fontsize=9)
    fig.suptitle(f"cross-attention over the steps: {tr.prompts[image]!r}", fontsize=10)
    return fig


def _short(layer: str) -> str:
    """unet.down_blocks.1.resnets.0.norm2 -> d1.r0.norm2 (tick labels)."""
    s = layer.removeprefix("unet.")
    for long, short in (
        ("down_blocks.", "d"),
        ("up_blocks.", "u"),
        ("mid_block.", "m."),
        ("resnets.", "r"),
        ("attentions.", "a"),
        ("conv_norm_out", "out"),
    ):
        s = s.replace(long, short)
    return s


def groupnorm_figure(tr: Any, image: int = 0, n: int = 5) -> Figure:
    """Group norm's statistics down the UNet and over the steps.

    Top: the per-group std (averaged over groups) of the input and of the output of every GroupNorm, in forward
    order, at n steps. Bottom left: the mean of the input; bottom right: the input std of every layer at every
    recorded step (log colour scale).
    """
    rec = tr.groupnorm
    steps = _pick(rec.steps, n)
    depth = np.arange(len(rec.layers))
    fig = Figure(figsize=(13, 7.5), layout="constrained")
    axes = fig.subplots(2, 2)
    colours = [_cmap("viridis")(x) for x in np.linspace(0, 0.9, len(steps))]
    for stat, ax, title in (
        ("in_std", axes[0, 0], "input std (per group, averaged)"),
        ("out_std", axes[0, 1], "output std (after scale and shift)"),
        ("in_mean", axes[1, 0], "input mean"),
    ):
        for s, colour in zip(steps, colours, strict=True):
            y = rec.along_unet(stat, step=s, image=image).numpy()
            ax.plot(depth, y, marker=".", color=colour, label=f"step {s} (t={tr.timesteps[s]})")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("GroupNorm layer, in forward order")
        if stat.endswith("std"):
            ax.set_yscale("log")
    axes[0, 0].legend(fontsize=8)
    ticks = depth[:: max(1, len(depth) // 16)]
    for ax in (axes[0, 0], axes[0, 1], axes[1, 0]):
        ax.set_xticks(ticks, [_short(rec.layers[i]) for i in ticks], rotation=70, fontsize=7)
    heat = rec.along_unet("in_std", image=image).numpy().T  # (L, S)
    ax = axes[1, 1]
    from matplotlib.colors import LogNorm

    positive = heat[np.isfinite(heat) & (heat > 0)]
    norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size else None
    im = ax.imshow(heat, aspect="auto", cmap="magma", norm=norm, interpolation="nearest")
    ax.set_xlabel("recorded step")
    ax.set_ylabel("GroupNorm layer")
    ax.set_title("input std, layer x step", fontsize=10)
    xt = list(range(0, len(rec.steps), max(1, len(rec.steps) // 8)))
    ax.set_xticks(xt, [str(rec.steps[i]) for i in xt])
    fig.colorbar(im, ax=ax, label="std")
    fig.suptitle("group normalisation statistics", fontsize=11)
    return fig


def _cmap(name: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name]


def time_embedding_figure(source: Any, timesteps: Sequence[int] | None = None, compare: tuple[int, int] = (999, 20)):
    """The time embedding as heat maps (dimension x timestep): the sinusoid and the MLP output, and the two vectors
    of the timesteps in `compare` side by side.

    `source` is a trace (its recorded steps) or a pipeline / UNet (any timesteps, default 0..999).
    """
    if hasattr(source, "time_embedding") and hasattr(source, "records"):
        rec = source.time_embedding
        t = np.array(rec.timesteps)
        sin, mlp = rec.sinusoid.numpy(), rec.mlp.numpy()
        order = np.argsort(t)
        t, sin, mlp = t[order], sin[order], mlp[order]
    else:
        from sdviz.tracing.preview import time_embeddings

        unet = getattr(source, "unet", source)
        t, sin, mlp = (x.numpy() for x in time_embeddings(unet, timesteps))
    fig = Figure(figsize=(14, 4.2), layout="constrained")
    axes = fig.subplots(1, 3, width_ratios=[1, 1, 0.8])
    extent = [t.min() - 0.5, t.max() + 0.5, sin.shape[1] - 0.5, -0.5]
    im = axes[0].imshow(sin.T, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, extent=extent, interpolation="nearest")
    axes[0].set_title(f"sinusoidal embedding ({sin.shape[1]} dims): cos | sin", fontsize=10)
    axes[0].set_xlabel("timestep t")
    axes[0].set_ylabel("dimension (frequency falls downwards in each half)")
    fig.colorbar(im, ax=axes[0])
    lim = float(np.abs(mlp).max()) or 1.0
    extent = [t.min() - 0.5, t.max() + 0.5, mlp.shape[1] - 0.5, -0.5]
    im = axes[1].imshow(
        mlp.T, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, extent=extent, interpolation="nearest"
    )
    axes[1].set_title(f"after the MLP ({mlp.shape[1]} dims): what every ResNet block receives", fontsize=10)
    axes[1].set_xlabel("timestep t")
    axes[1].set_ylabel("dimension")
    fig.colorbar(im, ax=axes[1])
    for target, colour in zip(compare, ("tab:red", "tab:blue"), strict=True):
        i = int(np.abs(t - target).argmin())
        axes[2].plot(sin[i], color=colour, lw=0.8, label=f"t={t[i]}")
    axes[2].set_title("the sinusoids of two timesteps", fontsize=10)
    axes[2].set_xlabel("dimension")
    axes[2].legend(fontsize=8)
    return fig


def _upsample(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of (h, w, 3) to `size`, so latent pixels show as blocks."""
    h, w = x.shape[:2]
    return x.repeat(max(1, size[0] // h), 0).repeat(max(1, size[1] // w), 1)


def denoising_strip(
    tr: Any, image: int = 0, n: int = 8, kinds: Sequence[str] = ("x_t", "x0"), decoded: bool | None = None
) -> Figure:
    """The denoising run as a strip: columns are n steps (evenly spread, first and last included) and the final
    picture; rows are the latents in `kinds` shown with the cheap linear RGB preview, plus the full VAE decode of
    x0 when the trace holds it (decode=True; `decoded=False` leaves it out)."""
    rec = tr.latents
    steps = _pick(list(range(len(rec.timesteps))), n)
    rows = list(kinds) + (["decoded x0"] if rec.decoded is not None and decoded is not False else [])
    size = tr.image_size
    fig = Figure(figsize=(1.6 * (len(steps) + 1), 1.75 * len(rows) + 0.5), layout="constrained")
    axes = fig.subplots(len(rows), len(steps) + 1, squeeze=False)
    for r, kind in enumerate(rows):
        if kind == "decoded x0":
            pics = [rec.decoded[s, image].permute(1, 2, 0).numpy() for s in steps]
        else:
            pics = [_upsample(p, size) for p in rec.preview(kind, steps, image)]
        for c, (s, pic) in enumerate(zip(steps, pics, strict=True)):
            ax = axes[r, c]
            ax.imshow(pic, interpolation="nearest")
            _off(ax)
            if r == 0:
                ax.set_title(f"step {s}\nt={rec.timesteps[s]}", fontsize=9)
            if c == 0:
                ax.set_ylabel(kind.replace("x0", "pred. x0"), fontsize=9)
        ax = axes[r, -1]
        _off(ax)
        if r == 0:
            ax.set_title("final", fontsize=9)
        if kind in ("x0", "decoded x0"):
            ax.imshow(_picture(tr, image))  # the VAE decode of the final latents: the generated picture
        elif kind == "x_t":
            ax.imshow(_upsample(rec.preview("final", image=image), size), interpolation="nearest")
        else:
            ax.axis("off")
    fig.suptitle(
        f"denoising: {tr.prompts[image]!r}  (latents through a linear RGB map; 'final' = VAE decode)", fontsize=10
    )
    return fig


def noise_schedule_figure(schedule: Any = None, timesteps: Sequence[int] | None = None) -> Figure:
    """The training noise schedule: beta_t; alpha_bar_t with the signal and noise weights sqrt(alpha_bar_t) and
    sqrt(1 - alpha_bar_t) of x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps; and the signal-to-noise ratio
    alpha_bar_t / (1 - alpha_bar_t) on a log scale.

    `schedule` is a trace (its model's schedule, and its timesteps marked), a pipeline, an SDConfig, a
    ScheduleConfig (or its dict), a NoiseSchedule, or None (SD's). `timesteps` are marked on the SNR curve.
    """
    from sdviz.config import ScheduleConfig, SDConfig
    from sdviz.samplers.schedule import NoiseSchedule

    if isinstance(getattr(schedule, "info", None), dict):  # a trace
        timesteps = schedule.timesteps if timesteps is None else timesteps
        schedule = SDConfig.from_dict(schedule.info["config"]).schedule
    if isinstance(schedule, dict):
        schedule = ScheduleConfig(**schedule)
    if not isinstance(schedule, NoiseSchedule):
        cfg = getattr(schedule, "config", schedule)
        cfg = getattr(cfg, "schedule", cfg)
        schedule = NoiseSchedule(cfg)
    t = np.arange(schedule.num_train_timesteps)
    ab = schedule.alphas_cumprod.numpy()
    fig = Figure(figsize=(13, 3.6), layout="constrained")
    axes = fig.subplots(1, 3)
    axes[0].plot(t, schedule.betas.numpy(), color="tab:red")
    axes[0].set_title(r"$\beta_t$: noise added by step t (scaled linear)", fontsize=10)
    axes[1].plot(t, ab, color="black", label=r"$\bar\alpha_t$")
    axes[1].plot(t, np.sqrt(ab), color="tab:blue", label=r"$\sqrt{\bar\alpha_t}$ (signal)")
    axes[1].plot(t, np.sqrt(1 - ab), color="tab:orange", label=r"$\sqrt{1-\bar\alpha_t}$ (noise)")
    axes[1].set_title(r"$\bar\alpha_t = \prod_{s \leq t} (1-\beta_s)$", fontsize=10)
    axes[1].legend(fontsize=8)
    snr = schedule.snr.numpy()
    axes[2].semilogy(t, snr, color="tab:green")
    axes[2].axhline(1.0, color="grey", lw=0.7, ls="--")
    axes[2].set_title(r"signal-to-noise ratio $\bar\alpha_t / (1-\bar\alpha_t)$", fontsize=10)
    if timesteps is not None:
        ts = np.asarray(list(timesteps))
        axes[2].plot(ts, snr[ts], "k.", ms=4, label="sampled timesteps")
        axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("timestep t")
    return fig


def self_attention_figure(
    tr: Any,
    layer: str,
    pixels: Sequence[tuple[float, float]] = ((0.25, 0.25), (0.5, 0.5), (0.75, 0.75)),
    image: int = 0,
    **select: Any,
) -> Figure:
    """Where a few query pixels looked in one self-attention layer. `pixels` are (y, x) as fractions of the image
    (0..1), so the same call works at every resolution; each panel marks its query pixel."""
    rec = tr.self_attention
    key = rec.layer_key(layer)
    h, w = rec.grid[key]
    picture = _picture(tr, image)
    fig = Figure(figsize=(2.3 * (len(pixels) + 1), 2.7), layout="constrained")
    axes = fig.subplots(1, len(pixels) + 1, squeeze=False)[0]
    axes[0].imshow(picture)
    axes[0].set_title("image", fontsize=10)
    _off(axes[0])
    size = tr.image_size
    for ax, (fy, fx) in zip(axes[1:], pixels, strict=True):
        y, x = min(int(fy * h), h - 1), min(int(fx * w), w - 1)
        m = rec.pixel_map(key, y, x, image=image, **select)
        up = torch.nn.functional.interpolate(m[None, None], size=size, mode="nearest")[0, 0]
        ax.imshow(picture)
        ax.imshow(_normalise(up), cmap=HEAT, alpha=0.55)
        ax.plot([(x + 0.5) * size[1] / w - 0.5], [(y + 0.5) * size[0] / h - 0.5], "w+", ms=12, mew=2)
        ax.set_title(f"query ({y}, {x}) of {h}x{w}", fontsize=9)
        _off(ax)
    fig.suptitle(f"self-attention: {_short(key.removesuffix('.hook_probs'))}", fontsize=10)
    return fig


def picture_row(images: Sequence[Any], titles: Sequence[str], suptitle: str = "") -> Figure:
    """Pictures side by side with a title each: a sweep of one setting (guidance scale, strength, seed)."""
    fig = Figure(figsize=(1.9 * len(images), 2.3), layout="constrained")
    axes = fig.subplots(1, len(images), squeeze=False)[0]
    for ax, im, title in zip(axes, images, titles, strict=True):
        ax.imshow(np.asarray(im), interpolation="nearest")
        ax.set_title(title, fontsize=9)
        _off(ax)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def guidance_figure(pipe: Any, prompt: str, seed: int = 0, scales: Sequence[float] = (1, 2, 5, 9), **kw: Any) -> Figure:
    """Classifier-free guidance: the same seed at several `cfg_scale`s (1 = the conditional prediction alone)."""
    images = [pipe.generate(prompt, seed=seed, cfg_scale=s, progress=False, **kw).image for s in scales]
    return picture_row(images, [f"cfg {s:g}" for s in scales], f"guidance: {prompt!r}, seed {seed}")


def strength_figure(
    pipe: Any, image: Any, prompt: str, seed: int = 0, strengths: Sequence[float] = (0.2, 0.4, 0.6, 0.8, 1.0), **kw: Any
) -> Figure:
    """Image-to-image: the input picture, then the result at growing `strength` ("more noise, more freedom")."""
    images = [image] + [pipe.generate(prompt, image=image, strength=s, seed=seed, progress=False, **kw).image
                        for s in strengths]  # fmt: skip
    return picture_row(images, ["input"] + [f"strength {s:g}" for s in strengths], f"image-to-image: {prompt!r}")

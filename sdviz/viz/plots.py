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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sdviz.viz.display import Figure  # a matplotlib Figure that notebooks display with or without pyplot

if TYPE_CHECKING:
    from sdviz.pipeline import StableDiffusion
    from sdviz.tracing import Trace

# Words that carry no object to point at: left out of the default overlays (ask for them by name if you like).
STOPWORDS = frozenset({"a", "an", "the", "of", "on", "in", "at", "to", "and", "with", "is", "are", "its"})

HEAT = "jet"  # DAAM's colour map: it makes the peak of a diffuse map easy to see


def _normalise(m: torch.Tensor | np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] (a constant map becomes zeros)."""
    m = np.asarray(m, dtype=np.float64)
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def _picture(tr: Trace, image: int) -> np.ndarray:
    return tr.images_u8[image].permute(1, 2, 0).numpy()


def _off(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def default_words(tr: Trace, image: int = 0) -> list[str]:
    """The prompt's words worth a map: every distinct word except STOPWORDS."""
    words = list(dict.fromkeys(tr.encodings[image]["words"]))
    content = [w for w in words if w.strip(".,;:!?") not in STOPWORDS]
    return content or words


SCALES = ("shared", "panel")


def _scale_label(tr: Trace, scale: str) -> str:
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
        return {w: _normalise(m) for w, m in maps.items()}, 1.0
    arrays = {w: np.asarray(m, dtype=np.float64) for w, m in maps.items()}
    return arrays, max(float(a.max()) for a in arrays.values()) or 1.0


def attention_overlay(
    tr: Trace,
    image: int = 0,
    words: Iterable[str] | None = None,
    alpha: float = 0.55,
    scale: str = "shared",
    method: Any = None,
    **select: Any,
) -> Figure:
    """The generated picture, then one panel per word: its cross-attention map over the picture.

    `scale="shared"` (default) draws every map on one absolute scale (attention probability, 0 to the highest value
    of any panel), so a word that barely looked anywhere ("above", "small") looks faint; `scale="panel"` stretches
    each map to its own [min, max] to show its shape, and titles give each panel's max. `method` is the word-map
    aggregator and `select` chooses steps=, resolution=, layers=, heads=, as in `Trace.word_map`."""
    words = default_words(tr, image) if words is None else list(words)
    maps = tr.word_maps(words, image=image, method=method, **select)
    shown, top = _shown(maps, scale)
    picture = _picture(tr, image)
    fig = Figure(figsize=(2.2 * (len(words) + 1) + 0.6, 2.75), layout="constrained")
    axes = fig.subplots(1, len(words) + 1, squeeze=False)[0]
    axes[0].imshow(picture)
    axes[0].set_title("image", fontsize=10)
    _off(axes[0])
    for ax, w in zip(axes[1:], words, strict=True):
        ax.imshow(picture)
        im = ax.imshow(shown[w], cmap=HEAT, alpha=alpha, vmin=0, vmax=top)
        ax.set_title(f'"{w}"\nmax {float(maps[w].max()):.3f}', fontsize=9.5)
        _off(ax)
    fig.colorbar(im, ax=axes[-1], fraction=0.046, pad=0.04).set_label(_scale_label(tr, scale), fontsize=8)
    how = "one colour scale for all words" if scale == "shared" else "each panel on its own scale"
    fig.suptitle(f"cross-attention per word ({how}): {tr.prompts[image]!r}", fontsize=10)
    return fig


def _pick(xs: Sequence[int], n: int) -> list[int]:
    """n items of xs, evenly spread, first and last included."""
    if len(xs) <= n:
        return list(xs)
    idx = np.unique(np.round(np.linspace(0, len(xs) - 1, n)).astype(int))
    return [xs[i] for i in idx]


def _step_picture(tr: Trace, step: int, image: int) -> np.ndarray:
    """The picture the model predicted at a step: the VAE decode of x0 when the trace holds it (decode=True), else
    the linear preview of x0, upsampled."""
    rec = tr.latents
    if rec.decoded is not None:
        return rec.decoded[step, image].permute(1, 2, 0).numpy()
    return _upsample(rec.preview("x0", step, image), tr.image_size)


def attention_grid(
    tr: Trace,
    words: Iterable[str] | None = None,
    steps: Sequence[int] | None = None,
    image: int = 0,
    n: int = 6,
    scale: str = "shared",
    alpha: float = 0.6,
    method: Any = None,
    **select: Any,
) -> Figure:
    """A grid: one row per step (n of the recorded ones, evenly spread, unless `steps` is given); the first column is
    the picture the model predicted at that step, then one column per word, its map at that step over the final
    picture. `scale` and `method` as in `attention_overlay` ("shared": one absolute scale for the whole grid). Needs a
    trace recorded with keep=["step"]."""
    rec = tr.cross_attention
    if "step" not in rec.keep:
        raise ValueError("attention_grid needs per-step maps: trace with sdviz.trace(pipe, keep=['step'])")
    words = default_words(tr, image) if words is None else list(words)
    steps = _pick(rec.steps, n) if steps is None else list(steps)
    per_step = [tr.word_maps(words, image=image, steps=[s], method=method, **select) for s in steps]
    if scale == "shared":
        top = max(float(np.asarray(m).max()) for maps in per_step for m in maps.values()) or 1.0
        shown = [{w: np.asarray(m, dtype=np.float64) for w, m in maps.items()} for maps in per_step]
    else:
        _scale_label(tr, scale)
        top, shown = 1.0, [{w: _normalise(m) for w, m in maps.items()} for maps in per_step]
    picture = _picture(tr, image)
    fig = Figure(figsize=(1.7 * (len(words) + 1) + 1.4, 1.7 * len(steps) + 0.7), layout="constrained")
    axes = fig.subplots(len(steps), len(words) + 1, squeeze=False)
    im = None
    for r, s in enumerate(steps):
        ax = axes[r, 0]
        ax.imshow(_step_picture(tr, s, image), interpolation="nearest")
        _off(ax)
        ax.set_ylabel(f"step {s}\nt={tr.timesteps[s]}", fontsize=9)
        if r == 0:
            ax.set_title("predicted x0", fontsize=9.5)
        for c, w in enumerate(words, start=1):
            ax = axes[r, c]
            ax.imshow(picture)
            im = ax.imshow(shown[r][w], cmap=HEAT, alpha=alpha, vmin=0, vmax=top)
            _off(ax)
            if r == 0:
                ax.set_title(f'"{w}"', fontsize=10)
    fig.colorbar(im, ax=axes[:, -1], fraction=0.08, pad=0.04, shrink=0.6).set_label(_scale_label(tr, scale), fontsize=8)
    how = "one colour scale for the grid" if scale == "shared" else "each panel on its own scale"
    fig.suptitle(f"cross-attention over the steps ({how}), over the final picture: {tr.prompts[image]!r}", fontsize=10)
    return fig


def _short(layer: str) -> str:
    """unet.down_blocks.1.resnets.0.norm2 -> d1.r0.norm2 (compact names for titles)."""
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


def readable_layer(layer: str) -> str:
    """A GroupNorm's module path as words: unet.down_blocks.1.resnets.0.norm2 -> "down 1 · ResNet 0 · norm2",
    unet.up_blocks.0.attentions.1.norm -> "up 0 · attention 1 (in)", unet.conv_norm_out -> "output norm"."""
    parts = layer.removeprefix("unet.").split(".")
    if parts == ["conv_norm_out"]:
        return "output norm"
    words = []
    i = 0
    while i < len(parts):
        p = parts[i]
        if p in ("down_blocks", "up_blocks"):
            words.append(f"{p.split('_')[0]} {parts[i + 1]}")
            i += 2
        elif p == "mid_block":
            words.append("mid")
            i += 1
        elif p == "resnets":
            words.append(f"ResNet {parts[i + 1]}")
            i += 2
        elif p == "attentions":
            words.append(f"attention {parts[i + 1]}")
            i += 2
        else:
            words.append(p)
            i += 1
    return " · ".join(words)


def _log_ticks(ax: Any, lo: float, hi: float) -> None:
    """Plain-number ticks (0.5, 1, 2, ...) on a log y axis spanning [lo, hi], instead of 9.6x10^-1."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter

    candidates = [m * 10.0**e for e in range(-4, 5) for m in (1, 2, 5)]
    ticks = [v for v in candidates if lo * 0.9 <= v <= hi * 1.1]
    if len(ticks) < 3:  # a narrow range: a few evenly spaced values instead
        ticks = list(np.round(np.linspace(lo, hi, 4), 2))
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_minor_formatter(NullFormatter())


def groupnorm_figure(tr: Trace, image: int = 0, n: int = 5) -> Figure:
    """Group norm's statistics along the UNet (x axis: every GroupNorm, in forward order, named in words) and over
    the denoising steps.

    Rows: the input's std per group (averaged over groups) at n steps, the output's std (after the learned scale
    and shift), the input's mean, and the input std of every layer at every recorded step as a heat map. Shaded
    bands mark the down path, the middle and the up path, with each band's latent grid.
    """
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import ScalarFormatter

    rec = tr.groupnorm
    steps = _pick(rec.steps, n)
    depth = np.arange(len(rec.layers))
    fig = Figure(figsize=(13, 11.5), layout="constrained")
    axes = fig.subplots(4, 1, sharex=True, height_ratios=[1, 1, 1, 1.2])
    colours = [_cmap("viridis")(x) for x in np.linspace(0, 0.9, len(steps))]
    stats = (
        ("in_std", "input std (per group, averaged over groups): what each GroupNorm is handed", True),
        ("out_std", "output std, after normalising and the learned per-channel scale and shift", False),
        ("in_mean", "input mean (per group, averaged over groups)", False),
    )
    for ax, (stat, title, log) in zip(axes[:3], stats, strict=True):
        values = []
        for s, colour in zip(steps, colours, strict=True):
            y = rec.along_unet(stat, step=s, image=image).numpy()
            values.append(y)
            ax.plot(depth, y, marker=".", color=colour, label=f"step {s} (t={tr.timesteps[s]})")
        ax.set_title(title, fontsize=10, loc="left", pad=30 if stat == "in_std" else None)
        v = np.concatenate(values)
        v = v[np.isfinite(v)]
        if log and v.size and v.min() > 0 and v.max() / v.min() > 3:
            ax.set_yscale("log")
            _log_ticks(ax, float(v.min()), float(v.max()))
        else:
            ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="denoising step", title_fontsize=8)
    # the down / mid / up bands, labelled with their grid
    sections: list[tuple[str, int, int]] = []
    for i, layer in enumerate(rec.layers):
        part = layer.removeprefix("unet.").split(".")[0]
        part = {"down_blocks": "down path", "mid_block": "middle", "up_blocks": "up path"}.get(part, "output")
        if sections and sections[-1][0] == part:
            sections[-1] = (part, sections[-1][1], i)
        else:
            sections.append((part, i, i))
    for k, (part, a, b) in enumerate(sections):
        grids = sorted({rec.grids[i] for i in range(a, b + 1)}, key=lambda g: -g[0])
        for ax in axes[:3]:
            if k % 2 == 0:
                ax.axvspan(a - 0.5, b + 0.5, color="0.92", zorder=0)
        text = f"{part}\n{', '.join(f'{g[0]}x{g[1]}' for g in grids)}"
        axes[0].text((a + b) / 2, 1.02, text, transform=axes[0].get_xaxis_transform(), ha="center", va="bottom",
                     fontsize=8, color="0.3")  # fmt: skip
    heat = rec.along_unet("in_std", image=image).numpy()  # (S, L)
    ax = axes[3]
    positive = heat[np.isfinite(heat) & (heat > 0)]
    norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size else None
    extent = (-0.5, len(rec.layers) - 0.5, len(rec.steps) - 0.5, -0.5)
    im = ax.imshow(heat, aspect="auto", cmap="magma", norm=norm, interpolation="nearest", extent=extent)
    ax.set_ylabel("denoising step")
    yt = list(range(0, len(rec.steps), max(1, len(rec.steps) // 6)))
    ax.set_yticks(yt, [f"{rec.steps[i]} (t={rec.timesteps[i]})" for i in yt], fontsize=8)
    ax.set_title("input std of every GroupNorm at every recorded step", fontsize=10, loc="left")
    bar = fig.colorbar(im, ax=ax, label="input std", pad=0.01)
    if positive.size:
        lo, hi = float(positive.min()), float(positive.max())
        ticks = [v for v in (0.1, 0.2, 0.3, 0.5, 1, 2, 3, 5, 10, 20) if lo <= v <= hi]
        bar.set_ticks(ticks, labels=[f"{v:g}" for v in ticks])
        bar.minorticks_off()
    ax.set_xticks(depth, [readable_layer(x) for x in rec.layers], rotation=80, fontsize=7.5)
    ax.set_xlabel("GroupNorm layer, in forward order (norm1 / norm2: a ResNet block's two; attention: its input norm)")
    fig.suptitle(f"group normalisation along the UNet: {tr.prompts[image]!r}", fontsize=11)
    return fig


def _cmap(name: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name]


def _too_fast(values: np.ndarray, t: np.ndarray, columns: float) -> np.ndarray:
    """Which rows of a (dims, T) table of sinusoids oscillate too fast to draw in `columns` pixels: fewer than ~8
    pixels per period. Such a row can only come out as moire (a pattern that is not there), so it is masked."""
    crossings = (np.diff(np.sign(values), axis=1) != 0).sum(1)  # 2 per period
    span = float(t.max() - t.min()) or 1.0
    period = np.where(crossings > 0, 2 * span / np.maximum(crossings, 1), np.inf)  # in timesteps
    return period < 8 * span / columns


def time_embedding_figure(source: Any, timesteps: Sequence[int] | None = None, compare: tuple[int, int] = (999, 20)):
    """The time embedding: its sinusoids as heat maps (dimension x timestep), the MLP's output, and the two vectors
    of the timesteps in `compare`.

    `source` is a trace (its recorded steps) or a pipeline / UNet (every timestep 0..999, or `timesteps`). With
    every timestep, a first panel zooms on t = 0..63, where the fastest dimensions can be seen; on the full range
    those (a period of a few timesteps) cannot be drawn in a few hundred pixels without moire, so they are greyed.
    """
    zoom = None
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
        if timesteps is None:
            zoom = 64
    half = sin.shape[1] // 2
    ratios = ([0.55] if zoom else []) + [1, 1, 0.8]
    fig = Figure(figsize=(4.5 * len(ratios) - 0.5 * (zoom is not None), 4.4), layout="constrained")
    axes = list(fig.subplots(1, len(ratios), width_ratios=ratios))
    if zoom:
        ax = axes.pop(0)
        ax.imshow(sin[:zoom].T, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest",
                  extent=[-0.5, zoom - 0.5, sin.shape[1] - 0.5, -0.5])  # fmt: skip
        ax.axhline(half - 0.5, color="black", lw=0.8)
        ax.set_title(f"zoom: t = 0..{zoom - 1}", fontsize=10)
        ax.set_xlabel("timestep t")
        ax.set_ylabel("dimension (cos half above the line, sin half below;\nfrequency falls downwards in each half)")
    masked = np.ma.masked_array(sin.T, np.zeros_like(sin.T, dtype=bool))
    if len(t) > 200:  # many timesteps in a few hundred pixels: grey out the rows that would alias
        masked.mask[_too_fast(sin.T, t, columns=350)] = True
    cmap = _cmap("RdBu_r").with_extremes(bad="0.8")
    extent = [t.min() - 0.5, t.max() + 0.5, sin.shape[1] - 0.5, -0.5]
    im = axes[0].imshow(masked, aspect="auto", cmap=cmap, vmin=-1, vmax=1, extent=extent,
                        interpolation="antialiased", interpolation_stage="data")  # fmt: skip
    axes[0].axhline(half - 0.5, color="black", lw=0.8)
    title = f"sinusoidal embedding ({sin.shape[1]} dims)"
    if masked.mask.any():
        title += "\ngrey: too fast to draw at this width (see the zoom)"
    axes[0].set_title(title, fontsize=10)
    axes[0].set_xlabel("timestep t")
    if not zoom:
        axes[0].set_ylabel("dimension (cos half above the line, sin half below)")
    fig.colorbar(im, ax=axes[0])
    lim = float(np.abs(mlp).max()) or 1.0
    extent = [t.min() - 0.5, t.max() + 0.5, mlp.shape[1] - 0.5, -0.5]
    im = axes[1].imshow(mlp.T, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, extent=extent,
                        interpolation="antialiased", interpolation_stage="data")  # fmt: skip
    axes[1].set_title(f"after the MLP ({mlp.shape[1]} dims):\nwhat every ResNet block receives", fontsize=10)
    axes[1].set_xlabel("timestep t")
    axes[1].set_ylabel("dimension")
    fig.colorbar(im, ax=axes[1])
    # each half is its own curve over the frequency index: the cos and sin halves are not one line
    k = np.arange(half)
    for target, colour in zip(compare, ("tab:red", "tab:blue"), strict=True):
        i = int(np.abs(t - target).argmin())
        axes[2].plot(k, sin[i, :half], color=colour, lw=0.9, marker=".", ms=4, label=f"t={t[i]}: cos")
        axes[2].plot(k, sin[i, half:], color=colour, lw=0.9, ls="--", label=f"t={t[i]}: sin")
    axes[2].set_title("the embedding of two timesteps", fontsize=10)
    axes[2].set_xlabel("frequency index i (frequency falls as i grows)")
    axes[2].legend(fontsize=8, loc="lower right")
    return fig


def _upsample(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of (h, w, 3) to `size`, so latent pixels show as blocks."""
    h, w = x.shape[:2]
    return x.repeat(max(1, size[0] // h), 0).repeat(max(1, size[1] // w), 1)


def denoising_strip(
    tr: Trace, image: int = 0, n: int = 8, kinds: Sequence[str] = ("x_t", "x0"), decoded: bool | None = None
) -> Figure:
    """The denoising run as a strip: columns are n steps (evenly spread, first and last included) and the final
    picture; rows are the latents in `kinds`. When the trace holds the VAE decode of every step's x0
    (`decode=True`), the x0 row shows it (the colours are the picture's); otherwise, or with `decoded=False`, x0
    is shown through the cheap linear latent-to-RGB preview like the other rows (layout right, colours rough)."""
    rec = tr.latents
    steps = _pick(list(range(len(rec.timesteps))), n)
    use_decoded = rec.decoded is not None and decoded is not False
    size = tr.image_size
    fig = Figure(figsize=(1.6 * (len(steps) + 1), 1.75 * len(kinds) + 0.6), layout="constrained")
    axes = fig.subplots(len(kinds), len(steps) + 1, squeeze=False)
    labels = {
        "x_t": "x_t, the latent\n(linear preview)",
        "x0": "predicted x0\n(VAE decode)" if use_decoded else "predicted x0\n(linear preview)",
        "eps": "guided noise\nprediction ε",
        "eps_cond": "ε given the prompt",
        "eps_uncond": "ε given \"\"",
    }
    for r, kind in enumerate(kinds):
        if kind == "x0" and use_decoded:
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
                ax.set_ylabel(labels.get(kind, kind), fontsize=9)
        ax = axes[r, -1]
        _off(ax)
        if r == 0:
            ax.set_title("after the\nlast step", fontsize=9)
        if kind == "x0":
            ax.imshow(_picture(tr, image))  # the VAE decode of the final latents: the generated picture
        elif kind == "x_t":
            ax.imshow(_upsample(rec.preview("final", image=image), size), interpolation="nearest")
        else:
            ax.axis("off")
    fig.suptitle(f"the reverse process, from noise to picture: {tr.prompts[image]!r}", fontsize=10)
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
    tr: Trace,
    layer: str | Sequence[str],
    pixels: Sequence[tuple[float, float]] = ((0.25, 0.25), (0.5, 0.5), (0.75, 0.75)),
    image: int = 0,
    alpha: float = 0.6,
    **select: Any,
) -> Figure:
    """Where a few query pixels looked in one self-attention layer (or one row per layer, for a list). `pixels`
    are (y, x) as fractions of the image (0..1), so the same call works at every resolution; each panel marks its
    query pixel. A row shares one absolute scale (attention probability, 0 to the row's highest value), and the
    colour bar marks the uniform level 1 / (pixels of the grid): a map near it looked everywhere alike."""
    rec = tr.self_attention
    layers = [layer] if isinstance(layer, str) else list(layer)
    picture = _picture(tr, image)
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
        axes[r, 0].set_ylabel(f"{_short(key.removesuffix('.hook_probs'))}\n{h}x{w} grid", fontsize=8.5)
        _off(axes[r, 0])
        im = None
        for ax, (y, x), m in zip(axes[r, 1:], queries, maps, strict=True):
            up = torch.nn.functional.interpolate(m[None, None], size=size, mode="nearest")[0, 0]
            ax.imshow(picture)
            im = ax.imshow(up.numpy(), cmap=HEAT, alpha=alpha, vmin=0, vmax=top)
            ax.plot([(x + 0.5) * size[1] / w - 0.5], [(y + 0.5) * size[0] / h - 0.5], "w+", ms=12, mew=2)
            ax.set_title(f"query ({y}, {x}): max {float(m.max()):.3f}", fontsize=8.5)
            _off(ax)
        bar = fig.colorbar(im, ax=axes[r, -1], fraction=0.05, pad=0.04)
        bar.ax.axhline(1 / (h * w), color="white", lw=1.5)
        bar.set_label(f"probability\n(white line: uniform {1 / (h * w):.4f})", fontsize=7.5)
    fig.suptitle(f"self-attention: where a pixel looks in the same picture ({tr.prompts[image]!r})", fontsize=10)
    return fig


def guidance_internals(
    tr: Trace,
    pipe: StableDiffusion | None = None,
    steps: Sequence[int] | None = None,
    image: int = 0,
    n: int = 4,
):
    """Classifier-free guidance inside one step, at n steps (or `steps`), from what the trace recorded:

    x_t; the noise predicted without the prompt (eps_uncond) and with it (eps_cond); their difference, the prompt's
    contribution, as a magnitude per latent pixel; the guided eps = eps_uncond + cfg (eps_cond - eps_uncond); and
    the clean picture each of the three predictions implies, decoded by the VAE when `pipe` is given (else the
    linear preview). Needs a guided generation (cfg_scale > 1)."""
    from sdviz.config import SDConfig
    from sdviz.samplers import get_sampler

    rec = tr.latents
    if "eps_uncond" not in rec.tensors:
        raise ValueError("this generation ran without guidance (cfg_scale <= 1): there is no eps_uncond to show")
    cfg = float(tr.info["cfg_scale"])
    sampler = get_sampler(tr.info["sampler"], SDConfig.from_dict(tr.info["config"]).schedule)
    # by default n steps evenly spread, the last excluded: at t ~ 1 the noise prediction hardly moves anything, and
    # its large |eps_cond - eps_uncond| (fine detail is hard to predict) would set the colour scale for every row
    steps = _pick(list(range(max(1, len(rec.timesteps) - 1))), n) if steps is None else list(steps)
    size = tr.image_size

    def preview(z: torch.Tensor) -> np.ndarray:
        rgb = ((rec.to_rgb(z) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
        return _upsample(rgb, size)

    def latent_picture(z: torch.Tensor) -> np.ndarray:
        if pipe is None:
            return preview(z)
        x = pipe.decode_latents(z[None]).float().clamp(-1, 1)[0]
        return ((x + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()

    diffs = [(rec.eps_cond[s, image] - rec.eps_uncond[s, image]).norm(dim=0).numpy() for s in steps]
    top = max(float(d.max()) for d in diffs) or 1.0
    titles = ["x_t", "ε_uncond\n(prompt \"\")", "ε_cond\n(the prompt)", "|ε_cond − ε_uncond|\n(per latent pixel)",
              f"ε = ε_uncond +\n{cfg:g} (ε_cond − ε_uncond)", "x̂0 from ε_uncond", "x̂0 from ε_cond",
              "x̂0 from the guided ε"]  # fmt: skip
    fig = Figure(figsize=(1.65 * len(titles) + 1.2, 1.75 * len(steps) + 0.9), layout="constrained")
    axes = fig.subplots(len(steps), len(titles), squeeze=False)
    im = None
    for r, s in enumerate(steps):
        t = rec.timesteps[s]
        x_t = rec.x_t[s, image]
        eps_u, eps_c, eps = rec.eps_uncond[s, image], rec.eps_cond[s, image], rec.eps[s, image]
        x0s = [sampler.predict_x0(e[None], t, x_t[None])[0] for e in (eps_u, eps_c, eps)]
        row = axes[r]
        for ax, z in zip(row[:3], (x_t, eps_u, eps_c), strict=True):
            ax.imshow(preview(z), interpolation="nearest")
        d = diffs[r]
        im = row[3].imshow(d.repeat(size[0] // d.shape[0], 0).repeat(size[1] // d.shape[1], 1), cmap="magma",
                           vmin=0, vmax=top, interpolation="nearest")  # fmt: skip
        row[4].imshow(preview(eps), interpolation="nearest")
        for ax, z in zip(row[5:], x0s, strict=True):
            ax.imshow(latent_picture(z), interpolation="nearest")
        for c, ax in enumerate(row):
            _off(ax)
            if r == 0:
                ax.set_title(titles[c], fontsize=8.5)
        row[0].set_ylabel(f"step {s}\nt={t}", fontsize=9)
    bar = fig.colorbar(im, ax=axes[:, 3], fraction=0.08, pad=0.03, shrink=0.7)
    bar.set_label("|ε_cond − ε_uncond|, one scale for all rows", fontsize=8)
    fig.suptitle(f"classifier-free guidance inside a step, cfg {cfg:g}: {tr.prompts[image]!r}  "
                 "(ε and x_t: linear latent preview)", fontsize=10)  # fmt: skip
    return fig


def training_losses_figure(model_dir: Any = None, window: int = 9) -> Figure:
    """The embedded model's training logs (`log_vae.csv`, `log_unet.csv` beside its weights), one panel per curve:
    the VAE's loss, the VAE's PSNR, the UNet's noise loss. Logged rows faint, a centred moving average bold. The two
    jumps in the VAE curves are marked: a loss spike near the peak learning rate (it recovers within ~50 steps),
    and the switch from 32x32 crops to whole 64x64 pictures for the last 10% of the steps (PSNR is measured on
    what is trained on, and whole pictures hold more easy background)."""
    from pathlib import Path

    from sdviz.pipeline import EMBEDDED_MODEL
    from sdviz.toy.loop import read_log
    from sdviz.toy.train import DEFAULTS

    model_dir = Path(model_dir) if model_dir is not None else EMBEDDED_MODEL
    vae, unet = read_log(model_dir, "vae"), read_log(model_dir, "unet")

    def smoothed(values: list[float]) -> np.ndarray:
        """A centred moving average over `window` logged rows (no lag, unlike an exponential average)."""
        v = np.asarray(values, dtype=np.float64)
        k = min(window, len(v)) // 2
        padded = np.pad(v, k, mode="edge")
        return np.convolve(padded, np.ones(2 * k + 1) / (2 * k + 1), mode="valid")

    fig = Figure(figsize=(15, 4.0), layout="constrained")
    axes = fig.subplots(1, 3)
    panels = (
        (axes[0], vae, "loss", "stage 1, VAE: L1 + KL loss", True),
        (axes[1], vae, "psnr", "stage 1, VAE: reconstruction PSNR (dB, training batches)", False),
        (axes[2], unet, "loss", "stage 2, UNet + text encoder: Min-SNR noise loss", True),
    )
    for ax, rows, key, title, log in panels:
        if not rows:
            ax.text(0.5, 0.5, f"no log in {model_dir}", ha="center", va="center", transform=ax.transAxes)
            continue
        steps = [r["step"] for r in rows]
        values = [r[key] for r in rows]
        ax.plot(steps, values, color="tab:blue", alpha=0.25, lw=0.8, label="logged every 10 steps")
        ax.plot(steps, smoothed(values), color="tab:blue", lw=1.8, label=f"moving average ({window} rows)")
        if rows is unet and "mse" in rows[0]:
            ax.plot(steps, smoothed([r["mse"] for r in rows]), color="tab:orange", lw=1.4,
                    label="unweighted mean (ε̂ − ε)²")  # fmt: skip
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    if vae:
        s = DEFAULTS["vae"]
        switch = s.steps - s.steps // 10 if s.crop else None
        losses = np.array([r["loss"] for r in vae])
        running_min = np.minimum.accumulate(losses)
        spike = int(np.argmax(losses / running_min))
        for ax in axes[:2]:
            if switch is not None:
                ax.axvline(switch, color="0.4", ls="--", lw=0.9)
                ax.annotate("32x32 crops → whole\npictures (last 10%)", (switch, 0.5), xytext=(-6, 0),
                            xycoords=("data", "axes fraction"), textcoords="offset points", ha="right", fontsize=8,
                            color="0.3")  # fmt: skip
            if losses[spike] > 1.5 * running_min[spike]:
                ax.axvline(vae[spike]["step"], color="tab:red", ls=":", lw=0.9)
                ax.annotate("loss spike at high\nlearning rate, recovered", (vae[spike]["step"], 0.85),
                            xycoords=("data", "axes fraction"), xytext=(6, 0), textcoords="offset points",
                            fontsize=8, color="tab:red")  # fmt: skip
    axes[0].legend(fontsize=8, loc="lower left")
    axes[2].legend(fontsize=8, loc="upper right")
    fig.suptitle("training the embedded model (logs shipped beside its weights)", fontsize=11)
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
            _off(ax)
            if r == 0:
                s = strengths[c - 1] if c else None
                title = "input" if s is None else f"strength {s:g}\n({int(steps * s)} of {steps} steps)"
                ax.set_title(title, fontsize=9)
        axes[r, 0].set_ylabel(_wrap(f'"{p}"', 24), fontsize=8)
    cfg = kw.get("cfg_scale")
    title = "image-to-image: more noise, more freedom" + (f" (cfg {cfg:g})" if cfg is not None else "")
    fig.suptitle(title, fontsize=10)
    return fig


def _wrap(text: str, width: int) -> str:
    """Break `text` into lines of about `width` characters."""
    lines, line = [], ""
    for w in text.split():
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return "\n".join([*lines, line])

"""Figures of what a traced generation computed besides attention, and of the schedule and time embedding it ran on.

    denoising_strip(tr)          x_t and the predicted clean image x0 at a few steps (cheap RGB previews)
    guidance_internals(tr, pipe) classifier-free guidance inside a step: eps_uncond, eps_cond, their difference
    groupnorm_figure(tr)         group norm's input and output statistics along the UNet and over the steps
    time_embedding_figure(pipe)  the sinusoidal time embedding, its MLP output, and their cosine similarity over t
    noise_schedule_figure()      beta_t, alpha_bar_t and the signal-to-noise ratio of the training schedule

Each returns a `sdviz.viz.display.Figure`, built directly (not through pyplot): no global state, any backend, and
a notebook shows it as PNG. The attention figures are in `attention_figures.py`; `plots` re-exports both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sdviz.viz.display import Figure  # a matplotlib Figure that notebooks display with or without pyplot
from sdviz.viz.style import no_ticks, pick_evenly, to_u8, trace_picture, upsample

if TYPE_CHECKING:
    from sdviz.pipeline import StableDiffusion
    from sdviz.tracing import Trace


def _cmap(name: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name]


def denoising_strip(
    tr: Trace, image: int = 0, n: int = 8, kinds: Sequence[str] = ("x_t", "x0"), decoded: bool | None = None
) -> Figure:
    """The denoising run as a strip: columns are n steps (evenly spread, first and last included) and the final
    picture; rows are the latents in `kinds`. When the trace holds the VAE decode of every step's x0
    (`decode=True`), the x0 row shows it (the colours are the picture's); otherwise, or with `decoded=False`, x0
    is shown through the cheap linear latent-to-RGB preview like the other rows (layout right, colours rough)."""
    rec = tr.latents
    steps = pick_evenly(list(range(len(rec.timesteps))), n)
    use_decoded = rec.decoded is not None and decoded is not False
    size = tr.image_size
    fig = Figure(figsize=(1.6 * (len(steps) + 1), 1.75 * len(kinds) + 0.6), layout="constrained")
    axes = fig.subplots(len(kinds), len(steps) + 1, squeeze=False)
    labels = {
        "x_t": "x_t, the latent\n(linear preview)",
        "x0": "predicted x₀\n(VAE decode)" if use_decoded else "predicted x₀\n(linear preview)",
        "eps": "guided noise\nprediction ε",
        "eps_cond": "ε given the prompt",
        "eps_uncond": "ε given \"\"",
    }
    for r, kind in enumerate(kinds):
        if kind == "x0" and use_decoded:
            pics = [rec.decoded[s, image].permute(1, 2, 0).numpy() for s in steps]
        else:
            pics = [upsample(p, size) for p in rec.preview(kind, steps, image)]
        for c, (s, pic) in enumerate(zip(steps, pics, strict=True)):
            ax = axes[r, c]
            ax.imshow(pic, interpolation="nearest")
            no_ticks(ax)
            if r == 0:
                ax.set_title(f"step {s}\nt={rec.timesteps[s]}", fontsize=9)
            if c == 0:
                ax.set_ylabel(labels.get(kind, kind), fontsize=9)
        ax = axes[r, -1]
        no_ticks(ax)
        if r == 0:
            ax.set_title("after the\nlast step", fontsize=9)
        if kind == "x0":
            ax.imshow(trace_picture(tr, image))  # the VAE decode of the final latents: the generated picture
        elif kind == "x_t":
            ax.imshow(upsample(rec.preview("final", image=image), size), interpolation="nearest")
        else:
            ax.axis("off")
    fig.suptitle(f"the reverse process, from noise to picture: {tr.prompts[image]!r}", fontsize=10)
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
    steps = pick_evenly(list(range(max(1, len(rec.timesteps) - 1))), n) if steps is None else list(steps)
    size = tr.image_size

    def preview(z: torch.Tensor) -> np.ndarray:
        rgb = ((rec.to_rgb(z) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
        return upsample(rgb, size)

    def latent_picture(z: torch.Tensor) -> np.ndarray:
        if pipe is None:
            return preview(z)
        return to_u8(pipe.decode_latents(z[None])[0])  # the VAE decode: (1, 4, h, w) -> (H, W, 3) uint8

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
            no_ticks(ax)
            if r == 0:
                ax.set_title(titles[c], fontsize=8.5)
        row[0].set_ylabel(f"step {s}\nt={t}", fontsize=9)
    bar = fig.colorbar(im, ax=axes[:, 3], fraction=0.08, pad=0.03, shrink=0.7)
    bar.set_label("|ε_cond − ε_uncond|, one scale for all rows", fontsize=8)
    fig.suptitle(f"classifier-free guidance inside a step, cfg {cfg:g}: {tr.prompts[image]!r}  "
                 "(ε and x_t: linear latent preview)", fontsize=10)  # fmt: skip
    return fig


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
    steps = pick_evenly(rec.steps, n)
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


def _too_fast(values: np.ndarray, t: np.ndarray, columns: float) -> np.ndarray:
    """Which rows of a (dims, T) table of sinusoids oscillate too fast to draw in `columns` pixels: fewer than ~8
    pixels per period. Such a row can only come out as moire (a pattern that is not there), so it is masked."""
    crossings = (np.diff(np.sign(values), axis=1) != 0).sum(1)  # 2 per period
    span = float(t.max() - t.min()) or 1.0
    period = np.where(crossings > 0, 2 * span / np.maximum(crossings, 1), np.inf)  # in timesteps
    return period < 8 * span / columns


def time_embedding_figure(source: Any, timesteps: Sequence[int] | None = None, compare: tuple[int, int] = (999, 20)):
    """The time embedding: its sinusoids as heat maps (dimension x timestep), the MLP's output, and how alike the
    embeddings of two timesteps are (cosine similarity of every pair, before and after the MLP), with the pair in
    `compare` circled. The sinusoids' similarity depends on t - t' only (cos a cos b + sin a sin b = cos(a - b)):
    nearby timesteps look alike, far ones do not.

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
    ratios = ([0.55] if zoom else []) + [1, 1, 0.85, 0.95]
    fig = Figure(figsize=(4.1 * len(ratios) - 0.5 * (zoom is not None), 4.4), layout="constrained")
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
    # how alike two timesteps' embeddings are: cosine similarity of every pair, before and after the MLP
    for ax, values, what in ((axes[2], sin, "sinusoidal embedding"), (axes[3], mlp, "after the MLP")):
        sim = _cosine_matrix(values)  # (T, T)
        extent = [t.min() - 0.5, t.max() + 0.5, t.max() + 0.5, t.min() - 0.5]
        im = ax.imshow(sim, cmap="RdBu_r", vmin=-1, vmax=1, extent=extent, interpolation="antialiased")
        i, j = (int(np.abs(t - target).argmin()) for target in compare)
        ax.plot([t[j]], [t[i]], "o", mfc="none", mec="black", ms=10, mew=2, clip_on=False)
        ax.set_title(f"cosine similarity, {what}\ncos(t={t[i]}, t={t[j]}) = {sim[i, j]:.2f} (circled)", fontsize=10)
        ax.set_xlabel("timestep t")
        ax.set_ylabel("timestep t")
    fig.colorbar(im, ax=axes[3], label="cosine similarity")
    return fig


def _cosine_matrix(v: np.ndarray) -> np.ndarray:
    """Cosine similarity of every pair of rows: (T, D) -> (T, T)."""
    u = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return u @ u.T


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

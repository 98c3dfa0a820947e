"""The training logs of the embedded model, or of any run of `sdviz train`, as one figure.

    training_losses_figure()              the shipped model's logs (`log_vae.csv`, `log_unet.csv` beside its weights)
    training_losses_figure("runs/toy")    a training run's folder: the same panels, and the relations stage's if any

`sdviz train` writes a `log_<stage>.csv` per stage (one row per `log_every` steps, `sdviz.toy.loop`); this file only
reads and draws them, so the training code needs no plotting library.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sdviz.viz.display import Figure  # a matplotlib Figure that notebooks display with or without pyplot


def _moving_average(values: list[float], window: int) -> np.ndarray:
    """A centred moving average over `window` logged rows (no lag, unlike an exponential average)."""
    v = np.asarray(values, dtype=np.float64)
    k = min(window, len(v)) // 2
    padded = np.pad(v, k, mode="edge")
    return np.convolve(padded, np.ones(2 * k + 1) / (2 * k + 1), mode="valid")


def training_losses_figure(folder: str | Path | None = None, window: int = 9) -> Figure:
    """The training logs in `folder` (default: the embedded model's, shipped beside its weights), one panel per curve:
    the VAE's loss, the VAE's PSNR, the UNet's noise loss, and, when the folder holds a relations fine-tune
    (`log_relations.csv`), its noise loss. Logged rows faint, a centred moving average over `window` rows bold; the
    UNet panels also show the unweighted mean squared error. A panel without a log says so.

    The two jumps in the VAE curves are marked: a loss spike near the peak learning rate (it recovers within ~50
    steps), and the switch from 32x32 crops to whole 64x64 pictures for the last 10% of the default step count
    (`sdviz.toy.train.DEFAULTS`; marked only when the log reaches it). PSNR is measured on what is trained on, and
    whole pictures hold more easy background."""
    from sdviz.pipeline import EMBEDDED_MODEL
    from sdviz.toy.loop import read_log
    from sdviz.toy.train import DEFAULTS

    folder = Path(folder) if folder is not None else EMBEDDED_MODEL
    vae, unet, relations = (read_log(folder, stage) for stage in ("vae", "unet", "relations"))
    panels: list[tuple[list[dict[str, float]], str, str, bool]] = [  # (rows, column, title, log scale)
        (vae, "loss", "stage 1, VAE: L1 + KL loss", True),
        (vae, "psnr", "stage 1, VAE: reconstruction PSNR (dB, training batches)", False),
        (unet, "loss", "stage 2, UNet + text encoder: Min-SNR noise loss", True),
    ]
    if relations:
        panels.append((relations, "loss", "stage 3, relations fine-tune: Min-SNR noise loss", True))

    fig = Figure(figsize=(5 * len(panels), 4.0), layout="constrained")
    axes = fig.subplots(1, len(panels))
    for ax, (rows, key, title, log) in zip(axes, panels, strict=True):
        ax.set_title(title, fontsize=10)
        if not rows:
            ax.text(0.5, 0.5, f"no log in {folder}", ha="center", va="center", transform=ax.transAxes)
            continue
        steps = [r["step"] for r in rows]
        values = [r[key] for r in rows]
        ax.plot(steps, values, color="tab:blue", alpha=0.25, lw=0.8, label="logged every 10 steps")
        ax.plot(steps, _moving_average(values, window), color="tab:blue", lw=1.8,
                label=f"moving average ({window} rows)")  # fmt: skip
        if rows is not vae and "mse" in rows[0]:
            ax.plot(steps, _moving_average([r["mse"] for r in rows], window), color="tab:orange", lw=1.4,
                    label="unweighted mean (ε̂ − ε)²")  # fmt: skip
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    if vae:
        _mark_vae_events(axes[:2], vae, DEFAULTS["vae"])
    for ax, where in zip(axes, ["lower left", None, *["upper right"] * (len(panels) - 2)], strict=True):
        if where and ax.lines:
            ax.legend(fontsize=8, loc=where)
    fig.suptitle("training the embedded model (logs shipped beside its weights)" if folder == EMBEDDED_MODEL
                 else f"training run {folder}", fontsize=11)  # fmt: skip
    return fig


def _mark_vae_events(axes: Any, vae: list[dict[str, float]], settings: Any) -> None:
    """Mark the crop-to-whole-picture switch (if the log reaches it) and the largest loss spike on the VAE panels."""
    switch = settings.steps - settings.steps // 10 if settings.crop else None
    if switch is not None and switch > vae[-1]["step"]:
        switch = None  # a shorter or unfinished run: the switch is not in this log (or not at the default step)
    losses = np.array([r["loss"] for r in vae])
    running_min = np.minimum.accumulate(losses)
    spike = int(np.argmax(losses / running_min))
    for ax in axes:
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

"""Comparing a committed picture with a freshly drawn one, in a way that does not depend on the CPU.

A float program is not bit-identical across CPUs (vector widths, kernels and oneDNN paths differ), so a picture drawn
from a generation on another machine may differ in a few pixel values. What must not happen is a *stale* picture:
another layout, another size, other content. The check: same size, mean absolute difference under 1.5 grey levels,
and at least 99% of the pixels within 8 levels (a changed figure moves far more than that).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

MEAN_LEVELS = 1.5  # mean |difference| over all pixels and channels, in 0..255 levels
NEAR_LEVELS = 8  # a pixel is "near" when every channel is within this many levels
NEAR_SHARE = 0.99  # share of pixels that must be near


def picture_difference(a: Path, b: Path) -> tuple[float, float]:
    """(mean absolute difference in levels, share of pixels within NEAR_LEVELS) of two same-size pictures."""
    x = np.asarray(Image.open(a).convert("RGBA"), dtype=np.int16)
    y = np.asarray(Image.open(b).convert("RGBA"), dtype=np.int16)
    if x.shape != y.shape:
        raise AssertionError(f"{a.name}: committed {x.shape[1]}x{x.shape[0]}, drawn now {y.shape[1]}x{y.shape[0]}")
    d = np.abs(x - y)
    return float(d.mean()), float((d.max(-1) <= NEAR_LEVELS).mean())


def assert_same_picture(committed: Path, drawn: Path, hint: str) -> None:
    """Fail, naming the file and `hint` (how to regenerate), when `drawn` is not `committed` up to CPU noise."""
    assert committed.is_file(), f"{committed.name} is not committed: {hint}"
    mean, near = picture_difference(committed, drawn)
    assert mean <= MEAN_LEVELS and near >= NEAR_SHARE, (
        f"{committed.name} is stale (mean difference {mean:.2f} levels, {near:.1%} of pixels near): {hint}"
    )

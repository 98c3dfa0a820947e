"""Pictures for the widgets and the animations, made from a trace's numbers with numpy and pillow (no matplotlib per
frame: a matplotlib redraw costs 50-200 ms, an array turned into PNG bytes about 1 ms).

    png(a)                       uint8 (h, w, 3) -> PNG bytes (fast compression: frames are made once, shown often)
    enlarge(a, size)             blocky (nearest) enlargement by a whole factor, or a smooth resize: (size, size, 3)
    colormap("magma")            a matplotlib colour map as a (256, 3) uint8 lookup table
    heat(m, lo, hi)              a float map -> RGB through a colour map (style.HEAT), lo and hi at its ends
    outlines(picture, hw)        where the picture's objects end, at a shown size (bool), to draw on an attention map
    attention(m, lo, hi, lines)  an attention map in style.HEAT at the lines' size, the objects' outlines on it
    blend(picture, layer, a)     picture * (1 - a) + layer * a
    signed_rgb(z, weight, s)     a signed latent (noise, a guidance direction) -> RGB, grey = 0
    channel_strip(z, s)          the C latent channels side by side, blue < 0 < red
    label(a, text)               a caption bar above a picture (for animations, where there is no HTML): x₀, ε, ᾱ_t
    colour_strip(lo, hi, width)  a colour bar of style.HEAT with its end values (for animations)
    ScheduleChart                alpha_bar_t and the SNR, drawn once; frame(t) puts a marker at t (numpy only)
    schedule_numbers(cfg, t)     t, sigma_t, alpha_bar_t, SNR_t of a timestep
"""

from __future__ import annotations

import io
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sdviz.viz.style import HEAT, OUTLINE, object_mask, outline

OUTLINE_RGB = tuple(int(OUTLINE[i : i + 2], 16) for i in (1, 3, 5))


def png(a: np.ndarray) -> bytes:
    """uint8 (h, w, 3) or (h, w, 4) -> PNG bytes. Level 1 compression: ~1 ms for 256x256, a little larger files."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def enlarge(a: np.ndarray, size: int) -> np.ndarray:
    """Show an (h, w, 3) picture at `size` pixels on its longer side: by a whole factor with nearest neighbours when
    it is smaller (latent pixels stay visible as blocks), smoothly (Lanczos) when it is larger."""
    h, w = a.shape[:2]
    if max(h, w) <= size:
        f = max(1, size // max(h, w))
        return a.repeat(f, 0).repeat(f, 1)
    scale = size / max(h, w)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(a).resize(new, Image.Resampling.LANCZOS))


def resize(a: np.ndarray, hw: tuple[int, int], smooth: bool = True) -> np.ndarray:
    """An (h, w, 3) uint8 picture resized to exactly (H, W), bilinear or nearest."""
    if a.shape[:2] == tuple(hw):
        return a
    method = Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST
    return np.asarray(Image.fromarray(a).resize((hw[1], hw[0]), method))


@lru_cache(maxsize=16)
def colormap(name: str) -> np.ndarray:
    """A matplotlib colour map as a lookup table: (256, 3) uint8."""
    import matplotlib

    return (matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def heat(m: Any, lo: float, hi: float, cmap: str = HEAT) -> np.ndarray:
    """A float map (h, w) -> RGB uint8 (h, w, 3): lo at the colour map's start, hi at its end (clipped)."""
    m = np.asarray(m, dtype=np.float32)
    x = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    return colormap(cmap)[np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8)]


def outlines(picture: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """The outlines of a picture's objects (`style.object_mask`) at a shown size: (h, w, 3) -> (H, W) bool, two
    pixels wide."""
    mask = resize(object_mask(picture).astype(np.uint8)[..., None].repeat(3, -1) * 255, hw, smooth=False)[..., 0]
    line = outline(mask > 127)  # (H, W)
    line[1:] |= line[:-1]
    line[:, 1:] |= line[:, :-1]
    return line


def attention(m: Any, lo: float, hi: float, lines: np.ndarray | None = None) -> np.ndarray:
    """An attention map (h, w) as a picture: through `style.HEAT` at lo..hi, resized (bilinear) to the size of
    `lines` (the objects' `outlines`, drawn on it in `style.OUTLINE`) or kept at (h, w): (H, W, 3) uint8."""
    a = heat(m, lo, hi)
    if lines is None:
        return a
    a = resize(a, lines.shape).copy()
    a[lines] = OUTLINE_RGB
    return a


def blend(picture: np.ndarray, layer: np.ndarray, alpha: float) -> np.ndarray:
    """picture * (1 - alpha) + layer * alpha, uint8."""
    out = picture.astype(np.float32) * (1 - alpha) + layer.astype(np.float32) * alpha
    return (out + 0.5).astype(np.uint8)


def signed_rgb(z: np.ndarray, weight: np.ndarray, scale: float) -> np.ndarray:
    """A signed latent (C, h, w) (a noise prediction, a guidance direction) as RGB (h, w, 3): the colour direction
    the fitted latent -> RGB map gives it (`weight` (3, C), no bias), mid-grey where it is 0, full colour at `scale`."""
    rgb = np.einsum("oc,chw->hwo", weight, z) / (2 * scale) + 0.5
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def channel_strip(z: np.ndarray, scale: float, gap: int = 1, cmap: str = "RdBu_r") -> np.ndarray:
    """The C channels of a latent (C, h, w) side by side, each through a diverging colour map at -scale..scale, with
    `gap` white pixels between them: (h, C * w + (C - 1) * gap, 3)."""
    c, h, w = z.shape
    out = np.full((h, c * w + (c - 1) * gap, 3), 255, np.uint8)
    for i in range(c):
        out[:, i * (w + gap) : i * (w + gap) + w] = heat(z[i], -scale, scale, cmap)
    return out


@lru_cache(maxsize=8)
def _font(size: int) -> Any:
    """DejaVu Sans (matplotlib's own font, so every machine draws the same glyphs, x₀, ε and ᾱ included)."""
    from matplotlib import font_manager

    try:
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except (OSError, ImportError):  # a pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _lines(text: str, font: Any, width: float) -> list[str]:
    """`text` broken at spaces into lines no wider than `width` pixels (a single long word stays whole)."""
    lines: list[str] = []
    for word in text.split(" "):  # (runs of spaces are kept: "step 3   t = 801")
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def label(a: np.ndarray, text: str, height: int = 18) -> np.ndarray:
    """A white caption bar with `text` above a picture (h, w, 3) -> (h + bar, w, 3): one line of `height` pixels,
    or as many as the text needs to fit the picture's width (never clipped)."""
    font = _font(max(8, height - 6))
    lines = _lines(text, font, a.shape[1] - 8)
    bar = Image.new("RGB", (a.shape[1], height * len(lines)), "white")
    draw = ImageDraw.Draw(bar)
    for i, line in enumerate(lines):
        draw.text((4, height * i + height // 2), line, fill=(20, 20, 20), font=font, anchor="lm")
    return np.concatenate([np.asarray(bar), a], 0)


def colour_strip(lo: float, hi: float, width: int, height: int = 18) -> np.ndarray:
    """A horizontal colour bar of `style.HEAT` with its end values written under it: (10 + height, width, 3)."""
    ramp = colormap(HEAT)[np.linspace(0, 255, max(1, width - 8)).round().astype(int)]  # (width - 8, 3)
    out = Image.new("RGB", (width, 10 + height), "white")
    out.paste(Image.fromarray(np.ascontiguousarray(np.repeat(ramp[None], 8, 0))), (4, 2))
    draw, font = ImageDraw.Draw(out), _font(max(8, height - 6))
    draw.text((4, 10 + height // 2), f"{lo:.3g}", fill=(20, 20, 20), font=font, anchor="lm")
    draw.text((width - 4, 10 + height // 2), f"{hi:.3g}", fill=(20, 20, 20), font=font, anchor="rm")
    return np.asarray(out)


def hstack(pictures: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Pictures side by side on white, top-aligned, `gap` pixels apart."""
    h = max(p.shape[0] for p in pictures)
    w = sum(p.shape[1] for p in pictures) + gap * (len(pictures) - 1)
    out = np.full((h, w, 3), 255, np.uint8)
    x = 0
    for p in pictures:
        out[: p.shape[0], x : x + p.shape[1]] = p[..., :3]
        x += p.shape[1] + gap
    return out


def schedule_numbers(schedule: Any, t: int) -> dict[str, float]:
    """t, sigma_t, alpha_bar_t and SNR_t = alpha_bar_t / (1 - alpha_bar_t) of a timestep, for a NoiseSchedule."""
    t = int(min(max(t, 0), schedule.num_train_timesteps - 1))
    return {
        "t": t,
        "sigma": float(schedule.sigmas[t]),
        "alpha_bar": float(schedule.alphas_cumprod[t]),
        "snr": float(schedule.snr[t]),
    }


class ScheduleChart:
    """The noise schedule as a small chart, drawn once with matplotlib: ᾱ_t (left axis) and the SNR (right
    axis, log) against t, with the sampled timesteps as ticks. `frame(t)` returns a copy with a marker at timestep
    t: a vertical line and a dot on each curve, painted into the array (no redraw).
    """

    def __init__(self, schedule: Any, timesteps: list[int], width: int = 300, height: int = 190):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.schedule = schedule
        t = np.arange(schedule.num_train_timesteps)
        ab, snr = schedule.alphas_cumprod.numpy(), schedule.snr.numpy()
        dpi = 100
        fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, layout="constrained")
        canvas = FigureCanvasAgg(fig)
        ax = fig.subplots()
        ax.plot(t, ab, color="black", lw=1.2)
        ax.set_ylabel(r"$\bar\alpha_t$", fontsize=9)
        ax.set_xlabel("timestep t", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlim(t[0], t[-1])
        ax.set_ylim(0, 1)
        ts = np.asarray(timesteps)
        ax.plot(ts, np.zeros_like(ts, dtype=float) + 0.01, "|", color="grey", ms=5)
        ax2 = ax.twinx()
        ax2.semilogy(t, snr, color="tab:green", lw=1.2)
        ax2.set_ylabel("SNR", fontsize=8, color="tab:green")
        ax2.tick_params(labelsize=7, colors="tab:green")
        ax.set_title(r"$\bar\alpha_t$ (black), SNR (green, log)", fontsize=8)
        canvas.draw()
        self.base = np.asarray(canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3)
        h = self.base.shape[0]

        def to_pixels(axes: Any, x: np.ndarray, y: np.ndarray) -> np.ndarray:
            xy = axes.transData.transform(np.stack([x, y], 1))  # display coordinates, origin bottom left
            return np.stack([xy[:, 0], h - xy[:, 1]], 1)  # array coordinates (x, row)

        self._ab = to_pixels(ax, t, ab)
        self._snr = to_pixels(ax2, t, snr)
        y0, y1 = (h - ax.transAxes.transform([(0, 0), (0, 1)])[:, 1]).astype(int)
        self._rows = (min(y0, y1), max(y0, y1))

    def frame(self, t: int) -> np.ndarray:
        """The chart with a marker at timestep t: (H, W, 3) uint8."""
        a = self.base.copy()
        t = int(min(max(t, 0), len(self._ab) - 1))
        x = int(round(self._ab[t, 0]))
        a[self._rows[0] : self._rows[1], max(x - 1, 0) : x + 1] = (214, 39, 40)  # the current t: a red line
        for (px, py), colour in ((self._ab[t], (0, 0, 0)), (self._snr[t], (44, 160, 44))):
            _dot(a, px, py, colour)
        return a


def _dot(a: np.ndarray, x: float, y: float, colour: tuple[int, int, int], r: int = 4) -> None:
    """Paint a filled dot with a white rim at (x, y) (array coordinates) into a, in place."""
    h, w = a.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    d2 = (xx - x) ** 2 + (yy - y) ** 2
    a[d2 <= (r + 1.5) ** 2] = 255
    a[d2 <= r**2] = colour

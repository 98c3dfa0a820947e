"""Pieces the player, the explorer, the studio and the reweight slider share: captioned image panels, colour bars,
one-line errors, a placeholder picture, and the static animation or picture shown after a live widget."""

from __future__ import annotations

import base64
import html
from typing import Any

import ipywidgets as W
import numpy as np

from sdviz.viz.style import HEAT
from sdviz.viz.widgets import frames as F


def panel(caption: str, width: int, value: bytes = b"") -> tuple[W.VBox, W.Image, W.HTML]:
    """An image with a caption above it: (box, image widget, caption widget)."""
    title = W.HTML(
        f"<div style='font-size:12px;line-height:1.25;font-weight:bold'>{html.escape(caption)}</div>",
        layout=W.Layout(width=f"{width}px"),
    )
    image = W.Image(value=value, format="png", layout=W.Layout(width=f"{width}px", min_width=f"{width}px"))
    return W.VBox([title, image], layout=W.Layout(margin="0 8px 8px 0")), image, title


def placeholder(width: int, height: int | None = None) -> bytes:
    """A light grey picture (PNG) for an image widget that has nothing to show yet: an empty image widget shows the
    browser's broken-image icon."""
    return F.png(np.full((height or width, width, 3), 238, np.uint8))


def note(text: str, width: int) -> W.HTML:
    """A grey explanation in place of a panel that cannot be drawn (and says why)."""
    return W.HTML(
        f"<div style='font-size:12px;color:#666;width:{width}px;padding:8px'>{html.escape(text)}</div>",
        layout=W.Layout(margin="0 8px 8px 0"),
    )


def error(text: str) -> str:
    """The HTML of a one-line error in a panel."""
    return f"<span style='color:#b00020;font-family:monospace'>{html.escape(text)}</span>"


def gradient(cmap: str = HEAT, stops: int = 9) -> str:
    """A CSS linear gradient of a colour map (for a colour bar drawn in HTML)."""
    lut = F.colormap(cmap)
    colours = [lut[int(i)] for i in np.linspace(0, 255, stops)]
    return "linear-gradient(to right, " + ", ".join(f"rgb({r},{g},{b})" for r, g, b in colours) + ")"


def colour_bar(lo: float, hi: float, what: str, cmap: str = HEAT, width: int = 200) -> str:
    """A small horizontal colour bar with its end values and a caption, as HTML."""
    return (
        f"<div style='font-size:11px'>{html.escape(what)}<br>"
        f"<span style='display:inline-block;width:{width}px;height:10px;background:{gradient(cmap)}'></span><br>"
        f"<span style='display:inline-block;width:{width // 2}px'>{lo:.4g}</span>"
        f"<span style='display:inline-block;width:{width // 2}px;text-align:right'>{hi:.4g}</span></div>"
    )


class StaticAnimation:
    """An animated GIF shown as HTML (with the GIF itself as a fallback mime type), placed after a live widget so that
    a static render of the notebook (GitHub, nbviewer), where widgets cannot run, still moves."""

    def __init__(self, gif: bytes, caption: str):
        self.gif, self.caption = gif, caption

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        data = base64.b64encode(self.gif).decode("ascii")
        page = (
            "<figure style='margin:4px 0' class='sdviz-static-animation'>"
            f"<img src='data:image/gif;base64,{data}' alt='{html.escape(self.caption)}'/>"
            f"<figcaption style='font-size:11px;color:#666'>{html.escape(self.caption)}</figcaption></figure>"
        )
        return {"text/html": page, "image/gif": data, "text/plain": f"<animation: {self.caption}>"}


class StaticPicture:
    """A picture (PNG) shown as HTML and as image/png, placed after a live widget whose picture changes (the studio,
    the reweight slider): `show()` displays it with a display id, `update(png, caption)` replaces it in place, so a
    saved notebook shows the widget's last picture where widgets cannot run (GitHub, nbviewer)."""

    def __init__(self, png: bytes, caption: str):
        self.png, self.caption = png, caption
        self._handle: Any = None  # the display handle, once shown

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        data = base64.b64encode(self.png).decode("ascii")
        page = (
            "<figure style='margin:4px 0' class='sdviz-static-picture'>"
            f"<img src='data:image/png;base64,{data}' alt='{html.escape(self.caption)}'/>"
            f"<figcaption style='font-size:11px;color:#666'>{html.escape(self.caption)}</figcaption></figure>"
        )
        return {"text/html": page, "image/png": data, "text/plain": f"<picture: {self.caption}>"}

    def show(self) -> None:
        """Display it (in the current cell's output) and keep the handle that `update` uses."""
        from IPython.display import display

        self._handle = display(self, display_id=True)

    def update(self, png: bytes, caption: str | None = None) -> None:
        """Replace the picture (and caption) where it was shown; without a display, only the stored picture."""
        self.png, self.caption = png, self.caption if caption is None else caption
        if self._handle is not None:
            self._handle.update(self)

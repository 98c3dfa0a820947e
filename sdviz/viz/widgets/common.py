"""Pieces the player, the explorer and the studio share: captioned image panels, colour bars, one-line errors, and the
static animation shown after a live widget."""

from __future__ import annotations

import base64
import html
from typing import Any

import ipywidgets as W
import numpy as np

from sdviz.viz.widgets import frames as F


def panel(caption: str, width: int, value: bytes = b"") -> tuple[W.VBox, W.Image, W.HTML]:
    """An image with a caption above it: (box, image widget, caption widget)."""
    title = W.HTML(
        f"<div style='font-size:12px;line-height:1.25;font-weight:bold'>{html.escape(caption)}</div>",
        layout=W.Layout(width=f"{width}px"),
    )
    image = W.Image(value=value, format="png", layout=W.Layout(width=f"{width}px", min_width=f"{width}px"))
    return W.VBox([title, image], layout=W.Layout(margin="0 8px 8px 0")), image, title


def note(text: str, width: int) -> W.HTML:
    """A grey explanation in place of a panel that cannot be drawn (and says why)."""
    return W.HTML(
        f"<div style='font-size:12px;color:#666;width:{width}px;padding:8px'>{html.escape(text)}</div>",
        layout=W.Layout(margin="0 8px 8px 0"),
    )


def error(text: str) -> str:
    """The HTML of a one-line error in a panel."""
    return f"<span style='color:#b00020;font-family:monospace'>{html.escape(text)}</span>"


def gradient(cmap: str = "jet", stops: int = 9) -> str:
    """A CSS linear gradient of a colour map (for a colour bar drawn in HTML)."""
    lut = F.colormap(cmap)
    colours = [lut[int(i)] for i in np.linspace(0, 255, stops)]
    return "linear-gradient(to right, " + ", ".join(f"rgb({r},{g},{b})" for r, g, b in colours) + ")"


def colour_bar(lo: float, hi: float, what: str, cmap: str = "jet", width: int = 200) -> str:
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

"""Figures that show themselves in notebooks, with or without pyplot.

sdviz builds its figures as `matplotlib.figure.Figure` objects directly (not through pyplot), so they keep no
global state. The catch: a bare `Figure` displays as the text `<Figure size 1400x420 with 5 Axes>` in Jupyter
unless pyplot's inline backend happens to be active, because that backend is what registers the PNG formatter for
figures. `Figure` here is the same class with a `_repr_png_`, which IPython's display formatters (JupyterLab, the
classic notebook, VS Code, nbconvert) call when a figure is the last expression of a cell.

When pyplot's inline backend *is* active, its registered formatter takes precedence over `_repr_png_` (IPython
looks up registered printers first), so the figure is still drawn once, the way the user configured it. Figures
made here are never registered with pyplot, so they open no window and are not shown a second time at the end of
the cell.

    from sdviz.viz.display import Figure
    fig = Figure(figsize=(4, 3))       # exactly like matplotlib.figure.Figure
    fig                                # a PNG in any notebook
"""

from __future__ import annotations

import io

from matplotlib.figure import Figure as _MatplotlibFigure

__all__ = ["Figure", "png_bytes"]


def png_bytes(fig: _MatplotlibFigure, dpi: float | None = None, tight: bool = True) -> bytes:
    """The figure as PNG bytes, drawn with the Agg renderer whatever the backend (the notebook's inline look:
    a tight bounding box and a white background)."""
    buf = io.BytesIO()
    fig.savefig(
        buf,
        format="png",
        dpi=dpi or fig.dpi,
        bbox_inches="tight" if tight else None,
        facecolor="white",
        metadata={"Software": None},
    )
    return buf.getvalue()


class Figure(_MatplotlibFigure):
    """`matplotlib.figure.Figure` that IPython displays as a PNG (see the module docstring)."""

    def _repr_png_(self) -> bytes:
        return png_bytes(self)

"""The notebook side of sdviz: figures that display themselves, the player, the explorer, the studio, animations.

The widgets are driven from Python here (no browser): a slider value must give the frame the trace holds for that
step, another word the heat map of that word's `word_map`, a pixel click the words ranked by the trace's own numbers.
`tests/test_browser.py` checks the same things in a real JupyterLab.
"""

from __future__ import annotations

import io

import numpy as np
from IPython.core.interactiveshell import InteractiveShell
from PIL import Image

from sdviz.viz.display import Figure

# --------------------------------------------------------------------------------------------------------------------
# 1. Figures display as pictures
# --------------------------------------------------------------------------------------------------------------------


def _small_figure() -> Figure:
    fig = Figure(figsize=(2, 1.5))
    fig.subplots().plot([0, 1], [1, 0])
    return fig


def test_figure_displays_as_png_without_pyplot():
    shell = InteractiveShell.instance()
    data, _ = shell.display_formatter.format(_small_figure())
    assert data["image/png"][:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(data["image/png"])).size[0] > 50


def test_figure_uses_inline_backend_when_active_and_is_not_shown_twice():
    import matplotlib.pyplot as plt
    from matplotlib_inline.backend_inline import select_figure_formats

    shell = InteractiveShell.instance()
    png = shell.display_formatter.formatters["image/png"]
    saved = dict(png.type_printers)
    try:
        select_figure_formats(shell, {"png"})  # what `%matplotlib inline` registers
        fig = _small_figure()
        assert png.lookup(fig) is not None  # inline's printer wins over _repr_png_: one PNG, drawn its way
        data, _ = shell.display_formatter.format(fig)
        assert set(data) == {"image/png", "text/plain"}
        assert not plt.get_fignums()  # never registered with pyplot: not re-shown at the end of the cell
    finally:
        png.type_printers.clear()
        png.type_printers.update(saved)


def test_plots_return_displayable_figures():
    from sdviz.viz import plots

    fig = plots.noise_schedule_figure()
    assert isinstance(fig, Figure)
    assert np.asarray(Image.open(io.BytesIO(fig._repr_png_()))).ndim == 3

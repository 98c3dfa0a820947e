"""A word-weight slider for notebooks: move it, and the picture is generated again with that word reweighted.

    from sdviz.viz.widgets import reweight_widget
    reweight_widget(pipe, "a large red circle above a small blue square", "red")

The embedded model draws a picture in about 1-2 s on a laptop CPU, so the slider regenerates when it is released
(not while it is dragged). Each picture is traced inside the edit, so the map shown is the reweighted one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sdviz.viz.style import SETTINGS

if TYPE_CHECKING:
    from sdviz.pipeline import StableDiffusion


def reweight_widget(
    pipe: StableDiffusion,
    prompt: str,
    word: str,
    weight: float = 1.0,
    seed: int = 1,
    low: float = 0.0,
    high: float = 4.0,
    step: float = 0.25,
    **generate: Any,
) -> Any:
    """An ipywidgets box: a FloatSlider for the weight of `word` and, below it, the picture and the word's map.

    Other keyword arguments go to `pipe.generate` (default: 50 DDIM steps, cfg 5). A word that is not in the prompt
    is an error at once, listing the prompt's words.
    """
    import ipywidgets as widgets

    from sdviz.editing.control import edit
    from sdviz.editing.p2p import Reweight
    from sdviz.tracing import trace
    from sdviz.viz.display import png_bytes
    from sdviz.viz.edit_figures import reweight_panel

    pipe.tokenizer.encode(prompt).positions(word)  # fail now, not on the first move
    generate = {**SETTINGS, **generate}
    slider = widgets.FloatSlider(
        value=weight,
        min=low,
        max=high,
        step=step,
        description=f'"{word}" x',
        continuous_update=False,
        readout_format=".2f",
    )
    picture = widgets.Image(format="png")
    status = widgets.Label()

    def draw(w: float) -> None:
        status.value = f"generating with {word!r} x {w:g} ..."
        with edit(pipe, Reweight({word: w})), trace(pipe, record=["cross_attention"]) as tr:
            pipe.generate(prompt, seed=seed, progress=False, **generate)
        picture.value = png_bytes(reweight_panel(tr, word, w))
        status.value = ""

    slider.observe(lambda change: draw(change["new"]), names="value")
    draw(weight)
    box = widgets.VBox([slider, status, picture])
    box.draw = draw  # for tests and scripts: box.draw(2.0) regenerates as a move of the slider would
    return box

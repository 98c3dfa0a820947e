"""A word-weight slider for notebooks: move it, and the picture is generated again with that word reweighted.

    from sdviz.viz.widgets import reweight_widget
    reweight_widget(pipe, "a large red circle above a small blue square", "red")

The embedded model draws a picture in about 1-2 s on a laptop CPU, so the slider regenerates when it is released
(not while it is dragged). Each picture is traced inside the edit, so the map shown is the reweighted one. The
picture and the word's map are shown at their natural size times a whole factor (blocky, never blurred), with the
slider beside them, and a static copy of the last picture stays under the widget for renders where widgets cannot
run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ipywidgets as W
import numpy as np
from IPython.display import display

from sdviz.viz.style import SETTINGS
from sdviz.viz.widgets import frames as F
from sdviz.viz.widgets.common import StaticPicture, placeholder

if TYPE_CHECKING:
    from sdviz.pipeline import StableDiffusion
    from sdviz.tracing import Trace

# one sentence a learner needs before moving the slider
HELP = (
    "A weight multiplies the word's attention at every pixel and in every cross-attention layer, not only on its "
    "object, so a large one (\"green\" x 2) feeds every pixel more of the word than the model ever saw in training, "
    "and the object can vanish instead of getting greener."
)
CSS = "<style>.sdviz-reweight-picture img, img.sdviz-reweight-picture {image-rendering: pixelated}</style>"


def panel_picture(tr: Trace, word: str, weight: float, shown: int = 256, image: int = 0) -> np.ndarray:
    """The picture and, beside it, the word's map (normalised, `style.HEAT`, the objects' outlines), each enlarged
    by the whole factor that brings it nearest to `shown` pixels (at least 1): (H, W, 3) uint8."""
    picture = tr.images_u8[image].permute(1, 2, 0).numpy()
    big = F.enlarge(picture, max(shown, max(picture.shape[:2])) // max(picture.shape[:2]) * max(picture.shape[:2]))
    m = tr.word_map(word, image=image).numpy()
    view = F.attention(m, float(m.min()), float(m.max()), F.outlines(picture, big.shape[:2]))
    return F.hstack([F.label(big, f'"{word}" x {weight:g}'), F.label(view, f'where "{word}" looked (max = light)')])


class ReweightSlider:
    """The widget `reweight_widget` returns: `.widget` (the box), `.slider`, `.picture`, `.status`, and
    `.draw(weight)`, which regenerates as a move of the slider would (for tests and scripts)."""

    def __init__(self, pipe: StableDiffusion, prompt: str, word: str, weight: float, seed: int, low: float,
                 high: float, step: float, generate: dict[str, Any]):  # fmt: skip
        pipe.tokenizer.encode(prompt).positions(word)  # fail now, not on the first move
        self.pipe, self.prompt, self.word, self.seed, self.generate = pipe, prompt, word, seed, generate
        self.slider = W.FloatSlider(value=weight, min=low, max=high, step=step, description=f'"{word}" x',
                                    continuous_update=False, readout_format=".2f")  # fmt: skip
        self.picture = W.Image(value=placeholder(256), format="png")
        self.picture.add_class("sdviz-reweight-picture")
        self.status = W.Label()
        self.static = StaticPicture(placeholder(256, 24), "the reweighted picture")
        side = W.VBox([self.slider, self.status, W.HTML(f"<div style='font-size:12px;color:#555;width:300px'>"
                                                         f"{HELP}</div>")])  # fmt: skip
        self.widget = W.HBox([W.HTML(CSS), self.picture, side], layout=W.Layout(align_items="flex-start"))
        self.widget.add_class("sdviz-reweight")
        self.slider.observe(lambda change: self.draw(change["new"]), names="value")
        self.draw(weight)

    def draw(self, weight: float) -> None:
        """Generate with the word reweighted by `weight` (inside a trace) and show the picture and the map."""
        from sdviz.editing.control import edit
        from sdviz.editing.p2p import Reweight
        from sdviz.tracing import trace

        self.status.value = f"generating with {self.word!r} x {weight:g} ..."
        with edit(self.pipe, Reweight({self.word: weight})), trace(self.pipe, record=["cross_attention"]) as tr:
            self.pipe.generate(self.prompt, seed=self.seed, progress=False, **self.generate)
        a = panel_picture(tr, self.word, weight)
        self.picture.value = F.png(a)
        self.picture.layout.width = f"{a.shape[1]}px"  # its natural size: the browser does not resample it
        self.static.update(self.picture.value, f'{self.prompt!r} with "{self.word}" x {weight:g}, seed {self.seed}')
        self.status.value = ""

    def _ipython_display_(self) -> None:
        display(self.widget)
        self.static.show()


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
) -> ReweightSlider:
    """A `ReweightSlider`: the picture and the word's map, and beside them a FloatSlider for the weight of `word`.

    Other keyword arguments go to `pipe.generate` (default: 50 DDIM steps, cfg 5). A word that is not in the prompt
    is an error at once, listing the prompt's words.
    """
    return ReweightSlider(pipe, prompt, word, weight, seed, low, high, step, {**SETTINGS, **generate})

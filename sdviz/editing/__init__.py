"""Editing: hook points that change what flows through them, and prompt-to-prompt on top of them.

    import sdviz
    from sdviz.editing import LocalBlend, Refine, Replace, Reweight

    with sdviz.edit(pipe, Reweight({"red": 2.0})):                 # any generation inside is edited
        pipe.generate("a red circle on the left", seed=1)

    with sdviz.edit(pipe, Replace(cross_replace_steps=0.8, self_replace_steps=0.4), LocalBlend(["red", "blue"])):
        pipe.generate(["a red circle on the left", "a blue circle on the left"], seed=[1, 1])

    sdviz.editing.replace(pipe, "a red circle on the left", "a blue circle on the left", seed=1)   # the same, one call
    sdviz.editing.refine(pipe, "a red circle", "a large red circle", seed=1)
    sdviz.editing.reweight(pipe, "a red circle", {"red": 2.0}, seed=1)

Observation stays the default and changes no number; an edit is always explicit (`sdviz.edit(...)` or one of the
functions above), and a trace run inside an edit records the edited values.

    control.py   `edit(pipe, *edits)`, the `Edit` base class and the controller (p2p's AttentionControl)
    p2p.py       Reweight, Replace, Refine, LocalBlend and the one-call functions
    prompts.py   which token of one prompt stands for which of another (replace's and refine's alignments)

The word-weight slider for notebooks is a widget: `from sdviz.viz.widgets import reweight_widget`.

`sdviz.edit` is `edit` here, re-exported by the package.
"""

from sdviz.editing.control import Edit, Run, Site, edit
from sdviz.editing.p2p import LocalBlend, Refine, Replace, Reweight, refine, replace, reweight
from sdviz.editing.prompts import Alignment, refinement, replacement

__all__ = [
    "Alignment",
    "Edit",
    "LocalBlend",
    "Refine",
    "Replace",
    "Reweight",
    "Run",
    "Site",
    "edit",
    "refine",
    "refinement",
    "replace",
    "replacement",
    "reweight",
]


def __getattr__(name: str) -> None:
    """Names that moved away raise at once and say where they went (nothing here imports `sdviz.viz`)."""
    if name == "reweight_widget":
        raise AttributeError("sdviz.editing.reweight_widget moved: use `from sdviz.viz.widgets import reweight_widget`")
    raise AttributeError(f"module 'sdviz.editing' has no attribute {name!r}")

"""Explain and edit an existing picture: everything sdviz does to its own pictures, on an inversion's redraw.

    tr = explain(pipe, inv)                       # the redraw, traced: tr.word_map("circle"), tr.images[0], figures
    tr = explain(pipe, inv, record=["cross_attention"], keep={"cross_attention": ["step"]})
    result = edit_inverted(pipe, inv, "a blue circle on the left")                 # replace a word (p2p)
    result = edit_inverted(pipe, inv, "a large red circle on the left")            # refine: words added
    result = edit_inverted(pipe, inv, weights={"red": 2.0})                        # reweight a word
    result = edit_inverted(pipe, inv, "a blue circle ...", blend=["red", "blue"])  # ... confined by a local blend

A redraw of an inversion is a generation like any other (start latents, and with null-text one null embedding per
step), so a trace records it exactly as it records a generated picture, and prompt-to-prompt edits it as in the
null-text paper (Mokady et al. 2023, section 4): the source row redraws the picture, the target row shares its start
latents and null embeddings and takes the source's attention maps. With negative-prompt inversion (Miyake et al.
2023) both rows take the source caption as their negative prompt.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sdviz.editing import LocalBlend, Refine, Replace, Reweight, edit
from sdviz.tracing import trace

if TYPE_CHECKING:
    from sdviz.inversion.inversion import Inversion
    from sdviz.pipeline import StableDiffusion


def explain(
    pipe: StableDiffusion,
    inversion: Inversion,
    record: Iterable[str] | str | None = None,
    keep: Any = None,
    **trace_options: Any,
):
    """Redraw the inverted picture inside `sdviz.trace(pipe, record=..., keep=..., ...)` and return the trace:
    `tr.word_map(word)`, the explorer and every figure then work on the picture. The redraw is the trace's image."""
    kwargs = inversion.generate_kwargs(pipe)  # checks the weights and the size first
    with trace(pipe, record=record, keep=keep, **trace_options) as tr:
        pipe.generate(**kwargs)
    return tr


def _words(prompt: str) -> list[str]:
    return [w.strip(".,;:!?").lower() for w in prompt.split()]


def edit_inverted(
    pipe: StableDiffusion,
    inversion: Inversion,
    target: str | None = None,
    weights: Mapping[str, float] | None = None,
    blend: Sequence[str | Sequence[str]] | None = None,
    cross_replace_steps: float | tuple[float, float] = 0.8,
    self_replace_steps: float | tuple[float, float] = 0.4,
    mode: str = "auto",
    **generate: Any,
):
    """Edit the inverted picture with prompt-to-prompt; returns the `GenerationResult` (images[0] the redraw of the
    source, images[1] the edit; a reweight of the caption alone returns the one edited picture).

    target: the new caption. mode "auto" picks "replace" when it has as many words as the source, "refine" when it
        adds words; say mode="replace" or "refine" to choose.
    weights: reweight words ({"red": 2.0}), of the target (or of the source caption when there is no target).
    blend: local blend words, one per prompt (["red", "blue"]): the edit stays where they are attended to.

    Which inversion to edit (measured, readme-images/inversion.json: a colour word replaced on the toy world's own
    scenes, local blend of the two colours): on a DDIM inversion the judge reads the new colour in 11 of 12 scenes,
    32 dB outside the object; on null-text, whose null embeddings start from the source caption's (as negative-prompt
    inversion's are), in 6 of 14: guidance then pushes away from the source caption, colour and all.
    """
    if target is None and not weights:
        raise ValueError("edit_inverted: give a target caption, weights={word: factor}, or both")
    if mode not in ("auto", "replace", "refine"):
        raise ValueError(f"mode must be 'auto', 'replace' or 'refine', got {mode!r}")
    if target is not None:
        if mode == "auto":
            mode = "replace" if len(_words(target)) == len(_words(inversion.prompt)) else "refine"
        control = Replace if mode == "replace" else Refine
        edits: list[Any] = [control(cross_replace_steps, self_replace_steps)]
        if blend is not None:
            edits.append(LocalBlend(blend))
        if weights:
            edits.append(Reweight(weights, images=[1]))  # the target only
        kwargs = inversion.generate_kwargs(pipe, prompts=2, prompt=[inversion.prompt, target], **generate)
    else:
        edits = [Reweight(weights)]
        kwargs = inversion.generate_kwargs(pipe, **generate)
    with edit(pipe, *edits):
        return pipe.generate(**kwargs)

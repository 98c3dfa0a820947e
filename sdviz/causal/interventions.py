"""Interventions: explicit edits on hook points that remove something and let you see what it caused.

A trace (`sdviz.trace`) shows *where* a word's attention went; an intervention shows what that attention *did*: take
the word (a head, a layer, a block) out, generate again from the same seed, and compare. Each intervention is a set
of editor listeners on named hook points (`sdviz.hooks`), attached for the duration of a `with` block:

    with sdviz.causal.intervene(pipe, AblateWord("red", layers="unet.up_blocks", window=(0.0, 0.5))):
        pipe.generate("a red circle on the left", seed=1)

    AblateWord(word, layers, window, mode)  the word's tokens at the cross-attention layers `layers`, in a window of
                                            steps: "zero" its attention column, "renorm" (zero it, then renormalise
                                            each row to sum 1), or "padding" (its context vectors replaced by the
                                            padding token's, at `...hook_context`)
    AblateHead(layers, head, window)        a head's attention probabilities zeroed, so its output is 0
    AblateCrossAttention(layers, window)    the layer's cross-attention reads the unconditional context
    AblateBlock(blocks, window)             a block's output (`...attentions.k.hook_block_out`) replaced by its mean
                                            over the rows of the UNet call
    Patch / PatchText (sdviz.causal.patching)   a clean run's activations restored inside another run

Windows (`window=`) are prompt-to-prompt's fractions of the steps (`sdviz.editing.control.step_range`): 0.5 is the first
half, (0.5, 1.0) the second. As in prompt-to-prompt, ablations touch the conditional rows of a guided batch only.

The `with` block opens a `Scope` (only generations started inside it are changed), attaches every listener and one
pipeline observer (which learns the prompts and the number of steps of each generation), and removes all of them in
a `finally`: also when a generation raised, for instance because a word is not in its prompt. What an intervention
does not change stays bit-identical: outside its steps and layers no listener edits, and attention probabilities are
not even computed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from sdviz.editing.control import step_range
from sdviz.events import Scope, UNetCall, current_call
from sdviz.hooks import Filter, HookCall, hook_names, hook_points, select

if TYPE_CHECKING:
    from sdviz.events import GenerationInfo, GenerationResult, StepInfo
    from sdviz.pipeline import StableDiffusion

EMPTY = slice(0, 0)
Steps = float | tuple[float, float]
# (hook name, rows(batch) -> slice, fn(tensor, HookCall) -> replacement or None)
Listening = tuple[str, Callable[[int], slice], Callable[[Tensor, HookCall], Tensor | None]]


def check_window(window: Any, what: str = "window") -> Steps:
    """A window of the steps as fractions, as prompt-to-prompt writes it (0.5, or (0.2, 0.8)); one-line errors for
    one outside [0, 1] or empty."""
    step_range(window, 1, what)  # the type and 0 <= start <= end <= 1
    lo, hi = (0.0, float(window)) if isinstance(window, int | float) else (float(window[0]), float(window[1]))
    if hi <= lo:
        raise ValueError(f"{what}={window!r} is an empty window of steps: give start < end, e.g. (0.0, 0.5)")
    return window


def window_steps(window: Steps, n: int, what: str = "window") -> range:
    """The step indices of a window in a generation of n steps; a window too narrow to hold one step is an error."""
    chosen = step_range(window, n, what)
    if not len(chosen):
        raise ValueError(f"{what}={window!r} selects none of the {n} steps: widen the window")
    return chosen


class Intervention:
    """An edit of named hook points during a generation. Subclasses say where (`listeners`) and what.

    `bind(pipe)` resolves names (a filter matching nothing raises with close names) and returns the listeners;
    `setup(pipe, info)` runs when a generation starts (check the prompts, find the steps); `finish()` when it ends.
    """

    name = "intervention"

    def __init__(self, window: Steps = 1.0, *, steps: Any = None):
        if steps is not None:  # `steps` is a count in `generate`; a window of them has its own name (as in Aggregator)
            raise TypeError(f"{type(self).__name__}(steps=...) is now window=... (a window of fractions of the steps)")
        self.window = check_window(window)
        self.info: GenerationInfo | None = None
        self.active: range = range(0)

    def bind(self, pipe: StableDiffusion) -> list[Listening]:
        raise NotImplementedError

    def setup(self, pipe: StableDiffusion, info: GenerationInfo) -> None:
        self.info = info
        self.active = window_steps(self.window, len(info.timesteps))

    def finish(self) -> None:
        self.info, self.active = None, range(0)

    def call(self) -> UNetCall | None:
        """The running UNet call, if it belongs to the generation being intervened on and is in the window."""
        call = current_call()
        if call is None or self.info is None or call.info is not self.info or call.step not in self.active:
            return None
        return call

    def cond_rows(self, batch: int) -> slice:
        """The conditional rows of the running call (none outside the window): a `rows=` for `HookPoint.listen`."""
        call = self.call()
        return EMPTY if call is None else call.cond_rows

    def all_rows(self, batch: int) -> slice:
        call = self.call()
        return EMPTY if call is None else slice(0, batch)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(window={self.window!r})"


def unet_layers(pipe: StableDiffusion, filter: Filter, suffix: str, what: str) -> list[str]:
    """UNet hook points ending in `suffix` below the modules a filter names (`"unet.up_blocks"`, a glob, a list)."""
    names = hook_names(pipe)
    candidates = [n for n in names if n.startswith("unet.") and n.endswith("." + suffix)]
    if filter is None:
        return candidates
    if isinstance(filter, str) or not callable(filter):
        patterns = [filter] if isinstance(filter, str) else list(filter)
        select(names + [c.rsplit(".", 1)[0] for c in candidates], patterns)  # a typo: HookNameError, close names
        chosen = [c for c in candidates if any(_under(c, p) for p in patterns)]
    else:
        chosen = [c for c in candidates if filter(c) or filter(c.rsplit(".", 1)[0])]
    if not chosen:
        example = ", ".join(candidates[:2])
        raise ValueError(f"layers={filter!r} selects no {what} (hook points ...{suffix}), e.g. {example}")
    return chosen


def _under(name: str, pattern: str) -> bool:
    """Is hook point `name` selected by `pattern`, a glob of it, of its module, or of a module above it?"""
    from sdviz.hooks import matches

    module = name.rsplit(".", 1)[0]
    return matches(name, pattern) or matches(module, pattern)


class AblateWord(Intervention):
    """Remove a word's contribution at chosen cross-attention layers, in a window of steps.

    mode "zero": its attention column set to 0 (each pixel then averages the other tokens' values with weights that
    sum to less than 1); "renorm": zeroed, then each row divided by its new sum; "padding": its context vectors
    replaced by the padding position's (the last of the 77), so keys and values both forget the word.
    """

    name = "AblateWord"
    MODES = ("zero", "renorm", "padding")

    def __init__(
        self, word: str, layers: Filter = None, window: Steps = 1.0, mode: str = "zero", *, steps: Any = None
    ):
        super().__init__(window, steps=steps)
        if not isinstance(word, str) or not word.strip():
            raise TypeError(f"word must be a word of the prompt, got {word!r}")
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.word, self.layers, self.mode = word, layers, mode
        self.positions: list[list[int]] = []  # per image of the generation: the word's token positions

    def bind(self, pipe: StableDiffusion) -> list[Listening]:
        suffix = "hook_context" if self.mode == "padding" else "attn2.hook_probs"
        names = unet_layers(pipe, self.layers, suffix, "cross-attention layer")
        fn = self._context if self.mode == "padding" else self._probs
        return [(name, self.cond_rows, fn) for name in names]

    def setup(self, pipe: StableDiffusion, info: GenerationInfo) -> None:
        self.positions = [pipe.tokenizer.encode(p).positions(self.word) for p in info.prompts]  # NotInPrompt: 1 line
        super().setup(pipe, info)

    def _rows_positions(self, hook: HookCall) -> list[tuple[int, list[int]]]:
        call = self.call()
        return [(r - hook.rows.start, self.positions[call.image_of(r)]) for r in range(hook.rows.start, hook.rows.stop)]

    def _probs(self, probs: Tensor, hook: HookCall) -> Tensor:
        out = probs.clone()  # (rows, heads, queries, 77)
        for row, pos in self._rows_positions(hook):
            out[row, :, :, pos] = 0.0
        if self.mode == "renorm":
            out = out / out.sum(-1, keepdim=True).clamp_min(1e-12)  # each query's weights sum to 1 again
        return out

    def _context(self, context: Tensor, hook: HookCall) -> Tensor:
        out = context.clone()  # (rows, 77, D)
        for row, pos in self._rows_positions(hook):
            out[row, pos] = context[row, -1]  # the last position is padding in any prompt shorter than 76 tokens
        return out

    def __repr__(self) -> str:
        return f"AblateWord({self.word!r}, layers={self.layers!r}, window={self.window!r}, mode={self.mode!r})"


class AblateHead(Intervention):
    """A head's attention probabilities set to 0 at chosen attention layers (cross or self), so its output is 0."""

    name = "AblateHead"

    def __init__(
        self, layers: Filter, head: int, window: Steps = 1.0, kind: str = "cross", *, steps: Any = None
    ):
        super().__init__(window, steps=steps)
        if isinstance(head, bool) or not isinstance(head, int) or head < 0:
            raise ValueError(f"head must be a head index >= 0, got {head!r}")
        if kind not in ("cross", "self"):
            raise ValueError(f"kind must be 'cross' or 'self', got {kind!r}")
        self.layers, self.head, self.kind = layers, head, kind

    def bind(self, pipe: StableDiffusion) -> list[Listening]:
        suffix = "attn2.hook_probs" if self.kind == "cross" else "attn1.hook_probs"
        names = unet_layers(pipe, self.layers, suffix, f"{self.kind}-attention layer")
        heads = pipe.unet.config.num_heads
        if self.head >= heads:
            raise ValueError(f"head={self.head}: the UNet's attention layers have {heads} heads (0..{heads - 1})")
        return [(name, self.cond_rows, self._zero) for name in names]

    def _zero(self, probs: Tensor, hook: HookCall) -> Tensor:
        out = probs.clone()  # (rows, heads, queries, keys)
        out[:, self.head] = 0.0
        return out


class AblateCrossAttention(Intervention):
    """At chosen layers, the cross-attention of the conditional rows reads the unconditional context (the negative
    prompt's; without guidance, the empty prompt's): the layer no longer hears the prompt."""

    name = "AblateCrossAttention"

    def __init__(self, layers: Filter = None, window: Steps = 1.0, *, steps: Any = None):
        super().__init__(window, steps=steps)
        self.layers = layers
        self.empty: Tensor | None = None  # the empty prompt's context, for unguided generations

    def bind(self, pipe: StableDiffusion) -> list[Listening]:
        self.empty = pipe.encode_prompts([""])  # (1, 77, D)
        names = unet_layers(pipe, self.layers, "hook_context", "cross-attention layer")
        return [(name, self.all_rows, self._swap) for name in names]

    def _swap(self, context: Tensor, hook: HookCall) -> Tensor:
        call = self.call()  # context: (2b, 77, D) = [uncond; cond] with guidance, else (b, 77, D)
        out = context.clone()
        cond, uncond = call.cond_rows, call.uncond_rows
        out[cond] = context[uncond] if call.guided else self.empty.expand(cond.stop - cond.start, -1, -1)
        return out


class AblateBlock(Intervention):
    """A block's output (a spatial transformer's, `...attentions.k.hook_block_out`) replaced by its mean over the
    rows of the UNet call (with guidance, the conditional and unconditional halves of the same images): what the
    block adds that depends on the prompt is averaged away. To put in a source run's output instead, use
    `Patch(source, hooks="...hook_block_out")`."""

    name = "AblateBlock"

    def __init__(self, blocks: Filter, window: Steps = 1.0, *, steps: Any = None):
        super().__init__(window, steps=steps)
        self.blocks = blocks

    def bind(self, pipe: StableDiffusion) -> list[Listening]:
        names = unet_layers(pipe, self.blocks, "hook_block_out", "block")
        return [(name, self.all_rows, self._mean) for name in names]

    def _mean(self, x: Tensor, hook: HookCall) -> Tensor:
        return x.mean(0, keepdim=True).expand_as(x).clone()  # (rows, C, H, W) -> (1, C, H, W) -> (rows, C, H, W)


class _Observer:
    """Tells the interventions when a generation of their scope starts and ends (the pipeline's Observer protocol)."""

    def __init__(self, interventions: list[Intervention]):
        self.interventions = interventions

    def on_start(self, pipe: StableDiffusion, info: GenerationInfo) -> None:
        for iv in self.interventions:
            iv.setup(pipe, info)

    def on_step(self, pipe: StableDiffusion, step: StepInfo) -> None:
        pass

    def on_end(self, pipe: StableDiffusion, result: GenerationResult) -> None:
        for iv in self.interventions:
            iv.finish()


@contextmanager
def intervene(pipe: StableDiffusion, *interventions: Intervention) -> Iterator[list[Intervention]]:
    """Apply interventions to every generation started inside the `with` block (in this thread or task).

    With none, nothing changes (a baseline that reads like the others). Everything is attached when the block is
    entered (a bad hook name raises here, before anything is attached) and removed when it exits, also on error.
    """
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise TypeError(f"expected interventions such as AblateWord, Patch; got {iv!r}")
    listening = [x for iv in interventions for x in iv.bind(pipe)]  # all names resolved before anything attaches
    points = hook_points(pipe)
    observer = _Observer(list(interventions))
    scope, handles = Scope(), []
    scope.open()
    try:
        for name, rows, fn in listening:
            handles.append(points[name].listen(fn, rows=rows, edit=True, scope=scope))
        pipe.add_observer(observer, scope)
        yield list(interventions)
    finally:
        scope.close()
        for h in handles:
            h.remove()
        pipe.remove_observer(observer)
        for iv in interventions:
            iv.finish()


def latents_equal(a: Tensor, b: Tensor) -> bool:
    """Bit for bit (what the guarantees promise), NaNs aside."""
    return a.shape == b.shape and torch.equal(a, b)

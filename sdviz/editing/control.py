"""The machinery of an edit: `edit(pipe, *edits)`, the `Edit` base class, and the controller between them.

    with sdviz.edit(pipe, Reweight({"red": 2.0})):
        pipe.generate("a red circle on the left", seed=1)

Entering the block checks every edit's `layers=` filter against the pipeline's hook points (a filter that matches
nothing raises and lists close names, as trace filters do), then attaches one *editor* listener to each attention
hook point some edit may touch, the pipeline observer that learns about each generation, and the latent editor that
local blend needs, all in the scope of the running thread or task (`sdviz.events.Scope`: an edit changes only the
generations started inside its own `with` block). Leaving the block removes all of them, also when the generation
raised.

The controller plays the part of prompt-to-prompt's `AttentionControl`. Each time an attention layer runs during a
generation, the pipeline's announcement of the running UNet call (`sdviz.events.current_call()`) says the denoising
step, which images (prompts) the call holds, and which rows of the UNet batch are whose: with guidance a call's batch
is [uncond rows; cond rows] of its images, and, as in p2p, edits touch the conditional rows only. It asks the edits
which of those rows they want at this layer and step; the attention layer computes probabilities for those rows only
(none at all on steps or layers no edit wants) and hands them over in chunks of query positions. For each chunk the
controller first lets every edit *record* (read the unedited probabilities: the source's maps, local blend's word
maps), then lets each edit in turn *apply* its change. The attention layer recomputes its output, probs @ V, only
for rows whose probabilities came back changed.

What is bit-identical to no edit: everything an edit does not change. Steps, layers and images that no edit wants
compute no probabilities and keep the fused kernel; rows whose probabilities an edit hands back unchanged (a reweight
by 1.0, a replace outside its steps) keep the fused kernel's output; so do the *source* rows of replace and refine,
which are only read. A trace run inside an edit records the edited probabilities (editors run before observers).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

from sdviz import shapes
from sdviz.events import Scope, UNetCall, current_call
from sdviz.hooks import Filter, HookCall, hook_points, select_layers
from sdviz.shapes import AttentionLayer, UNetLayout, unet_layout
from sdviz.tokenizer import Encoding

if TYPE_CHECKING:
    from sdviz.events import GenerationInfo, GenerationResult, StepInfo
    from sdviz.pipeline import StableDiffusion

KINDS = ("cross", "self")  # cross-attention (attn2: pixels -> prompt tokens) and self-attention (attn1)
EMPTY = slice(0, 0)


def choose_layers(pipe: StableDiffusion, filter: Filter, kinds: Sequence[str], edit: str) -> list[str]:
    """The attention layers of the given kinds ("cross", "self") that a `layers=` filter selects (all of them for
    None), from the UNet's layer layout (`sdviz.shapes.layers`); a filter that matches no hook point, or no attention
    layer of those kinds, raises HookNameError with close names."""
    candidates = [name for kind in kinds for name in shapes.layers(pipe.config, f"{kind}_attention")]
    what = f"{' or '.join(kinds)}-attention layer of the UNet (for {edit})"
    return select_layers(candidates, list(hook_points(pipe)), filter, what)


def step_range(steps: Any, n: int, what: str) -> range:
    """The step indices a fraction selects, in prompt-to-prompt's convention: a number f is the first f of the
    steps, a pair (a, b) the steps i with a * n <= i < b * n (n steps in all)."""
    if isinstance(steps, bool) or not (
        isinstance(steps, int | float) or (isinstance(steps, tuple | list) and len(steps) == 2)
    ):
        raise TypeError(f"{what} is a fraction of the steps (0.8) or a pair of fractions ((0.2, 0.8)), got {steps!r}")
    lo, hi = (0.0, float(steps)) if isinstance(steps, int | float) else (float(steps[0]), float(steps[1]))
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"{what} must be fractions with 0 <= start <= end <= 1, got {steps!r}")
    return range(int(lo * n + 1e-9), int(hi * n + 1e-9))


@dataclass
class Run:
    """What an edit learns about a generation when it starts (`Edit.setup`)."""

    prompts: list[str]
    encodings: list[Encoding]  # the tokenised prompts, one per image
    seeds: list[int]
    steps: int  # the number of denoising steps
    layout: UNetLayout  # every attention layer's shape for this picture size
    latent_hw: tuple[int, int]

    def check_same_seed(self, edit: str) -> None:
        """Prompt-to-prompt generates the source and its targets from the same noise."""
        if len(self.prompts) < 2:
            raise ValueError(f"{edit} needs a source prompt and at least one target prompt, got {self.prompts!r}")
        if len(set(self.seeds)) != 1:
            raise ValueError(
                f"{edit} generates the source and its targets from the same seed: pass seed=[s, s, ...] "
                f"(got seeds {self.seeds})"
            )


@dataclass(frozen=True)
class Site:
    """Where a chunk of attention probabilities (rows, heads, queries, keys) comes from."""

    layer: AttentionLayer  # name, kind ("cross_attention" / "self_attention"), heads, n, m, hw
    step: int  # the denoising step index
    queries: slice  # the query positions of this chunk (of layer.n)
    images: tuple[int, ...]  # the image (prompt) of each row of the chunk

    @property
    def cross(self) -> bool:
        return self.layer.kind == "cross_attention"


class Edit:
    """An edit of the attention probabilities and/or the latents. Subclasses override what they need.

    An edit names the attention layers it may touch in `bind` (from its `layers=` filter), learns about each
    generation in `setup`, says which (layer, step, image) it wants in `wants`, reads unedited probabilities in
    `record`, returns changed ones (a new tensor, never an in-place change) or None from `apply`, and may return new
    latents after a step from `edit_latents`.
    """

    name = "edit"
    kinds: tuple[str, ...] = ("cross",)  # the attention kinds it may touch

    def __init__(self, layers: Filter = None):
        self.layers = layers
        self.layer_names: list[str] = []

    def bind(self, pipe: StableDiffusion) -> list[str]:
        """Resolve the layers filter against the pipeline (raises for a filter that matches nothing)."""
        self.layer_names = choose_layers(pipe, self.layers, self.kinds, self.name)
        return self.layer_names

    def on_layer(self, layer: AttentionLayer) -> bool:
        """Is this one of the layers the edit was bound to?"""
        return layer.name in self.layer_names

    def setup(self, run: Run) -> None:
        """A generation starts: check the prompts, build what the edit needs."""

    def wants(self, layer: AttentionLayer, step: int, image: int) -> bool:
        """Does the edit need the probabilities of this image's conditional row at this layer and step?"""
        return False

    def record(self, site: Site, probs: Tensor) -> None:
        """Read the unedited probabilities (rows, heads, queries, keys) of a chunk."""

    def apply(self, site: Site, probs: Tensor) -> Tensor | None:
        """Return changed probabilities for the chunk (same shape), or None to leave them."""
        return None

    def edit_latents(self, step: int, latents: Tensor) -> Tensor | None:
        """After step `step`: return new latents x_{t-1} (B, 4, h, w), or None to leave them."""
        return None

    def finish(self) -> None:
        """The generation ended: drop what only that generation needed."""


class Controller:
    """Attached by `edit(...)`: tells the edits where each attention chunk comes from (see the module docstring)."""

    def __init__(self, pipe: StableDiffusion, edits: list[Edit]):
        self.pipe, self.edits = pipe, edits
        self.run: Run | None = None  # the generation running now
        self.info: GenerationInfo | None = None  # ... as the pipeline described it (its UNet calls carry it)
        self.by_layer: dict[str, list[Edit]] = {}  # hook name -> the edits that may touch it
        self.handles: list[Any] = []
        self.scope = Scope()

    # -- attaching ---------------------------------------------------------------------------------------------------

    def attach(self) -> None:
        for e in self.edits:
            for name in e.bind(self.pipe):
                self.by_layer.setdefault(name, []).append(e)
        points = hook_points(self.pipe)
        self.scope.open()
        try:
            for name in self.by_layer:
                point = points[name]
                rows = lambda batch, name=name: self._rows(name, batch)  # noqa: E731
                fn = lambda p, hook, name=name: self._on_probs(name, p, hook)  # noqa: E731
                self.handles.append(point.listen(fn, rows, edit=True, scope=self.scope))
            self.pipe.add_observer(self, self.scope)
            self.pipe.add_latent_editor(self._edit_latents, self.scope)
        except BaseException:
            self.detach()
            raise

    def detach(self) -> None:
        """Remove every listener, the observer and the latent editor; safe to call twice."""
        for h in self.handles:
            h.remove()
        self.handles = []
        self.pipe.remove_observer(self)
        self.pipe.remove_latent_editor(self._edit_latents)
        self.scope.close()
        self._end()

    # -- the pipeline's events (sdviz.pipeline.Observer) -------------------------------------------------------------

    def on_start(self, pipe: StableDiffusion, info: GenerationInfo) -> None:
        latent_hw = info.latent_hw
        self.run = Run(
            prompts=list(info.prompts),
            encodings=[pipe.tokenizer.encode(p) for p in info.prompts],
            seeds=list(info.seeds),
            steps=len(info.timesteps),
            layout=unet_layout(pipe.unet.config, latent_hw, pipe.config.clip.max_length),
            latent_hw=latent_hw,
        )
        self.info = info
        for e in self.edits:
            e.setup(self.run)

    def on_step(self, pipe: StableDiffusion, step: StepInfo) -> None:
        pass

    def on_end(self, pipe: StableDiffusion, result: GenerationResult) -> None:
        self._end()

    def _end(self) -> None:
        self.run, self.info = None, None
        for e in self.edits:
            e.finish()

    # -- the listeners -----------------------------------------------------------------------------------------------

    def _call(self) -> UNetCall | None:
        """The UNet call running now, if it belongs to the generation being edited."""
        call = current_call()
        return call if call is not None and self.run is not None and call.info is self.info else None

    def _rows(self, name: str, batch: int) -> slice:
        """The conditional rows of the running call whose images some edit wants at this layer and step."""
        call = self._call()
        if call is None:
            return EMPTY
        layer = self.run.layout.attention[name]
        wanted = [
            i
            for i in range(call.images.start, call.images.stop)
            if any(e.wants(layer, call.step, i) for e in self.by_layer[name])
        ]
        if not wanted:
            return EMPTY
        first = call.cond_rows.start - call.images.start  # UNet row of image i: first + i
        return slice(first + min(wanted), first + max(wanted) + 1)

    def _on_probs(self, name: str, probs: Tensor, hook: HookCall) -> Tensor | None:
        """Record, then apply, every edit of this layer on one chunk of probabilities (rows, heads, queries, keys)."""
        call = self._call()
        if call is None:
            return None
        layer = self.run.layout.attention[name]
        images = tuple(call.image_of(r) for r in range(hook.rows.start, hook.rows.stop))
        site = Site(layer, call.step, hook.queries or slice(0, layer.n), images)
        edits = self.by_layer[name]
        for e in edits:
            e.record(site, probs)
        out = probs
        for e in edits:
            changed = e.apply(site, out)
            out = out if changed is None else changed
        return None if out is probs else out

    def _edit_latents(self, index: int, t: int, latents: Tensor) -> Tensor:
        """After each step: let the edits (local blend) change x_{t-1}."""
        if self.run is None:
            return latents
        for e in self.edits:
            changed = e.edit_latents(index, latents)
            latents = latents if changed is None else changed
        return latents


@contextmanager
def edit(pipe: StableDiffusion, *edits: Edit) -> Iterator[list[Edit]]:
    """Apply edits to every generation inside the `with` block; yields the edits (to inspect, e.g., a blend mask).

        with sdviz.edit(pipe, Replace(cross_replace_steps=0.8), LocalBlend(["red", "blue"])):
            result = pipe.generate(["a red circle", "a blue circle"], seed=[1, 1])

    Editing is always explicit: outside such a block (or `sdviz.editing.replace(...)` and friends) no hook edits.
    Everything is removed when the block exits, also when the generation raised.
    """
    if not edits:
        raise ValueError("edit(pipe, ...) needs at least one edit, e.g. Reweight({'red': 2.0})")
    for e in edits:
        if not isinstance(e, Edit):
            raise TypeError(f"expected edits such as Reweight, Replace, Refine, LocalBlend; got {e!r}")
    controller = Controller(pipe, list(edits))
    controller.attach()
    try:
        yield list(edits)
    finally:
        controller.detach()

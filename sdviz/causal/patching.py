"""Activation patching: restore a clean run's activations inside a corrupted run, and see what comes back.

Causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT"; for diffusion, Basu et al.
2024) asks where a fact is carried. Generate a *clean* prompt ("a red circle") and a *corrupted* one that differs in
one word ("a blue circle") from the same seed. Then run the corrupted prompt again, but at one hook point, for a
window of steps, put back what the clean run computed there. If the picture turns red again, that hook point, at
those steps, carried "red".

    clean = record(pipe, "a red circle on the left", seed=1, steps=10, sampler="ddim", cfg_scale=5)
    with intervene(pipe, Patch(clean, hooks="unet.mid_block.attentions.0.hook_block_out", window=(0.0, 0.3))):
        patched = pipe.generate("a blue circle on the left", seed=1, steps=10, sampler="ddim", cfg_scale=5)

    record(pipe, prompt, hooks="unet", **generate_kwargs)  -> Recording: the run's picture, latents, settings, and
                                                              its activations at the hook points, per step and call
    Patch(source, hooks=None, window=1.0)                   restore them (all rows of each UNet call) in a window
    PatchText(source_prompts, into, layers, positions)      the text encoder: restore the clean prompt's residual
                                                              stream after layer L at token positions P, while
                                                              the prompts `into` are encoded

A recording is keyed by (hook name, step, UNet call of the step, occurrence within the call): a hook point that runs
several times in one call (attention probabilities arrive in chunks of query positions) is matched in order. A patch
needs the same calls, so the source run must have the generation's size, seeds, timesteps and batch; another is a
one-line error when the generation starts (and the `with` block still removes everything).

Guarantees (tests/test_causal.py): restoring every UNet hook point at every step gives the clean run's latents bit
for bit (the last one restored is the UNet's output itself); restoring nothing gives the corrupted run's; restoring a
run of the same prompt changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor

from sdviz.causal.interventions import Intervention, Listening, Steps
from sdviz.events import GenerationResult, Scope, UNetCall, current_call
from sdviz.hooks import Filter, HookCall, HookNameError, hook_names, hook_points, hooks, select

if TYPE_CHECKING:
    from sdviz.events import GenerationInfo, StepInfo
    from sdviz.pipeline import StableDiffusion

Key = tuple[str, int, int, int]  # (hook name, step, call index within the step, occurrence within the call)


class Occurrences:
    """Counts how often each hook point has run within the running UNet call (chunks of probabilities, ...)."""

    def __init__(self) -> None:
        self.last: dict[str, tuple[UNetCall, int]] = {}

    def key(self, name: str, call: UNetCall) -> Key:
        seen, count = self.last.get(name, (None, -1))
        count = count + 1 if seen is call else 0
        self.last[name] = (call, count)
        return (name, call.step, call.index, count)


@dataclass
class Recording:
    """A generation and its activations at chosen UNet hook points, for every step and call."""

    prompts: list[str]
    negative_prompts: list[str]
    seeds: list[int]
    height: int
    width: int
    timesteps: list[int]
    cfg_scale: float
    unet_calls: list[slice]
    hooks: list[str]
    result: GenerationResult
    activations: dict[Key, Tensor] = field(default_factory=dict)

    @property
    def latents(self) -> Tensor:
        return self.result.latents

    def check_matches(self, info: GenerationInfo) -> None:
        """Raise a one-line ValueError if a generation cannot take this run's activations."""
        if (info.width, info.height) != (self.width, self.height):
            raise ValueError(
                f"the source run is {self.width}x{self.height} and this generation {info.width}x{info.height}: "
                "patch between runs of one size"
            )
        if list(info.seeds) != self.seeds:
            raise ValueError(
                f"the source run's seeds {self.seeds} differ from this generation's {list(info.seeds)}: patching "
                "compares runs from the same noise (pass the same seed)"
            )
        if list(info.timesteps) != self.timesteps or info.guided != (self.cfg_scale > 1.0):
            raise ValueError(
                "the source run took other steps (timesteps, sampler or guidance on/off) than this generation: "
                "give both the same steps=, sampler= and cfg_scale="
            )
        if list(info.unet_calls) != self.unet_calls:
            raise ValueError("the source run split its batch into other UNet calls: give both the same batch size")


class _Setup:
    """A pipeline observer that keeps the GenerationInfo of the run being recorded."""

    def __init__(self) -> None:
        self.info: GenerationInfo | None = None

    def on_start(self, pipe: StableDiffusion, info: GenerationInfo) -> None:
        self.info = info

    def on_step(self, pipe: StableDiffusion, step: StepInfo) -> None:
        pass

    def on_end(self, pipe: StableDiffusion, result: GenerationResult) -> None:
        pass


def unet_hooks(pipe: StableDiffusion, filter: Filter) -> list[str]:
    """The UNet hook points a filter selects (a typo lists close names; the text encoder has PatchText)."""
    names = select(hook_names(pipe), "unet" if filter is None else filter)
    other = [n for n in names if not n.startswith("unet.")]
    if other:
        raise HookNameError(
            f"hooks={filter!r} selects {other[0]!r}: recordings and patches are of the UNet's hook points "
            "(the text encoder's are patched with PatchText)"
        )
    return names


def record(pipe: StableDiffusion, prompt: str | Sequence[str], hooks: Filter = "unet", **kwargs: Any) -> Recording:
    """Generate `prompt` (with `generate`'s keyword arguments) and keep the activations at the UNet hook points the
    filter selects (default: all of them), every row of every call at every step. Returns a `Recording`."""
    names = unet_hooks(pipe, hooks)
    points = hook_points(pipe)
    store: dict[Key, Tensor] = {}
    seen = Occurrences()
    setup = _Setup()

    def keep(name: str, x: Tensor, hook: HookCall) -> None:
        call = current_call()
        if call is not None and call.info is setup.info:
            store[seen.key(name, call)] = x.clone()

    scope, handles = Scope(), []
    scope.open()
    try:
        for name in names:
            handles.append(points[name].listen(lambda x, hook, name=name: keep(name, x, hook), scope=scope))
        pipe.add_observer(setup, scope)
        result = pipe.generate(prompt, **kwargs)
    finally:
        scope.close()
        for h in handles:
            h.remove()
        pipe.remove_observer(setup)
    info = setup.info
    return Recording(
        list(info.prompts), list(info.negative_prompts), list(info.seeds), info.height, info.width,
        list(info.timesteps), info.cfg_scale, list(info.unet_calls), names, result, store,
    )  # fmt: skip


class Patch(Intervention):
    """Restore a recorded run's activations at chosen UNet hook points (default: every one it recorded), for all rows
    of each UNet call, in a window of steps."""

    name = "Patch"

    def __init__(self, source: Recording, hooks: Filter = None, window: Steps = 1.0, *, steps: Any = None):
        super().__init__(window, steps=steps)
        if not isinstance(source, Recording):
            raise TypeError(f"source must be a Recording (sdviz.causal.record(...)), got {type(source).__name__}")
        self.source, self.hooks = source, hooks
        self.seen = Occurrences()

    def bind(self, pipe: StableDiffusion) -> list[Listening]:
        names = self.source.hooks if self.hooks is None else unet_hooks(pipe, self.hooks)
        missing = [n for n in names if n not in self.source.hooks]
        if missing:
            raise ValueError(f"{missing[0]!r} was not recorded in the source run: record(..., hooks=...) it first")
        return [(name, self.all_rows, lambda x, hook, name=name: self._restore(name, x)) for name in names]

    def setup(self, pipe: StableDiffusion, info: GenerationInfo) -> None:
        self.source.check_matches(info)
        self.seen = Occurrences()
        super().setup(pipe, info)

    def _restore(self, name: str, x: Tensor) -> Tensor:
        key = self.seen.key(name, self.call())
        clean = self.source.activations.get(key)
        if clean is None or clean.shape != x.shape:
            raise ValueError(f"the source run has no activation {key} of shape {tuple(x.shape)} to restore")
        return clean  # the hook point copies it into the tensor that flows on

    def __repr__(self) -> str:
        return f"Patch(source={self.source.prompts!r}, hooks={self.hooks!r}, window={self.window!r})"


def token_count(pipe: StableDiffusion, prompt: str) -> int:
    return pipe.tokenizer.encode(prompt).length


class PatchText(Intervention):
    """Restore the clean prompts' text-encoder residual stream after layer `layer`, at token positions, while the
    prompts `into` are encoded; the UNet then reads the context computed from there on.

    positions: a list of positions for every prompt, or one list per prompt. The clean and the corrupted prompt of a
    row must have as many tokens (positions are matched one to one). The patched context replaces, in every
    generation of the block, a context that is bit for bit the plain encoding of one of the prompts `into`.
    """

    name = "PatchText"

    def __init__(
        self,
        source: str | Sequence[str],
        into: str | Sequence[str],
        layer: int,
        positions: Sequence[int] | Sequence[Sequence[int]],
    ):
        super().__init__(1.0)
        self.source = [source] if isinstance(source, str) else list(source)
        self.into = [into] if isinstance(into, str) else list(into)
        if len(self.source) != len(self.into):
            raise ValueError(f"{len(self.source)} source prompts for {len(self.into)} prompts to patch into")
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"layer is a text-encoder layer index, got {layer!r}")
        rows = list(positions)
        per_row = rows and not isinstance(rows[0], int)
        self.positions = [list(p) for p in rows] if per_row else [list(rows)] * len(self.into)
        if len(self.positions) != len(self.into) or not all(self.positions):
            n = len(self.into)
            raise ValueError(f"positions must be a non-empty list, or one per prompt ({n}), got {positions!r}")
        self.layer = layer
        self.plain: Tensor | None = None  # (B, 77, D) the prompts `into` encoded as usual
        self.patched: Tensor | None = None  # (B, 77, D) ... with the clean states restored

    def bind(self, pipe: StableDiffusion) -> list[Listening]:
        n = pipe.config.clip.layers
        if not 0 <= self.layer < n:
            raise ValueError(f"layer={self.layer}: the text encoder has {n} layers (0..{n - 1})")
        name = select(hook_names(pipe), f"text_encoder.layers.{self.layer}.hook_resid_post")[0]
        for src, dst, pos in zip(self.source, self.into, self.positions, strict=True):
            a, b = token_count(pipe, src), token_count(pipe, dst)
            if a != b:
                raise ValueError(
                    f"{src!r} has {a} tokens and {dst!r} {b}: their positions cannot be matched one to one"
                )
            if max(pos) >= pipe.config.clip.max_length or min(pos) < 0:
                raise ValueError(f"positions {pos} outside 0..{pipe.config.clip.max_length - 1}")
        clean = []
        with hooks(pipe, name, lambda _, x: clean.append(x.clone())):
            pipe.encode_prompts(self.source)  # one call per prompt on the CPU, per batch on a GPU
        clean_states = _rows(clean)  # (B, 77, D)
        self.plain = pipe.encode_prompts(self.into)
        patched = []
        for r, prompt in enumerate(self.into):

            def restore(_: str, x: Tensor, r: int = r) -> Tensor:
                out = x.clone()  # (1, 77, D)
                out[:, self.positions[r]] = clean_states[r, self.positions[r]]
                return out

            with hooks(pipe, name, restore, edit=True):
                patched.append(pipe.encode_prompts([prompt]))
        self.patched = _rows(patched)
        return [("text_encoder.hook_out", lambda batch: slice(0, batch), self._swap)]

    def _swap(self, context: Tensor, hook: HookCall) -> Tensor | None:
        out = None
        for row in range(len(context)):
            for r in range(len(self.plain)):
                if context[row].shape == self.plain[r].shape and context[row].equal(self.plain[r]):
                    out = context.clone() if out is None else out
                    out[row] = self.patched[r]
                    break
        return out

    def __repr__(self) -> str:
        return f"PatchText({self.source!r} -> {self.into!r}, layer={self.layer}, positions={self.positions!r})"


def _rows(chunks: list[Tensor]) -> Tensor:
    import torch

    return torch.cat(chunks)

"""Hook points: identity modules at every activation worth seeing, found by name, listened to safely.

Every activation worth seeing passes through a `HookPoint` (the idea is TransformerLens'): an identity module that
hands what passes through it to its listeners. With no listener it is one Python call that returns its input. A
listener says which batch rows it wants when it is added (`point.listen(fn, rows=...)`), so that, for instance, a
trace sees only the conditional half of a guided batch; it observes (its return value is ignored) unless it was
added as an editor. A hook point's name is its module path below the pipeline's three networks:

    unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.hook_probs   cross-attention probabilities
    unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.hook_probs   self-attention probabilities
    unet.down_blocks.0.resnets.0.norm1.hook_in / .hook_out                  a GroupNorm's input and output
    unet.hook_time_sinusoid, unet.hook_time_embedding, unet.hook_out        time embedding, its MLP, the UNet output
    text_encoder.hook_out                                                   the context the UNet attends to

A *filter* chooses names. It is a name, a glob (`"unet.*.attn2.hook_probs"`), a module path (which selects every
hook point below it: `"unet.mid_block"`), a list of those, or a predicate `name -> bool`. A filter that matches
nothing is an error that lists the closest valid names: a typo, or a renamed layer after an upgrade, must not give
an empty record without a word (the most common complaint about hook-based tools).

    with hooks(pipe, "unet.*.attn2.hook_probs", lambda name, p: print(name, tuple(p.shape))):
        pipe.generate("a red circle", steps=2)

The hooks are removed when the block exits, whether the generation finished or raised. A listener hears only the
runs of its own thread or task (`sdviz.events.Scope`): hooks opened in one thread never hear a generation that
another thread runs at the same time on the same pipeline.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sdviz.events import Scope

# Which rows of a batch a listener wants: all of them (None), a slice, or a function of the batch size (so that a
# trace can ask for "the conditional half" of a guided batch [uncond; cond] whatever its size).
Rows = slice | Callable[[int], slice] | None


@dataclass(frozen=True)
class HookCall:
    """Where the tensor handed to a listener sits: batch rows `rows` of a batch of `batch`, and, for attention
    probabilities computed in chunks, the query positions `queries` of the layer (None: all of them)."""

    rows: slice
    batch: int
    queries: slice | None = None


@dataclass(eq=False)
class Listener:
    """A function called with (tensor, HookCall) at a hook point, for the rows it registered for.

    An observer's return value is ignored. An *editor* (edit=True) may return a replacement for the rows it saw,
    which then flows on through the network: editing is always asked for explicitly. An editor returns a new tensor
    (or None: no change); it must not change the tensor it was handed in place.
    """

    fn: Callable[[Tensor, HookCall], Tensor | None]
    rows: Rows = None
    edit: bool = False
    scope: Scope | None = None  # heard only where this scope is open (None: everywhere)

    def visible(self) -> bool:
        return self.scope is None or self.scope.visible()

    def wants(self, batch: int) -> slice:
        rows = self.rows(batch) if callable(self.rows) else self.rows
        return slice(0, batch) if rows is None else slice(*rows.indices(batch)[:2])


class ListenerHandle:
    """Returned by `HookPoint.listen`; `remove()` takes the listener off (twice is harmless)."""

    def __init__(self, point: HookPoint, listener: Listener):
        self.point, self.listener = point, listener

    def remove(self) -> None:
        if self.listener in self.point.listeners:
            self.point.listeners.remove(self.listener)


class HookPoint(nn.Module):
    """An identity module: `hook(x) is x` unless an editor listens. Listeners are added with `listen`."""

    def __init__(self):
        super().__init__()
        self.listeners: list[Listener] = []

    @property
    def active(self) -> bool:
        """True when someone listens here, in this thread or task: used to skip work (such as attention
        probabilities) nobody asked for."""
        return any(x.visible() for x in self.listeners)

    def listen(
        self,
        fn: Callable[[Tensor, HookCall], Tensor | None],
        rows: Rows = None,
        edit: bool = False,
        scope: Scope | None = None,
    ) -> ListenerHandle:
        """Call `fn(x, call)` with the rows `rows` of every tensor passing here (while `scope`, if given, is open in
        the running thread or task); returns a handle to remove it."""
        listener = Listener(fn, rows, edit, scope)
        self.listeners.append(listener)
        return ListenerHandle(self, listener)

    def wanted_rows(self, batch: int) -> slice:
        """The smallest slice of a batch of `batch` rows that covers every listener's rows (empty if none)."""
        spans = [s for s in (x.wants(batch) for x in self.listeners if x.visible()) if s.stop > s.start]
        if not spans:
            return slice(0, 0)
        return slice(min(s.start for s in spans), max(s.stop for s in spans))

    def forward(self, x: Tensor, rows: slice | None = None, batch: int | None = None, queries: slice | None = None):
        """Hand `x` to the listeners. `x` holds rows `rows` (default all) of a batch of `batch` rows (default len(x)),
        and query positions `queries` when it is a chunk of attention probabilities.

        Editors run first, in the order they were added, each on what the one before returned; then the observers,
        which therefore see what the network goes on with (a trace inside an edit records the edited values).
        Returns `x` itself unless an editor returned a replacement."""
        if not self.listeners:
            return x  # all that torch.compile traces when nobody listens; it guards on the list, see `_tell`
        return self._tell(x, rows, batch, queries)

    @torch.compiler.disable
    def _tell(self, x: Tensor, rows: slice | None, batch: int | None, queries: slice | None) -> Tensor:
        """The listeners' part of `forward`, always run eagerly, outside any compiled graph.

        Under `torch.compile`, dynamo guards on `self.listeners` being empty, so adding a listener recompiles once
        (and removing it finds the listener-free graph again). Where someone listens, the graph breaks here and the
        listeners run as plain Python: inlined, they would bake a trace's step counter into the graph and recompile
        at every step."""
        start = 0 if rows is None else rows.start
        batch = start + len(x) if batch is None else batch
        edited = False
        heard = [x for x in self.listeners if x.visible()]
        for listener in sorted(heard, key=lambda item: not item.edit):  # editors first (a stable sort)
            want = listener.wants(batch)
            lo, hi = max(want.start, start) - start, min(want.stop, start + len(x)) - start
            if hi <= lo:
                continue
            out = listener.fn(x[lo:hi], HookCall(slice(start + lo, start + hi), batch, queries))
            if listener.edit and out is not None:
                x, edited = (x, True) if edited else (x.clone(), True)
                x[lo:hi] = out
        return x


# A name, a glob, a module path, a list of those, or a predicate.
Filter = str | Iterable[str] | Callable[[str], bool] | None


class HookNameError(ValueError):
    """A filter matched no hook point. The message lists the closest valid names."""


def _roots(model: Any) -> dict[str, nn.Module]:
    """The named networks to search: a pipeline's `modules()`, a dict of modules, or one module (no prefix)."""
    if hasattr(model, "modules") and not isinstance(model, nn.Module):
        return dict(model.modules())
    if isinstance(model, dict):
        return dict(model)
    if isinstance(model, nn.Module):
        return {"": model}
    raise TypeError(f"expected a pipeline, a dict of modules or a module, got {type(model).__name__}")


def hook_points(model: Any) -> dict[str, HookPoint]:
    """Every hook point of a pipeline (or module), by name, in the order the modules were defined.

    Definition order is also (nearly) the order of the forward pass: the text encoder, the VAE, then the UNet from
    its time embedding through the down path, the middle and the up path to its output.
    """
    points: dict[str, HookPoint] = {}
    for root, module in _roots(model).items():
        for path, m in module.named_modules():
            if isinstance(m, HookPoint):
                points[module_name(root, path)] = m
    return points


def module_name(*paths: str) -> str:
    """A dotted name from module paths, without the `_orig_mod` that `torch.compile(module)` puts in (the wrapper it
    returns holds the module under that name): `unet._orig_mod.hook_out` -> `unet.hook_out`. A hook point's name is
    the same whether its network was compiled in place (`unet.compile()`), wrapped, or not at all."""
    return ".".join(part for path in paths for part in path.split(".") if part and part != "_orig_mod")


def hook_names(model: Any, filter: Filter = None) -> list[str]:
    """The names of a pipeline's hook points (all of them, or those a filter selects).

    >>> hook_names(pipe, "unet.mid_block.*.hook_probs")
    ['unet.mid_block.attentions.0.transformer_blocks.0.attn1.hook_probs',
     'unet.mid_block.attentions.0.transformer_blocks.0.attn2.hook_probs']
    """
    names = list(hook_points(model))
    return names if filter is None else select(names, filter)


def matches(name: str, pattern: str) -> bool:
    """Does `pattern` (a name, a glob, or a module path) select hook point `name`?"""
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern.rstrip(".") + ".*")


def close_names(pattern: str, names: list[str], n: int = 6) -> list[str]:
    """The valid names that look most like a pattern that matched nothing (for error messages)."""
    literal = pattern.replace("*", "").replace("?", "")
    close = difflib.get_close_matches(literal, names, n=n, cutoff=0.4)
    if len(close) < n:  # also the names sharing the longest start with the pattern (a wrong index deep inside)
        best = max((len(_common_prefix(literal, x)) for x in names), default=0)
        close += [x for x in names if len(_common_prefix(literal, x)) == best and x not in close][: n - len(close)]
    return close


def _common_prefix(a: str, b: str) -> str:
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    return a[:i]


def select(names: list[str], filter: Filter, what: str = "hook point") -> list[str]:
    """The names a filter selects, in the order of `names`. Each pattern of the filter must select something.

    Raises HookNameError, listing close valid names, for a pattern (or predicate) that selects nothing.
    """
    if filter is None:
        return list(names)
    if callable(filter):
        chosen = [x for x in names if filter(x)]
        if not chosen:
            raise HookNameError(
                f"the predicate {getattr(filter, '__name__', filter)!r} selects no {what}; "
                f"there are {len(names)}, e.g. {', '.join(names[:4])}"
            )
        return chosen
    patterns = [filter] if isinstance(filter, str) else list(filter)
    if not patterns:
        raise HookNameError(f"an empty list selects no {what}")
    keep: set[str] = set()
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"a filter is a name, a glob, a list of those or a predicate; got {pattern!r}")
        hit = {x for x in names if matches(x, pattern)}
        if not hit:
            close = close_names(pattern, names)
            raise HookNameError(
                f"{pattern!r} matches no {what} (of {len(names)})"
                + (f"; close valid names: {', '.join(close)}" if close else "")
                + ". List them with sdviz.hook_names(pipe)."
            )
        keep |= hit
    return [x for x in names if x in keep]


def select_layers(candidates: list[str], all_names: list[str], filter: Filter, what: str, hint: str = "") -> list[str]:
    """The candidate layers that a `layers=` filter selects (all of them for None): the one way traces, edits and
    interventions choose layers.

    The filter is checked against every hook point first (`all_names`: a typo raises HookNameError with close
    names); then it must select at least one candidate. A candidate is selected when the filter selects its name or a
    hook point below it (a GroupNorm's module path is selected by its `.hook_in` or `.hook_out`).
    """
    if filter is None:
        return list(candidates)
    picked = set(select(all_names, filter))
    below = {name.rsplit(".", 1)[0] for name in picked}
    chosen = [c for c in candidates if c in picked or c in below]
    if not chosen:
        example = close_names(filter if isinstance(filter, str) else str(filter), candidates, n=4)
        hint = f". {hint}" if hint else ""
        raise HookNameError(f"layers={filter!r} selects no {what}; such layers are e.g. {', '.join(example)}{hint}")
    return chosen


@contextmanager
def hooks(
    model: Any, filter: Filter, fn: Callable[[str, Tensor], Any], rows: Rows = None, edit: bool = False
) -> Iterator[list[str]]:
    """Call `fn(name, tensor)` at every hook point the filter selects, for the duration of a `with` block.

    Yields the selected names. The hooks are removed when the block exits, also when it raises. `rows` chooses the
    batch rows `fn` sees (a slice, or a function of the batch size; default all). Attention probabilities of a large
    layer arrive in chunks of query positions, one call each (see `sdviz.models.attention`).

    By default `fn` observes: whatever it returns is dropped and no number changes. With `edit=True`, a tensor it
    returns replaces what it was handed (same shape), and the network goes on with the replacement.
    """
    points = hook_points(model)
    names = select(list(points), filter)
    handles = []
    scope = Scope()
    scope.open()
    try:
        for name in names:
            listener = lambda x, _call, name=name: fn(name, x)  # noqa: E731
            handles.append(points[name].listen(listener, rows=rows, edit=edit, scope=scope))
        yield names
    finally:
        scope.close()
        for h in handles:
            h.remove()

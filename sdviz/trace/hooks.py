"""Named hook points: finding them, choosing them with a filter, and listening to them safely.

Every activation worth seeing passes through a `HookPoint` (an identity module, see `sdviz.models.common`). Its
name is its module path below the pipeline's three networks:

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

The hooks are removed when the block exits, whether the generation finished or raised.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from sdviz.models.common import HookPoint

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
                points[".".join(p for p in (root, path) if p)] = m
    return points


def hook_names(model: Any, filter: Filter = None) -> list[str]:
    """The names of a pipeline's hook points (all of them, or those a filter selects).

    >>> hook_names(pipe, "unet.mid_block.*.hook_probs")
    ['unet.mid_block.attentions.0.transformer_blocks.0.attn1.hook_probs',
     'unet.mid_block.attentions.0.transformer_blocks.0.attn2.hook_probs']
    """
    names = list(hook_points(model))
    return names if filter is None else select(names, filter)


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


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
                + ". List them with sdviz.trace.hook_names(pipe)."
            )
        keep |= hit
    return [x for x in names if x in keep]


@contextmanager
def hooks(model: Any, filter: Filter, fn: Callable[[str, Tensor], Any]) -> Iterator[list[str]]:
    """Call `fn(name, tensor)` at every hook point the filter selects, for the duration of a `with` block.

    Yields the selected names. The hooks are removed when the block exits, also when it raises. `fn` must not
    modify the tensor it is handed: hook points observe, they never change a number.
    """
    points = hook_points(model)
    names = select(list(points), filter)
    handles = []

    def listen(name: str, out: Tensor) -> None:
        fn(name, out)  # whatever fn returns is dropped: a forward hook that returns a value would replace the output

    try:
        for name in names:
            handles.append(points[name].register_forward_hook(lambda _m, _a, out, name=name: listen(name, out)))
        yield names
    finally:
        for h in handles:
            h.remove()

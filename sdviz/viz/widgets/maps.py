"""Word and token attention maps for the widgets: the trace's one reduction, asked for the entries shown, cached.

A widget that redraws on every slider move needs only the handful of prompt entries it shows, for the current step
window, layer (or resolution) and head. `AttentionMaps` asks the trace's one reduction
(`sdviz.tracing.aggregate.token_maps`, the code behind `Trace.word_map` for every method) for those groups of token
positions only, and caches each answer, so a repeated choice costs a look-up. `tests/test_widgets.py` checks that
what it returns is `Trace.word_map` for the same choice.

    maps = AttentionMaps(tr, image=0, size=(64, 64))
    maps.compute([[3], [4, 5]], steps=(10, 20), where=16, head=None)   # (2, 64, 64): two entries, steps 10..20
    maps.per_step([3])                                                 # {step: (64, 64)} for every recorded step
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sdviz.tracing import Trace


def map_size(image_hw: tuple[int, int], cap: int = 128) -> tuple[int, int]:
    """The size the widgets compute attention maps at: the picture's, at most `cap` pixels on the longer side."""
    h, w = image_hw
    f = min(1.0, cap / max(h, w))
    return max(1, round(h * f)), max(1, round(w * f))


class AttentionMaps:
    """Cross-attention maps of groups of token positions for one image of a trace, at `size` (H, W)."""

    def __init__(self, trace: Trace, image: int = 0, size: tuple[int, int] | None = None, cache: int = 32):
        self.trace = trace
        self.rec = trace.cross_attention
        self.image = image
        self.size = tuple(size or trace.image_size)
        self.per_step_kept = "step" in self.rec.keep
        self.heads_kept = "head" in self.rec.keep
        self.layers_kept = "layer" in self.rec.keep
        self._cache: OrderedDict[Any, np.ndarray] = OrderedDict()
        self._cache_size = cache

    # -- what can be chosen ----------------------------------------------------------------------------------------

    @property
    def steps(self) -> list[int]:
        """The recorded step indices."""
        return list(self.rec.steps)

    @property
    def heads(self) -> int:
        """Heads kept apart (0 when the trace summed them)."""
        return max(s.shape[2] for s in self.rec.sums.values()) if self.heads_kept else 0

    def keys(self, where: Any = None) -> list[str]:
        """The record's keys (a resolution or, with keep=["layer"], a layer name) a choice stands for: None (all),
        an int or (h, w) resolution, or a layer name."""
        if isinstance(where, str):
            if where not in self.rec.sums:
                raise KeyError(f"{where!r} is not a recorded layer; recorded: {', '.join(map(str, self.rec.sums))}")
            return [where]
        return self.rec.keys(resolution=where)

    def select(self, steps: tuple[int, int] | None = None, where: Any = None, head: int | None = None) -> dict:
        """A widget's choice as the reduction's `select`: a window (first, last) of step indices, a layer name or a
        resolution, a head."""
        select: dict[str, Any] = {}
        if steps is not None and self.per_step_kept:
            lo, hi = steps
            chosen = [s for s in self.rec.steps if lo <= s <= hi]
            if not chosen:
                raise KeyError(f"no recorded step in {lo}..{hi}; recorded: {self.rec.steps[0]}..{self.rec.steps[-1]}")
            select["steps"] = chosen
        if isinstance(where, str):
            select["layers"] = self.keys(where)
        elif where is not None:
            select["resolution"] = where
        if head is not None:
            select["heads"] = head
        return select

    # -- computing ---------------------------------------------------------------------------------------------------

    def compute(
        self,
        groups: Sequence[Sequence[int]],
        steps: tuple[int, int] | None = None,
        where: Any = None,
        head: int | None = None,
        method: Any = None,
    ) -> np.ndarray:
        """The map of each group of token positions (a group's maps averaged, as `Trace.word_map` averages a word's
        sub-tokens): (len(groups), H, W) float32, over the steps in the window `steps` = (first, last)."""
        groups = tuple(tuple(g) for g in groups)
        key = (groups, steps, where, head, method)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        select = self.select(steps, where, head)
        out = self.trace.position_maps(groups, self.image, self.size, method, **select).numpy()
        self._cache[key] = out
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return out

    def per_step(self, group: Sequence[int], where: Any = None, head: int | None = None) -> dict[int, np.ndarray]:
        """One group's map at every recorded step: {step index: (H, W)} (needs keep=["step"])."""
        if not self.per_step_kept:
            raise KeyError("cross-attention was summed over the steps during the run; trace with keep=['step']")
        out = {}
        for s in self.rec.steps:
            try:
                out[s] = self.compute([group], (s, s), where, head)[0]
            except KeyError:  # nothing recorded at this step for this choice
                continue
        return out

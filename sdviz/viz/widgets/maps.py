"""Word and token attention maps for the widgets, computed only for the prompt entries shown.

`Trace.word_map` upsamples the maps of all 77 token positions and then averages a word's positions; a widget that
redraws on every slider move needs only the handful of entries it shows. `AttentionMaps` computes the same numbers
(DAAM's aggregation: heads and layers summed, each resolution upsampled bilinearly and weighted by the number of
single-head maps it holds) for chosen position groups only, from the record's running sums, and caches them per
selection. `tests/test_widgets.py` checks that they equal `Trace.word_map`.

    maps = AttentionMaps(tr, image=0, size=(64, 64))
    maps.compute([[3], [4, 5]], steps=(10, 20), where=16, head=None)   # (2, 64, 64): two entries, steps 10..20
    maps.per_step([3])                                                 # {step: (64, 64)} for every recorded step
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as Fn


def map_size(image_hw: tuple[int, int], cap: int = 128) -> tuple[int, int]:
    """The size the widgets compute attention maps at: the picture's, at most `cap` pixels on the longer side."""
    h, w = image_hw
    f = min(1.0, cap / max(h, w))
    return max(1, round(h * f)), max(1, round(w * f))


class AttentionMaps:
    """Cross-attention maps of groups of token positions for one image of a trace, at `size` (H, W)."""

    def __init__(self, trace: Any, image: int = 0, size: tuple[int, int] | None = None, cache: int = 32):
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
        keys = list(self.rec.sums)
        if where is None:
            return keys
        if isinstance(where, str):
            if where not in keys:
                raise KeyError(f"{where!r} is not a recorded layer; recorded: {', '.join(map(str, keys))}")
            return [where]
        hw = (where, where) if isinstance(where, int) else tuple(where)
        picked = [k for k in keys if tuple(self.rec.grid[k]) == hw]
        if not picked:
            raise KeyError(f"no cross-attention layer at resolution {hw}; recorded: {self.rec.resolutions}")
        return picked

    # -- computing ---------------------------------------------------------------------------------------------------

    def _slots(self, steps: tuple[int, int] | None) -> slice:
        """The record's step slots a window (first, last) of step indices covers (all when steps were summed)."""
        if steps is None or not self.per_step_kept:
            return slice(None)
        lo, hi = steps
        slots = [i for i, s in enumerate(self.rec.steps) if lo <= s <= hi]
        if not slots:
            raise KeyError(f"no recorded step in {lo}..{hi}; recorded: {self.rec.steps[0]}..{self.rec.steps[-1]}")
        return slice(slots[0], slots[-1] + 1)

    def _reduce(self, key: str, slots: slice, head: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(sums over heads (S, n, m), number of single-head maps in each (S,)) of one key, for the chosen slots."""
        sums = self.rec.sums[key][slots, self.image]  # (S, H, n, m)
        counts = self.rec.counts[key][slots, self.image].float()  # (S,)
        if head is not None:
            if not self.heads_kept:
                raise KeyError("cross-attention was summed over heads during the run; trace with keep=['head']")
            return sums[:, head].float(), counts
        return sums.float().sum(1), counts * (sums.shape[1] if self.heads_kept else 1)

    def _upsample(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """(..., n) maps on an (h, w) grid -> (..., H, W), bilinear as `AttentionRecord.combined`."""
        lead = x.shape[:-1]
        up = Fn.interpolate(x.reshape(-1, 1, *hw), size=self.size, mode="bilinear", align_corners=False)
        return up.reshape(*lead, *self.size)

    def compute(
        self,
        groups: Sequence[Sequence[int]],
        steps: tuple[int, int] | None = None,
        where: Any = None,
        head: int | None = None,
    ) -> np.ndarray:
        """The map of each group of token positions (a group's maps averaged, as `Trace.word_map` averages a word's
        sub-tokens): (len(groups), H, W) float32, summed over the steps in the window `steps` = (first, last)."""
        cache_key = (tuple(tuple(g) for g in groups), steps, where, head)
        if cache_key in self._cache:
            self._cache.move_to_end(cache_key)
            return self._cache[cache_key]
        slots = self._slots(steps)
        total, weight = None, 0.0
        for key in self.keys(where):
            sums, counts = self._reduce(key, slots, head)
            c = float(counts.sum())
            if c == 0:
                continue
            s = sums.sum(0)  # (S, n, m) -> (n, m)
            entries = torch.stack([s[:, list(g)].mean(-1) for g in groups])  # (E, n)
            up = self._upsample(entries, tuple(self.rec.grid[key]))  # (E, H, W)
            total = up if total is None else total + up
            weight += c
        if total is None:
            raise KeyError("nothing of the cross-attention was recorded for this choice")
        out = (total / weight).numpy()
        self._cache[cache_key] = out
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return out

    def per_step(self, group: Sequence[int], where: Any = None, head: int | None = None) -> dict[int, np.ndarray]:
        """One group's map at every recorded step: {step index: (H, W)} (needs keep=["step"])."""
        if not self.per_step_kept:
            raise KeyError("cross-attention was summed over the steps during the run; trace with keep=['step']")
        total, weight = None, None
        for key in self.keys(where):
            sums, counts = self._reduce(key, slice(None), head)  # (S, n, m), (S,)
            up = self._upsample(sums[:, :, list(group)].mean(-1), tuple(self.rec.grid[key]))  # (S, H, W)
            total = up if total is None else total + up
            weight = counts if weight is None else weight + counts
        maps = (total / weight.clamp(min=1e-12)[:, None, None]).numpy()
        return {s: maps[i] for i, s in enumerate(self.rec.steps) if float(weight[i]) > 0}

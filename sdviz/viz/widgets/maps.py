"""Word and token attention maps for the widgets, computed only for the prompt entries shown.

`Trace.word_map` upsamples the maps of all 77 token positions and then averages a word's positions; a widget that
redraws on every slider move needs only the handful of entries it shows. `AttentionMaps` computes the same numbers
(`word_map`'s default method "sdviz", close to DAAM's but not the same, see `sdviz.tracing.aggregate`: heads and
layers summed, each resolution upsampled bilinearly and weighted by the number of single-head maps it holds) for the
chosen groups of positions only. It keeps, once, running sums over the steps of those few columns, so that any
window of steps costs one subtraction per layer, and caches the maps per choice.
`tests/test_widgets.py` checks that they equal `Trace.word_map`.

    maps = AttentionMaps(tr, image=0, size=(64, 64))
    maps.compute([[3], [4, 5]], steps=(10, 20), where=16, head=None)   # (2, 64, 64): two entries, steps 10..20
    maps.per_step([3])                                                 # {step: (64, 64)} for every recorded step
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from sdviz.tracing import Trace


@lru_cache(maxsize=64)
def bilinear_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-D bilinear resampling as torch's `interpolate(mode="bilinear", align_corners=False)` does it: output i reads
    the input at (i + 0.5) * n_in / n_out - 0.5, clamped at the edges. Returns (i0, i1, weight of i1)."""
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
    return i0, np.minimum(i0 + 1, n_in - 1), src - i0


def upsample(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Maps (..., h, w) -> (..., H, W), bilinear (torch's align_corners=False), with gathers and weighted sums only:
    no BLAS or thread pool to wake for a few thousand numbers (on a busy machine that costs more than the work)."""
    y0, y1, fy = bilinear_weights(grid.shape[-2], size[0])
    x0, x1, fx = bilinear_weights(grid.shape[-1], size[1])
    rows = grid[..., y0, :] * (1 - fy)[:, None] + grid[..., y1, :] * fy[:, None]  # (..., H, w)
    return rows[..., x0] * (1 - fx) + rows[..., x1] * fx  # (..., H, W)


def map_size(image_hw: tuple[int, int], cap: int = 128) -> tuple[int, int]:
    """The size the widgets compute attention maps at: the picture's, at most `cap` pixels on the longer side."""
    h, w = image_hw
    f = min(1.0, cap / max(h, w))
    return max(1, round(h * f)), max(1, round(w * f))


class AttentionMaps:
    """Cross-attention maps of groups of token positions for one image of a trace, at `size` (H, W)."""

    def __init__(self, trace: Trace, image: int = 0, size: tuple[int, int] | None = None, cache: int = 32):
        self.rec = trace.cross_attention
        self.image = image
        self.size = tuple(size or trace.image_size)
        self.per_step_kept = "step" in self.rec.keep
        self.heads_kept = "head" in self.rec.keep
        self.layers_kept = "layer" in self.rec.keep
        self._cache: OrderedDict[Any, np.ndarray] = OrderedDict()
        self._columns_of: tuple[Any, dict] | None = None  # (groups, running sums per key) of the last groups asked
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

    def _slots(self, steps: tuple[int, int] | None) -> tuple[int, int]:
        """The record's step slots [start, stop) a window (first, last) of step indices covers (all of them when the
        steps were summed during the run)."""
        if steps is None or not self.per_step_kept:
            return 0, len(self.rec.steps) if self.per_step_kept else 1
        lo, hi = steps
        slots = [i for i, s in enumerate(self.rec.steps) if lo <= s <= hi]
        if not slots:
            raise KeyError(f"no recorded step in {lo}..{hi}; recorded: {self.rec.steps[0]}..{self.rec.steps[-1]}")
        return slots[0], slots[-1] + 1

    def _columns(self, groups: tuple[tuple[int, ...], ...]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per key, running sums over the step slots of each group's mean column: ((S + 1, H, n, E), (S + 1,)) in
        float64, so that any window of steps is one subtraction. Made once per set of groups (a few columns of the
        77, so a fraction of the record's size)."""
        if self._columns_of is not None and self._columns_of[0] == groups:
            return self._columns_of[1]
        out = {}
        for key, sums in self.rec.sums.items():
            x = sums[:, self.image]  # (S, H, n, m)
            cols = torch.stack([x[..., list(g)].double().mean(-1) for g in groups], -1)  # (S, H, n, E)
            zero = torch.zeros(1, *cols.shape[1:], dtype=torch.float64)
            counts = self.rec.counts[key][:, self.image].double()  # (S,)
            out[key] = (torch.cat([zero, cols.cumsum(0)]), torch.cat([counts.new_zeros(1), counts.cumsum(0)]))
        self._columns_of = (groups, out)
        return out

    def _upsample(self, x: torch.Tensor, hw: tuple[int, int]) -> np.ndarray:
        """(..., n) maps on an (h, w) grid -> (..., H, W) float64, bilinear as `AttentionRecord.combined`."""
        return upsample(x.double().numpy().reshape(*x.shape[:-1], *hw), self.size)

    def compute(
        self,
        groups: Sequence[Sequence[int]],
        steps: tuple[int, int] | None = None,
        where: Any = None,
        head: int | None = None,
    ) -> np.ndarray:
        """The map of each group of token positions (a group's maps averaged, as `Trace.word_map` averages a word's
        sub-tokens): (len(groups), H, W) float32, summed over the steps in the window `steps` = (first, last)."""
        groups = tuple(tuple(g) for g in groups)
        cache_key = (groups, steps, where, head)
        if cache_key in self._cache:
            self._cache.move_to_end(cache_key)
            return self._cache[cache_key]
        if head is not None and not self.heads_kept:
            raise KeyError("cross-attention was summed over heads during the run; trace with keep=['head']")
        a, b = self._slots(steps)
        columns = self._columns(groups)
        total, weight = None, 0.0
        for key in self.keys(where):
            sums, counts = columns[key]
            s = sums[b] - sums[a]  # (H, n, E): summed over the window's steps
            c = float(counts[b] - counts[a])  # single-head maps per head (kept heads) or in all (summed heads)
            if head is not None:
                s = s[head]
            else:
                s, c = s.sum(0), c * (s.shape[0] if self.heads_kept else 1)
            if c == 0:
                continue
            up = self._upsample(s.T, tuple(self.rec.grid[key]))  # (E, n) -> (E, H, W)
            total = up if total is None else total + up
            weight += c
        if total is None:
            raise KeyError("nothing of the cross-attention was recorded for this choice")
        out = (total / weight).astype(np.float32)
        self._cache[cache_key] = out
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return out

    def per_step(self, group: Sequence[int], where: Any = None, head: int | None = None) -> dict[int, np.ndarray]:
        """One group's map at every recorded step: {step index: (H, W)} (needs keep=["step"])."""
        if not self.per_step_kept:
            raise KeyError("cross-attention was summed over the steps during the run; trace with keep=['step']")
        if head is not None and not self.heads_kept:
            raise KeyError("cross-attention was summed over heads during the run; trace with keep=['head']")
        total, weight = None, None
        for key in self.keys(where):
            x = self.rec.sums[key][:, self.image][..., list(group)].float().mean(-1)  # (S, H, n, m) -> (S, H, n)
            counts = self.rec.counts[key][:, self.image].float()  # (S,)
            if head is not None:
                x = x[:, head]
            else:
                x, counts = x.sum(1), counts * (x.shape[1] if self.heads_kept else 1)
            up = self._upsample(x, tuple(self.rec.grid[key]))  # (S, n) -> (S, H, W)
            total = up if total is None else total + up
            weight = counts if weight is None else weight + counts
        maps = (total / weight.double().clamp(min=1e-12).numpy()[:, None, None]).astype(np.float32)
        return {s: maps[i] for i, s in enumerate(self.rec.steps) if float(weight[i]) > 0}

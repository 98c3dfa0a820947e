"""Word maps from a trace's cross-attention: the aggregators, each named, each measured against ground truth.

A word map says where in the picture a prompt word was attended to. The trace holds the raw material, attention
probabilities (summed, or kept per step, layer and head); an *aggregator* turns it into one map per token. The
published recipes differ in which layers, heads and steps they read, how they upsample, and what they do after, and
those choices move the maps' agreement with true object masks by tens of points (`sdviz validate-attention
--ladder` measures each on the toy world). sdviz names them:

    "sdviz"  sdviz's original reduction: every cross-attention layer (the 8x8 mid block too), summed per resolution
             while the run streams, upsampled bilinearly straight to the picture, averaged over heads, layers, steps.
    "daam"   DAAM 0.2.0's computation (Tang et al. 2022, "What the DAAM", castorini/daam: `trace.py`,
             `heatmap.py`, `utils.py`): see `DAAM` below. Needs a trace with keep=["layer", "head"]. It averages
             the bicubic maps on the latent grid. DAAM itself averages them on a 64x64 grid when the pipeline's
             default picture size is 512 or 1024 pixels, and on a 96x96 grid for any other default size: the two are
             equal exactly when DAAM's grid is the latent grid (SD 1.x generating 512x512). `DAAM.with_(grid=96)`
             follows DAAM's rule for a model whose default size is not 512 or 1024 (the embedded model: 64 pixels).
    "best"   the recipe that measured best on the toy world's ground truth (`BEST`: DAAM's maps of the last quarter
             of the steps, from the heads chosen on training scenes, propagated by one layer's self-attention and
             gated by the seed). It names layers and heads of the embedded model, so it applies to that model only.

and any `Aggregator(...)` (`sdviz.tracing.methods`: the recipes and their knobs) is a recipe of your own. The
default (`method=None`) is "sdviz": it works on any weights from a default trace of a few MB, where "best" is the toy
model's own and costly to record at SD 1.5's sizes. This module is the one reduction that applies a recipe to the
records (`token_maps`): `Trace.word_map`, every figure and every widget go through it.

"daam" is checked against DAAM 0.2.0's own functions fed the same probabilities (`benchmarks/daam_reference.py`:
largest relative difference 5e-7 over 20 word maps). Differences of "sdviz" from DAAM 0.2.0 (together rows 0 and 1
of `--ladder`; mean Pearson r of the two word maps 0.96):

1. Layers: sdviz reads every cross-attention layer; DAAM's locator skips the mid block (and any layer whose grid is
   1/8 of the latent side). The toy model's 8x8 mid block holds a large share of the attention mass and its maps
   agree poorly with the other layers'.
2. Upsampling: sdviz sums the maps of a resolution and upsamples the sum bilinearly to the picture. DAAM upsamples
   each (layer, head) map, summed over steps, bicubically to the latent grid, clamps negatives (bicubic undershoot) to
   0, averages, and upsamples the word's map bicubically again to the picture.
3. Steps: sdviz averages over steps, DAAM sums (a constant factor: normalised maps are equal).
4. Token positions: sdviz averages the tokens of a prompt *word* (all its occurrences); DAAM averages every match
   of the word's token sequence in the prompt's tokens, so "an" also matches the second token of "cyan" (cy|an).
5. Storage: sdviz's default trace streams per-resolution sums (a few MB for SD 1.5), DAAM keeps every (layer, head).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sdviz.hooks import matches
from sdviz.tokenizer import Encoding, Tokenizer
from sdviz.tracing.methods import BEST, DAAM, METHODS, SDVIZ, Aggregator, get, needs_of  # noqa: F401  (re-exported)
from sdviz.tracing.records import AttentionRecord, SelfAttentionRecord, ranges, step_list

# --------------------------------------------------------------------------------------------------------------------
# Reading the record
# --------------------------------------------------------------------------------------------------------------------


def block_of(layer: str) -> str | None:
    """The block kind of a UNet hook name: unet.down_blocks.0...attn2.hook_probs -> "down" (or "mid", "up")."""
    parts = layer.split(".")
    kind = parts[1] if len(parts) > 1 and parts[0] == "unet" else ""
    return {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"}.get(kind)


def layer_chosen(layer: str, hw: tuple[int, int], layers: Any, latent_hw: tuple[int, int]) -> bool:
    """Does a layer spec ("all", "daam", block kinds, grid sides, hook globs) choose this layer?"""
    if layers == "all":
        return True
    if layers == "daam":  # DAAM's locator (down and up blocks), and its skip of layers at 1/8 of the latent side
        factor = int((latent_hw[0] * latent_hw[1] // (hw[0] * hw[1])) ** 0.5)
        return block_of(layer) in ("down", "up") and factor != 8
    items = (layers,) if isinstance(layers, (str, int)) else tuple(layers)
    for item in items:
        if isinstance(item, int) and hw[0] == item:
            return True
        if isinstance(item, str) and (item == block_of(layer) or matches(layer, item)):
            return True
    return False


@dataclass
class Cell:
    """One summed map: a (layer, head) of a trace that kept both, or a coarser sum (a resolution, all heads).

    `sums` is (m, n), the sum of `maps` single (layer, head, step) maps; `layer` its layer name (or the resolution
    key when layers were summed during the run)."""

    layer: str
    head: int | None
    hw: tuple[int, int]
    sums: Tensor
    maps: float
    group: int = 0  # which step group (with `per_step`: the step's slot)


def window_steps(window: tuple[float, float], n: int) -> list[int]:
    """The step indices of a window of a generation of n steps: lo * n <= s < hi * n; when that holds no step (a
    short generation), the step at lo * n."""
    lo, hi = window
    return [s for s in range(n) if lo * n <= s < hi * n] or [min(n - 1, int(lo * n))]


def _window(rec: AttentionRecord, window: tuple[float, float], steps: Any) -> list[int]:
    """Slots of the record holding the steps of a window (fractions of the generation), or of an explicit `steps=`
    choice, which replaces the window (a figure of one step asks for that step whatever the method's window)."""
    n = rec.num_steps
    if steps is not None:
        wanted = set(step_list(steps, n))
    else:
        wanted = set(window_steps(window, n))
    if "step" not in rec.keep:
        if (steps is None and window == (0.0, 1.0)) or wanted == set(rec.steps):
            return [0]  # every recorded step, summed during the run
        raise KeyError(
            f"cross_attention was summed over steps {ranges(rec.steps)} during the run; this map wants steps "
            f"{ranges(sorted(wanted))}: trace with keep=['step'] (or steps=...)"
        )
    slots = [i for i, s in enumerate(rec.steps) if s in wanted]
    if not slots:
        raise KeyError(f"no recorded step among {ranges(sorted(wanted))} (recorded: {ranges(rec.steps)})")
    return slots


def _need_keep(rec: AttentionRecord, axes: Iterable[str], why: str) -> None:
    missing = sorted(set(axes) - set(rec.keep))
    if missing:
        raise KeyError(f"{why} needs cross-attention kept per {', '.join(missing)}: trace with keep={sorted(missing)}")


def cells(
    rec: AttentionRecord,
    image: int,
    agg: Aggregator,
    latent_hw: tuple[int, int],
    steps: Any = None,
    layers: Any = None,
    resolution: Any = None,
    heads: Any = None,
    per_step: bool = False,
    columns: list[int] | None = None,
) -> list[Cell]:
    """The record's maps an aggregator reads for one image, summed over the window's steps (one cell per step with
    `per_step`). `steps`, `layers`, `resolution`, `heads` narrow the choice further, as in `Trace.word_map`;
    `columns` keeps only those token positions (a cell's `sums` is then (len(columns), n))."""
    if agg.heads is not None or agg.upsample == "bicubic":
        _need_keep(rec, ("layer", "head"), f"the {agg.name!r} word map")
    slots = _window(rec, agg.window, steps)
    keys = rec.keys(layers, resolution)  # the record's own checks of layers= and resolution=
    chosen_heads = None if agg.heads is None else {}
    for layer, h in agg.heads or ():
        chosen_heads.setdefault(layer, set()).add(h)
    cols = slice(None) if columns is None else columns
    out = []
    for key in keys:
        hw = rec.grid[key]
        names = [key] if "layer" in rec.keep else [a for a, k in rec.key_of.items() if k == key]
        if not any(layer_chosen(a, hw, agg.layers, latent_hw) for a in names):
            continue
        if "layer" not in rec.keep and not all(layer_chosen(a, hw, agg.layers, latent_hw) for a in names):
            _need_keep(rec, ("layer",), f"layers={agg.layers!r}")
        sums, counts = rec.sums[key][:, image], rec.counts[key][:, image]  # (S, H, n, m), (S,)
        if "head" in rec.keep:
            hs = range(sums.shape[1]) if heads is None else ([heads] if isinstance(heads, int) else list(heads))
            if chosen_heads is not None:
                hs = [h for h in hs if h in chosen_heads.get(key, ())]
        else:
            if heads is not None:
                raise KeyError("cross_attention was summed over heads during the run; trace with keep=['head']")
            hs = [None]
        groups = [[s] for s in slots] if per_step else [slots]
        for h in hs:
            for gi, g in enumerate(groups):
                if float(counts[g].sum()) == 0:
                    continue
                x = sums[g, 0 if h is None else h][..., cols].float().sum(0)  # (len(g), n, m) -> (n, m')
                out.append(Cell(key, h, hw, x.T, float(counts[g].sum()), gi))
    if not out:
        raise KeyError(f"the {agg.name!r} word map chose no recorded cross-attention map")
    return out


# --------------------------------------------------------------------------------------------------------------------
# Token positions
# --------------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _tokenizer() -> Tokenizer:
    return Tokenizer()


def daam_positions(tokens: list[str], word: str) -> list[int]:
    """DAAM's token positions of a word (`daam.utils.compute_token_merge_indices`): every place where the word's
    own token sequence occurs in the prompt's tokens (`tokens`, start token first), all its tokens, in order."""
    e = _tokenizer().encode(word.lower())
    search = e.tokens[1 : e.length - 1]
    body = tokens[1:]  # DAAM tokenises the prompt without the start token and adds 1 to every index
    starts = [i for i in range(len(body)) if body[i : i + len(search)] == search] if search else []
    positions = [s + i + 1 for s in starts for i in range(len(search))]
    if not positions:
        raise KeyError(f"{word!r}: its tokens {search} do not occur in the prompt's tokens {tokens[1:]}")
    return positions


def word_token_positions(encoding: Encoding) -> list[int]:
    """The positions of the prompt's word tokens: not the start or end token, not padding."""
    return [p for p, w in enumerate(encoding.word_index) if w >= 0]


def positions(encoding: Encoding, word: str | int, agg: Aggregator) -> list[int]:
    """A word's token positions under an aggregator's rule (sdviz: the word's tokens, `Encoding.positions`; DAAM:
    token matching)."""
    if agg.positions == "daam" and isinstance(word, str):
        return daam_positions(encoding.tokens[: encoding.length], word)
    return encoding.positions(word)


# --------------------------------------------------------------------------------------------------------------------
# Aggregating
# --------------------------------------------------------------------------------------------------------------------


def _resize(x: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """(1, m, h, w) -> (1, m, *size); no work when the size is already right."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def projection_cells(cs: list[Cell], values: dict[str, Tensor], image: int, words: list[int]) -> list[Cell]:
    """ConceptAttention's output-space maps: per layer and step group, the score o . v_s of every pixel for every
    word token s, summed over the heads read, then a softmax over the word tokens at every pixel.

    `cs` are per-(layer, head, step group) cells. A head's attention output is o = P V exactly (no dropout), so
    o . v_s = (P G)_s with G = V V^T the (M, M) Gram matrix of the token values: computed from the probabilities
    and the values the trace kept, no output needed. A group of several steps uses its mean probabilities."""
    scores: dict[tuple[str, int], Cell] = {}
    grams: dict[tuple[str, int], Tensor] = {}
    for c in cs:
        if c.head is None:
            raise KeyError("the output-space projection needs cross-attention kept per head: keep=['layer', 'head']")
        if c.layer not in values:
            raise KeyError(f"the output-space projection needs the values of {c.layer}; this trace kept none")
        if (c.layer, c.head) not in grams:
            v = values[c.layer][image, c.head].float()  # (M, d)
            grams[(c.layer, c.head)] = v @ v.T  # (M, M)
        s = grams[(c.layer, c.head)] @ (c.sums / c.maps)  # (M, M) @ (M, n) -> (M, n): o_i . v_s for every s, i
        key = (c.layer, c.group)
        if key in scores:
            scores[key].sums += s
        else:
            scores[key] = Cell(c.layer, None, c.hw, s, 1.0, c.group)
    for c in scores.values():
        z = torch.zeros_like(c.sums)
        z[words] = c.sums[words].softmax(0)  # at every pixel, the word tokens share 1
        c.sums = z
    return list(scores.values())


def combine(cs: list[Cell], agg: Aggregator, size: tuple[int, int]) -> Tensor:
    """Cells -> one map per token (column) at `size`: (m, *size)."""
    if agg.upsample == "bicubic":  # DAAM: each cell bicubically to `size`, clamped at 0, then the mean of the cells
        ups = []
        for c in cs:
            x = c.sums if agg.step_reduction == "sum" else c.sums / c.maps
            up = F.interpolate(x.reshape(x.shape[0], 1, *c.hw), size=size, mode="bicubic", align_corners=False)
            ups.append(up.clamp_(min=0))
        return torch.stack(ups).mean(0)[:, 0]  # (cells, m, 1, h, w) -> (m, h, w)
    total: dict[tuple[int, int], Tensor] = {}
    weight = 0.0
    for c in cs:  # sum per resolution, then upsample each sum once (bilinear interpolation is linear)
        total[c.hw] = total[c.hw] + c.sums if c.hw in total else c.sums.clone()
        weight += c.maps
    out = sum(_resize(x.reshape(1, x.shape[0], *hw), size, "bilinear")[0] for hw, x in total.items())  # (m, *size)
    if agg.step_reduction == "sum":
        return out / len(cs)
    return out / weight


def self_attention_matrix(
    rec: SelfAttentionRecord,
    image: int,
    latent_hw: tuple[int, int],
    window: tuple[float, float] = (0.0, 1.0),
    layers: Any = "all",
) -> tuple[Tensor, tuple[int, int]]:
    """The mean self-attention (n, n) over the steps of a window (fractions of the generation) of the chosen layers
    (a spec as `Aggregator.layers`) of the finest grid among them, and that grid. Rows sum to 1: row i is where
    pixel i looked."""
    chosen = [k for k in rec.sums if layer_chosen(k, rec.grid[k], layers, latent_hw)]
    if not chosen:
        raise KeyError(f"self_layers={layers!r} chooses no recorded self-attention layer (recorded: {list(rec.sums)})")
    grid = max((rec.grid[k] for k in chosen), key=lambda hw: hw[0] * hw[1])
    keys = [k for k in chosen if rec.grid[k] == grid]
    steps = None
    if window != (0.0, 1.0):
        steps = [s for s in window_steps(window, rec.num_steps) if s in rec.steps]
        if "step" not in rec.keep:
            raise KeyError(
                "self_attention was summed over steps during the run; trace with keep={'self_attention': ['step']}"
            )
        if not steps:
            raise KeyError(f"no recorded self-attention step in the window {window}")
    a = sum(rec.map(k, image, steps=steps) for k in keys) / len(keys)
    return a, tuple(grid)


def token_maps(
    cross: AttentionRecord,
    encoding: Encoding,
    size: tuple[int, int],
    latent_hw: tuple[int, int],
    image: int = 0,
    method: str | Aggregator | None = None,
    self_attention: SelfAttentionRecord | None = None,
    model: str | None = None,
    groups: Sequence[Sequence[int]] | None = None,
    **select: Any,
) -> Tensor:
    """The one reduction from attention records to word maps: every token position's map under an aggregator, at
    `size`: (77, H, W); or, with `groups` (lists of token positions), each group's mean map: (len(groups), H, W),
    computing only the positions the groups name (what a widget that redraws on every slider move needs).

    It reads records, not a trace: `cross` (the cross-attention record), `encoding` (the prompt's tokens of image
    `image`), `latent_hw` (the latent grid, for layer choices relative to it), `self_attention` (for recipes that
    propagate), `model` (the configuration's name, for recipes that name one model's heads). `select` narrows the
    maps read, as in `Trace.word_map`: steps= (step indices; replaces the recipe's window), layers=, resolution=,
    heads=."""
    agg = get(method)
    size = tuple(size)
    if agg.model is not None and model != agg.model:
        raise KeyError(
            f"the {agg.name!r} word map names layers and heads of the {agg.model!r} model, not of this trace's "
            f"{model!r}: use 'daam', or choose your own (sdviz validate-attention --ladder)"
        )
    grid_hw = tuple(latent_hw) if agg.grid == "latent" else (agg.grid, agg.grid)  # where DAAM's maps are averaged
    words = word_token_positions(encoding)
    every_word = agg.source == "output" or (agg.renormalise and agg.source == "probs")  # need all word tokens
    columns = None if groups is None or every_word else sorted({p for g in groups for p in g})
    if agg.source == "output":
        _need_keep(cross, ("layer", "head"), "the output-space projection")
        cs = cells(cross, image, agg, grid_hw, per_step=True, **select)
        cs = projection_cells(cs, cross.values, image, words)
    else:
        cs = cells(cross, image, agg, grid_hw, columns=columns, **select)
    if agg.propagate:
        if self_attention is None:
            raise KeyError(
                f"this trace did not record 'self_attention', which the {agg.name!r} word map propagates by: "
                "trace with sdviz.trace(pipe, **agg.needs())"
            )
        a, grid = self_attention_matrix(self_attention, image, latent_hw, agg.self_window, agg.self_layers)
        work = grid
    else:
        a, work = None, (grid_hw if agg.upsample == "bicubic" else size)
    maps = combine(cs, agg, work)  # (m, h, w)
    if agg.renormalise and agg.source == "probs":  # DAAM's normalize=True: words share each pixel
        maps = maps / (maps[words].sum(0, keepdim=True) + 1e-6)
    if a is not None:
        seed = maps.reshape(maps.shape[0], -1)  # (m, n)
        flat = seed
        for _ in range(agg.propagate):
            flat = flat @ a.T  # m'[i] = sum_j A[i, j] m[j]: each pixel averages the pixels it attends to
        if agg.gate:  # keep the seed's choice of object, take the propagated map's shape
            flat = flat * seed.clamp(min=0) ** agg.gate
        maps = flat.reshape(maps.shape)
    mode = "bicubic" if agg.upsample == "bicubic" else "bilinear"
    maps = _resize(maps[None], size, mode)[0].cpu()  # (m, H, W)
    if groups is None:
        return maps
    index = {p: i for i, p in enumerate(columns)} if columns is not None else None
    rows = [[index[p] for p in g] if index is not None else list(g) for g in groups]
    return torch.stack([maps[r].mean(0) for r in rows])  # (len(groups), H, W)

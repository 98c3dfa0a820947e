"""Word maps from a trace's cross-attention: the aggregators, each named, each measured against ground truth.

A word map says where in the picture a prompt word was attended to. The trace holds the raw material, attention
probabilities (summed, or kept per step, layer and head); an *aggregator* turns it into one map per token. The
published recipes differ in which layers, heads and steps they read, how they upsample, and what they do after, and
those choices move the maps' agreement with true object masks by tens of points (`sdviz validate-attention
--ladder` measures each on the toy world). sdviz names them:

    "sdviz"  sdviz's original reduction: every cross-attention layer (the 8x8 mid block too), summed per resolution
             while the run streams, upsampled bilinearly straight to the picture, averaged over heads, layers, steps.
    "daam"   DAAM 0.2.0's computation, exactly (Tang et al. 2022, "What the DAAM", castorini/daam: `trace.py`,
             `heatmap.py`, `utils.py`): see `DAAM` below. Needs a trace with keep=["layer", "head"].
    "best"   the recipe that measured best on the toy world's ground truth (`BEST`: DAAM's maps of the last quarter
             of the steps, from the heads chosen on training scenes, propagated by one layer's self-attention and
             gated by the seed). It names layers and heads of the embedded model, so it applies to that model only.

and any `Aggregator(...)` is a recipe of your own. The default (`method=None`) is "sdviz": it works on any weights
from a default trace of a few MB, where "best" is the toy model's own and costly to record at SD 1.5's sizes (see
`get`). "best" needs `sdviz.trace(pipe, **aggregate.BEST.needs())`. Each knob is a published trick:

    renormalise   divide every token's map by the sum of the prompt's *word* tokens' maps (start token and padding
                  excluded), so that at each pixel the words share 1: DAAM's `normalize=True`, and the softmax over
                  concept tokens of ConceptAttention (Helbling et al. 2025), which it equals for one map.
    layers        which layers: "all", "daam" (DAAM's locator: the down and up blocks, not the mid block), block kinds
                  ("down", "mid", "up"), grid sides (16, 8) or hook-name globs.
    steps         a window of the denoising, as fractions of the steps: (0.0, 0.5) is the first half. An explicit
                  `steps=` of `word_map` replaces it.
    heads         the (layer, head) pairs to read, e.g. the best half chosen on training scenes (head selection, as in
                  ConceptAttention's ablations: about 2 points on real data).
    source        "probs" (attention probabilities) or "output": ConceptAttention's projection in the attention's
                  *output* space. A pixel's attention output is o = sum_t p_t v_t (per head, before `to_out`); its
                  score for token s is o . v_s = (P G)_s with G = V V^T the tokens' value Gram matrix, summed over the
                  heads read, then a softmax over the word tokens per layer and step. Needs keep=["layer", "head"]
                  (and "step" for a softmax per step, as the paper's), and the values, which such a trace keeps.
    propagate     passes of self-attention propagation (DiffSegmenter, Wang et al. 2023; iSeg, Sun et al. 2024): the
                  map m becomes A m, with A the self-attention (row i: where pixel i looked) of the finest grid's
                  layers `self_layers`, averaged over their heads and the steps `self_steps`. A pixel takes the map's
                  value of the pixels it attends to, which gives the objects' sharp outlines.
    gate          the propagated map times the seed to this power, (A m) * m^gate: in the toy model a pixel attends
                  to every object's pixels alike (objectness, not identity), so propagation alone spreads a noun
                  over both objects of a scene; the seed keeps the choice of object (sdviz's own, measured).
    upsample      "bilinear": sum per resolution, upsample bilinearly (sdviz); "bicubic": every (layer, head) map to
                  the latent grid bicubically, clamp at 0, average, then bicubic to the picture (DAAM).

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
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from sdviz.tracing import Trace

UPSAMPLES = ("bilinear", "bicubic")
SOURCES = ("probs", "output")


@dataclass(frozen=True)
class Aggregator:
    """A recipe for word maps; see the module docstring for each field. Frozen: change one with `.with_(...)`."""

    name: str = "custom"
    layers: str | tuple[str | int, ...] = "all"
    steps: tuple[float, float] = (0.0, 1.0)
    heads: tuple[tuple[str, int], ...] | None = None
    source: str = "probs"
    renormalise: bool = False
    propagate: int = 0
    self_steps: tuple[float, float] = (0.0, 1.0)  # the steps whose self-attention propagates (fractions)
    self_layers: str | tuple[str | int, ...] = "all"  # which self-attention layers of the finest grid propagate
    gate: float = 0.0  # multiply the propagated map by the seed to this power (0: no gate)
    upsample: str = "bilinear"
    step_reduction: str = "mean"  # "sum": DAAM sums over steps (a constant factor per map)
    positions: str = "words"  # "daam": DAAM's token-sequence matching
    threshold: float = 0.4  # where `validate-attention` binarises its min-max normalised map
    model: str | None = None  # the configuration whose layers and heads the recipe names (None: any model)
    note: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.upsample not in UPSAMPLES:
            raise ValueError(f"upsample must be one of {', '.join(UPSAMPLES)}, not {self.upsample!r}")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, not {self.source!r}")
        if self.step_reduction not in ("mean", "sum"):
            raise ValueError(f"step_reduction must be 'mean' or 'sum', not {self.step_reduction!r}")
        if self.positions not in ("words", "daam"):
            raise ValueError(f"positions must be 'words' or 'daam', not {self.positions!r}")
        a, b = self.steps
        if not 0.0 <= a < b <= 1.0:
            raise ValueError(f"steps must be a window (start, stop) with 0 <= start < stop <= 1, not {self.steps}")
        a, b = self.self_steps
        if not 0.0 <= a < b <= 1.0:
            raise ValueError(f"self_steps must be a window with 0 <= start < stop <= 1, not {self.self_steps}")
        if self.gate < 0:
            raise ValueError(f"gate is an exponent >= 0, not {self.gate}")
        if self.propagate < 0:
            raise ValueError(f"propagate is a number of passes >= 0, not {self.propagate}")

    def with_(self, **changes: Any) -> Aggregator:
        """A copy with some fields changed (named "custom", without note, unless given)."""
        return replace(self, **{"name": "custom", "note": "", **changes})

    def needs(self) -> dict[str, Any]:
        """What a trace must record for this recipe: `sdviz.trace(pipe, **agg.needs())`."""
        keep: set[str] = set()
        if self.upsample == "bicubic" or self.heads is not None or self.source == "output":
            keep |= {"layer", "head"}
        if self.layers not in ("all",) and not _resolutions_only(self.layers):
            keep.add("layer")
        if self.steps != (0.0, 1.0) or self.source == "output":
            keep.add("step")
        record = ["cross_attention"] + (["self_attention"] if self.propagate else [])
        needs = {"record": record, "keep": {"cross_attention": sorted(keep)}}
        if self.propagate and self.self_steps != (0.0, 1.0):
            needs["keep"]["self_attention"] = ["step"]
        return needs

    def describe(self) -> str:
        """One line: what this recipe does differently from sdviz's original reduction."""
        parts = []
        if self.source == "output":
            parts.append("output-space projection")
        if self.renormalise:
            parts.append("renormalised over word tokens")
        if self.layers != "all":
            parts.append(f"layers {self.layers}")
        if self.steps != (0.0, 1.0):
            parts.append(f"steps {self.steps[0]:g}-{self.steps[1]:g}")
        if self.heads is not None:
            parts.append(f"{len(self.heads)} heads")
        if self.propagate:
            parts.append(f"{self.propagate} self-attention pass{'es' if self.propagate > 1 else ''}")
            if self.self_layers != "all":
                parts.append(f"self-attention of layers {self.self_layers}")
            if self.self_steps != (0.0, 1.0):
                parts.append(f"self-attention of steps {self.self_steps[0]:g}-{self.self_steps[1]:g}")
            if self.gate:
                parts.append(f"gated by the seed^{self.gate:g}")
        if self.upsample == "bicubic":
            parts.append("bicubic per head, clamped")
        return ", ".join(parts) or "sdviz's original reduction"


def _resolutions_only(layers: Any) -> bool:
    return isinstance(layers, tuple) and all(isinstance(x, int) for x in layers)


SDVIZ = Aggregator("sdviz", note="sdviz's original reduction: all layers, per-resolution sums, bilinear, mean")
DAAM = Aggregator(
    "daam",
    layers="daam",
    upsample="bicubic",
    step_reduction="sum",
    positions="daam",
    note="DAAM 0.2.0: down and up blocks, per-(layer, head) bicubic to the latent grid, clamp, sum over steps",
)


def _attn2(block: str) -> str:
    return f"unet.{block}.transformer_blocks.0.attn2.hook_probs"


# The best recipe on the embedded model: DAAM plus every trick that helped, each choice made by `sdviz
# validate-attention --ladder` on its 40 training pictures (the heads: the better half of the 24 DAAM reads, ranked
# there by their own maps). Held-out mIoU 0.764 (DAAM 0.455): see the README. It names the embedded model's layers
# and heads; after retraining it, run the ladder again and copy its choice here.
BEST = Aggregator(
    "best",
    layers="daam",
    steps=(0.75, 1.0),
    heads=(
        (_attn2("up_blocks.0.attentions.1"), 3),
        (_attn2("up_blocks.0.attentions.1"), 2),
        (_attn2("down_blocks.1.attentions.0"), 1),
        (_attn2("up_blocks.1.attentions.0"), 0),
        (_attn2("down_blocks.1.attentions.0"), 0),
        (_attn2("up_blocks.0.attentions.1"), 1),
        (_attn2("up_blocks.1.attentions.0"), 1),
        (_attn2("down_blocks.1.attentions.0"), 2),
        (_attn2("up_blocks.0.attentions.0"), 0),
        (_attn2("down_blocks.0.attentions.0"), 2),
        (_attn2("up_blocks.1.attentions.0"), 3),
        (_attn2("down_blocks.0.attentions.0"), 1),
    ),
    propagate=1,
    self_steps=(0.75, 1.0),
    self_layers=("unet.up_blocks.1.attentions.0",),
    gate=0.25,
    upsample="bicubic",
    step_reduction="sum",
    threshold=0.7,
    model="toy",
    note="DAAM's maps of the last quarter of the steps from 12 chosen heads, propagated by the first 16x16 up "
    "layer's self-attention of the same steps, gated by the seed^0.25; tau 0.7",
)

METHODS: dict[str, Aggregator] = {a.name: a for a in (SDVIZ, DAAM, BEST)}


def get(method: str | Aggregator | None) -> Aggregator:
    """An aggregator from a name ("sdviz", "daam", "best"), an `Aggregator`, or None: the default, "sdviz".

    Why not "best" by default: its heads and layers are the embedded toy model's (they mean nothing for SD 1.5's
    weights), and it reads cross-attention kept per (layer, head, step) plus per-step self-attention. For SD 1.5 at
    512x512 that is about 50 steps x 8 heads x 4096 pixels x 77 tokens x 4 bytes = 500 MB for each 64x64 layer alone,
    where the default trace streams a few MB of per-resolution sums. "best" is one word away on the toy model."""
    if method is None:
        return SDVIZ
    if isinstance(method, Aggregator):
        return method
    if isinstance(method, str) and method in METHODS:
        return METHODS[method]
    raise ValueError(f"unknown word-map method {method!r}; known: {', '.join(METHODS)} (or an Aggregator)")


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
    from sdviz.hooks import matches

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


def _window(rec: Any, window: tuple[float, float], steps: Any) -> list[int]:
    """Slots of the record holding the steps of a window (fractions of the generation), or of an explicit `steps=`
    choice, which replaces the window (a figure of one step asks for that step whatever the method's window)."""
    from sdviz.tracing.records import _ranges, _step_list

    n = rec.num_steps
    if steps is not None:
        wanted = set(_step_list(steps, n))
    else:
        wanted = set(window_steps(window, n))
    if "step" not in rec.keep:
        if (steps is None and window == (0.0, 1.0)) or wanted == set(rec.steps):
            return [0]  # every recorded step, summed during the run
        raise KeyError(
            f"cross_attention was summed over steps {_ranges(rec.steps)} during the run; this map wants steps "
            f"{_ranges(sorted(wanted))}: trace with keep=['step'] (or steps=...)"
        )
    slots = [i for i, s in enumerate(rec.steps) if s in wanted]
    if not slots:
        raise KeyError(f"no recorded step among {_ranges(sorted(wanted))} (recorded: {_ranges(rec.steps)})")
    return slots


def _need_keep(rec: Any, axes: Iterable[str], why: str) -> None:
    missing = sorted(set(axes) - set(rec.keep))
    if missing:
        raise KeyError(f"{why} needs cross-attention kept per {', '.join(missing)}: trace with keep={sorted(missing)}")


def cells(
    rec: Any,
    image: int,
    agg: Aggregator,
    latent_hw: tuple[int, int],
    steps: Any = None,
    layers: Any = None,
    resolution: Any = None,
    heads: Any = None,
    per_step: bool = False,
) -> list[Cell]:
    """The record's maps an aggregator reads for one image, summed over the window's steps (one cell per step with
    `per_step`). `steps`, `layers`, `resolution`, `heads` narrow the choice further, as in `Trace.word_map`."""
    if agg.heads is not None or agg.upsample == "bicubic":
        _need_keep(rec, ("layer", "head"), f"the {agg.name!r} word map")
    slots = _window(rec, agg.steps, steps)
    keys = rec._keys(layers, resolution)  # the record's own checks of layers= and resolution=
    chosen_heads = None if agg.heads is None else {}
    for layer, h in agg.heads or ():
        chosen_heads.setdefault(layer, set()).add(h)
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
                x = sums[g, 0 if h is None else h].float().sum(0)  # (n, m)
                out.append(Cell(key, h, hw, x.T, float(counts[g].sum()), gi))
    if not out:
        raise KeyError(f"the {agg.name!r} word map chose no recorded cross-attention map")
    return out


# --------------------------------------------------------------------------------------------------------------------
# Token positions
# --------------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _tokenizer() -> Any:
    from sdviz.tokenizer import Tokenizer

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


def word_token_positions(encoding: dict) -> list[int]:
    """The positions of the prompt's word tokens: not the start or end token, not padding."""
    return [p for p, w in enumerate(encoding["word_index"]) if w >= 0]


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
    """Cells -> one map per token at `size`: (m, *size)."""
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
    tr: Trace, image: int, window: tuple[float, float] = (0.0, 1.0), layers: Any = "all"
) -> tuple[Tensor, tuple[int, int]]:
    """The mean self-attention (n, n) over the steps of a window (fractions of the generation) of the chosen layers
    (a spec as `Aggregator.layers`) of the finest grid among them, and that grid. Rows sum to 1: row i is where
    pixel i looked."""
    rec = tr.self_attention
    latent = latent_size(tr)
    chosen = [k for k in rec.sums if layer_chosen(k, rec.grid[k], layers, latent)]
    if not chosen:
        raise KeyError(f"self_layers={layers!r} chooses no recorded self-attention layer (recorded: {list(rec.sums)})")
    grid = max((rec.grid[k] for k in chosen), key=lambda hw: hw[0] * hw[1])
    layers = [k for k in chosen if rec.grid[k] == grid]
    steps = None
    if window != (0.0, 1.0):
        steps = [s for s in window_steps(window, rec.num_steps) if s in rec.steps]
        if "step" not in rec.keep:
            raise KeyError(
                "self_attention was summed over steps during the run; trace with keep={'self_attention': ['step']}"
            )
        if not steps:
            raise KeyError(f"no recorded self-attention step in the window {window}")
    a = sum(rec.map(k, image, steps=steps) for k in layers) / len(layers)
    return a, tuple(grid)


def latent_size(tr: Trace) -> tuple[int, int]:
    """The latent grid (h, w) of a trace's generation: the picture's size over the VAE's downsampling factor."""
    factor = 2 ** (len(tr.info["config"]["vae"]["channel_mult"]) - 1)
    return tr.image_size[0] // factor, tr.image_size[1] // factor


def token_maps(
    tr: Trace,
    image: int = 0,
    size: tuple[int, int] | None = None,
    method: str | Aggregator | None = None,
    **select: Any,
) -> Tensor:
    """Every token position's map under an aggregator, at `size` (default the picture's): (77, H, W).

    `select` narrows the maps read, as in `Trace.word_map`: steps=, layers=, resolution=, heads=."""
    agg = get(method)
    rec = tr.cross_attention
    size = tuple(size or tr.image_size)
    if agg is SDVIZ:
        return rec.combined(size, image, **select)
    if agg.model is not None and tr.info["config"].get("name") != agg.model:
        raise KeyError(
            f"the {agg.name!r} word map names layers and heads of the {agg.model!r} model, not of this trace's "
            f"{tr.info['config'].get('name')!r}: use 'daam', or choose your own (sdviz validate-attention --ladder)"
        )
    latent_hw = latent_size(tr)
    words = word_token_positions(tr.encodings[image])
    if agg.source == "output":
        _need_keep(rec, ("layer", "head"), "the output-space projection")
        cs = cells(rec, image, agg, latent_hw, per_step=True, **select)
        cs = projection_cells(cs, rec.values, image, words)
    else:
        cs = cells(rec, image, agg, latent_hw, **select)
    if agg.propagate:
        a, grid = self_attention_matrix(tr, image, agg.self_steps, agg.self_layers)
        work = grid
    else:
        a, work = None, (latent_hw if agg.upsample == "bicubic" else size)
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
    return _resize(maps[None], size, mode)[0].cpu()


def positions(tr: Trace, word: str | int, image: int, agg: Aggregator) -> list[int]:
    """A word's token positions under an aggregator's rule (sdviz: the word's tokens; DAAM: token matching)."""
    if agg.positions == "daam" and isinstance(word, str):
        return daam_positions(tr.tokens_of(image), word)
    return tr.word_positions(word, image)

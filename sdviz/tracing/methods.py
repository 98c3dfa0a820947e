"""The word-map recipes (aggregators): sdviz's, DAAM's, the best measured on the toy world, and your own.

The reduction that applies a recipe to a trace's records is `sdviz.tracing.aggregate` (its docstring says how
"sdviz" and "daam" differ); a recipe only says what to read and how to combine it. The named ones:

    "sdviz"  every cross-attention layer, summed per resolution, bilinear, averaged (the default)
    "daam"   DAAM 0.2.0's computation (see `sdviz.tracing.aggregate` for the grid it averages on)
    "best"   the recipe that measured best on the toy world's ground truth (the embedded model only)

and any `Aggregator(...)` is a recipe of your own. The default (`method=None`) is "sdviz": it works on any weights
from a default trace of a few MB, where "best" is the toy model's own and costly to record at SD 1.5's sizes (see
`get`). "best" needs `sdviz.trace(pipe, **aggregate.BEST.needs())`. Each knob is a published trick:

    renormalise   divide every token's map by the sum of the prompt's *word* tokens' maps (start token and padding
                  excluded), so that at each pixel the words share 1: DAAM's `normalize=True`, and the softmax over
                  concept tokens of ConceptAttention (Helbling et al. 2025), which it equals for one map.
    layers        which layers: "all", "daam" (DAAM's locator: the down and up blocks, not the mid block), block kinds
                  ("down", "mid", "up"), grid sides (16, 8) or hook-name globs.
    window        a window of the denoising, as fractions of the steps: (0.0, 0.5) is the first half. An explicit
                  `steps=` of `word_map` (step indices) replaces it.
    heads         the (layer, head) pairs to read, e.g. the best half chosen on training scenes (head selection, as in
                  ConceptAttention's ablations: about 2 points on real data).
    source        "probs" (attention probabilities) or "output": ConceptAttention's projection in the attention's
                  *output* space. A pixel's attention output is o = sum_t p_t v_t (per head, before `to_out`); its
                  score for token s is o . v_s = (P G)_s with G = V V^T the tokens' value Gram matrix, summed over the
                  heads read, then a softmax over the word tokens per layer and step. Needs keep=["layer", "head"]
                  (and "step" for a softmax per step, as the paper's), and the values, which such a trace keeps.
    propagate     passes of self-attention propagation (DiffSegmenter, Wang et al. 2023; iSeg, Sun et al. 2024): the
                  map m becomes A m, with A the self-attention (row i: where pixel i looked) of the finest grid's
                  layers `self_layers`, averaged over their heads and the steps of `self_window`. A pixel takes the
                  map's value of the pixels it attends to, which gives the objects' sharp outlines.
    gate          the propagated map times the seed to this power, (A m) * m^gate: in the toy model a pixel attends
                  to every object's pixels alike (objectness, not identity), so propagation alone spreads a noun
                  over both objects of a scene; the seed keeps the choice of object (sdviz's own, measured).
    upsample      "bilinear": sum per resolution, upsample bilinearly (sdviz); "bicubic": every (layer, head) map to
                  the latent grid bicubically, clamp at 0, average, then bicubic to the picture (DAAM).
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field, replace
from typing import Any

UPSAMPLES = ("bilinear", "bicubic")
SOURCES = ("probs", "output")


@dataclass(frozen=True)
class Aggregator:
    """A recipe for word maps; see the module docstring for each field. Frozen: change one with `.with_(...)`."""

    name: str = "custom"
    layers: str | tuple[str | int, ...] = "all"
    window: tuple[float, float] = (0.0, 1.0)  # the steps read, as fractions of the generation
    heads: tuple[tuple[str, int], ...] | None = None
    source: str = "probs"
    renormalise: bool = False
    propagate: int = 0
    self_window: tuple[float, float] = (0.0, 1.0)  # the steps whose self-attention propagates (fractions)
    self_layers: str | tuple[str | int, ...] = "all"  # which self-attention layers of the finest grid propagate
    gate: float = 0.0  # multiply the propagated map by the seed to this power (0: no gate)
    upsample: str = "bilinear"
    grid: str | int = "latent"  # the grid DAAM's bicubic maps are averaged on: the latent grid, or a side in pixels
    step_reduction: str = "mean"  # "sum": DAAM sums over steps (a constant factor per map)
    positions: str = "words"  # "daam": DAAM's token-sequence matching
    threshold: float = 0.4  # where `validate-attention` binarises its min-max normalised map
    model: str | None = None  # the configuration whose layers and heads the recipe names (None: any model)
    note: str = field(default="", compare=False)
    steps: InitVar[Any] = None  # the old names of `window` and `self_window`: refused with the new name
    self_steps: InitVar[Any] = None

    def __post_init__(self, steps: Any = None, self_steps: Any = None) -> None:
        for old, new, value in (("steps", "window", steps), ("self_steps", "self_window", self_steps)):
            if value is not None:
                raise TypeError(f"Aggregator({old}=...) is now {new}=... (a window of fractions of the steps)")
        if self.upsample not in UPSAMPLES:
            raise ValueError(f"upsample must be one of {', '.join(UPSAMPLES)}, not {self.upsample!r}")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, not {self.source!r}")
        if self.grid != "latent" and (isinstance(self.grid, bool) or not isinstance(self.grid, int) or self.grid < 1):
            raise ValueError(f"grid must be 'latent' or a side length in pixels, not {self.grid!r}")
        if self.step_reduction not in ("mean", "sum"):
            raise ValueError(f"step_reduction must be 'mean' or 'sum', not {self.step_reduction!r}")
        if self.positions not in ("words", "daam"):
            raise ValueError(f"positions must be 'words' or 'daam', not {self.positions!r}")
        a, b = self.window
        if not 0.0 <= a < b <= 1.0:
            raise ValueError(f"window must be (start, stop) with 0 <= start < stop <= 1, not {self.window}")
        a, b = self.self_window
        if not 0.0 <= a < b <= 1.0:
            raise ValueError(f"self_window must be (start, stop) with 0 <= start < stop <= 1, not {self.self_window}")
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
        if self.window != (0.0, 1.0) or self.source == "output":
            keep.add("step")
        record = ["cross_attention"] + (["self_attention"] if self.propagate else [])
        needs = {"record": record, "keep": {"cross_attention": sorted(keep)}}
        if self.propagate and self.self_window != (0.0, 1.0):
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
        if self.window != (0.0, 1.0):
            parts.append(f"steps {self.window[0]:g}-{self.window[1]:g}")
        if self.heads is not None:
            parts.append(f"{len(self.heads)} heads")
        if self.propagate:
            parts.append(f"{self.propagate} self-attention pass{'es' if self.propagate > 1 else ''}")
            if self.self_layers != "all":
                parts.append(f"self-attention of layers {self.self_layers}")
            if self.self_window != (0.0, 1.0):
                parts.append(f"self-attention of steps {self.self_window[0]:g}-{self.self_window[1]:g}")
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
    window=(0.75, 1.0),
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
    self_window=(0.75, 1.0),
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


def needs_of(methods: Any = None) -> dict[str, Any]:
    """One trace plan that serves every recipe in `methods` (default: every method of METHODS): the union of their
    `needs()`, for `sdviz.trace(pipe, **needs_of(...))`."""
    record: set[str] = set()
    keep: dict[str, set[str]] = {}
    for agg in METHODS.values() if methods is None else methods:
        n = agg.needs()
        record |= set(n["record"])
        for kind, axes in n.get("keep", {}).items():
            keep.setdefault(kind, set()).update(axes)
    return {"record": sorted(record), "keep": {k: sorted(v) for k, v in keep.items()}}


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

"""What a trace will record, and how many bytes it will take, worked out from shapes alone.

The layer layout (`sdviz.shapes.unet_layout`) runs the UNet of a configuration once on PyTorch's *meta* device:
tensors there have shapes but no storage and no arithmetic, so even SD 1.5 at 512x512 "runs" in a fraction of a
second with no weights and no memory. It notes the shape at every hook point, the pixel grid of every attention layer
and the groups of every GroupNorm, in the order the forward pass meets them.

`estimate` turns a layout and a recording plan (which records, which layers, which steps, what to keep) into bytes,
record by record. A trace computes the same estimate before the first denoising step and refuses to start when it
is over its budget, so a run that would not fit in memory fails in a second with a breakdown instead of after
minutes with an out-of-memory error.

    >>> print(estimate(SD15, num_steps=50))        # the default records of an SD 1.5 run at 512x512
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sdviz.config import SDConfig
from sdviz.hooks import Filter, select_layers
from sdviz.models.attention import probs_chunk
from sdviz.shapes import AttentionLayer, NormLayer, UNetLayout, unet_layout  # noqa: F401  (re-exported)

KINDS = ("cross_attention", "self_attention", "groupnorm", "time_embedding", "latents")
DEFAULT_RECORD = ("cross_attention", "groupnorm", "time_embedding", "latents")
LAYERED = ("cross_attention", "self_attention", "groupnorm")  # the records that `layers=` chooses layers for
KEEP_AXES = ("step", "layer", "head")  # what an attention record can keep instead of summing over it
DEFAULT_BUDGET = 512 * 2**20  # bytes: a trace that would hold more refuses to start (raise it with max_bytes=)

FLOAT = 4  # bytes per float32


# --------------------------------------------------------------------------------------------------------------------
# Plans: which layers each record watches, and what it keeps
# --------------------------------------------------------------------------------------------------------------------


def per_kind(value: Any, kinds: Iterable[str], what: str) -> dict[str, Any]:
    """`layers=` and `keep=` apply to every record, or per record with a dict {kind: value}."""
    kinds = list(kinds)
    if isinstance(value, Mapping):
        unknown = set(value) - set(KINDS)
        if unknown:
            raise ValueError(f"{what}: unknown record kind(s) {sorted(unknown)}; known: {', '.join(KINDS)}")
        return {k: value.get(k) for k in kinds}
    return {k: value for k in kinds}


def check_record(record: Iterable[str] | str | None) -> tuple[str, ...]:
    if record is None:
        return DEFAULT_RECORD
    record = (record,) if isinstance(record, str) else tuple(record)
    if record in (("all",), ("everything",)):
        return KINDS
    unknown = [r for r in record if r not in KINDS]
    if unknown:
        raise ValueError(f"unknown record kind(s) {unknown}; known: {', '.join(KINDS)} (or 'all')")
    if not record:
        raise ValueError(f"record nothing? choose from {', '.join(KINDS)}")
    return tuple(dict.fromkeys(record))


def check_keep(keep: Iterable[str] | str | None) -> frozenset[str]:
    keep = () if keep is None else ((keep,) if isinstance(keep, str) else tuple(keep))
    unknown = [k for k in keep if k not in KEEP_AXES]
    if unknown:
        raise ValueError(f"keep: unknown axis {unknown}; an attention record can keep {', '.join(KEEP_AXES)}")
    return frozenset(keep)


def choose_layers(candidates: list[str], all_names: list[str], filter: Filter, kind: str) -> list[str]:
    """The layers of one record kind (`candidates`: `sdviz.shapes.layers(config, kind)`) that a `layers=` filter
    selects (all of them for None); see `sdviz.hooks.select_layers` for the checks."""
    hint = f"To choose layers per record, pass layers={{'{kind}': ..., ...}}."
    return select_layers(candidates, all_names, filter, kind.replace("_", "-") + " layer", hint)


def resolve_steps(steps: Any, timesteps: list[int]) -> list[int]:
    """The step indices (0 .. n-1) a `steps=` argument selects: None (all), an int, a slice or range, a list of
    ints (negative ones count from the end), or a predicate `(index, t) -> bool`."""
    n = len(timesteps)
    if steps is None:
        return list(range(n))
    if callable(steps):
        chosen = [i for i, t in enumerate(timesteps) if steps(i, t)]
    elif isinstance(steps, slice):
        chosen = list(range(n))[steps]
    else:
        items = [steps] if isinstance(steps, int) else list(steps)
        chosen = []
        for s in items:
            if isinstance(s, bool) or not isinstance(s, int):
                raise TypeError(f"steps: expected step indices (ints), got {s!r}")
            if not -n <= s < n:
                raise ValueError(f"steps: step {s} does not exist; this generation has {n} steps (0 .. {n - 1})")
            chosen.append(s % n)
        chosen = sorted(set(chosen))
    if not chosen:
        raise ValueError(f"steps={steps!r} selects none of this generation's {n} steps")
    return chosen


# --------------------------------------------------------------------------------------------------------------------
# Bytes
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class MemoryEstimate:
    """Bytes a trace will hold, per record, with a line of explanation each."""

    parts: dict[str, int] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)
    transient: int = 0  # the largest attention-probability chunk (scores + softmax) alive at once, then freed

    @property
    def records(self) -> int:
        """Bytes of the records kept after the run."""
        return sum(self.parts.values())

    @property
    def total(self) -> int:
        """The peak: the records, plus the probabilities of one chunk while an attention layer is observed."""
        return self.records + self.transient

    def add(self, name: str, nbytes: int, detail: str) -> None:
        self.parts[name] = self.parts.get(name, 0) + int(nbytes)
        self.details[name] = detail

    def __str__(self) -> str:
        lines = [f"  {name:<16}{_mb(b):>12}   {self.details.get(name, '')}" for name, b in self.parts.items()]
        if self.transient:
            lines.append(f"  {'transient':<16}{_mb(self.transient):>12}   one chunk of attention scores and softmax")
        lines.append(f"  {'total':<16}{_mb(self.total):>12}")
        return "\n".join(lines)


def _mb(nbytes: int | float) -> str:
    return f"{nbytes / 1e6:,.2f} MB"


def plan_bytes(
    layout: UNetLayout,
    record: tuple[str, ...],
    layers: dict[str, list[str]],
    keep: dict[str, frozenset[str]],
    images: int,
    num_steps: int,
    recorded_steps: int,
    image_hw: tuple[int, int],
    guided: bool = True,
    decode: bool = False,
    rows_per_call: int = 1,
) -> MemoryEstimate:
    """The estimate for one plan. Sums are float32; images and decodes are uint8."""
    est = MemoryEstimate()
    b = images
    for kind in ("cross_attention", "self_attention"):
        if kind not in record:
            continue
        k = keep[kind]
        s = recorded_steps if "step" in k else 1
        groups: dict[str, int] = {}  # key (layer or resolution) -> floats
        for name in layers[kind]:
            a = layout.attention[name]
            key = name if ("layer" in k or kind == "self_attention") else a.resolution
            h = a.heads if "head" in k else 1
            groups[key] = s * b * h * a.n * a.m + s * b  # the sums and their counts
            if kind == "cross_attention" and {"layer", "head"} <= k:
                groups[key] += b * a.m * a.channels  # the layer's values, for the output-space projection
            # while a layer is observed: scores and softmax of one chunk of queries (sdviz.models.attention)
            chunk = probs_chunk(rows_per_call, a.heads, a.n, a.m)
            est.transient = max(est.transient, 2 * rows_per_call * a.heads * chunk * a.m * FLOAT)
        kept = ", ".join(sorted(k)) or "nothing"
        what = "per layer" if (kind == "self_attention" or "layer" in k) else "per resolution"
        est.add(kind, sum(groups.values()) * FLOAT, f"{len(layers[kind])} layers, summed {what}, kept: {kept}")
    if "groupnorm" in record:
        gs = sum(layout.groupnorm[n].groups for n in layers["groupnorm"])
        est.add(
            "groupnorm",
            recorded_steps * b * gs * 4 * FLOAT,
            f"{len(layers['groupnorm'])} layers x {recorded_steps} steps x groups x (mean, std) of input and output",
        )
    if "time_embedding" in record:
        d1, d2 = layout.time_dims
        est.add("time_embedding", num_steps * (d1 + d2) * FLOAT, f"{num_steps} steps x ({d1} + {d2})")
    if "latents" in record:
        c, h, w = layout.latent
        kinds = 5 if guided else 4
        n = (num_steps * kinds + 1) * b * c * h * w * FLOAT
        est.add(
            "latents",
            n,
            f"{num_steps} steps x {kinds} tensors (x_t, eps_cond, {'eps_uncond, ' if guided else ''}eps, x0) "
            f"x {c}x{h}x{w}; RGB previews are computed from them on demand",
        )
        if decode:
            est.add(
                "decoded_x0", num_steps * b * 3 * image_hw[0] * image_hw[1], "every step's x0 through the VAE (uint8)"
            )
    est.add("images", b * 3 * image_hw[0] * image_hw[1], "the final pictures (uint8)")
    return est


def estimate(
    config: SDConfig | Any,
    height: int | None = None,
    width: int | None = None,
    num_steps: int = 50,
    images: int = 1,
    record: Iterable[str] | str | None = None,
    layers: Filter | Mapping[str, Filter] = None,
    steps: Any = None,
    keep: Iterable[str] | Mapping[str, Iterable[str]] | None = None,
    decode: bool = False,
    guided: bool = True,
) -> MemoryEstimate:
    """Bytes a trace of one generation would hold, from shapes alone (no weights are needed or loaded).

    Args are those of `sdviz.trace` plus the generation's size: `config` is an `SDConfig` (or a pipeline),
    `num_steps` the number of denoising steps, `images` the batch size.
    """
    cfg: SDConfig = getattr(config, "config", config)
    height = cfg.image_size if height is None else height
    width = cfg.image_size if width is None else width
    f = cfg.vae.downsampling_factor
    layout = unet_layout(cfg.unet, (height // f, width // f), cfg.clip.max_length)
    record = check_record(record)
    layer_filters = per_kind(layers, LAYERED, "layers")
    keeps = {k: check_keep(v) for k, v in per_kind(keep, ("cross_attention", "self_attention"), "keep").items()}
    names = list(layout.hooks)
    chosen = {k: choose_layers(layout.layers(k), names, layer_filters[k], k) for k in LAYERED if k in record}
    recorded = len(resolve_steps(steps, list(range(num_steps))))
    return plan_bytes(layout, record, chosen, keeps, images, num_steps, recorded, (height, width), guided, decode)

"""The records a trace keeps: compact CPU tensors, filled as the generation streams, with small query methods.

Each record is reduced *while* the run goes (a running sum is one tensor however many steps it covers) unless the
user asks to keep an axis. Every record can turn itself into a dict of plain tensors, lists and numbers
(`state_dict`) and back (`from_state_dict`), which is how a trace is saved to one file and shown elsewhere.

    AttentionRecord   cross- or self-attention probabilities, summed over heads, layers of a resolution and steps
                      (sdviz's default reduction, close to DAAM's), or kept per step / layer / head on request
    GroupNormRecord   per layer and step: each group's mean and std, of the GroupNorm's input and of its output
    TimeEmbeddingRecord  per step: the sinusoidal embedding of t and its MLP output
    LatentsRecord     per step: x_t, eps_cond, eps_uncond, eps (guided) and the predicted x0, with RGB previews
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sdviz.shapes import AttentionLayer, NormLayer


def step_list(steps: Any, num_steps: int) -> list[int]:
    """An int, a slice, or a list of step indices (negative ones count from the end) -> non-negative indices."""
    if isinstance(steps, int):
        items = [steps]
    elif isinstance(steps, slice):
        items = list(range(num_steps))[steps]
    else:
        items = list(steps)
    return [s + num_steps if s < 0 else s for s in items]


def _slots(recorded: list[int], num_steps: int, steps: Any, what: str) -> list[int]:
    """Positions in `recorded` (the step indices a record holds) of the steps asked for (None: all of them)."""
    if steps is None:
        return list(range(len(recorded)))
    out = []
    for s in step_list(steps, num_steps):
        if s not in recorded:
            raise KeyError(f"{what}: step {s} was not recorded; recorded steps: {ranges(recorded)}")
        out.append(recorded.index(s))
    return out


def ranges(xs: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'"""
    out, i = [], 0
    xs = list(xs)
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        out.append(f"{xs[i]}" if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    return ", ".join(out) or "none"


# --------------------------------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------------------------------


class AttentionRecord:
    """Attention probabilities of some layers, reduced as they stream in.

    A layer's probabilities at one UNet call are (b, heads, n, m): for each of the n query pixels, a distribution
    over the m keys (prompt tokens for cross-attention, pixels for self-attention). By default they are summed over
    heads, over the layers that share a resolution, and over the recorded steps, into one (B, n, m) tensor per
    resolution: close to DAAM's reduction (Tang et al. 2022), not the same (`sdviz.tracing.aggregate` lists the
    differences). `keep` names the axes kept instead: "step", "layer", "head". Self-attention is always kept per
    layer.

    Storage: `sums[key]` is (S, B, H, n, m) with S = recorded steps if "step" is kept else 1, H = heads if "head"
    is kept else 1; `counts[key]` (S, B) is how many single-head maps were added into each cell, so
    `sums / counts` is the average head's map (rows sum to 1).

    A cross-attention record that keeps "layer" and "head" also keeps each layer's values, `values[layer]`
    (B, heads, m, d), constant over the steps: with them the attention's output is probs @ V, and a word map can be
    read in the output space (`sdviz.tracing.aggregate`, ConceptAttention's projection).
    """

    def __init__(
        self,
        kind: str,
        layers: list[AttentionLayer],
        images: int,
        steps: list[int],
        num_steps: int,
        keep: Iterable[str] = (),
        device: torch.device | str = "cpu",
    ):
        self.kind = kind
        self.num_steps = num_steps  # steps of the generation; `steps` are those recorded
        self.keep = frozenset(keep) | ({"layer"} if kind == "self_attention" else set())
        self.steps = list(steps)  # the recorded step indices
        self.layers = {a.name: a for a in layers}
        self.key_of = {a.name: (a.name if "layer" in self.keep else a.resolution) for a in layers}
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, Tensor] = {}
        self.grid: dict[str, tuple[int, int]] = {}
        s = len(self.steps) if "step" in self.keep else 1
        for a in layers:
            key = self.key_of[a.name]
            h = a.heads if "head" in self.keep else 1
            if key in self.sums:
                if self.sums[key].shape[2] != h:
                    raise ValueError(f"layers of resolution {key} differ in heads; keep 'layer' to keep heads apart")
                continue
            self.sums[key] = torch.zeros(s, images, h, a.n, a.m, device=device)
            self.counts[key] = torch.zeros(s, images, device=device)
            self.grid[key] = a.hw
        self._slot = {step: i for i, step in enumerate(self.steps)}
        self.values: dict[str, Tensor] = {}  # layer -> (B, heads, m, d), when keeping values (see `keeps_values`)

    @property
    def keeps_values(self) -> bool:
        """Does this record keep each layer's values (cross-attention kept per layer and head)?"""
        return self.kind == "cross_attention" and {"layer", "head"} <= self.keep

    # -- filling ---------------------------------------------------------------------------------------------------

    def add(self, layer: str, step: int, images: slice, probs: Tensor, queries: slice | None = None) -> None:
        """Add one layer's probabilities (b, heads, n, m) of images `images` at step `step` (an index). Large layers
        arrive in chunks of query positions `queries` (b, heads, chunk, m); the first chunk counts the layer."""
        key = self.key_of[layer]
        s = self._slot[step] if "step" in self.keep else 0
        queries = slice(None) if queries is None else queries
        if "head" in self.keep:
            self.sums[key][s, images, :, queries].add_(probs)
        else:
            self.sums[key][s, images, :, queries].add_(probs.sum(1, keepdim=True))  # (b, heads, .) -> (b, 1, .)
        if queries.start in (None, 0):
            self.counts[key][s, images] += 1 if "head" in self.keep else probs.shape[1]

    def add_values(self, layer: str, images: slice, v: Tensor) -> None:
        """Keep a layer's values (b, heads, m, d) of images `images` (the same at every step: the last call stays)."""
        if layer not in self.values:
            images_total = next(iter(self.sums.values())).shape[1]
            self.values[layer] = torch.zeros(images_total, *v.shape[1:], device=v.device)
        self.values[layer][images].copy_(v)

    def to(self, device: torch.device | str) -> AttentionRecord:
        self.sums = {k: v.to(device) for k, v in self.sums.items()}
        self.counts = {k: v.to(device) for k, v in self.counts.items()}
        self.values = {k: v.to(device) for k, v in self.values.items()}
        return self

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for d in (self.sums, self.counts, self.values) for t in d.values())

    # -- asking ----------------------------------------------------------------------------------------------------

    @property
    def resolutions(self) -> list[tuple[int, int]]:
        """The pixel grids recorded, finest first."""
        return sorted(set(self.grid.values()), key=lambda hw: -hw[0] * hw[1])

    def keys(self, layers: Any = None, resolution: Any = None) -> list[str]:
        """The record's keys (resolutions, or layers with keep=["layer"]) that `layers=` and `resolution=` choose."""
        keys = list(self.sums)
        if resolution is not None:
            wanted = [resolution] if isinstance(resolution, (int, tuple)) else list(resolution)
            wanted = [(r, r) if isinstance(r, int) else tuple(r) for r in wanted]
            keys = [k for k in keys if self.grid[k] in wanted]
            if not keys:
                raise KeyError(f"no {self.kind} layer at resolution {resolution}; recorded: {self.resolutions}")
        if layers is not None:
            if "layer" not in self.keep:
                raise KeyError(
                    f"{self.kind} was summed over the layers of each resolution during the run; "
                    "trace with keep=['layer'] to ask about single layers (or pick resolution=...)"
                )
            from sdviz.hooks import select

            picked = set(select(list(self.sums), layers, what=f"recorded {self.kind} layer"))
            keys = [k for k in keys if k in picked]
        return keys

    def _select(self, key: str, image: int, steps: Any, heads: Any) -> tuple[Tensor, float]:
        """(sum over the chosen steps and heads (n, m), number of single-head maps in it)."""
        sums, counts = self.sums[key][:, image], self.counts[key][:, image]  # (S, H, n, m), (S,)
        if steps is not None:
            if "step" not in self.keep and sorted(set(step_list(steps, self.num_steps))) != self.steps:
                raise KeyError(
                    f"{self.kind} was summed over steps {ranges(self.steps)} during the run; "
                    "trace with keep=['step'] to ask about single steps"
                )
            if "step" in self.keep:
                idx = _slots(self.steps, self.num_steps, steps, self.kind)
                sums, counts = sums[idx], counts[idx]
        if heads is not None:
            if "head" not in self.keep:
                raise KeyError(f"{self.kind} was summed over heads during the run; trace with keep=['head']")
            idx = [heads] if isinstance(heads, int) else list(heads)
            return sums[:, idx].sum((0, 1)), float(counts.sum()) * len(idx)
        return sums.sum((0, 1)), float(counts.sum()) * (sums.shape[1] if "head" in self.keep else 1)

    def maps(
        self, image: int = 0, steps: Any = None, layers: Any = None, resolution: Any = None, heads: Any = None
    ) -> dict[tuple[int, int], Tensor]:
        """The average attention map at each recorded resolution: {(h, w): (m, h, w)}.

        `maps()[(16, 16)][5]` is where, on the 16x16 grid, the key (token) at position 5 was attended to, averaged
        over the chosen steps, layers and heads. Each query pixel's distribution over the m keys sums to 1.
        """
        total: dict[tuple[int, int], list] = {}
        for key in self.keys(layers, resolution):
            s, c = self._select(key, image, steps, heads)
            if c == 0:
                continue
            acc = total.setdefault(self.grid[key], [0.0, 0.0])
            acc[0], acc[1] = acc[0] + s.float(), acc[1] + c
        out = {}
        for hw, (s, c) in total.items():
            out[hw] = (s / c).T.reshape(-1, *hw).cpu()  # (n, m) -> (m, n) -> (m, h, w)
        return dict(sorted(out.items(), key=lambda kv: -kv[0][0] * kv[0][1]))

    # -- saving ----------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "kind": self.kind,
            "keep": sorted(self.keep),
            "steps": self.steps,
            "num_steps": self.num_steps,
            "layers": [[a.name, a.kind, a.heads, a.n, a.m, list(a.hw)] for a in self.layers.values()],
            "sums": {k: v.cpu() for k, v in self.sums.items()},
            "counts": {k: v.cpu() for k, v in self.counts.items()},
            "values": {k: v.cpu() for k, v in self.values.items()},
        }

    @classmethod
    def from_state_dict(cls, d: dict) -> AttentionRecord:
        layers = [AttentionLayer(n, k, h, nn_, m, tuple(hw)) for n, k, h, nn_, m, hw in d["layers"]]
        rec = cls.__new__(cls)
        rec.kind, rec.keep, rec.steps = d["kind"], frozenset(d["keep"]), list(d["steps"])
        rec.num_steps = d["num_steps"]
        rec.layers = {a.name: a for a in layers}
        rec.key_of = {a.name: (a.name if "layer" in rec.keep else a.resolution) for a in layers}
        rec.sums, rec.counts = dict(d["sums"]), dict(d["counts"])
        rec.values = dict(d.get("values", {}))
        rec.grid = {rec.key_of[a.name]: a.hw for a in layers}
        rec._slot = {step: i for i, step in enumerate(rec.steps)}
        return rec

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.kind}, {len(self.layers)} layers, resolutions {self.resolutions}, "
            f"steps {ranges(self.steps)}, kept: {', '.join(sorted(self.keep)) or 'nothing'}, "
            f"{self.nbytes() / 1e6:.2f} MB)"
        )


class SelfAttentionRecord(AttentionRecord):
    """Self-attention, per layer: for each pixel, where in the image it looked."""

    def layer_key(self, layer: str) -> str:
        """The recorded layer a name, module path or glob stands for (it must stand for exactly one)."""
        if layer in self.sums:
            return layer
        from sdviz.hooks import select

        keys = select(list(self.sums), layer, what="recorded self-attention layer")
        if len(keys) != 1:
            raise KeyError(f"{layer!r} stands for {len(keys)} recorded layers ({', '.join(keys)}); name one")
        return keys[0]

    def map(self, layer: str, image: int = 0, steps: Any = None, heads: Any = None) -> Tensor:
        """The average self-attention matrix of one layer: (n, n), row = query pixel, column = key pixel."""
        s, c = self._select(self.layer_key(layer), image, steps, heads)
        return (s.float() / max(c, 1.0)).cpu()

    def pixel_map(self, layer: str, y: int, x: int, image: int = 0, steps: Any = None, heads: Any = None) -> Tensor:
        """Where the query pixel (y, x) of a layer's grid looked: (h, w), summing to 1."""
        key = self.layer_key(layer)
        h, w = self.grid[key]
        if not (0 <= y < h and 0 <= x < w):
            raise IndexError(f"pixel ({y}, {x}) is outside layer {layer}'s {h}x{w} grid")
        return self.map(key, image, steps, heads)[y * w + x].reshape(h, w)


# --------------------------------------------------------------------------------------------------------------------
# Group norm
# --------------------------------------------------------------------------------------------------------------------

STATS = ("in_mean", "in_std", "out_mean", "out_std")


class GroupNormRecord:
    """Per GroupNorm layer and step, the mean and std of each group, of the layer's input and of its output.

    GroupNorm (Wu & He 2018) normalises each group of channels to mean 0, std 1 and then applies a learned
    per-channel scale and shift, so the output's statistics show what the layer *chose* (its affine parameters),
    the input's what it was handed. Down the UNet the input std typically grows with depth and differs wildly from
    step to step; the output stays near what the weights make it.

    `stats` is (S, B, L, G, 4): recorded steps, images, layers (forward order), groups, and (in_mean, in_std,
    out_mean, out_std). Std is the population std (the one GroupNorm divides by, before its epsilon).
    """

    def __init__(
        self, layers: list[NormLayer], images: int, steps: list[int], timesteps: list[int], device: Any = "cpu"
    ):
        self.num_steps = len(timesteps)
        self.layers = [n.name for n in layers]
        self.groups = [n.groups for n in layers]
        self.channels = [n.channels for n in layers]
        self.grids = [tuple(n.hw) for n in layers]
        self.steps = list(steps)
        self.timesteps = [timesteps[i] for i in self.steps]
        g = max(self.groups)
        self.stats = torch.full((len(self.steps), images, len(self.layers), g, 4), float("nan"), device=device)
        self._slot = {step: i for i, step in enumerate(self.steps)}

    def add(self, layer: int, which: int, step: int, images: slice, x: Tensor) -> None:
        """Statistics of one GroupNorm input (which=0) or output (which=1), x (b, C, H, W) for images `images`."""
        g = self.groups[layer]
        std, mean = torch.std_mean(x.float().reshape(x.shape[0], g, -1), dim=-1, correction=0)  # (b, G) each
        self.stats[self._slot[step], images, layer, :g, 2 * which : 2 * which + 2] = torch.stack([mean, std], -1)

    def to(self, device: Any) -> GroupNormRecord:
        self.stats = self.stats.to(device)
        return self

    def nbytes(self) -> int:
        return self.stats.numel() * self.stats.element_size()

    def tensor(self, stat: str = "in_std", image: int = 0) -> Tensor:
        """One statistic for every recorded step, layer and group: (S, L, G)."""
        return self.stats[:, image, :, :, STATS.index(_stat(stat))]

    def along_unet(self, stat: str = "in_std", step: int | None = None, image: int = 0) -> Tensor:
        """The statistic averaged over groups, per layer in forward order: (L,) at one step, or (S, L) for all."""
        x = self.tensor(stat, image).nanmean(-1)  # (S, L)
        return x if step is None else x[_slots(self.steps, self.num_steps, step, "groupnorm")[0]]

    def frame(self, image: int | None = None) -> dict[str, np.ndarray]:
        """A long table, one row per (image, step, layer, group), as a dict of equal-length columns:
        `pandas.DataFrame(tr.groupnorm.frame())` if pandas is installed.

        Columns: image, step, t, layer (name), depth (forward position), group, in_mean, in_std, out_mean, out_std.
        """
        s, b, n_layers, g, _ = self.stats.shape
        images = range(b) if image is None else [image]
        idx = np.array(
            [
                (i, si, li, gi)
                for i in images
                for si in range(s)
                for li in range(n_layers)
                for gi in range(self.groups[li])
            ]
        ).reshape(-1, 4)
        vals = self.stats.cpu().numpy()[idx[:, 1], idx[:, 0], idx[:, 2], idx[:, 3]]  # (rows, 4)
        return {
            "image": idx[:, 0],
            "step": np.array(self.steps)[idx[:, 1]],
            "t": np.array(self.timesteps)[idx[:, 1]],
            "layer": np.array(self.layers, dtype=object)[idx[:, 2]],
            "depth": idx[:, 2],
            "group": idx[:, 3],
            **{name: vals[:, k] for k, name in enumerate(STATS)},
        }

    def state_dict(self) -> dict:
        return {
            "layers": self.layers,
            "groups": self.groups,
            "channels": self.channels,
            "grids": [list(g) for g in self.grids],
            "steps": self.steps,
            "num_steps": self.num_steps,
            "timesteps": self.timesteps,
            "stats": self.stats.cpu(),
        }

    @classmethod
    def from_state_dict(cls, d: dict) -> GroupNormRecord:
        rec = cls.__new__(cls)
        rec.layers, rec.groups, rec.channels = list(d["layers"]), list(d["groups"]), list(d["channels"])
        rec.grids = [tuple(g) for g in d["grids"]]
        rec.steps, rec.timesteps, rec.stats = list(d["steps"]), list(d["timesteps"]), d["stats"]
        rec.num_steps = d["num_steps"]
        rec._slot = {step: i for i, step in enumerate(rec.steps)}
        return rec

    def __repr__(self) -> str:
        return f"GroupNormRecord({len(self.layers)} layers, steps {ranges(self.steps)}, {self.nbytes() / 1e6:.2f} MB)"


def _stat(stat: str) -> str:
    if stat not in STATS:
        raise KeyError(f"unknown statistic {stat!r}; known: {', '.join(STATS)}")
    return stat


# --------------------------------------------------------------------------------------------------------------------
# Time embedding
# --------------------------------------------------------------------------------------------------------------------


class TimeEmbeddingRecord:
    """For every step, the sinusoidal embedding of t (S, 320 for SD 1.5) and the MLP's output (S, 1280).

    The sinusoid is a fixed function of t (cos/sin at geometrically spaced frequencies, like a transformer's
    position encoding); the MLP output is what every ResNet block actually receives (projected to its channels
    and added to its feature map).
    """

    def __init__(self, timesteps: list[int], dims: tuple[int, int], device: Any = "cpu"):
        self.timesteps = list(timesteps)
        self.sinusoid = torch.zeros(len(timesteps), dims[0], device=device)
        self.mlp = torch.zeros(len(timesteps), dims[1], device=device)

    def add(self, which: int, step: int, x: Tensor) -> None:
        (self.sinusoid if which == 0 else self.mlp)[step].copy_(x[0])

    def to(self, device: Any) -> TimeEmbeddingRecord:
        self.sinusoid, self.mlp = self.sinusoid.to(device), self.mlp.to(device)
        return self

    def nbytes(self) -> int:
        return (self.sinusoid.numel() + self.mlp.numel()) * 4

    def state_dict(self) -> dict:
        return {"timesteps": self.timesteps, "sinusoid": self.sinusoid.cpu(), "mlp": self.mlp.cpu()}

    @classmethod
    def from_state_dict(cls, d: dict) -> TimeEmbeddingRecord:
        rec = cls.__new__(cls)
        rec.timesteps, rec.sinusoid, rec.mlp = list(d["timesteps"]), d["sinusoid"], d["mlp"]
        return rec

    def __repr__(self) -> str:
        return f"TimeEmbeddingRecord({len(self.timesteps)} steps, {self.sinusoid.shape[1]} -> {self.mlp.shape[1]})"


# --------------------------------------------------------------------------------------------------------------------
# Latents
# --------------------------------------------------------------------------------------------------------------------

LATENT_KINDS = ("x_t", "eps_cond", "eps_uncond", "eps", "x0")


class LatentsRecord:
    """Every step's latents: x_t, the conditional, unconditional and guided noise predictions, the predicted x0.

    Each is (S, B, C, h, w) float32, as the UNet saw them (scaled latents); `final` (B, C, h, w) is what the VAE
    decoded. `preview(kind)` turns any of them into a small RGB picture with a fixed linear map fitted for the VAE in
    use (`sdviz.tracing.preview.latent_rgb_map`): one matrix product, no decoder. `decoded` holds the full VAE decode
    of every step's x0 (uint8, (S, B, 3, H, W)) when the trace was asked for it (`decode=True`).
    """

    def __init__(
        self,
        timesteps: list[int],
        images: int,
        latent: tuple[int, int, int],
        guided: bool,
        rgb_map: tuple[Tensor, Tensor],
        decode_hw: tuple[int, int] | None = None,
    ):
        self.timesteps = list(timesteps)
        shape = (len(timesteps), images, *latent)
        self.tensors: dict[str, Tensor] = {k: torch.zeros(shape) for k in LATENT_KINDS if guided or k != "eps_uncond"}
        self.final = torch.zeros(images, *latent)
        self.rgb_weight, self.rgb_bias = (t.float().cpu() for t in rgb_map)
        self.decoded = torch.zeros(len(timesteps), images, 3, *decode_hw, dtype=torch.uint8) if decode_hw else None

    def __getattr__(self, name: str) -> Tensor:
        tensors = self.__dict__.get("tensors", {})
        if name in tensors:
            return tensors[name]
        if name == "eps_uncond":
            raise AttributeError("eps_uncond was not computed: this generation ran without guidance (cfg_scale <= 1)")
        raise AttributeError(name)

    def to(self, device: Any) -> LatentsRecord:
        return self  # latents are copied to the CPU as they come (one small copy per step)

    def add(self, step: int, **tensors: Tensor) -> None:
        for k, v in tensors.items():
            if v is not None and k in self.tensors:
                self.tensors[k][step].copy_(v)

    def nbytes(self) -> int:
        n = sum(t.numel() * 4 for t in self.tensors.values()) + self.final.numel() * 4
        return n + (self.decoded.numel() if self.decoded is not None else 0)

    def to_rgb(self, z: Tensor) -> Tensor:
        """Latents (..., C, h, w) -> RGB (..., 3, h, w) in [-1, 1] by the fitted linear map (no decoder)."""
        rgb = torch.einsum("oc,...chw->...ohw", self.rgb_weight, z.float()) + self.rgb_bias[:, None, None]
        return rgb.clamp(-1, 1)

    def preview(self, kind: str = "x0", steps: Any = None, image: int = 0) -> np.ndarray:
        """Cheap RGB previews of one kind of latent (x_t, eps_cond, eps_uncond, eps, x0, final) for the chosen steps
        of one image: uint8 (S, h, w, 3) (or (h, w, 3) for a single int step or for "final")."""
        if kind == "final":
            z = self.final[image]
        else:
            if kind not in self.tensors:
                raise KeyError(f"unknown or unrecorded latent {kind!r}; recorded: {', '.join(self.tensors)}, final")
            n = len(self.timesteps)
            idx = _slots(list(range(n)), n, steps, "latents")
            z = self.tensors[kind][idx, image]
            z = z[0] if isinstance(steps, int) else z
        rgb = ((self.to_rgb(z) + 1) * 127.5).round().to(torch.uint8)  # (..., 3, h, w)
        return rgb.movedim(-3, -1).numpy()

    def state_dict(self) -> dict:
        return {
            "timesteps": self.timesteps,
            "tensors": self.tensors,
            "final": self.final,
            "rgb_weight": self.rgb_weight,
            "rgb_bias": self.rgb_bias,
            "decoded": self.decoded,
        }

    @classmethod
    def from_state_dict(cls, d: dict) -> LatentsRecord:
        rec = cls.__new__(cls)
        rec.timesteps, rec.tensors, rec.final = list(d["timesteps"]), dict(d["tensors"]), d["final"]
        rec.rgb_weight, rec.rgb_bias, rec.decoded = d["rgb_weight"], d["rgb_bias"], d["decoded"]
        return rec

    def __repr__(self) -> str:
        s, b, *latent = next(iter(self.tensors.values())).shape
        return (
            f"LatentsRecord({s} steps x {b} images x {latent}: {', '.join(self.tensors)}, {self.nbytes() / 1e6:.2f} MB)"
        )

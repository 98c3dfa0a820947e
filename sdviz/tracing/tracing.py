"""The Trace: run a generation inside it, then ask what the model did.

    import sdviz
    with sdviz.trace(pipe) as tr:                     # default: cross-attention, group norm, time embedding, latents
        result = pipe.generate("a red circle above a blue square", seed=1)
    tr.word_map("circle")                             # (64, 64): where the word "circle" was attended to
    tr.word_map("circle", steps=10, resolution=16)    # ... at step 10, in the 16x16 layers (needs keep=["step"])
    tr.groupnorm.frame()                              # per layer, step and group: mean and std in and out
    tr.time_embedding.sinusoid, tr.time_embedding.mlp # (steps, 320), (steps, 1280) for SD 1.5
    tr.latents.preview("x0")                          # what the model thought the clean image was, at every step
    tr.save("trace.pt"); tr2 = sdviz.load_trace("trace.pt")

How it works. Entering the block attaches listeners to the hook points the records need, and adds the trace to
the pipeline's observers, both under a scope of the running thread or task (`sdviz.events.Scope`); the pipeline
tells its observers when a generation starts and what each step computed, and announces every UNet call
(`sdviz.events.current_call()`: its step, its images and which of its rows are conditional), which the listeners
read. Leaving the block removes every listener and the observer, in a `finally`, so nothing is left behind even when
the generation raises. A trace records only the generations started inside its own `with` block, in its own thread
or task: another thread's generation on the same pipeline is never mixed in.

What it guarantees:

- Observing changes no number. Hooks only read. Attention still runs `F.scaled_dot_product_attention`; a recorded
  layer's probabilities are computed beside it, from the same Q and K, and only for the conditional rows of the
  batch (with guidance the UNet batch is [unconditional; conditional]). The same seed gives the same latents and
  the same image bytes with and without a trace.
- Not tracing costs nothing: with no hook attached, a hook point is one Python call and no probability is computed.
- Memory is known before the run. The trace estimates its records from shapes (see `layout.py`) when the
  generation starts, and refuses with the estimate if it is over `max_bytes`.
- Records are plain CPU tensors, independent of the pipeline: a trace saved on a GPU machine with SD 1.5 loads in
  a notebook without the weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from sdviz import shapes
from sdviz.events import Scope, UNetCall, current_call
from sdviz.hooks import Filter, HookCall, hook_points
from sdviz.tokenizer import Encoding
from sdviz.tracing import aggregate, export, files
from sdviz.tracing.layout import (
    DEFAULT_BUDGET,
    LAYERED,
    MemoryEstimate,
    check_keep,
    check_record,
    choose_layers,
    per_kind,
    plan_bytes,
    resolve_steps,
)
from sdviz.tracing.preview import latent_rgb_map
from sdviz.tracing.records import (
    AttentionRecord,
    GroupNormRecord,
    LatentsRecord,
    SelfAttentionRecord,
    TimeEmbeddingRecord,
)

if TYPE_CHECKING:
    from sdviz.events import GenerationInfo, GenerationResult, StepInfo
    from sdviz.pipeline import StableDiffusion



class TraceBudgetError(MemoryError):
    """The records a trace was asked for would take more memory than its budget (`max_bytes`)."""


class Trace:
    """Records of one generation. Create it with `sdviz.trace(pipe, ...)` and run `pipe.generate` inside `with`.

    Args:
        pipe: the `StableDiffusion` pipeline to observe.
        record: which records to keep, from "cross_attention", "self_attention", "groupnorm", "time_embedding",
            "latents" (default: all but self-attention), or "all".
        layers: which layers the layered records (attention, group norm) watch: hook names, globs, module paths, a
            list of those or a predicate; or a dict {record kind: filter}. A filter that selects nothing raises and
            lists close names.
        steps: which denoising steps the attention and group-norm records cover: None (all), an int, a slice, a list
            of indices (negative count from the end), or a predicate `(index, t) -> bool`. Latents and time
            embeddings are kept for every step.
        keep: what the attention records keep instead of summing over it: any of "step", "layer", "head" (or a
            dict {kind: axes}). Default: nothing (sum over heads, the layers of a resolution and the chosen steps).
        decode: also decode every step's predicted x0 with the VAE (slow; the cheap linear preview is always there).
        max_bytes: refuse to start a generation whose records would exceed this many bytes (default 512 MiB).

    A trace holds one generation: a second `generate` inside the same block replaces the records. Traces can be
    nested (each records what it was asked for); while one is active, every listener of an attention layer it
    watches (such as a `hooks(...)` callback) sees the conditional rows only.
    """

    def __init__(
        self,
        pipe: StableDiffusion,
        record: Iterable[str] | str | None = None,
        layers: Filter | Mapping[str, Filter] = None,
        steps: Any = None,
        keep: Iterable[str] | Mapping[str, Iterable[str]] | None = None,
        decode: bool = False,
        max_bytes: int | float = DEFAULT_BUDGET,
    ):
        self.pipe = pipe
        self.record = check_record(record)
        self._layer_filters = per_kind(layers, LAYERED, "layers")
        self.keep = {k: check_keep(v) for k, v in per_kind(keep, ("cross_attention", "self_attention"), "keep").items()}
        self.steps_filter = steps
        self.decode = bool(decode)
        self.max_bytes = max_bytes
        self.layers: dict[str, list[str]] = {}
        self.records: dict[str, Any] = {}
        self.info: dict[str, Any] | None = None
        self.encodings: list[dict] = []
        self.estimate: MemoryEstimate | None = None
        self.images_u8: Tensor | None = None
        self._handles: list[Any] = []
        self._attached = False
        self._scope: Scope | None = None
        self._run: GenerationInfo | None = None  # the generation being recorded (its UNet calls carry it)
        self._recorded_set: set[int] = set()
        if pipe is not None:  # choose the layers now, so that a bad filter fails at once
            names = list(hook_points(pipe))
            for kind in LAYERED:
                if kind in self.record:
                    candidates = shapes.layers(pipe.config, kind)
                    self.layers[kind] = choose_layers(candidates, names, self._layer_filters[kind], kind)

    # -- attaching and detaching -------------------------------------------------------------------------------------

    def __enter__(self) -> Trace:
        if self.pipe is None:
            raise RuntimeError("a loaded trace has no pipeline to observe; start a new one with sdviz.trace(pipe)")
        if self._attached:
            raise RuntimeError("this trace is already active; a trace records one `with` block")
        points = hook_points(self.pipe)
        self._scope = Scope()
        self._scope.open()
        try:
            for kind in ("cross_attention", "self_attention"):
                for name in self.layers.get(kind, []):
                    self._listen(points[name], partial(self._on_probs, kind, name))
            if {"layer", "head"} <= self.keep.get("cross_attention", set()):  # the values, for the output projection
                for name in self.layers.get("cross_attention", []):
                    self._listen(points[name.replace(".hook_probs", ".hook_values")], partial(self._on_values, name))
            for i, layer in enumerate(self.layers.get("groupnorm", [])):
                self._listen(points[f"{layer}.hook_in"], partial(self._on_norm, i, 0))
                self._listen(points[f"{layer}.hook_out"], partial(self._on_norm, i, 1))
            if "time_embedding" in self.record:
                self._listen(points["unet.hook_time_sinusoid"], partial(self._on_time, 0), rows=slice(0, 1))
                self._listen(points["unet.hook_time_embedding"], partial(self._on_time, 1), rows=slice(0, 1))
            self.pipe.add_observer(self, self._scope)
            self._attached = True
        except BaseException:
            self._detach()
            raise
        return self

    def __exit__(self, *exc: Any) -> bool:
        self._detach()
        return False

    def _listen(self, point: Any, fn: Any, rows: Any = "recorded") -> None:
        """Listen at a hook point, in this trace's scope; by default to the rows `_recorded_rows` chooses. Listeners
        only read."""
        rows = self._recorded_rows if rows == "recorded" else rows
        self._handles.append(point.listen(fn, rows=rows, scope=self._scope))

    def _detach(self) -> None:
        """Remove every listener and the observer; safe to call twice."""
        try:
            for h in self._handles:
                h.remove()
            self.pipe.remove_observer(self)
        finally:
            if self._scope is not None:
                self._scope.close()
            self._handles = []
            self._attached = False
            self._run = None
            for rec in self.records.values():
                rec.to("cpu")

    def _call(self) -> UNetCall | None:
        """The UNet call running now, if it belongs to the generation this trace records."""
        call = current_call()
        return call if call is not None and call.info is self._run else None

    def _recorded_rows(self, batch: int) -> slice:
        """The rows of a UNet batch the layered records want: the conditional half of a guided batch [uncond; cond]
        (all of an unguided one), and none at all on steps this trace does not record (so no probability is
        computed for them, unless another listener asks)."""
        call = self._call()
        if call is None or call.step not in self._recorded_set:
            return slice(0, 0)
        return call.cond_rows

    # -- the observer protocol (see sdviz.pipeline.Observer) -------------------------------------------------------

    def on_start(self, pipe: StableDiffusion, info: GenerationInfo) -> None:
        """A generation starts: plan, estimate, refuse if over budget, allocate."""
        b, timesteps = len(info.prompts), list(info.timesteps)
        layout = shapes.unet_layout(pipe.unet.config, info.latent_hw, pipe.config.clip.max_length)
        recorded = resolve_steps(self.steps_filter, timesteps)
        guided = info.cfg_scale > 1.0
        self.estimate = plan_bytes(
            layout,
            self.record,
            self.layers,
            self.keep,
            b,
            len(timesteps),
            len(recorded),
            (info.height, info.width),
            guided,
            self.decode,
            rows_per_call=max(c.stop - c.start for c in info.unet_calls),
        )
        if self.estimate.total > self.max_bytes:
            raise TraceBudgetError(
                f"this trace would hold {self.estimate.total / 1e6:,.1f} MB, over its budget of "
                f"{self.max_bytes / 1e6:,.1f} MB:\n{self.estimate}\n"
                "Record fewer layers or steps (layers=..., steps=...), keep less (keep=...), "
                "or raise the budget: sdviz.trace(pipe, ..., max_bytes=...)."
            )
        self.info = {
            "prompts": list(info.prompts),
            "negative_prompts": list(info.negative_prompts),
            "height": info.height,
            "width": info.width,
            "latent_hw": list(info.latent_hw),
            "timesteps": timesteps,
            "cfg_scale": float(info.cfg_scale),
            "sampler": info.sampler,
            "seeds": list(info.seeds),
            "config": pipe.config.to_dict(),
            "record": list(self.record),
            "recorded_steps": recorded,
        }
        self.encodings = [asdict(pipe.tokenizer.encode(p)) for p in info.prompts]
        device = pipe.device
        self.records = {}
        for kind, cls in (("cross_attention", AttentionRecord), ("self_attention", SelfAttentionRecord)):
            if kind in self.record:
                layers = [layout.attention[n] for n in self.layers[kind]]
                self.records[kind] = cls(kind, layers, b, recorded, len(timesteps), self.keep[kind], device)
        if "groupnorm" in self.record:
            norms = [layout.groupnorm[n] for n in self.layers["groupnorm"]]
            self.records["groupnorm"] = GroupNormRecord(norms, b, recorded, timesteps, device)
        if "time_embedding" in self.record:
            self.records["time_embedding"] = TimeEmbeddingRecord(timesteps, layout.time_dims, device)
        if "latents" in self.record:
            decode_hw = (info.height, info.width) if self.decode else None
            rgb = latent_rgb_map(pipe)
            self.records["latents"] = LatentsRecord(timesteps, b, layout.latent, guided, rgb, decode_hw)
        self._run = info
        self._recorded_set = set(recorded)
        self.images_u8 = None

    def on_step(self, pipe: StableDiffusion, step: StepInfo) -> None:
        rec = self.records.get("latents")
        if rec is not None:
            rec.add(
                step.index,
                x_t=step.latents,
                eps_cond=step.eps_cond,
                eps_uncond=step.eps_uncond,
                eps=step.eps,
                x0=step.x0,
            )
            if rec.decoded is not None:
                x = pipe.decode_latents(step.x0).float().clamp(-1, 1)  # (B, 3, H, W)
                rec.decoded[step.index] = ((x + 1) * 127.5).round().to(torch.uint8).cpu()

    def on_end(self, pipe: StableDiffusion, result: GenerationResult) -> None:
        self._run = None
        if "latents" in self.records:
            self.records["latents"].final.copy_(result.latents)
        self.images_u8 = torch.stack([torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1) for im in result.images])
        for rec in self.records.values():
            rec.to("cpu")

    # -- the listeners -----------------------------------------------------------------------------------------------

    def _images(self, call: UNetCall, hook: HookCall) -> slice:
        """The images (batch rows of the generation) of the UNet rows a listener was handed."""
        return slice(call.image_of(hook.rows.start), call.image_of(hook.rows.stop - 1) + 1)

    def _on_probs(self, kind: str, name: str, probs: Tensor, hook: HookCall) -> None:
        call = self._call()
        if call is not None:
            self.records[kind].add(name, call.step, self._images(call, hook), probs, hook.queries)

    def _on_values(self, name: str, v: Tensor, hook: HookCall) -> None:
        call = self._call()
        if call is not None:
            self.records["cross_attention"].add_values(name, self._images(call, hook), v)

    def _on_norm(self, layer: int, which: int, x: Tensor, hook: HookCall) -> None:
        call = self._call()
        if call is not None:
            self.records["groupnorm"].add(layer, which, call.step, self._images(call, hook), x)

    def _on_time(self, which: int, x: Tensor, hook: HookCall) -> None:
        call = self._call()
        if call is not None and call.index == 0:
            # every row holds the same t, and every UNet call of a step the same embedding: keep the step's first
            self.records["time_embedding"].add(which, call.step, x)

    # -- asking ------------------------------------------------------------------------------------------------------

    def _need(self, kind: str) -> Any:
        if self.info is None:
            raise RuntimeError("this trace holds no generation yet: call pipe.generate(...) inside the `with` block")
        if kind not in self.records:
            raise KeyError(f"this trace did not record {kind!r}; it recorded {', '.join(self.records)}")
        return self.records[kind]

    @property
    def cross_attention(self) -> AttentionRecord:
        return self._need("cross_attention")

    @property
    def self_attention(self) -> SelfAttentionRecord:
        return self._need("self_attention")

    @property
    def groupnorm(self) -> GroupNormRecord:
        return self._need("groupnorm")

    @property
    def time_embedding(self) -> TimeEmbeddingRecord:
        return self._need("time_embedding")

    @property
    def latents(self) -> LatentsRecord:
        return self._need("latents")

    @property
    def prompts(self) -> list[str]:
        return self._info()["prompts"]

    @property
    def timesteps(self) -> list[int]:
        return self._info()["timesteps"]

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the generated pictures."""
        return self._info()["height"], self._info()["width"]

    def _info(self) -> dict:
        if self.info is None:
            raise RuntimeError("this trace holds no generation yet: call pipe.generate(...) inside the `with` block")
        return self.info

    def tokens_of(self, image: int = 0) -> list[str]:
        """The readable tokens of one prompt, start and end included (no padding)."""
        self._info()
        e = self.encodings[image]
        return e["tokens"][: e["length"]]

    @property
    def tokens(self) -> list[str]:
        """The tokens of the first prompt: ["<|startoftext|>", "a", "red", "circle", "<|endoftext|>"]."""
        return self.tokens_of(0)

    @property
    def words(self) -> list[str]:
        """The words of the first prompt (what `word_map` accepts)."""
        self._info()
        return list(self.encodings[0]["words"])

    @property
    def images(self) -> list[Image.Image]:
        """The generated pictures."""
        if self.images_u8 is None:
            raise RuntimeError("the generation did not finish: no pictures")
        return [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in self.images_u8]

    @property
    def latent_hw(self) -> tuple[int, int]:
        """The latent grid (h, w) of the generation: the picture's size over the VAE's downsampling factor."""
        info = self._info()
        if "latent_hw" in info:
            return tuple(info["latent_hw"])
        factor = 2 ** (len(info["config"]["vae"]["channel_mult"]) - 1)  # a trace saved before latent_hw was kept
        return info["height"] // factor, info["width"] // factor

    def encoding(self, image: int = 0) -> Encoding:
        """The tokenised prompt of one image (`sdviz.tokenizer.Encoding`: tokens, words, which word each came from)."""
        self._info()
        return Encoding(**self.encodings[image])

    def word_positions(self, word: str | int, image: int = 0) -> list[int]:
        """The token positions (0..76) of a prompt word: its sub-tokens, for every occurrence of the word; or, for
        an int, of the word with that index in `words` (`sdviz.tokenizer.Encoding.positions`)."""
        return self.encoding(image).positions(word)

    def position_maps(
        self,
        groups: Iterable[Iterable[int]],
        image: int = 0,
        size: tuple[int, int] | None = None,
        method: Any = None,
        **select: Any,
    ) -> Tensor:
        """The mean map of each group of token positions (lists of 0..76), computing only those positions:
        (len(groups), H, W). `method` and `select` as in `token_maps`. What the widgets ask for."""
        return self._maps(image, size, method, groups=[list(g) for g in groups], **select)

    def _maps(
        self, image: int, size: Any, method: Any, words: Any = None, groups: Any = None, **select: Any
    ) -> Tensor:
        """`sdviz.tracing.aggregate.token_maps` on this trace's records (the one reduction to word maps); `words`
        (each a word or a word index) become groups of token positions under the method's rule."""
        agg = aggregate.get(method)
        encoding = self.encoding(image)
        if words is not None:
            groups = [aggregate.positions(encoding, w, agg) for w in words]
        return aggregate.token_maps(
            self.cross_attention,
            encoding,
            tuple(size or self.image_size),
            self.latent_hw,
            image=image,
            method=agg,
            self_attention=self.records.get("self_attention"),
            model=self.info["config"].get("name"),
            groups=groups,
            **select,
        )

    def token_maps(
        self, image: int = 0, size: tuple[int, int] | None = None, method: Any = None, **select: Any
    ) -> Tensor:
        """Cross-attention map of every token position, upsampled to the image size: (77, H, W).

        `method` is the aggregator: "sdviz" (the default: every layer, summed per resolution, bilinear, averaged),
        "daam" (DAAM 0.2.0's computation; needs keep=["layer", "head"]), "best" (the best on the toy world's ground
        truth, for the toy model only; needs `sdviz.trace(pipe, **aggregate.BEST.needs())`) or an
        `sdviz.tracing.aggregate.Aggregator`. "sdviz" differs from DAAM in five ways: it reads the mid block too,
        sums per resolution and upsamples bilinearly (DAAM: each (layer, head) bicubically, clamped at 0), averages
        over steps (DAAM sums), finds a word's tokens by word (DAAM by token matching) and streams sums (DAAM keeps
        every head); the module `sdviz.tracing.aggregate` details each and why the default stays "sdviz".
        `select` narrows what is averaged: steps= (step indices), resolution= (e.g. 16 or (16, 16)), layers= (with
        keep=["layer"]), heads= (with keep=["head"]).
        """
        return self._maps(image, size, method, **select)

    def word_map(
        self, word: str | int, image: int = 0, size: tuple[int, int] | None = None, method: Any = None, **select: Any
    ) -> Tensor:
        """Where a prompt word was attended to: the mean of its tokens' maps, upsampled to the image size, (H, W).

        A word split into several tokens ("cyan" -> "cy", "an") averages them, and so does a word that occurs twice.
        With the default method ("sdviz") values are average attention probabilities (a uniform map would be 1/77
        everywhere); normalise for display (`plots` does). `method` and `select` as in `token_maps`; with
        method="daam", a word's tokens are found as DAAM finds them (every match of its token sequence).
        """
        return self._maps(image, size, method, words=[word], **select)[0]

    def word_maps(
        self,
        words: Iterable[str] | None = None,
        image: int = 0,
        size: tuple[int, int] | None = None,
        method: Any = None,
        **select: Any,
    ) -> dict[str, Tensor]:
        """`word_map` for several words (default every word of the prompt), in one pass: {word: (H, W)}."""
        words = list(dict.fromkeys(self.encoding(image).words)) if words is None else list(words)
        maps = self._maps(image, size, method, words=words, **select)
        return dict(zip(words, maps, strict=True))

    def nbytes(self) -> int:
        """Bytes the records hold now."""
        n = sum(r.nbytes() for r in self.records.values())
        return n + (self.images_u8.numel() if self.images_u8 is not None else 0)

    def __repr__(self) -> str:
        if self.info is None:
            return f"Trace(record={list(self.record)}, no generation yet)"
        lines = [f"Trace of {self.prompts!r}, {len(self.timesteps)} steps, {self.nbytes() / 1e6:.2f} MB"]
        lines += [f"  {rec!r}" for rec in self.records.values()]
        return "\n".join(lines)

    def to_html(self, path: str | Path, image: int = 0, max_mb: float | None = None, drop: Iterable[str] = ()) -> Path:
        """One self-contained web page of this trace, the player and the explorer, that opens offline in any browser
        (`sdviz.tracing.export`; also `sdviz export trace.pt --out run.html`). Returns the page's path."""
        self._info()
        return export.export(self, path, image=image, max_mb=max_mb, drop=drop).path

    # -- saving and loading (the file format: sdviz.tracing.files) -------------------------------------------------

    def state_dict(self) -> dict:
        self._info()
        return files.state_dict(self)

    def save(self, path: str | Path) -> Path:
        """Write the trace to one file (torch's zip format; plain tensors, lists and numbers only)."""
        return files.save(self, path)

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        """A trace saved by `save`, with every query method and plot, and no pipeline."""
        d = files.read(path)
        try:
            tr = cls(None, record=d["info"]["record"])
            files.fill(tr, d)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"{path} is an sdviz trace, but damaged: {files.first_line(e)}") from None
        return tr


def trace(
    pipe: StableDiffusion,
    record: Iterable[str] | str | None = None,
    layers: Filter | Mapping[str, Filter] = None,
    steps: Any = None,
    keep: Iterable[str] | Mapping[str, Iterable[str]] | None = None,
    decode: bool = False,
    max_bytes: int | float = DEFAULT_BUDGET,
) -> Trace:
    """Trace a generation: `with sdviz.trace(pipe, record=[...]) as tr: pipe.generate(...)`. See `Trace`."""
    return Trace(pipe, record, layers, steps, keep, decode, max_bytes)


def load(path: str | Path) -> Trace:
    """Load a trace saved with `Trace.save` (no pipeline or weights needed)."""
    return Trace.load(path)

"""Prompt-to-prompt (Hertz et al. 2022, "Prompt-to-Prompt Image Editing with Cross Attention Control").

The paper's observation: the layout of a picture is decided early, in the cross-attention maps, where each prompt
token looks. Keep the maps and change the words, and the picture changes what it shows but not where. Four edits,
named as in the paper's code (`AttentionReplace`, `AttentionRefine`, `AttentionReweight`, `LocalBlend`) and in
diffusers' community `Prompt2PromptPipeline` (`cross_replace_steps`, `self_replace_steps`, `local_blend_words`):

    Reweight({"red": 2.0})          scale the attention column(s) of a word by a factor, on a range of steps
    Replace(0.8, 0.4)               prompts[0] is the source, the others targets with as many words; each target
                                    takes the source's cross-attention maps for the first `cross_replace_steps` of
                                    the steps, and its self-attention maps for the first `self_replace_steps`
    Refine(0.8, 0.4)                the same for a target that adds words: shared tokens take the source's maps,
                                    new words keep their own
    LocalBlend(["red", "blue"])     after every step, outside the region where the named words (one entry per
                                    prompt) are attended to, the target's latents are reset to the source's

    replace(pipe, "a red circle on the left", "a blue circle on the left", seed=1)    # -> GenerationResult, 2 images

How source and target are generated together. Prompt-to-prompt runs them as one batch from the same noise, and the
target's attention layers read the source's probabilities from the same UNet call. sdviz's pipeline runs one image
per UNet call on the CPU (so that a picture does not depend on its batch), source first: the source's call records
its conditional probabilities at every layer the edit touches, and the target's call, right after it in the same
step, takes them. On a GPU both images are in one call and the source's rows are recorded before the target's are
edited. Either way the source itself is only read: it is bit-identical to the source generated alone.

As in the paper's code, only the conditional rows of a guided batch are edited, self-attention is replaced only in
layers of at most 16 x 16 pixels (`self_replace_max_queries`), and step fractions follow its convention: 0.8 is the
first 80% of the steps, (0.2, 0.8) the steps from 20% to 80%.
"""

from __future__ import annotations

import math
import numbers
import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sdviz.editing.control import Edit, Run, Site, edit, step_range
from sdviz.editing.prompts import Alignment, refinement, replacement
from sdviz.hooks import Filter
from sdviz.shapes import AttentionLayer

if TYPE_CHECKING:
    from sdviz.pipeline import StableDiffusion

SELF_REPLACE_MAX_QUERIES = 16 * 16  # p2p replaces self-attention maps only in layers of at most 16 x 16 pixels


def _number(what: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


class Reweight(Edit):
    """Scale the cross-attention column(s) of words by a factor: `Reweight({"red": 2.0})` (p2p's "equalizer").

    Args:
        weights: {word: factor}; a word split into several tokens has each of its columns scaled. As in p2p, the
            probabilities are not renormalised: a factor of 2 doubles how much every pixel reads that word.
        reweight_steps: the steps to reweight: a fraction (the first 0.5 of the steps) or a pair of fractions; all
            by default. (`steps` is always the number of denoising steps, as in `generate`.)
        images: which images of the generation (indices) to reweight; all by default. Each must have every word.
        layers: a filter on the UNet's cross-attention hook points (default: all of them).

    A factor of 1.0 changes nothing, bit for bit: the probabilities come back equal, and the attention layer keeps
    its fused kernel's output.
    """

    name = "reweight"
    kinds = ("cross",)

    def __init__(
        self,
        weights: Mapping[str, float],
        reweight_steps: float | tuple[float, float] = 1.0,
        images: Sequence[int] | None = None,
        layers: Filter = None,
        steps: Any = None,
    ):
        super().__init__(layers)
        if steps is not None:
            raise TypeError(
                "Reweight(steps=...) is now reweight_steps=... (the fraction of the steps to reweight); "
                "steps= is the number of denoising steps, an argument of generate"
            )
        if not isinstance(weights, Mapping) or not weights:
            raise TypeError(f"weights is a dict {{word: factor}}, e.g. {{'red': 2.0}}; got {weights!r}")
        self.weights = {w: _number(f"the weight of {w!r}", x) for w, x in weights.items()}
        step_range(reweight_steps, 1, "reweight_steps")  # checked now, resolved per generation
        self.reweight_steps, self.images = reweight_steps, None if images is None else [int(i) for i in images]
        self._factors: dict[int, Tensor] = {}  # image -> (M,) factor per token column
        self._steps = range(0)

    def setup(self, run: Run) -> None:
        images = range(len(run.prompts)) if self.images is None else self.images
        for i in images:
            if not 0 <= i < len(run.prompts):
                raise IndexError(f"reweight: image {i} out of range; the generation has {len(run.prompts)} prompts")
        self._steps = step_range(self.reweight_steps, run.steps, "reweight_steps")
        self._factors = {}
        for i in images:
            factors = torch.ones(len(run.encodings[i].ids))  # (M,)
            for word, w in self.weights.items():
                factors[run.encodings[i].positions(word)] = w
            self._factors[i] = factors

    def wants(self, layer: AttentionLayer, step: int, image: int) -> bool:
        return self.on_layer(layer) and step in self._steps and image in self._factors

    def apply(self, site: Site, probs: Tensor) -> Tensor | None:
        ones = torch.ones(probs.shape[-1])
        factors = torch.stack([self._factors.get(i, ones) for i in site.images]).to(probs)  # (rows, M)
        return probs * factors[:, None, None, :]  # (rows, h, chunk, M) * (rows, 1, 1, M)


def _cross_alpha(spec: Any, run: Run, target: int) -> Tensor:
    """(steps, M) bool: at which steps each target column takes the source's map (p2p's `cross_replace_alpha`).

    `spec` is a fraction, a pair, or a dict {"default_": fraction or pair, word: fraction or pair, ...}: a word of
    the target prompt gets its own range (as in p2p: `{"default_": 1.0, "dragon": 0.4}`)."""
    bounds = dict(spec) if isinstance(spec, Mapping) else {"default_": spec}
    n, m = run.steps, len(run.encodings[target].ids)
    alpha = torch.zeros(n, m, dtype=torch.bool)
    alpha[list(step_range(bounds.pop("default_", 1.0), n, "cross_replace_steps"))] = True
    for word, b in bounds.items():
        try:
            positions = run.encodings[target].positions(word)
        except ValueError:
            continue  # checked for every target in `setup`: the word must be in one of them
        alpha[:, positions] = False
        alpha[list(step_range(b, n, f"cross_replace_steps[{word!r}]")), positions] = True
    return alpha


class Replace(Edit):
    """Prompt-to-prompt's *replace* (`AttentionReplace`): generate a source prompt (image 0) and target prompts with
    the same number of words from the same seed; each target takes the source's attention maps.

    Args:
        cross_replace_steps: the steps on which a target's cross-attention maps are the source's (mapped word for
            word): a fraction (0.8: the first 80%), a pair of fractions, or a dict {"default_": ..., word: ...}
            giving some words of the target their own range.
        self_replace_steps: the steps on which a target's self-attention maps are the source's (fraction or pair),
            in layers with at most `self_replace_max_queries` pixels.
        layers: a filter on the UNet's attention hook points (default: every cross- and self-attention layer).

    Prompts whose words do not pair up are an error that names the differing tokens and suggests `Refine`. The
    source is only read, never changed: it is the same picture, bit for bit, as the source generated alone.
    """

    name = "replace"
    kinds = ("cross", "self")

    def __init__(
        self,
        cross_replace_steps: float | tuple[float, float] | Mapping[str, Any] = 0.8,
        self_replace_steps: float | tuple[float, float] = 0.4,
        self_replace_max_queries: int = SELF_REPLACE_MAX_QUERIES,
        layers: Filter = None,
    ):
        super().__init__(layers)
        for bounds in (
            cross_replace_steps.values() if isinstance(cross_replace_steps, Mapping) else [cross_replace_steps]
        ):
            step_range(bounds, 1, "cross_replace_steps")
        step_range(self_replace_steps, 1, "self_replace_steps")
        self.cross_replace_steps, self.self_replace_steps = cross_replace_steps, self_replace_steps
        q = self_replace_max_queries
        if isinstance(q, bool) or not isinstance(q, numbers.Integral) or q < 1:
            raise ValueError(f"self_replace_max_queries is a number of pixels >= 1 (a layer's n), got {q!r}")
        self.self_replace_max_queries = int(q)
        self.alignments: dict[int, Alignment] = {}  # target image -> how its columns come from the source's
        self._alpha: dict[int, Tensor] = {}  # target image -> (steps, M) bool
        self._cross_steps: set[int] = set()
        self._self_steps = range(0)
        self._source: dict[tuple[str, int, int], Tensor] = {}  # (layer, first query, end) -> the source's (h, q, M)
        self._source_step: int | None = None

    def align(self, run: Run, target: int) -> Alignment:
        return replacement(run.encodings[0], run.encodings[target], run.prompts[0], run.prompts[target])

    def setup(self, run: Run) -> None:
        run.check_same_seed(self.name)
        targets = range(1, len(run.prompts))
        self.alignments = {j: self.align(run, j) for j in targets}
        if isinstance(self.cross_replace_steps, Mapping):
            for word in self.cross_replace_steps:
                if word != "default_" and not any(_has_word(run, j, word) for j in targets):
                    run.encodings[1].positions(word)  # raises, listing the target's words
        self._alpha = {j: _cross_alpha(self.cross_replace_steps, run, j) & ~self.alignments[j].own for j in targets}
        self._cross_steps = {s for a in self._alpha.values() for s in a.any(1).nonzero()[:, 0].tolist()}
        self._self_steps = step_range(self.self_replace_steps, run.steps, "self_replace_steps")
        self.finish()

    def wants(self, layer: AttentionLayer, step: int, image: int) -> bool:
        if not self.on_layer(layer):
            return False
        if layer.kind == "cross_attention":
            return step in self._cross_steps
        return step in self._self_steps and layer.n <= self.self_replace_max_queries

    def record(self, site: Site, probs: Tensor) -> None:
        """Keep the source's (image 0's) probabilities of this step for its targets."""
        if 0 not in site.images:
            return
        if site.step != self._source_step:
            self._source, self._source_step = {}, site.step
        self._source[(site.layer.name, site.queries.start, site.queries.stop)] = probs[site.images.index(0)]

    def source_probs(self, site: Site) -> Tensor:
        """The source's probabilities (h, queries, M) for the chunk a target row is in."""
        if self._source_step != site.step:
            raise RuntimeError(
                f"{self.name}: the source's maps of step {site.step} were not recorded before its targets"
            )
        key = (site.layer.name, site.queries.start, site.queries.stop)
        if key in self._source:
            return self._source[key]
        # the source's chunks of query positions differ from this call's: put the layer's together, then cut
        pieces = sorted((k[1], v) for k, v in self._source.items() if k[0] == site.layer.name)
        return torch.cat([v for _, v in pieces], dim=1)[:, site.queries]  # (h, N, M) -> (h, queries, M)

    def apply(self, site: Site, probs: Tensor) -> Tensor | None:
        rows = [(r, j) for r, j in enumerate(site.images) if j in self.alignments]
        if not rows:
            return None
        source, out = self.source_probs(site), probs.clone()
        for r, j in rows:
            if site.cross:  # columns whose step range is on take the source's (mapped); the others stay the target's
                alpha = self._alpha[j][site.step].to(probs.device)  # (M,)
                out[r] = torch.where(alpha, self.alignments[j].map(source), probs[r])  # (h, queries, M)
            else:  # self-attention: the source's map, query for query
                out[r] = source
        return out

    def finish(self) -> None:
        self._source, self._source_step = {}, None


def _has_word(run: Run, image: int, word: str) -> bool:
    try:
        run.encodings[image].positions(word)
    except ValueError:
        return False
    return True


class Refine(Replace):
    """Prompt-to-prompt's *refine* (`AttentionRefine`): like `Replace`, for a target that adds (or drops) words.

    The tokens the prompts share, in order, take the source's cross-attention maps; the target's new words keep
    their own. Self-attention is replaced as in `Replace`.
    """

    name = "refine"

    def align(self, run: Run, target: int) -> Alignment:
        return refinement(run.encodings[0], run.encodings[target])


class LocalBlend(Edit):
    """Prompt-to-prompt's *local blend* (`LocalBlend`): confine a target's change to where some words look.

    After every step from `start_blend` on, for each target: the words' cross-attention maps (summed over the steps
    so far, the layers of `resolution` x `resolution` pixels and the heads; one map for the source's words, one for
    the target's) are max-pooled over 3 x 3, brought to the latent's size, divided by their maximum and thresholded;
    outside the union of the source's and the target's masks, the target's latents are set to the source's:

        x_target <- x_source + mask * (x_target - x_source)

    Args:
        words: one entry per prompt (source first), a word or a list of words: ["red", "blue"] or
            [("red", "circle"), ("blue", "circle")]; diffusers' `local_blend_words`, p2p's `LocalBlend(prompts, words)`.
        threshold: of the normalised map, strictly between 0 and 1 (p2p: 0.3).
        start_blend: the fraction of the steps before blending starts (p2p: 0.2).
        resolution: the cross-attention layers whose maps count (p2p: the 16 x 16 ones); an int or (h, w).
        layers: a filter on the UNet's cross-attention hook points, narrowed further by `resolution`.

    After a generation, `mask` is the last step's blend mask at the latent's size, (B, h, w) bool (row 0 the
    source's own).
    """

    name = "local blend"
    kinds = ("cross",)

    def __init__(
        self,
        words: Sequence[str | Sequence[str]],
        threshold: float = 0.3,
        start_blend: float = 0.2,
        resolution: int | tuple[int, int] = 16,
        layers: Filter = None,
    ):
        super().__init__(layers)
        if isinstance(words, str) or not isinstance(words, Sequence) or not words:
            raise TypeError(
                f"local_blend_words is one word (or list of words) per prompt, e.g. ['red', 'blue']; got {words!r}"
            )
        self.words = [[w] if isinstance(w, str) else list(w) for w in words]
        self.threshold = _number("threshold", threshold)
        if not 0.0 < self.threshold < 1.0:  # >= 1 masks nothing (the target = the source), <= 0 everything (no blend)
            raise ValueError(f"threshold is a fraction of the map's maximum, in (0, 1); got {threshold!r}")
        self.start_blend = _number("start_blend", start_blend)
        step_range(self.start_blend, 1, "start_blend")
        self.resolution = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        self.mask: Tensor | None = None
        self._positions: dict[int, list[int]] = {}
        self._blend_layers: set[str] = set()
        self._maps: Tensor | None = None  # (B, N): word attention summed over steps, layers and heads
        self._start = 0

    def setup(self, run: Run) -> None:
        run.check_same_seed(self.name)
        if len(self.words) != len(run.prompts):
            raise ValueError(
                f"local_blend_words needs one word (or list of words) per prompt: {len(run.prompts)} prompts, "
                f"{len(self.words)} entries ({self.words})"
            )
        self._positions = {
            i: sorted({p for w in ws for p in run.encodings[i].positions(w)})
            for i, ws in enumerate(self.words)
        }
        chosen = {n: run.layout.attention[n] for n in self.layer_names}
        self._blend_layers = {n for n, a in chosen.items() if a.hw == self.resolution}
        if not self._blend_layers:
            have = sorted({f"{a.hw[0]}x{a.hw[1]}" for a in chosen.values()})
            raise ValueError(
                f"local blend: no cross-attention layer of {self.resolution[0]}x{self.resolution[1]} pixels for "
                f"this picture size; the layers have {', '.join(have)}: pass resolution=..."
            )
        self._maps = torch.zeros(len(run.prompts), self.resolution[0] * self.resolution[1])
        self._start = step_range(self.start_blend, run.steps, "start_blend").stop
        self.mask = None

    def wants(self, layer: AttentionLayer, step: int, image: int) -> bool:
        return layer.name in self._blend_layers

    def record(self, site: Site, probs: Tensor) -> None:
        """Add the words' attention in this chunk to the running maps (before any edit of this layer)."""
        self._maps = self._maps.to(probs.device)
        for r, i in enumerate(site.images):
            mass = probs[r][..., self._positions[i]].sum(-1).sum(0)  # (h, queries, k) -> (h, queries) -> (queries,)
            self._maps[i, site.queries] += mass.float()

    def edit_latents(self, step: int, latents: Tensor) -> Tensor | None:
        if step < self._start:
            return None
        h, w = self.resolution
        maps = self._maps.view(-1, 1, h, w)  # (B, N) -> (B, 1, h, w)
        maps = F.max_pool2d(maps, 3, stride=1, padding=1)  # (B, 1, h, w): a word's region, one pixel wider
        maps = F.interpolate(maps, size=latents.shape[-2:], mode="nearest")  # (B, 1, h, w) -> (B, 1, H, W) latent
        maps = maps / maps.amax(dim=(2, 3), keepdim=True).clamp_min(torch.finfo(maps.dtype).tiny)  # max 1 per image
        mask = maps > self.threshold  # (B, 1, H, W)
        mask = mask[:1] | mask  # each target's region united with the source's
        self.mask = mask[:, 0].cpu()
        source = latents[:1]  # (1, 4, H, W)
        return source + mask.to(latents) * (latents - source)  # (B, 4, H, W); row 0 stays the source

    def finish(self) -> None:
        self._maps = None if self._maps is None else torch.zeros_like(self._maps)


# -- one call each ---------------------------------------------------------------------------------------------------


def _same_seed(seed: Any, n: int) -> list[int]:
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    if isinstance(seed, Sequence):
        return list(seed)
    return [seed] * n


def replace(
    pipe: StableDiffusion,
    source: str,
    target: str | Sequence[str],
    cross_replace_steps: float | tuple[float, float] | Mapping[str, Any] = 0.8,
    self_replace_steps: float | tuple[float, float] = 0.4,
    local_blend_words: Sequence[str | Sequence[str]] | None = None,
    seed: int | None = None,
    **generate: Any,
) -> Any:
    """Generate `source` and `target` (or several targets) together from one seed, each target with the source's
    attention maps (`Replace`), optionally confined by a `LocalBlend` of `local_blend_words` (one per prompt).

    Returns the pipeline's `GenerationResult`: images[0] is the source, images[1:] the targets. Other keyword
    arguments go to `pipe.generate` (steps=, cfg_scale=, sampler=, ...).
    """
    return _pair(
        Replace(cross_replace_steps, self_replace_steps), pipe, source, target, local_blend_words, seed, generate
    )


def refine(
    pipe: StableDiffusion,
    source: str,
    target: str | Sequence[str],
    cross_replace_steps: float | tuple[float, float] | Mapping[str, Any] = 0.8,
    self_replace_steps: float | tuple[float, float] = 0.4,
    local_blend_words: Sequence[str | Sequence[str]] | None = None,
    seed: int | None = None,
    **generate: Any,
) -> Any:
    """Like `replace`, for a target that adds words (`Refine`)."""
    return _pair(
        Refine(cross_replace_steps, self_replace_steps), pipe, source, target, local_blend_words, seed, generate
    )


def _pair(
    control: Replace,
    pipe: StableDiffusion,
    source: str,
    target: Any,
    blend: Any,
    seed: Any,
    generate: dict,
) -> Any:
    prompts = [source, *([target] if isinstance(target, str) else target)]
    edits: list[Edit] = [control] + ([LocalBlend(blend)] if blend is not None else [])
    with edit(pipe, *edits):
        return pipe.generate(prompts, seed=_same_seed(seed, len(prompts)), **generate)


def reweight(
    pipe: StableDiffusion,
    prompt: str,
    weights: Mapping[str, float],
    reweight_steps: float | tuple[float, float] = 1.0,
    seed: int | None = None,
    **generate: Any,
) -> Any:
    """Generate `prompt` with some words' attention scaled (`Reweight`) on the fraction `reweight_steps` of the
    steps; returns the `GenerationResult`. Other keyword arguments go to `pipe.generate` (steps= is the number of
    denoising steps there, as for `replace` and `refine`)."""
    steps = generate.get("steps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, numbers.Integral)):
        raise TypeError(f"steps={steps!r} is the number of denoising steps; the fraction to reweight is reweight_steps")
    with edit(pipe, Reweight(weights, reweight_steps)):
        return pipe.generate(prompt, seed=seed, **generate)

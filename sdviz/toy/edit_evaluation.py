"""How well prompt-to-prompt works on the embedded model: the measurements behind the tests and the README.

    swaps = colour_swaps(20)                           # fixed (source, target) prompts that change one colour word
    rows = evaluate_replace(pipe, swaps, blend=True)   # per swap: layout IoU, colour read, pixels outside the blend
    summarise(rows)
    reweight_growth(pipe, "a large red circle above a small blue square", "red", (0.5, 2.0, 4.0))

Everything is judged by the toy world's pixel judge (`sdviz.toy.judge`), which finds each named object by its colour:

- layout: the intersection over union of an object's pixel mask in the source and in the target (the target's object
  has the new colour); a prompt's score is the lowest over its objects;
- colour: does the judge find an object of the target's new colour;
- local blend: outside the final blend mask the target's latents must be the source's, bit for bit; in pixels,
  outside the mask brought to pixel size and widened by `margin` latent pixels, the change of the pixel channels
  (0..255) between source and target: its mean, its largest value and the fraction above 8. Pixels can change a
  little there although the latents do not: the VAE decoder mixes the whole latent (its middle block is a
  self-attention layer), which shows as a faint ring at the anti-aliased edges of the unchanged objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from sdviz.pipeline import StableDiffusion

SETTINGS = {"steps": 25, "cfg_scale": 5.0, "sampler": "ddim"}  # fewer steps than the model's 50: the proofs' speed


@dataclass(frozen=True)
class ColourSwap:
    """A source prompt and a target prompt that differ in the colour of object `index`."""

    source: str
    target: str
    old: str
    new: str
    index: int
    seed: int


def colour_swaps(n: int = 20, seed: int = 0) -> list[ColourSwap]:
    """`n` fixed colour swaps, alternately of one-object and two-object captions, drawn from the combinations the
    model was trained on (source and target both), each with a generation seed. Same n and seed, same list."""
    from sdviz.toy.world import COLOURS, ObjectSpec, SceneSpec, is_held_out, train_specs

    rng = np.random.default_rng(seed)
    specs = train_specs()
    pools = [[s for s in specs if len(s.objects) == 1], [s for s in specs if len(s.objects) == 2]]
    out: list[ColourSwap] = []
    while len(out) < n:
        pool = pools[len(out) % 2]
        spec = pool[int(rng.integers(len(pool)))]
        k = int(rng.integers(len(spec.objects)))
        free = [c for c in COLOURS if c not in {o.colour for o in spec.objects}]
        new = free[int(rng.integers(len(free)))]
        objects = list(spec.objects)
        objects[k] = ObjectSpec(new, objects[k].shape, objects[k].size)
        target = SceneSpec(tuple(objects), spec.position, spec.relation)
        gen_seed = int(rng.integers(2**31 - 1))
        if not is_held_out(target):
            out.append(ColourSwap(spec.caption(), target.caption(), spec.objects[k].colour, new, k, gen_seed))
    return out


def layout_iou(source_image: Any, source: str, target_image: Any, target: str) -> float:
    """The lowest, over the prompt's objects, IoU of an object's pixels in the source and in the target (0 for an
    object the judge finds in neither: `sdviz.toy.judge.iou`)."""
    from sdviz.toy.judge import iou, judge

    vs, vt = judge(source_image, source), judge(target_image, target)
    return min(iou(a.mask, b.mask) for a, b in zip(vs.objects, vt.objects, strict=True))


def colour_read(image: Any, prompt: str, index: int) -> bool:
    """Does the judge find object `index` of the prompt in its colour?"""
    from sdviz.toy.judge import judge

    return bool(judge(image, prompt).objects[index].colour_ok)


def outside_change(
    source: Any, target: Any, mask: torch.Tensor, factor: int, margin: int = 1
) -> tuple[float, float, float]:
    """(max, mean, fraction above 8) of the absolute change of pixel channels (0..255) between two pictures outside
    a latent-size mask (h, w) bool, widened by `margin` latent pixels and brought to pixel size (x factor). NaNs if
    no pixel is outside."""
    m = mask.float()[None, None]  # (1, 1, h, w)
    if margin:
        m = F.max_pool2d(m, 2 * margin + 1, stride=1, padding=margin)  # (1, 1, h, w), widened
    inside = F.interpolate(m, scale_factor=factor, mode="nearest")[0, 0].bool().numpy()  # (H, W)
    diff = np.abs(np.asarray(source, dtype=np.int16) - np.asarray(target, dtype=np.int16))  # (H, W, 3)
    out = diff[~inside]
    if not out.size:
        return float("nan"), float("nan"), float("nan")
    return float(out.max()), float(out.mean()), float((out > 8).mean())


@dataclass
class SwapResult:
    """One colour swap's measurements (see the module docstring)."""

    source: str
    target: str
    seed: int
    iou: float  # layout: source vs target (replace)
    colour_ok: bool  # the judge reads the new colour in the target
    source_ok: bool  # ... and the old colour in the source
    alone_iou: float | None = None  # source vs the target generated alone from the same seed (no edit)
    alone_colour_ok: bool | None = None
    blend_iou: float | None = None  # with local blend of the two colour words
    blend_colour_ok: bool | None = None
    blend_latents_kept: bool | None = None  # the target's latents outside the mask are the source's, bit for bit
    blend_outside_max: float | None = None  # largest pixel change outside the blend mask (+ margin)
    blend_outside_mean: float | None = None
    blend_outside_over_8: float | None = None  # fraction of the outside pixel channels that changed by more than 8
    blend_outside_by_margin: dict[int, float] | None = None  # the largest change for margins 0, 1, 2
    blend_area: float | None = None  # fraction of the latent inside the blend mask


def evaluate_replace(
    pipe: StableDiffusion,
    swaps: Sequence[ColourSwap],
    cross_replace_steps: float = 0.8,
    self_replace_steps: float = 0.4,
    alone: bool = False,
    blend: bool = False,
    margin: int = 1,
    **settings: Any,
) -> list[SwapResult]:
    """Run `replace` on every swap (and, if asked, the target alone and replace with a local blend of the colour
    words) and measure each (see the module docstring). `settings` go to `pipe.generate` (default: SETTINGS)."""
    from sdviz.editing.control import edit
    from sdviz.editing.p2p import LocalBlend, Replace, replace

    settings = {**SETTINGS, "progress": False, **settings}
    factor = pipe.config.vae.downsampling_factor
    rows = []
    for s in swaps:
        res = replace(pipe, s.source, s.target, cross_replace_steps, self_replace_steps, seed=s.seed, **settings)
        src, tgt = res.images
        row = SwapResult(
            s.source,
            s.target,
            s.seed,
            layout_iou(src, s.source, tgt, s.target),
            colour_read(tgt, s.target, s.index),
            colour_read(src, s.source, s.index),
        )
        if alone:
            plain = pipe.generate(s.target, seed=s.seed, **settings).image
            row.alone_iou = layout_iou(src, s.source, plain, s.target)
            row.alone_colour_ok = colour_read(plain, s.target, s.index)
        if blend:
            lb = LocalBlend([s.old, s.new])
            with edit(pipe, Replace(cross_replace_steps, self_replace_steps), lb):
                res = pipe.generate([s.source, s.target], seed=[s.seed, s.seed], **settings)
            (bsrc, btgt), outside = res.images, ~lb.mask[1]
            row.blend_iou = layout_iou(bsrc, s.source, btgt, s.target)
            row.blend_colour_ok = colour_read(btgt, s.target, s.index)
            row.blend_latents_kept = bool(torch.equal(res.latents[1][:, outside], res.latents[0][:, outside]))
            change = outside_change(bsrc, btgt, lb.mask[1], factor, margin)
            row.blend_outside_max, row.blend_outside_mean, row.blend_outside_over_8 = change
            row.blend_outside_by_margin = {k: outside_change(bsrc, btgt, lb.mask[1], factor, k)[0] for k in range(3)}
            row.blend_area = float(lb.mask[1].float().mean())
        rows.append(row)
    return rows


def summarise(rows: Sequence[SwapResult]) -> dict[str, float]:
    """Means and rates over the swaps (the figures the README quotes)."""

    def mean(key: str) -> float:
        xs = [getattr(r, key) for r in rows if getattr(r, key) is not None]
        xs = [float(x) for x in xs if not (isinstance(x, float) and np.isnan(x))]
        return float(np.mean(xs)) if xs else float("nan")

    out = {k: mean(k) for k in asdict(rows[0]) if k not in ("source", "target", "seed", "blend_outside_by_margin")}
    out["iou_min"] = min(r.iou for r in rows)
    out["iou_at_least_0.8"] = float(np.mean([r.iou >= 0.8 for r in rows]))
    if rows[0].blend_outside_max is not None:
        for key in ("blend_outside_max", "blend_outside_mean", "blend_outside_over_8"):
            out[f"{key}_worst"] = max(getattr(r, key) for r in rows if not np.isnan(getattr(r, key)))
    out["n"] = float(len(rows))
    return out


def reweight_growth(
    pipe: StableDiffusion,
    prompt: str,
    word: str,
    weights: Sequence[float] = (0.5, 2.0, 4.0),
    seed: int = 1,
    **settings: Any,
) -> dict[float, dict[str, Any]]:
    """For each weight: how the reweighted word's map and every other content word's map changed against weight 1.

    Maps are traced inside the edit (the probabilities the network used), summed over steps, layers and heads. For
    each weight: `growth`, the word's total attention over its total at weight 1; `others`, per other word, the
    relative L1 change of its map, |m_w - m_1|_1 / |m_1|_1.
    """
    from sdviz.editing.control import edit
    from sdviz.editing.p2p import Reweight
    from sdviz.tracing import trace

    settings = {**SETTINGS, "progress": False, **settings}
    stop = {"a", "an", "the", "of", "on", "in", "at", "to", "and"}

    def maps(w: float) -> dict[str, torch.Tensor]:
        with edit(pipe, Reweight({word: w})), trace(pipe, record=["cross_attention"]) as tr:
            pipe.generate(prompt, seed=seed, **settings)
        words = [x for x in dict.fromkeys(tr.words) if x not in stop]
        return tr.word_maps(words)

    base = maps(1.0)
    out: dict[float, dict[str, Any]] = {}
    for w in weights:
        m = maps(w)
        others = {x: float((m[x] - base[x]).abs().sum() / base[x].abs().sum()) for x in base if x != word}
        out[w] = {"growth": float(m[word].sum() / base[word].sum()), "others": others}
    return out

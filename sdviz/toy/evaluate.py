"""Evaluating the embedded model: generate the held-out prompts and let the judge read the pictures.

The held-out prompts (`world.held_out_prompts`) name combinations that training never showed (a purple triangle
alone, a red object next to a blue one, ...). Each prompt comes with its own seed, so the evaluation is the same
100 pictures on every run. The judge (`judge.py`) checks, per object named in the prompt, its colour, shape and
position, and per picture that it holds exactly the named objects; `evaluate` returns the rates, and the VAE's
reconstruction PSNR on held-out scenes.

`pictures` is the generation loop itself, shared with the attention check and the ladder (`attention_scores.py`):
it yields each picture with its prompt, seed, optional trace and the ground truth the world gives (per named object,
the pixels of its colour); `held_out_pictures` runs it over the held-out pairs. Every measurement of the toy model
generates with one set of settings, `EVAL` (50 DDIM steps, cfg 5): the model card's numbers are measured with it.

    from sdviz.toy.evaluate import evaluate
    report = evaluate()            # the shipped model; or evaluate("runs/toy/model")
    report["rates"]                # {"colour": 0.97, "shape": 0.85, "position": 0.93, "count": 0.8, ...}
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sdviz.toy import judge, world


@dataclass(frozen=True)
class EvalSettings:
    """How the evaluation, the attention check and the ladder generate their pictures."""

    steps: int = 50
    cfg_scale: float = 5.0
    sampler: str = "ddim"

    def generate_kwargs(self) -> dict[str, Any]:
        """The settings as keyword arguments of `StableDiffusion.generate` (and as a report's record of them). Not
        `dataclasses.asdict`: it deep-copies a Sampler instance given as `sampler`, and the copy forgets the
        timesteps the caller set."""
        return {"steps": self.steps, "cfg_scale": self.cfg_scale, "sampler": self.sampler}


EVAL = EvalSettings()  # the model card's settings

TARGETS = {"colour": 0.90, "position": 0.85, "shape": 0.75, "vae_psnr": 28.0}

# What each metric counts (the judge's rules are in judge.py's docstring), in the order the model card lists them.
METRICS = {
    "colour": "fraction of named objects of which an object of their colour is drawn",
    "shape": "fraction of named objects whose (largest) blob of their colour has their shape",
    "position": "fraction of named objects at their position or in their relation, where the prompt says one",
    "size": "fraction of named objects of their size, where the prompt says one",
    "count": "fraction of pictures holding exactly the named objects: one of each named colour, no other colour",
    "correct": "fraction of pictures right in colour, shape, position and count for every named object",
    "vae_psnr": "PSNR (dB) of the VAE's reconstructions of 256 held-out scenes, through the mean latent",
}


def load_model(model: Any):
    """A `StableDiffusion` pipeline from a pipeline (returned as is), a weights path, or None (the shipped model)."""
    from sdviz.pipeline import StableDiffusion, load_pipeline

    if isinstance(model, StableDiffusion):
        return model
    return load_pipeline(model)


@dataclass
class HeldOutPicture:
    """One generated picture of a toy-world prompt (held out, or not), with what the world knows about it."""

    prompt: str
    seed: int
    image: Image.Image
    seconds: float  # generation time
    trace: Any = None  # the `sdviz.trace` of the generation, when `trace_with` asked for one

    @cached_property
    def spec(self) -> world.SceneSpec:
        """What the prompt names: its objects, and their position or relation."""
        return world.parse_caption(self.prompt)

    @cached_property
    def masks(self) -> list[np.ndarray]:
        """The ground truth per named object, in the prompt's order: the pixels of its colour in the picture,
        (H, W) bool, specks removed (`judge.segment`). The two objects of a prompt always differ in colour."""
        return [judge.segment(self.image, o.colour) for o in self.spec.objects]


def pictures(
    pipe: Any,
    pairs: Sequence[tuple[str, int]],
    steps: int = EVAL.steps,
    cfg_scale: float = EVAL.cfg_scale,
    sampler: str = EVAL.sampler,
    trace_with: dict[str, Any] | None = None,
    progress: bool = True,
    desc: str = "pictures",
) -> Iterator[HeldOutPicture]:
    """Generate each (prompt, seed) of `pairs` with the pipeline `pipe`, one at a time.

    With `trace_with` (the arguments of `sdviz.trace`, e.g. {"record": ["cross_attention"]}), each generation runs
    inside `sdviz.trace(pipe, **trace_with)` and the picture carries its trace.
    """
    from sdviz.tracing import trace

    if progress:
        from tqdm.auto import tqdm

        pairs = tqdm(pairs, desc=desc)
    settings = {**EvalSettings(steps, cfg_scale, sampler).generate_kwargs(), "progress": False}
    for prompt, s in pairs:
        t0 = time.perf_counter()
        if trace_with is not None:
            with trace(pipe, **trace_with) as tr:
                image = pipe.generate(prompt, seed=s, **settings).image
        else:
            tr, image = None, pipe.generate(prompt, seed=s, **settings).image
        yield HeldOutPicture(prompt, s, image, time.perf_counter() - t0, tr)


def held_out_pictures(
    model: Any = None,
    n: int = 100,
    seed: int = 0,
    steps: int = EVAL.steps,
    cfg_scale: float = EVAL.cfg_scale,
    sampler: str = EVAL.sampler,
    trace_with: dict[str, Any] | None = None,
    progress: bool = True,
    desc: str = "held-out prompts",
) -> Iterator[HeldOutPicture]:
    """The `n` held-out (prompt, seed) pairs of `world.held_out_prompts(n, seed)`, generated by `pictures`.

    `model`: as `load_model`.
    """
    pairs = world.held_out_prompts(n, seed)
    return pictures(load_model(model), pairs, steps, cfg_scale, sampler, trace_with, progress, desc)


@torch.no_grad()
def vae_psnr(pipe: Any, n: int = 256, seed: int = 0, batch_size: int = 32) -> float:
    """PSNR (dB) of VAE reconstructions (encode to the mean latent, decode) of `n` held-out scenes."""
    rng = np.random.default_rng(seed)
    errors = []
    for i in range(0, n, batch_size):
        x, _ = world.batch(min(batch_size, n - i), rng, split="held_out")
        x = x.to(pipe.device, pipe.dtype)
        y = pipe.vae.decode(pipe.vae.encode(x)[0]).float().clamp(-1, 1)
        errors.append(((y - x.float()) ** 2).mean().item() * len(x))
    return 10 * float(np.log10(4.0 / (sum(errors) / n)))


def grid(images: Sequence[Image.Image], columns: int = 10) -> Image.Image:
    """Tile images into one picture, row by row."""
    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    out = Image.new("RGB", (columns * w, rows * h))
    for i, im in enumerate(images):
        out.paste(im, ((i % columns) * w, (i // columns) * h))
    return out


def evaluate(
    model: Any = None,
    n: int = 100,
    seed: int = 0,
    steps: int = EVAL.steps,
    cfg_scale: float = EVAL.cfg_scale,
    sampler: str = EVAL.sampler,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate `n` held-out (prompt, seed) pairs and judge them; returns rates, targets, timing and the verdicts.

    `model`: a `StableDiffusion` pipeline, a weights path, or None for the shipped model. With `out_dir`, the
    pictures (`held_out_grid.png`) and the report (`evaluation.json`) are written there.
    """
    pipe = load_model(model)
    pictures = list(held_out_pictures(pipe, n, seed, steps, cfg_scale, sampler, progress=progress, desc="evaluate"))
    verdicts = [judge.judge(p.image, p.prompt) for p in pictures]
    rates = judge.summarise(verdicts)
    rates["vae_psnr"] = vae_psnr(pipe)
    report = {
        "rates": rates,
        "targets": TARGETS,
        "passed": {k: rates[k] >= v for k, v in TARGETS.items()},
        "seconds_per_image": float(np.median([p.seconds for p in pictures])),
        "settings": {"n": n, "seed": seed, **EvalSettings(steps, cfg_scale, sampler).generate_kwargs()},
        "torch_threads": torch.get_num_threads(),
        "prompts": [
            {
                "prompt": p.prompt,
                "seed": p.seed,
                "correct": v.correct,
                "drawn": v.counts,  # colour -> objects of that colour in the picture
                "objects": [
                    {
                        "colour": o.colour_ok,
                        "shape": o.shape_ok,
                        "position": o.position_ok,
                        "count": o.count,
                        "saw": o.found_shape,
                    }
                    for o in v.objects
                ],
            }
            for p, v in zip(pictures, verdicts, strict=True)
        ],
    }
    images = [p.image for p in pictures]
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        grid(images).save(out / "held_out_grid.png")
        (out / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
    report["images"] = images
    report["verdicts"] = verdicts
    return report


# The precision at which the model card states each metric.
CARD_DIGITS = {"colour": 2, "shape": 2, "position": 2, "size": 2, "count": 2, "correct": 2, "vae_psnr": 1}


def card_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The evaluation's rates, rounded to the precision the model card states."""
    return {k: round(float(report["rates"][k]), d) for k, d in CARD_DIGITS.items() if k in report["rates"]}


def write_card(model_dir: str | Path, report: dict[str, Any], training: dict[str, Any] | None = None) -> None:
    """Put the evaluation (and the training summary) into the model's `sdviz.json` card and write a readable
    `MODEL_CARD.md` beside it, both from the same numbers."""
    model_dir = Path(model_dir)
    meta = json.loads((model_dir / "sdviz.json").read_text())
    card = meta.setdefault("card", {})
    if training is not None:
        card["training"] = training
    training = card.get("training")
    card["evaluation"] = {"metrics": card_metrics(report), "targets": TARGETS, "settings": report["settings"]}
    (model_dir / "sdviz.json").write_text(json.dumps(meta, indent=2) + "\n")

    cfg, m, settings = meta["config"], card["evaluation"]["metrics"], report["settings"]
    summary = card.get("summary", {})
    vae, unet = summary.get("vae", {}), summary.get("unet", {})
    lines = [
        "# sdviz's embedded model",
        "",
        "A miniature Stable Diffusion (same classes as SD 1.5, smaller config) that sdviz trained itself on its",
        "captioned-shapes world (`sdviz/toy/world.py`). Written by `sdviz.toy.evaluate.write_card`; do not edit.",
        "",
        "## Architecture",
        "",
        f"- text encoder: CLIP, width {cfg['clip']['width']}, {cfg['clip']['layers']} layers, "
        f"{cfg['clip']['heads']} heads, the real CLIP tokenizer and vocabulary",
        f"- VAE: base channels {cfg['vae']['base_channels']}, multipliers {cfg['vae']['channel_mult']}, "
        f"64x64x3 <-> {cfg['vae']['latent_channels']}x16x16, scaling factor {cfg['vae']['scaling_factor']:.5f}",
        f"- UNet: model channels {cfg['unet']['model_channels']}, multipliers {cfg['unet']['channel_mult']}, "
        f"{cfg['unet']['num_heads']} heads, cross-attention on the {cfg['unet']['context_dim']}-d context",
        "",
        "## Data",
        "",
        "64x64 scenes of one or two flat-coloured shapes drawn fresh for every batch. Never shown in training:",
        f"single {', '.join(card.get('held_out_single', []))}; pairs {', '.join(card.get('held_out_pairs', []))}.",
        "",
        "## Training",
        "",
        f"- stage 1, VAE: {vae.get('steps', '?')} steps, {vae.get('seconds', 0) / 60:.1f} min",
        f"- stage 2, UNet + text encoder: {unet.get('steps', '?')} steps, {unet.get('seconds', 0) / 60:.1f} min",
    ]
    if training:
        lines += [f"- {k}: {v}" for k, v in training.items()]
    lines += [
        "",
        f"## Evaluation ({settings['n']} held-out prompt/seed pairs, {settings['steps']} {settings['sampler']} "
        f"steps, cfg {settings['cfg_scale']})",
        "",
        "| metric | value | goal | what it measures |",
        "|---|---|---|---|",
    ]
    for k, v in m.items():
        goal = TARGETS.get(k)
        lines.append(f"| {k} | {v} | {'>= ' + str(goal) if goal is not None else ''} | {METRICS.get(k, '')} |")
    (model_dir / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """`sdviz evaluate [MODEL] [--n 100] [--steps 50] [--cfg 5] [--sampler ddim] [--out DIR]`"""
    p = argparse.ArgumentParser(prog="sdviz evaluate", description="Judge the toy model on held-out prompts.")
    p.add_argument("model", nargs="?", default=None, help="weights folder (default: the shipped model)")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=EVAL.steps)
    p.add_argument("--cfg", type=float, default=EVAL.cfg_scale)
    p.add_argument("--sampler", default=EVAL.sampler)
    p.add_argument("--out", default=None)
    p.add_argument("--write-card", action="store_true", help="store the metrics in the model's card")
    a = p.parse_args(argv)
    report = evaluate(a.model, a.n, a.seed, a.steps, a.cfg, a.sampler, a.out)
    print(json.dumps({k: report[k] for k in ("rates", "passed", "seconds_per_image")}, indent=2))
    if a.write_card:
        from sdviz.pipeline import EMBEDDED_MODEL

        write_card(a.model or EMBEDDED_MODEL, report)
    return 0 if all(report["passed"].values()) else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

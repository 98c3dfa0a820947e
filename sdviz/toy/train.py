"""Training the embedded model: a small latent diffusion model learns the captioned-shapes world.

Stable Diffusion was trained in two stages, and so is sdviz's toy model, both on `world.py`'s scenes drawn fresh for
every batch (there is no dataset to download and no epoch: the world is infinite). What each stage minimises, with
the equations, is `losses.py`; the loop's machinery (checkpoints, logs, Ctrl-C, the learning-rate schedule, EMA) is
`loop.py`. This file wires them together:

**Stage 1, the VAE** (`stage="vae"`): `losses.vae_loss` on batches of scenes (on 32x32 crops for the first 90% of
the steps). At the end the latents' standard deviation is measured and `scaling_factor = 1 / std` is stored, so
that the UNet sees latents of unit variance (SD 1.x's 0.18215 was found the same way).

**Stage 2, the UNet and the text encoder** (`stage="unet"`): the VAE is frozen; every caption goes through
`losses.drop_captions`, every picture is encoded to a sampled, scaled latent, and `losses.diffusion_loss` trains
UNet(x_t, t, CLIP(caption)) to predict the noise. The text encoder is trained from scratch together with the UNet
(SD used a frozen, pre-trained CLIP; a world with 30 words does not need one). An exponential moving average of
both is kept and is what gets exported.

**Stage 3, relations** (`stage="relations"`, optional, not part of "all"): a fine-tune of stage 2 (or of a model
folder, `init="sdviz/toy/model"`) with the same loss, on batches where 80% of the scenes hold two objects and so a
relation ("X above Y"). The shipped model is stage 2; a relations run exports its own `model/` to compare:

    sdviz train runs/rel --stage relations --init sdviz/toy/model --threads 2

**Resumable.** Every `ckpt_every` steps (and on Ctrl-C) a checkpoint is written; `train(..., resume=True)`
continues from it exactly.

    from sdviz.toy.train import train
    train("runs/toy")                 # both stages, then exports runs/toy/model (load it with load_pipeline)

    from sdviz.viz.plots import training_losses_figure      # the logs as a figure (drawing is viz's job, not here)
    training_losses_figure("runs/toy").savefig("losses.png")

Outputs in `out_dir`: `vae.ckpt`, `unet.ckpt`, `relations.ckpt` (checkpoints), `log_<stage>.csv` (one row per
`log_every` steps), `summary.json` (what each stage reached), `init/` (a relations run's starting model) and `model/`
(the final weights, sdviz format).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sdviz.config import TOY, SDConfig, get_config
from sdviz.models.clip import CLIPTextEncoder
from sdviz.models.unet import UNet
from sdviz.models.vae import VAE
from sdviz.samplers.schedule import NoiseSchedule
from sdviz.tokenizer import Tokenizer
from sdviz.toy import world
from sdviz.toy.loop import (
    EMA,
    Stage,
    StageSettings,
    cpu_has_amx,
    default_device,
    load_checkpoint,
    make_optimizer,
    read_summary,
    run_stage,
    save_checkpoint,
    torch_threads,
    write_summary,
)
from sdviz.toy.losses import diffusion_loss, drop_captions, sample_latent, vae_loss
from sdviz.toy.preview import world_latent_rgb
from sdviz.weights import Models, load_models, save_sdviz

STAGES = ("vae", "unet", "relations")
ALL = ("vae", "unet")  # what stage="all" trains: the shipped model's recipe (relations is an optional fine-tune)

# Defaults sized for the TOY config on 2 CPU cores (measured on an otherwise idle machine, 2 torch threads):
# the VAE ~3.5 min (10 steps/s on 32x32 crops, ~2.5 steps/s on whole images), the UNet ~35 min (~0.52 s/step).
DEFAULTS: dict[str, StageSettings] = {
    "vae": StageSettings(steps=1500, batch_size=32, lr=2e-3, warmup=100, crop=32),
    "unet": StageSettings(steps=4000, batch_size=32, lr=1e-3, warmup=200),
    "relations": StageSettings(steps=1500, batch_size=32, lr=3e-4, warmup=50, p_two=0.8),
}


def psnr(x: Tensor, y: Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [-1, 1] (so the peak-to-peak range is 2)."""
    mse = F.mse_loss(x.float().clamp(-1, 1), y.float()).item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


# --------------------------------------------------------------------------------------------------------------------
# Stage 1: the VAE
# --------------------------------------------------------------------------------------------------------------------


def _vae_stage(config: SDConfig, s: StageSettings, device: torch.device, seed: int, bf16: bool) -> Stage:
    torch.manual_seed(seed)  # the initial weights
    vae = VAE(config.vae).to(device)
    opt = make_optimizer(list(vae.parameters()), s)
    rng = np.random.default_rng([seed, 1])
    gen = torch.Generator().manual_seed(seed * 1000 + 1)

    def step_fn(step: int) -> dict[str, float]:
        x, _ = world.batch(s.batch_size, rng)  # (B, 3, 64, 64) in [-1, 1]
        # (while training on crops, the logged "psnr" is that of crops, which hold more easy background)
        if s.crop and step <= s.steps - s.steps // 10:  # the last 10% of the steps see whole images again
            y0, x0 = rng.integers(0, x.shape[-1] - s.crop + 1, size=2)
            x = x[:, :, y0 : y0 + s.crop, x0 : x0 + s.crop]  # (B, 3, 64, 64) -> (B, 3, crop, crop)
        x = x.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, parts = vae_loss(vae, x, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rec = parts["reconstruction"].detach()
        return {"loss": loss.item(), "l1": parts["l1"].item(), "kl": parts["kl"].item(), "psnr": psnr(rec, x)}

    return Stage("vae", s, {"vae": vae}, opt, step_fn, rng, gen, {}, {})


@torch.no_grad()
def measure_vae(vae: VAE, n: int = 512, seed: int = 1234, batch_size: int = 64) -> dict[str, float]:
    """After training: the latent scaling factor (1 / std of the latent means over training scenes) and the
    reconstruction PSNR on held-out scenes (decoding the mean latent, as image-to-image does)."""
    vae.eval()
    device = next(vae.parameters()).device
    rng = np.random.default_rng(seed)
    means, errors = [], []
    for i in range(0, n, batch_size):
        x, _ = world.batch(min(batch_size, n - i), rng, split="train")
        means.append(vae.encode(x.to(device))[0].float().cpu())
        y, _ = world.batch(min(batch_size, n - i), rng, split="held_out")
        y = y.to(device)
        errors.append(
            F.mse_loss(vae.decode(vae.encode(y)[0]).float().clamp(-1, 1), y, reduction="none").mean((1, 2, 3))
        )
    std = torch.cat(means).std().item()
    per_image = torch.cat(errors).cpu()
    return {
        "scaling_factor": 1.0 / std,
        "latent_std": std,
        "latent_mean": torch.cat(means).mean().item(),
        "psnr_held_out": 10 * math.log10(4.0 / per_image.mean().item()),  # PSNR of the mean squared error
        "psnr_held_out_worst": 10 * math.log10(4.0 / per_image.max().item()),
    }


# --------------------------------------------------------------------------------------------------------------------
# Stage 2: the UNet and the text encoder
# --------------------------------------------------------------------------------------------------------------------


def _load_trained_vae(out_dir: Path, device: torch.device) -> tuple[VAE, float, SDConfig]:
    """The frozen VAE of a run (stage 1's, or that of the model a relations run started from), its scaling factor,
    and the config it was trained with (scaling factor 1)."""
    ckpt = load_checkpoint(out_dir, "vae")
    if ckpt is None and (out_dir / INIT_DIR).is_dir():  # a run started from a model folder
        models = load_models(out_dir / INIT_DIR, device=device)
        vae_config = replace(models.config, vae=replace(models.config.vae, scaling_factor=1.0))
        return models.vae.eval().requires_grad_(False), models.config.vae.scaling_factor, vae_config
    if ckpt is None or "scaling_factor" not in ckpt.get("extra", {}):
        raise FileNotFoundError(f"{out_dir}: no finished VAE stage (vae.ckpt with a scaling factor); train it first")
    config = SDConfig.from_dict(ckpt["config"])
    vae = VAE(config.vae)
    vae.load_state_dict(ckpt["modules"]["vae"])
    return vae.to(device).eval().requires_grad_(False), float(ckpt["extra"]["scaling_factor"]), config


def _unet_stage(
    out_dir: Path, config: SDConfig, s: StageSettings, device: torch.device, seed: int
) -> tuple[Stage, SDConfig]:
    vae, scaling, vae_config = _load_trained_vae(out_dir, device)
    if vae_config.vae != replace(config.vae, scaling_factor=vae_config.vae.scaling_factor):
        raise ValueError(f"{out_dir}: the trained VAE has another configuration than {config.name!r}")
    config = replace(config, vae=replace(config.vae, scaling_factor=scaling))
    torch.manual_seed(seed + 2)
    unet = UNet(config.unet).to(device)
    text_encoder = CLIPTextEncoder(config.clip).to(device)
    st = _diffusion_stage("unet", unet, text_encoder, vae, scaling, config, s, device, seed, 2)
    return st, config


def _diffusion_stage(
    name: str,
    unet: UNet,
    text_encoder: CLIPTextEncoder,
    vae: VAE,
    scaling: float,
    config: SDConfig,
    s: StageSettings,
    device: torch.device,
    seed: int,
    stream: int,
) -> Stage:
    """A stage that trains the UNet and the text encoder on fresh scenes, the VAE frozen (stages 2 and 3).

    `stream` numbers the stage's random generators, so that each stage draws its own scenes and noise."""
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = make_optimizer(params, s)
    tokenizer = Tokenizer(max_length=config.clip.max_length)
    schedule = NoiseSchedule(config.schedule)
    rng = np.random.default_rng([seed, stream])
    gen = torch.Generator().manual_seed(seed * 1000 + stream)
    p_two = world.P_TWO_OBJECTS if s.p_two is None else s.p_two

    def step_fn(step: int) -> dict[str, float]:
        x, captions = world.batch(s.batch_size, rng, p_two=p_two)  # (B, 3, 64, 64), B captions
        captions = drop_captions(captions, rng)  # 10% become ""
        with torch.no_grad():
            z0 = sample_latent(*vae.encode(x.to(device)), gen) * scaling  # (B, 4, 16, 16), unit variance
        context = text_encoder(tokenizer(captions).to(device))  # (B, 77) -> (B, 77, width)
        loss, mse = diffusion_loss(unet, context, z0, schedule, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return {"loss": loss.item(), "mse": mse.mean().item()}

    modules = {"unet": unet, "text_encoder": text_encoder}
    emas = {k: EMA(m) for k, m in modules.items()}
    return Stage(name, s, modules, opt, step_fn, rng, gen, emas, {"scaling_factor": scaling})


# --------------------------------------------------------------------------------------------------------------------
# Stage 3: relations, a fine-tune of stage 2 on more two-object scenes
# --------------------------------------------------------------------------------------------------------------------

INIT_DIR = "init"  # inside a run folder: the model that the relations stage started from, when it was given one


def _adopt(out_dir: Path, init: str | Path) -> None:
    """Copy a trained model folder into `out_dir/init`, the starting point of the relations stage (and the source
    of its frozen VAE), and carry its card's training summary over into `out_dir/summary.json`."""
    dest = out_dir / INIT_DIR
    dest.mkdir(parents=True, exist_ok=True)
    for f in ("model.safetensors", "sdviz.json"):
        shutil.copyfile(Path(init) / f, dest / f)
    summary = json.loads((dest / "sdviz.json").read_text()).get("card", {}).get("summary", {})
    for name in ("vae", "unet"):
        if name in summary and name not in read_summary(out_dir):
            write_summary(out_dir, name, {**summary[name], "from": str(init)})


def _relations_stage(
    out_dir: Path, s: StageSettings, device: torch.device, seed: int, init: str | Path | None, resume: bool
) -> tuple[Stage, SDConfig]:
    """Stage 3 starts from stage 2's EMA weights (or from the model folder `init`) and goes on training the UNet and
    the text encoder with the same loss, on batches where `s.p_two` of the scenes (not half) hold two objects."""
    if init is not None and not (resume and load_checkpoint(out_dir, "relations") is not None):
        _adopt(out_dir, init)
    start = load_trained(out_dir, ema=True, device=device, stage="unet")  # float32
    config, vae = start.config, start.vae.requires_grad_(False)
    unet, text_encoder = start.unet.train().requires_grad_(True), start.text_encoder.train().requires_grad_(True)
    st = _diffusion_stage("relations", unet, text_encoder, vae, config.vae.scaling_factor, config, s, device, seed, 3)
    return st, config


def _last_stage(out_dir: Path) -> str:
    """The latest stage that trained the UNet in a run folder: "relations" if it has begun, else "unet"."""
    return "relations" if load_checkpoint(out_dir, "relations") is not None else "unet"


def load_trained(
    out_dir: str | Path, ema: bool = True, device: str | torch.device = "cpu", stage: str | None = None
) -> Models:
    """The networks of a (possibly unfinished) run: VAE, and the UNet and text encoder of the latest checkpoint
    (their EMA weights, or the raw ones with `ema=False`), with the measured scaling factor in the config.

    `stage`: "unet" or "relations" (default: the latest that has a checkpoint). A relations stage started from a
    model folder has no stage-2 checkpoint: its "unet" weights are that model's.
    """
    out_dir = Path(out_dir)
    stage = stage or _last_stage(out_dir)
    ckpt = load_checkpoint(out_dir, stage)
    if ckpt is None and stage == "unet" and (out_dir / INIT_DIR).is_dir():
        return load_models(out_dir / INIT_DIR, device=device)
    if ckpt is None:
        raise FileNotFoundError(f"{out_dir}: no {stage} checkpoint")
    vae, scaling, _ = _load_trained_vae(out_dir, torch.device(device))
    config = SDConfig.from_dict(ckpt["config"])
    config = replace(config, vae=replace(config.vae, scaling_factor=scaling))
    unet, text_encoder = UNet(config.unet), CLIPTextEncoder(config.clip)
    weights = ckpt["ema"] if ema else ckpt["modules"]
    unet.load_state_dict(weights["unet"])
    text_encoder.load_state_dict(weights["text_encoder"])
    return Models(config, text_encoder.to(device).eval(), vae, unet.to(device).eval())


@torch.no_grad()
def noise_prediction_loss(models: Models, n: int = 64, seed: int = 0, split: str = "held_out") -> float:
    """The plain noise-prediction error E ||eps - UNet(x_t, t, CLIP(caption))||^2 (DDPM eq. 14, unweighted) on a
    fixed set of scenes, timesteps and noises (the same for every call with the same n and seed): a validation loss
    that, unlike the training loss, does not jump with the random timesteps of each batch."""
    device = next(models.unet.parameters()).device
    x, captions = world.batch(n, np.random.default_rng(seed), split=split)
    tokenizer = Tokenizer(max_length=models.config.clip.max_length)
    z0 = models.vae.encode(x.to(device))[0] * models.config.vae.scaling_factor  # (n, 4, h, w): the mean latents
    context = models.text_encoder(tokenizer(captions).to(device))
    gen = torch.Generator().manual_seed(seed)
    loss, _ = diffusion_loss(models.unet, context, z0, NoiseSchedule(models.config.schedule), gen, min_snr_gamma=None)
    return loss.item()


def export(out_dir: str | Path, dtype: torch.dtype | None = torch.float16) -> Path:
    """Write the trained model (EMA weights of the UNet and text encoder, the VAE, the config with the measured
    scaling factor, the world's vocabulary and its latent preview map) as an sdviz weights folder `out_dir/model`,
    loadable with `load_pipeline`."""
    out_dir = Path(out_dir)
    stage = _last_stage(out_dir)
    models = load_trained(out_dir, ema=True, stage=stage)
    step = int(load_checkpoint(out_dir, stage)["step"])  # type: ignore[index]
    card = {
        "description": "sdviz's embedded toy model, trained by sdviz/toy/train.py on the captioned-shapes world",
        "unet_steps": int(read_summary(out_dir).get("unet", {}).get("steps", step)) if stage != "unet" else step,
        **({"relations_steps": step} if stage == "relations" else {}),
        "held_out_single": sorted(" ".join(p) for p in world.HELD_OUT_SINGLE),
        "held_out_pairs": sorted(" + ".join(sorted(p)) for p in world.HELD_OUT_PAIRS),
        "summary": read_summary(out_dir),
    }
    folder = out_dir / "model"
    rgb = world_latent_rgb(models.vae, models.config.vae.scaling_factor)
    save_sdviz(folder, models, dtype=dtype, card=card, vocabulary=world.vocabulary(), latent_rgb=rgb)
    return folder


# --------------------------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------------------------


def train(
    out_dir: str | Path,
    stage: str = "all",
    steps: int | dict[str, int] | None = None,
    config: SDConfig = TOY,
    resume: bool = True,
    batch_size: int | None = None,
    lr: float | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    threads: int | None = None,
    bf16: bool | None = None,
    ckpt_every: int | None = None,
    log_every: int | None = None,
    stop_after: int | None = None,
    progress: bool = True,
    export_model: bool = True,
    measure_images: int = 512,
    init: str | Path | None = None,
    p_two: float | None = None,
) -> dict[str, Any]:
    """Train the embedded model (or one stage of it) into `out_dir`; returns the summary of what was reached.

    Args:
        stage: "vae", "unet", "relations" or "all" (the VAE, then the UNet, the shipped recipe; a finished stage is
            skipped when resuming).
        steps: total steps of the stage(s): one int for a single stage, or {"vae": n, "unet": m, "relations": k}.
            Defaults: `DEFAULTS`.
        config: the model architecture (`TOY`; `TINY` for tests). The VAE's scaling factor is measured, not read.
        resume: continue from the stage's checkpoint if there is one (else start over).
        batch_size, lr: override the defaults of the stage(s).
        device: default CUDA if available, else the CPU.
        threads: torch CPU threads while training (default: torch's choice); the old number is restored after.
        bf16: run the VAE stage in bfloat16 autocast (default: on for CPUs with AMX units, where it is ~2x faster).
        ckpt_every, log_every: override the stage settings.
        stop_after: stop (with a checkpoint) after this step, as if interrupted; `resume` continues.
        export_model: after a finished UNet or relations stage, write `out_dir/model` (see `export`).
        measure_images: after the VAE stage, how many scenes measure the scaling factor and PSNR (`measure_vae`).
        init: the relations stage only: start from this model folder (e.g. the shipped `sdviz/toy/model`) instead of
            the run's own stage 2; it is copied to `out_dir/init` and its VAE is used.
        p_two: override the share of two-object scenes in the batches of the UNet stage(s) (default: the world's
            mix for stage 2, 0.8 for the relations stage).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stages = ALL if stage == "all" else (stage,)
    if any(s not in STAGES for s in stages):
        raise ValueError(f"stage must be one of {', '.join(STAGES)} or 'all', not {stage!r}")
    if init is not None and stages != ("relations",):
        raise ValueError("init (a model folder to start from) is for stage='relations' only")
    dev = torch.device(device) if device is not None else default_device()
    if bf16 is None:
        bf16 = dev.type == "cpu" and cpu_has_amx()

    summary: dict[str, Any] = {}
    with torch_threads(threads):
        for name in stages:
            s = DEFAULTS[name]
            n = steps.get(name) if isinstance(steps, dict) else steps
            overrides = {"steps": n, "batch_size": batch_size, "lr": lr, "ckpt_every": ckpt_every}
            overrides["log_every"] = log_every
            if name != "vae":
                overrides["p_two"] = p_two
            s = replace(s, **{k: v for k, v in overrides.items() if v is not None})
            if name == "vae":
                st, stage_config = _vae_stage(config, s, dev, seed, bf16), config
            elif name == "unet":
                st, stage_config = _unet_stage(out_dir, config, s, dev, seed)
            else:
                st, stage_config = _relations_stage(out_dir, s, dev, seed, init, resume)
            last = run_stage(out_dir, st, stage_config, resume, progress, stop_after)
            ckpt = load_checkpoint(out_dir, name)
            assert ckpt is not None
            finished = int(ckpt["step"]) >= s.steps
            values: dict[str, Any] = {"steps": int(ckpt["step"]), "finished": finished, "seconds": ckpt["elapsed"]}
            values.update({k: v for k, v in last.items() if k not in ("step", "seconds")})
            if name == "vae" and finished and "scaling_factor" not in st.extra:
                st.extra.update(measure_vae(st.modules["vae"], n=measure_images))
                save_checkpoint(out_dir, st, int(ckpt["step"]), config, float(ckpt["elapsed"]))
            values.update(st.extra)
            write_summary(out_dir, name, values)
            summary[name] = values
            if not finished:
                break
            if name != "vae" and export_model:
                summary["model"] = str(export(out_dir))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """`sdviz train OUT_DIR [--stage vae|unet|all] [--vae-steps N] [--unet-steps N] ...`"""
    p = argparse.ArgumentParser(prog="sdviz train", description="Train sdviz's embedded toy model.")
    p.add_argument("out_dir", help="folder for checkpoints, logs and the final model")
    p.add_argument(
        "--stage", default="all", choices=["all", *STAGES], help="all: vae then unet; relations: an optional fine-tune"
    )
    p.add_argument("--steps", type=int, default=None, help="steps of the chosen stage")
    p.add_argument("--vae-steps", type=int, default=None)
    p.add_argument("--unet-steps", type=int, default=None)
    p.add_argument("--config", default="toy", help="toy (default) or tiny")
    p.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="VAE stage in bfloat16")
    p.add_argument("--stop-after", type=int, default=None, help="stop after this step (resume later)")
    p.add_argument("--relations-steps", type=int, default=None)
    p.add_argument("--init", default=None, help="relations stage: start from this model folder")
    p.add_argument("--p-two", type=float, default=None, help="share of two-object scenes in UNet batches")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    steps: int | dict[str, int] | None = a.steps
    per_stage = {"vae": a.vae_steps, "unet": a.unet_steps, "relations": a.relations_steps}
    if any(v is not None for v in per_stage.values()):
        steps = {k: v for k, v in per_stage.items() if v is not None}
    summary = train(
        a.out_dir,
        stage=a.stage,
        steps=steps,
        config=get_config(a.config),
        resume=not a.no_resume,
        batch_size=a.batch_size,
        lr=a.lr,
        device=a.device,
        seed=a.seed,
        threads=a.threads,
        bf16=a.bf16,
        stop_after=a.stop_after,
        progress=not a.no_progress,
        init=a.init,
        p_two=a.p_two,
    )
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

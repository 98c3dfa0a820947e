"""Training the embedded model: a small latent diffusion model learns the captioned-shapes world.

Stable Diffusion was trained in two stages, and so is sdviz's toy model (both on `world.py`'s scenes, drawn fresh
for every batch, so there is no dataset to download and no epoch: the world is infinite):

**Stage 1, the VAE** (`stage="vae"`). The autoencoder learns to squeeze a 64x64x3 image into a 16x16x4 latent and
back. Loss: the L1 reconstruction error of a latent *sampled* from the encoder's Gaussian (the reparameterisation
trick, z = mean + sigma * eps), plus a small KL term that keeps the latent Gaussian close to N(0, 1) so that latents
stay bounded and smooth (Kingma & Welling 2014; Rombach et al. 2022 use the same "KL-regularised" autoencoder).
At the end, the latents' standard deviation is measured and `scaling_factor = 1 / std` is stored, so that the UNet
sees latents of unit variance (SD 1.x's 0.18215 was found the same way).

**Stage 2, the UNet and the text encoder** (`stage="unet"`). The VAE is frozen. For every image: encode it, scale
the latent, pick a random timestep t and noise eps, make x_t = sqrt(alpha_bar_t) z + sqrt(1 - alpha_bar_t) eps
(DDPM eq. 4, the sampler's `add_noise`), and train UNet(x_t, t, CLIP(caption)) to predict eps (DDPM eq. 14, the
"simple" loss). The text encoder is trained from scratch together with the UNet (SD used a frozen, pre-trained
CLIP; a world with 30 words does not need one). Two details matter a lot for such a short training run:

- *Caption dropout*: 10% of captions are replaced by "" so that the same network also learns the unconditional
  prediction, which classifier-free guidance needs (Ho & Salimans 2022).
- *Min-SNR-5 loss weighting* (Hang et al. 2023): the almost-clean timesteps are easy and would otherwise dominate
  the gradient; weighting each sample by min(SNR_t, 5) / SNR_t balances them and speeds up convergence.

An exponential moving average (EMA) of the UNet and text-encoder weights is kept and is what gets exported.

**Resumable.** Every `ckpt_every` steps (and on Ctrl-C) a checkpoint is written with the weights, the EMA, the
optimizer's state and the state of both random generators (numpy for the scenes and caption dropout, torch for
noise and timesteps). `train(..., resume=True)` continues from it exactly: the loss of the next step is the one an
uninterrupted run would have had, bit for bit on the same machine.

    from sdviz.toy.train import train, plot_losses
    train("runs/toy")                 # both stages, then exports runs/toy/model (load it with load_pipeline)
    plot_losses("runs/toy").savefig("losses.png")

Outputs in `out_dir`: `vae.ckpt`, `unet.ckpt` (checkpoints), `log_vae.csv`, `log_unet.csv` (one row per
`log_every` steps), `summary.json` (what each stage reached), and `model/` (the final weights, sdviz format).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from sdviz.config import TOY, SDConfig, get_config
from sdviz.models.clip import CLIPTextEncoder
from sdviz.models.unet import UNet
from sdviz.models.vae import VAE
from sdviz.samplers.ddpm import DDPMSampler
from sdviz.tokenizer import Tokenizer
from sdviz.toy import world
from sdviz.weights import Models, save_sdviz

STAGES = ("vae", "unet")


@dataclass(frozen=True)
class StageSettings:
    """The optimisation settings of one stage."""

    steps: int
    batch_size: int
    lr: float  # peak learning rate (AdamW)
    warmup: int  # steps of linear warm-up from 0 to lr
    final_lr_ratio: float = 0.1  # cosine decay from lr down to final_lr_ratio * lr at the last step
    weight_decay: float = 0.0
    ckpt_every: int = 250  # steps between checkpoints
    log_every: int = 10  # steps between rows of the log
    # VAE only: train on random crops of this size (0: whole images), and on whole images for the last 10% of
    # the steps. A convolutional VAE learns edges and colours as well from 32x32 crops, at a quarter of the cost.
    crop: int = 0


# Defaults sized for the TOY config on 2 CPU cores (measured on an otherwise idle machine, 2 torch threads):
# the VAE ~3.5 min (10 steps/s on 32x32 crops, ~2.5 steps/s on whole images), the UNet ~35 min (~0.52 s/step).
DEFAULTS: dict[str, StageSettings] = {
    "vae": StageSettings(steps=1500, batch_size=32, lr=2e-3, warmup=100, crop=32),
    "unet": StageSettings(steps=4000, batch_size=32, lr=1e-3, warmup=200),
}
KL_WEIGHT = 1e-5  # weight of the KL term against the mean absolute reconstruction error
CAPTION_DROPOUT = 0.1  # fraction of captions replaced by "" (for classifier-free guidance)
EMA_DECAY = 0.999
MIN_SNR_GAMMA = 5.0


# --------------------------------------------------------------------------------------------------------------------
# Small pieces
# --------------------------------------------------------------------------------------------------------------------


def lr_at(step: int, s: StageSettings) -> float:
    """Learning rate at `step` (1-based): linear warm-up, then cosine decay to `final_lr_ratio * lr`."""
    if step <= s.warmup:
        return s.lr * step / max(s.warmup, 1)
    progress = (step - s.warmup) / max(s.steps - s.warmup, 1)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return s.lr * (s.final_lr_ratio + (1 - s.final_lr_ratio) * cosine)


def make_optimizer(params: Sequence[nn.Parameter], s: StageSettings) -> torch.optim.Optimizer:
    """AdamW; the fused implementation when available (on a CPU it is ~5x faster than the default for-loop)."""
    try:
        return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay, betas=(0.9, 0.99), fused=True)
    except (RuntimeError, TypeError):  # pragma: no cover - older torch or an unsupported device
        return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay, betas=(0.9, 0.99))


class EMA:
    """An exponential moving average of a module's weights: ema = decay * ema + (1 - decay) * weights.

    Early in training the decay is lowered to (1 + step) / (10 + step), so the average is not stuck near the
    random initial weights.
    """

    def __init__(self, module: nn.Module, decay: float = EMA_DECAY):
        self.decay = decay
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        ema = list(self.module.parameters()) + list(self.module.buffers())
        new = list(module.parameters()) + list(module.buffers())
        torch._foreach_lerp_(ema, [p.detach() for p in new], 1.0 - decay)


def cpu_has_amx() -> bool:
    """Does this CPU have AMX bf16 units (Intel Sapphire Rapids and later)? There bf16 convolutions are ~2x faster."""
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def psnr(x: Tensor, y: Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [-1, 1] (so the peak-to-peak range is 2)."""
    mse = F.mse_loss(x.float().clamp(-1, 1), y.float()).item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --------------------------------------------------------------------------------------------------------------------
# The loop shared by both stages: checkpoints, logging, progress, interruption
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _Stage:
    """What a stage hands to the shared loop."""

    name: str
    settings: StageSettings
    modules: dict[str, nn.Module]  # trained modules, by checkpoint name
    optimizer: torch.optim.Optimizer
    step_fn: Callable[[int], dict[str, float]]  # one optimisation step -> metrics (with "loss")
    rng: np.random.Generator  # scenes, caption dropout
    gen: torch.Generator  # noise, timesteps
    emas: dict[str, EMA]
    extra: dict[str, Any]  # stored in the checkpoint (e.g. the scaling factor)


def _checkpoint_path(out_dir: Path, stage: str) -> Path:
    return out_dir / f"{stage}.ckpt"


def _save_checkpoint(out_dir: Path, st: _Stage, step: int, config: SDConfig, elapsed: float) -> None:
    state = {
        "stage": st.name,
        "step": step,
        "elapsed": elapsed,
        "modules": {k: m.state_dict() for k, m in st.modules.items()},
        "ema": {k: e.module.state_dict() for k, e in st.emas.items()},
        "optimizer": st.optimizer.state_dict(),
        "numpy_rng": st.rng.bit_generator.state,
        "torch_rng": st.gen.get_state(),
        "config": config.to_dict(),
        "settings": asdict(st.settings),
        "extra": st.extra,
    }
    path = _checkpoint_path(out_dir, st.name)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a crash while saving never destroys the previous checkpoint


def load_checkpoint(out_dir: str | Path, stage: str) -> dict[str, Any] | None:
    """The checkpoint of a stage as a dict (see `_save_checkpoint`), or None if there is none."""
    path = _checkpoint_path(Path(out_dir), stage)
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def _restore(st: _Stage, ckpt: dict[str, Any]) -> int:
    for k, m in st.modules.items():
        m.load_state_dict(ckpt["modules"][k])
    for k, e in st.emas.items():
        e.module.load_state_dict(ckpt["ema"][k])
    st.optimizer.load_state_dict(ckpt["optimizer"])
    st.rng.bit_generator.state = ckpt["numpy_rng"]
    st.gen.set_state(ckpt["torch_rng"])
    st.extra.update(ckpt.get("extra", {}))
    return int(ckpt["step"])


def _log_path(out_dir: Path, stage: str) -> Path:
    return out_dir / f"log_{stage}.csv"


def read_log(out_dir: str | Path, stage: str) -> list[dict[str, float]]:
    """The rows of a stage's loss log (numbers as floats)."""
    path = _log_path(Path(out_dir), stage)
    if not path.is_file():
        return []
    with path.open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _truncate_log(out_dir: Path, stage: str, step: int) -> None:
    """After resuming at `step`, drop log rows written after that checkpoint (they will be written again)."""
    rows = [r for r in read_log(out_dir, stage) if r["step"] <= step]
    path = _log_path(out_dir, stage)
    if not path.is_file():
        return
    with path.open() as f:
        header = next(csv.reader(f), None)
    with path.open("w", newline="") as f:
        if header:
            w = csv.DictWriter(f, fieldnames=header)
            w.writeheader()
            for r in rows:
                w.writerow({k: _fmt(r[k]) for k in header})


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:.6g}"


class _DeferInterrupt:
    """Hold a Ctrl-C (SIGINT) until the current step has finished, so that the checkpoint written on interruption
    is exactly the state after a whole step (a second Ctrl-C interrupts at once)."""

    def __enter__(self) -> _DeferInterrupt:
        self.hit = False
        self.old = None
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True

    def __exit__(self, *exc: object) -> None:
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)


def _run(
    out_dir: Path,
    st: _Stage,
    config: SDConfig,
    resume: bool,
    progress: bool,
    stop_after: int | None,
) -> dict[str, float]:
    """Run a stage's steps from wherever its checkpoint left off; returns the last logged metrics."""
    s = st.settings
    start, elapsed = 0, 0.0
    ckpt = load_checkpoint(out_dir, st.name) if resume else None
    if ckpt is not None:
        start = _restore(st, ckpt)
        elapsed = float(ckpt.get("elapsed", 0.0))
        _truncate_log(out_dir, st.name, start)
    else:
        _log_path(out_dir, st.name).unlink(missing_ok=True)  # starting over: a stale log would mix two runs
    end = s.steps if stop_after is None else min(s.steps, stop_after)
    last: dict[str, float] = {}
    if start >= end:
        rows = read_log(out_dir, st.name)
        return rows[-1] if rows else last

    for m in st.modules.values():
        m.train()
    bar = tqdm(total=s.steps, initial=start, desc=f"{st.name}", disable=not progress, dynamic_ncols=True)
    log_file = _log_path(out_dir, st.name).open("a", newline="")
    writer: csv.DictWriter | None = None
    window: list[dict[str, float]] = []
    t0 = time.perf_counter() - elapsed
    try:
        with _DeferInterrupt() as interrupt:
            for step in range(start + 1, end + 1):
                lr = lr_at(step, s)
                for group in st.optimizer.param_groups:
                    group["lr"] = lr
                metrics = st.step_fn(step)
                for e_name, e in st.emas.items():
                    e.update(st.modules[e_name], step)
                window.append(metrics)
                bar.update(1)
                if step % s.log_every == 0 or step == end:
                    now = time.perf_counter() - t0
                    row = {"step": step, "lr": lr, "seconds": now}
                    row.update({k: float(np.mean([m[k] for m in window])) for k in window[0]})
                    row["images_per_s"] = len(window) * s.batch_size / max(now - last.get("seconds", elapsed), 1e-9)
                    window = []
                    if writer is None:
                        writer = csv.DictWriter(log_file, fieldnames=list(row))
                        if log_file.tell() == 0:
                            writer.writeheader()
                    writer.writerow({k: _fmt(v) for k, v in row.items()})
                    log_file.flush()
                    last = row
                    bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
                if interrupt.hit:
                    _save_checkpoint(out_dir, st, step, config, time.perf_counter() - t0)
                    print(f"\ninterrupted: checkpoint saved at step {step}; train again (resume=True) to continue")
                    raise KeyboardInterrupt
                if step % s.ckpt_every == 0 and step != end:
                    _save_checkpoint(out_dir, st, step, config, time.perf_counter() - t0)
    finally:
        bar.close()
        log_file.close()
    _save_checkpoint(out_dir, st, end, config, time.perf_counter() - t0)
    return last


# --------------------------------------------------------------------------------------------------------------------
# Stage 1: the VAE
# --------------------------------------------------------------------------------------------------------------------


def _vae_stage(config: SDConfig, s: StageSettings, device: torch.device, seed: int, bf16: bool) -> _Stage:
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
            mean, logvar = vae.encode(x)  # (B, 3, 64, 64) -> 2 x (B, 4, 16, 16)
            eps = torch.randn(mean.shape, generator=gen).to(device)
            z = mean + torch.exp(0.5 * logvar) * eps  # a sample of the latent Gaussian (reparameterisation)
            rec = vae.decode(z)  # (B, 4, 16, 16) -> (B, 3, 64, 64)
        rec, mean, logvar = rec.float(), mean.float(), logvar.float()
        l1 = (rec - x).abs().mean()
        kl = 0.5 * (mean**2 + logvar.exp() - 1.0 - logvar).mean()  # KL(N(mean, var) || N(0, 1)) per element
        loss = l1 + KL_WEIGHT * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item(), "l1": l1.item(), "kl": kl.item(), "psnr": psnr(rec.detach(), x)}

    return _Stage("vae", s, {"vae": vae}, opt, step_fn, rng, gen, {}, {})


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
    ckpt = load_checkpoint(out_dir, "vae")
    if ckpt is None or "scaling_factor" not in ckpt.get("extra", {}):
        raise FileNotFoundError(f"{out_dir}: no finished VAE stage (vae.ckpt with a scaling factor); train it first")
    config = SDConfig.from_dict(ckpt["config"])
    vae = VAE(config.vae)
    vae.load_state_dict(ckpt["modules"]["vae"])
    return vae.to(device).eval().requires_grad_(False), float(ckpt["extra"]["scaling_factor"]), config


def _unet_stage(
    out_dir: Path, config: SDConfig, s: StageSettings, device: torch.device, seed: int
) -> tuple[_Stage, SDConfig]:
    vae, scaling, vae_config = _load_trained_vae(out_dir, device)
    if vae_config.vae != replace(config.vae, scaling_factor=vae_config.vae.scaling_factor):
        raise ValueError(f"{out_dir}: the trained VAE has another configuration than {config.name!r}")
    config = replace(config, vae=replace(config.vae, scaling_factor=scaling))
    torch.manual_seed(seed + 2)
    unet = UNet(config.unet).to(device)
    text_encoder = CLIPTextEncoder(config.clip).to(device)
    opt = make_optimizer(list(unet.parameters()) + list(text_encoder.parameters()), s)
    tokenizer = Tokenizer(max_length=config.clip.max_length)
    sampler = DDPMSampler(config.schedule)
    snr = sampler.schedule.snr  # (T,) signal-to-noise ratio of every timestep
    T = sampler.schedule.num_train_timesteps
    rng = np.random.default_rng([seed, 2])
    gen = torch.Generator().manual_seed(seed * 1000 + 2)

    def step_fn(step: int) -> dict[str, float]:
        b = s.batch_size
        x, captions = world.batch(b, rng)  # (B, 3, 64, 64), B captions
        drop = rng.random(b) < CAPTION_DROPOUT
        captions = ["" if d else c for c, d in zip(captions, drop, strict=True)]
        with torch.no_grad():
            mean, logvar = vae.encode(x.to(device))  # (B, 3, 64, 64) -> 2 x (B, 4, 16, 16)
            z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen).to(device)
            z = z * scaling  # unit-variance latents, as the pipeline's
        t = torch.randint(0, T, (b,), generator=gen)  # (B,) a random timestep per image
        noise = torch.randn(z.shape, generator=gen).to(device)  # (B, 4, 16, 16) eps
        x_t = sampler.add_noise(z, noise, t)  # sqrt(alpha_bar) z + sqrt(1 - alpha_bar) eps      (DDPM eq. 4)
        context = text_encoder(tokenizer(captions).to(device))  # (B, 77) -> (B, 77, width)
        eps = unet(x_t, t.to(device), context)  # (B, 4, 16, 16) the predicted noise
        mse = ((eps - noise) ** 2).mean(dim=(1, 2, 3))  # (B,)                                     (DDPM eq. 14)
        weight = (snr[t].clamp(max=MIN_SNR_GAMMA) / snr[t]).to(device)  # Min-SNR-gamma, for eps-prediction
        loss = (weight * mse).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(text_encoder.parameters()), 1.0)
        opt.step()
        return {"loss": loss.item(), "mse": mse.mean().item()}

    modules = {"unet": unet, "text_encoder": text_encoder}
    emas = {k: EMA(m) for k, m in modules.items()}
    st = _Stage("unet", s, modules, opt, step_fn, rng, gen, emas, {"scaling_factor": scaling})
    return st, config


def load_trained(out_dir: str | Path, ema: bool = True, device: str | torch.device = "cpu") -> Models:
    """The networks of a (possibly unfinished) run: VAE, and the UNet and text encoder of the latest checkpoint
    (their EMA weights, or the raw ones with `ema=False`), with the measured scaling factor in the config."""
    out_dir = Path(out_dir)
    ckpt = load_checkpoint(out_dir, "unet")
    if ckpt is None:
        raise FileNotFoundError(f"{out_dir}: no UNet checkpoint")
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
    """The plain noise-prediction error E ||eps - UNet(x_t, t, CLIP(caption))||^2 on a fixed set of scenes,
    timesteps and noises (the same for every call with the same n and seed): a validation loss that, unlike the
    training loss, does not jump with the random timesteps of each batch."""
    device = next(models.unet.parameters()).device
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    x, captions = world.batch(n, rng, split=split)
    sampler = DDPMSampler(models.config.schedule)
    tokenizer = Tokenizer(max_length=models.config.clip.max_length)
    z = models.vae.encode(x.to(device))[0] * models.config.vae.scaling_factor  # (n, 4, h, w)
    t = torch.randint(0, sampler.schedule.num_train_timesteps, (n,), generator=gen)
    noise = torch.randn(z.shape, generator=gen).to(device)
    eps = models.unet(sampler.add_noise(z, noise, t), t.to(device), models.text_encoder(tokenizer(captions).to(device)))
    return F.mse_loss(eps.float(), noise).item()


def export(out_dir: str | Path, dtype: torch.dtype | None = torch.float16) -> Path:
    """Write the trained model (EMA weights of the UNet and text encoder, the VAE, the config with the measured
    scaling factor) as an sdviz weights folder `out_dir/model`, loadable with `load_pipeline`."""
    out_dir = Path(out_dir)
    models = load_trained(out_dir, ema=True)
    step = int(load_checkpoint(out_dir, "unet")["step"])  # type: ignore[index]
    summary = _read_summary(out_dir)
    card = {
        "description": "sdviz's embedded toy model, trained by sdviz/toy/train.py on the captioned-shapes world",
        "unet_steps": step,
        "held_out_single": sorted(" ".join(p) for p in world.HELD_OUT_SINGLE),
        "held_out_pairs": sorted(" + ".join(sorted(p)) for p in world.HELD_OUT_PAIRS),
        "summary": summary,
    }
    folder = out_dir / "model"
    save_sdviz(folder, models, dtype=dtype, card=card)
    return folder


# --------------------------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------------------------


def _read_summary(out_dir: Path) -> dict[str, Any]:
    path = out_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_summary(out_dir: Path, stage: str, values: dict[str, Any]) -> None:
    summary = _read_summary(out_dir)
    summary[stage] = values
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


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
) -> dict[str, Any]:
    """Train the embedded model (or one stage of it) into `out_dir`; returns the summary of what was reached.

    Args:
        stage: "vae", "unet" or "all" (the VAE, then the UNet; a finished stage is skipped when resuming).
        steps: total steps of the stage(s): one int for a single stage, or {"vae": n, "unet": m}.
            Defaults: `DEFAULTS`.
        config: the model architecture (`TOY`; `TINY` for tests). The VAE's scaling factor is measured, not read.
        resume: continue from the stage's checkpoint if there is one (else start over).
        batch_size, lr: override the defaults of the stage(s).
        device: default CUDA if available, else the CPU.
        threads: torch CPU threads (default: torch's choice).
        bf16: run the VAE stage in bfloat16 autocast (default: on for CPUs with AMX units, where it is ~2x faster).
        ckpt_every, log_every: override the stage settings.
        stop_after: stop (with a checkpoint) after this step, as if interrupted; `resume` continues.
        export_model: after a finished UNet stage, write `out_dir/model` (see `export`).
        measure_images: after the VAE stage, how many scenes measure the scaling factor and PSNR (`measure_vae`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stages = STAGES if stage == "all" else (stage,)
    if any(s not in STAGES for s in stages):
        raise ValueError(f"stage must be 'vae', 'unet' or 'all', not {stage!r}")
    dev = torch.device(device) if device is not None else default_device()
    if threads:
        torch.set_num_threads(threads)
    if bf16 is None:
        bf16 = dev.type == "cpu" and cpu_has_amx()

    summary: dict[str, Any] = {}
    for name in stages:
        s = DEFAULTS[name]
        n = steps.get(name) if isinstance(steps, dict) else steps
        overrides = {"steps": n, "batch_size": batch_size, "lr": lr, "ckpt_every": ckpt_every, "log_every": log_every}
        s = replace(s, **{k: v for k, v in overrides.items() if v is not None})
        if name == "vae":
            st = _vae_stage(config, s, dev, seed, bf16)
            stage_config = config
        else:
            st, stage_config = _unet_stage(out_dir, config, s, dev, seed)
        last = _run(out_dir, st, stage_config, resume, progress, stop_after)
        ckpt = load_checkpoint(out_dir, name)
        assert ckpt is not None
        finished = int(ckpt["step"]) >= s.steps
        values: dict[str, Any] = {"steps": int(ckpt["step"]), "finished": finished, "seconds": ckpt["elapsed"]}
        values.update({k: v for k, v in last.items() if k not in ("step", "seconds")})
        if name == "vae" and finished:
            if "scaling_factor" not in st.extra:
                st.extra.update(measure_vae(st.modules["vae"], n=measure_images))
                _save_checkpoint(out_dir, st, int(ckpt["step"]), config, float(ckpt["elapsed"]))
        values.update(st.extra)
        _write_summary(out_dir, name, values)
        summary[name] = values
        if not finished:
            break
        if name == "unet" and export_model:
            summary["model"] = str(export(out_dir))
    return summary


def plot_losses(out_dir: str | Path, smooth: float = 0.9):
    """A matplotlib Figure of the training losses of both stages (raw rows faint, exponentially smoothed bold)."""
    from matplotlib.figure import Figure  # not pyplot: no global state, any backend

    out_dir = Path(out_dir)
    logs = {name: read_log(out_dir, name) for name in STAGES}
    logs = {k: v for k, v in logs.items() if v}
    fig = Figure(figsize=(5.5 * max(len(logs), 1), 3.8))
    axes = fig.subplots(1, max(len(logs), 1), squeeze=False)
    titles = {"vae": "stage 1: VAE (L1 + KL)", "unet": "stage 2: UNet + text encoder (Min-SNR noise loss)"}
    for ax, (name, rows) in zip(axes[0], logs.items(), strict=False):
        steps = [r["step"] for r in rows]
        keys = ["loss"] + (["mse"] if name == "unet" else [])
        for key, colour in zip(keys, ("tab:blue", "tab:orange"), strict=False):
            values = [r[key] for r in rows]
            smoothed, acc = [], values[0]
            for v in values:
                acc = smooth * acc + (1 - smooth) * v
                smoothed.append(acc)
            ax.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
            ax.plot(steps, smoothed, color=colour, linewidth=1.8, label=key)
        if name == "vae":
            twin = ax.twinx()
            twin.plot(steps, [r["psnr"] for r in rows], color="tab:green", linewidth=1.0, label="PSNR (train)")
            twin.set_ylabel("PSNR, dB")
            twin.legend(loc="center right", frameon=False)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(titles[name], fontsize=10)
        ax.legend(loc="upper right", frameon=False)
        ax.grid(alpha=0.3)
    if not logs:
        axes[0][0].text(0.5, 0.5, f"no logs in {out_dir}", ha="center", va="center")
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    """`sdviz train OUT_DIR [--stage vae|unet|all] [--vae-steps N] [--unet-steps N] ...`"""
    p = argparse.ArgumentParser(prog="sdviz train", description="Train sdviz's embedded toy model.")
    p.add_argument("out_dir", help="folder for checkpoints, logs and the final model")
    p.add_argument("--stage", default="all", choices=["all", *STAGES])
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
    p.add_argument("--plot", default=None, help="save a loss plot to this file at the end")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    steps: int | dict[str, int] | None = a.steps
    if a.vae_steps is not None or a.unet_steps is not None:
        steps = {k: v for k, v in (("vae", a.vae_steps), ("unet", a.unet_steps)) if v is not None}
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
    )
    print(json.dumps(summary, indent=2))
    if a.plot:
        plot_losses(a.out_dir).savefig(a.plot, dpi=120)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

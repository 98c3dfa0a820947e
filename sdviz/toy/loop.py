"""The training loop's machinery: what makes `train.py` a tool rather than a lesson (the lesson is `losses.py`).

A stage (the VAE, or the UNet with the text encoder) hands `run_stage` a `Stage`: its modules, optimizer, random
generators and a `step_fn(step) -> metrics` that does one optimisation step. `run_stage` does the rest:

- the learning-rate schedule (`lr_at`: linear warm-up, then cosine decay) and an exponential moving average of the
  weights (`EMA`, what gets exported);
- a checkpoint every `ckpt_every` steps and at the end, holding the weights, the EMAs, the optimizer's state and
  the state of both random generators, so that resuming continues *exactly* (the loss of the next step is the one
  an uninterrupted run would have had, bit for bit on the same machine);
- a CSV log (`log_<stage>.csv`, one row per `log_every` steps, averaged) and a progress bar;
- Ctrl-C: held until the current step has finished, then a checkpoint, then `KeyboardInterrupt`.

Files in the run folder: `<stage>.ckpt`, `log_<stage>.csv`, `summary.json` (what each stage reached).
"""

from __future__ import annotations

import copy
import csv
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from sdviz.config import SDConfig

EMA_DECAY = 0.999


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
    # UNet stages only: the share of two-object scenes (captions with a relation) in a batch (None: the world's
    # own mix, `world.P_TWO_OBJECTS`).
    p_two: float | None = None


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


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with `n` torch CPU threads (None or 0: leave the number alone), then restore the old number."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------------------------------
# Checkpoints, logs and the summary
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Stage:
    """What a stage hands to `run_stage`."""

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


def save_checkpoint(out_dir: Path, st: Stage, step: int, config: SDConfig, elapsed: float) -> None:
    """Write the stage's whole state after `step` to `out_dir/<stage>.ckpt` (atomically)."""
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
    """The checkpoint of a stage as a dict (see `save_checkpoint`), or None if there is none."""
    path = _checkpoint_path(Path(out_dir), stage)
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def _restore(st: Stage, ckpt: dict[str, Any]) -> int:
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


def read_summary(out_dir: Path) -> dict[str, Any]:
    """`out_dir/summary.json`: per stage, the steps done, the time taken and the last logged metrics."""
    path = out_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def write_summary(out_dir: Path, stage: str, values: dict[str, Any]) -> None:
    summary = read_summary(out_dir)
    summary[stage] = values
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------------------


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


def run_stage(
    out_dir: Path,
    st: Stage,
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
                    save_checkpoint(out_dir, st, step, config, time.perf_counter() - t0)
                    print(f"\ninterrupted: checkpoint saved at step {step}; train again (resume=True) to continue")
                    raise KeyboardInterrupt
                if step % s.ckpt_every == 0 and step != end:
                    save_checkpoint(out_dir, st, step, config, time.perf_counter() - t0)
    finally:
        bar.close()
        log_file.close()
    save_checkpoint(out_dir, st, end, config, time.perf_counter() - t0)
    return last

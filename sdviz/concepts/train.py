"""Training a TopK SAE on collected activations, on the CPU: resumable, with a progress bar.

The recipe is Gao et al. 2024's, at a small scale:

- inputs divided by one scale (their root mean squared norm), `b_pre` started at their geometric median, W_enc
  started as W_dec's transpose;
- loss: the squared reconstruction error, plus 1/32 of the *auxiliary* loss: the features that have not fired on the
  last `dead_after` rows are "dead", and the top `aux_k` of their pre-activations must reconstruct what the live
  features missed (x - x_hat). That gives dead features a gradient again;
- Adam; after each step the decoder rows go back to unit norm (and the gradient's part along them is removed first,
  so that Adam does not fight the normalisation).

Every `checkpoint_every` steps the run folder gets `checkpoint.pt` (weights, Adam's state, the step, when each
feature last fired); `train` started again on the same folder goes on from there. The batches are drawn from a
generator seeded by the step, so a resumed run sees the batches an uninterrupted one would.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from sdviz.concepts.sae import SAE, measure


@dataclass(frozen=True)
class TrainSettings:
    expansion: int = 16  # features per input dimension: n = expansion * d
    k: int = 16  # features active per row
    steps: int = 3000
    batch: int = 4096
    lr: float = 1e-3
    aux_coef: float = 1 / 32  # weight of the auxiliary loss (Gao et al.)
    aux_k: int = 0  # dead features used by the auxiliary loss (0: d // 2)
    dead_after: int = 200_000  # a feature that has not fired on this many rows is dead
    seed: int = 0
    checkpoint_every: int = 250

    @classmethod
    def quick(cls) -> TrainSettings:
        """A few seconds' run, for tests."""
        return cls(expansion=4, k=4, steps=60, batch=256, dead_after=2000, checkpoint_every=20)


def geometric_median(x: Tensor, iterations: int = 50) -> Tensor:
    """The point minimising the sum of distances to the rows of x (N, d): Weiszfeld's iteration from the mean."""
    m = x.mean(0)
    for _ in range(iterations):
        w = 1.0 / (x - m).norm(dim=1).clamp_min(1e-8)  # (N,)
        m = (w[:, None] * x).sum(0) / w.sum()
    return m


def _batch(rows: Tensor, step: int, settings: TrainSettings) -> Tensor:
    g = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)
    return rows[torch.randint(len(rows), (settings.batch,), generator=g)].float()


def _decode_sparse(sae: SAE, values: Tensor, indices: Tensor) -> Tensor:
    """W_dec^T z for a z given by its k active (values, indices), (N, k) each -> (N, d), without the dense (N, n)."""
    return torch.einsum("nk,nkd->nd", values, sae.W_dec[indices])  # W_dec[indices]: (N, k, d)


def _losses(sae: SAE, x: Tensor, dead: Tensor, aux_k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Main and auxiliary loss on one batch (N, d) in normalised units; also which features fired (n,) bool."""
    pre = (x - sae.b_pre) @ sae.W_enc + sae.b_enc  # (N, d) @ (d, n) -> (N, n)
    top = pre.topk(sae.k, dim=-1)  # the k largest per row: (N, k) values and indices
    values = F.relu(top.values)
    x_hat = _decode_sparse(sae, values, top.indices) + sae.b_pre  # (N, d)
    error = x - x_hat
    main = (error**2).sum(-1).mean()
    aux = torch.zeros((), dtype=x.dtype)
    n_dead = int(dead.sum())
    if n_dead:
        dead_pre = pre.masked_fill(~dead, float("-inf"))  # only the dead features may take part
        top_dead = dead_pre.topk(min(aux_k, n_dead), dim=-1)
        e_hat = _decode_sparse(sae, F.relu(top_dead.values), top_dead.indices)  # what the dead make of the error
        aux = ((error.detach() - e_hat) ** 2).sum(-1).mean()
    fired = torch.zeros(sae.n, dtype=torch.bool)
    fired[top.indices[values > 0]] = True
    return main, aux, fired


def train(
    rows: Tensor,
    out: str | Path,
    settings: TrainSettings = TrainSettings(),
    point: str = "",
    model: str = "",
    progress: bool = True,
) -> SAE:
    """Train an SAE on activation rows (N, d) (model units, any float dtype); checkpoints and the result
    (`sae.safetensors`, `log.csv`) go to `out`. Resumes from `out/checkpoint.pt` when one is there."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    d = rows.shape[1]
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=True)  # plain tensors, numbers and strings: nothing that runs code
        if ckpt["settings"] != asdict(settings) or ckpt["point"] != point:
            raise ValueError(f"out: {out} holds a run with other settings or another hook point; use a new folder")
        sae = SAE(d, ckpt["n"], settings.k, point, model, ckpt["scale"])
        sae.load_state_dict(ckpt["sae"])
        start, last_fired, seconds = ckpt["step"], ckpt["last_fired"], ckpt["seconds"]
    else:
        sample = _batch(rows, -1, TrainSettings(batch=min(len(rows), 16384), seed=settings.seed))
        scale = float(sample.pow(2).sum(-1).mean().sqrt())  # inputs / scale have mean squared norm 1
        sae = SAE(d, settings.expansion * d, settings.k, point, model, scale)
        torch.manual_seed(settings.seed)
        with torch.no_grad():
            w = F.normalize(torch.randn(sae.n, d), dim=1)
            sae.W_dec.copy_(w)
            sae.W_enc.copy_(w.t())
            sae.b_pre.copy_(geometric_median(sample / scale))
        start, last_fired, seconds = 0, torch.zeros(sae.n, dtype=torch.long), 0.0
        ckpt = None
    opt = torch.optim.Adam(sae.parameters(), lr=settings.lr)
    if ckpt is not None:
        opt.load_state_dict(ckpt["opt"])
    aux_k = settings.aux_k or max(1, d // 2)
    log = (out / "log.csv").open("a", newline="")
    writer = csv.writer(log)
    if start == 0:
        writer.writerow(["step", "loss", "aux", "dead_fraction"])
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=settings.steps, initial=start, desc=f"train SAE {point.split('.hook')[0] or ''}")
    t0 = time.perf_counter() - seconds
    try:
        for step in range(start, settings.steps):
            x = _batch(rows, step, settings) / sae.scale
            seen = step * settings.batch  # rows seen before this batch
            dead = (seen - last_fired) >= settings.dead_after
            main, aux, fired = _losses(sae, x, dead, aux_k)
            lr = settings.lr * min(1.0, 5 * (settings.steps - step) / settings.steps)  # linear decay over the last 20%
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad()
            (main + settings.aux_coef * aux).backward()
            with torch.no_grad():  # keep decoder rows unit-norm: drop the gradient along them, step, renormalise
                w, g = sae.W_dec, sae.W_dec.grad
                g -= (g * w).sum(-1, keepdim=True) * w
            opt.step()
            with torch.no_grad():
                sae.W_dec.copy_(F.normalize(sae.W_dec, dim=1))
            last_fired[fired] = seen + settings.batch
            if step % 25 == 0 or step == settings.steps - 1:
                writer.writerow([step, f"{main.item():.5f}", f"{aux.item():.5f}", f"{float(dead.float().mean()):.4f}"])
            if bar is not None:
                bar.update(1)
                if step % 25 == 0:
                    bar.set_postfix(loss=f"{main.item():.4f}", dead=f"{float(dead.float().mean()):.3f}")
            if (step + 1) % settings.checkpoint_every == 0 or step == settings.steps - 1:
                state = {
                    "sae": sae.state_dict(), "opt": opt.state_dict(), "step": step + 1, "n": sae.n,
                    "scale": sae.scale, "last_fired": last_fired, "settings": asdict(settings), "point": point,
                    "seconds": time.perf_counter() - t0,
                }
                torch.save(state, out / "checkpoint.tmp")
                (out / "checkpoint.tmp").replace(ckpt_path)
    finally:
        log.close()
        if bar is not None:
            bar.close()
    sae.eval()
    sae.info = {
        "settings": asdict(settings),
        "train_seconds": round(time.perf_counter() - t0, 1),
        "torch_threads": torch.get_num_threads(),
        "train_rows": len(rows),
        "train": measure(sae, rows[:200_000]),
    }
    sae.save(out / "sae.safetensors")
    (out / "train.json").write_text(json.dumps(sae.info, indent=1) + "\n")
    return sae

"""A TopK sparse autoencoder (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

An SAE rewrites an activation vector x (C numbers at one pixel of a feature map) as a sparse sum of learned
directions, its *features*, which are hoped to mean one thing each:

    z     = ReLU(TopK(W_enc (x - b_pre) + b_enc))     (n,) at most k non-zero: which features fire, how strongly
    x_hat = W_dec^T z + b_pre                         (C,) the reconstruction: the fired features' directions, summed

TopK keeps the k largest pre-activations and zeroes the rest, so sparsity is set by k instead of an L1 penalty that
also shrinks what it keeps (Gao et al. section 2.3). `b_pre` is *tied*: subtracted before encoding and added after
decoding, so that the features describe how x differs from a typical activation. Each row of W_dec (a feature's
direction) has unit norm; the activation z_i says how much of it is there. Features that stop firing ("dead") are
revived by an auxiliary loss (`train.py`).

Inputs are divided by `scale` (the root mean squared norm of the training rows) before encoding and multiplied back
after decoding, so the same learning rate suits any hook point. An SAE knows the model and the hook point it was
trained on, and refuses to be used elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn


class SAEMismatch(ValueError):
    """An SAE used on a model or hook point it was not trained for."""


class SAE(nn.Module):
    """A TopK sparse autoencoder of `n` features over `d`-dimensional activations, `k` active at a time."""

    def __init__(self, d: int, n: int, k: int, point: str = "", model: str = "", scale: float = 1.0):
        super().__init__()
        if not 0 < k <= n:
            raise ValueError(f"k must be in 1..n={n}, not {k}")
        self.d, self.n, self.k = d, n, k
        self.point, self.model = point, model  # the hook point and the model fingerprint it was trained on
        self.scale = float(scale)
        self.info: dict[str, Any] = {}  # how it was trained and what it measured (written into the file)
        w = F.normalize(torch.randn(n, d), dim=1)  # (n, d) unit-norm feature directions
        self.W_dec = nn.Parameter(w)
        self.W_enc = nn.Parameter(w.t().clone())  # (d, n) initialised as the decoder's transpose (Gao et al. 2.4)
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.b_pre = nn.Parameter(torch.zeros(d))

    # -- the autoencoder -------------------------------------------------------------------------------------------

    def pre_activations(self, x: Tensor) -> Tensor:
        """(N, d) activations in model units -> (N, n) pre-activations, before TopK."""
        return (x / self.scale - self.b_pre) @ self.W_enc + self.b_enc  # (N, d) @ (d, n) -> (N, n)

    def encode(self, x: Tensor) -> Tensor:
        """(N, d) -> (N, n) sparse feature activations: at most k non-zero per row, all >= 0."""
        pre = self.pre_activations(x)
        top = pre.topk(self.k, dim=-1)  # values and indices, (N, k) each
        return torch.zeros_like(pre).scatter(-1, top.indices, F.relu(top.values))

    def decode(self, z: Tensor) -> Tensor:
        """(N, n) feature activations -> (N, d) reconstruction in model units."""
        return (z @ self.W_dec + self.b_pre) * self.scale  # (N, n) @ (n, d) -> (N, d)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, d) -> (reconstruction (N, d), feature activations (N, n))."""
        z = self.encode(x)
        return self.decode(z), z

    def direction(self, feature: int) -> Tensor:
        """A feature's direction in model units, (d,): what adding 1.0 of it adds to the activation."""
        self.check_feature(feature)
        return self.W_dec[feature].detach() * self.scale

    # -- checks ----------------------------------------------------------------------------------------------------

    def check_feature(self, feature: int) -> int:
        if not isinstance(feature, int) or isinstance(feature, bool) or not 0 <= feature < self.n:
            raise IndexError(f"feature {feature!r} is out of range: this SAE has features 0..{self.n - 1}")
        return feature

    def check(self, point: str, model: str | None = None) -> None:
        """Refuse a hook point (and, if given, a model fingerprint) other than those the SAE was trained on."""
        if point != self.point or (model is not None and self.model and model != self.model):
            raise SAEMismatch(
                f"this SAE was trained on {self.point} of model {self.model or '?'}, "
                f"not on {point} of model {model or '?'}"
            )

    def check_pipe(self, pipe: Any, point: str | None = None) -> str:
        """Check the SAE against a pipeline (and a hook point, default its own); returns the hook point."""
        from sdviz.concepts.collect import model_fingerprint

        point = point or self.point
        self.check(point, model_fingerprint(pipe))
        return point

    # -- files -----------------------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the weights and what the SAE is (d, n, k, hook point, model, scale, info) to a safetensors file."""
        meta = {"d": self.d, "n": self.n, "k": self.k, "point": self.point, "model": self.model, "scale": self.scale}
        tensors = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(path), metadata={"sdviz_sae": json.dumps(meta), "info": json.dumps(self.info)})

    @classmethod
    def load(cls, path: str | Path) -> SAE:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if "sdviz_sae" not in meta:
            raise ValueError(f"{path} is not an sdviz SAE file (no 'sdviz_sae' metadata)")
        m = json.loads(meta["sdviz_sae"])
        sae = cls(m["d"], m["n"], m["k"], m["point"], m["model"], m["scale"])
        sae.load_state_dict(load_file(str(path)))
        sae.info = json.loads(meta.get("info", "{}"))
        return sae.eval()


@torch.no_grad()
def fvu(x: Tensor, x_hat: Tensor) -> float:
    """Fraction of variance unexplained: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over rows (N, d)."""
    return float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


@torch.no_grad()
def measure(sae: SAE, x: Tensor, batch: int = 8192) -> dict[str, float]:
    """Reconstruction and sparsity of an SAE on rows (N, d): FVU, mean L0 (features active per row), the share of
    features that never fire on these rows (dead), and the rows each feature fires on, on average."""
    errors, l0, fired = 0.0, 0.0, torch.zeros(sae.n, dtype=torch.long)
    for i in range(0, len(x), batch):
        xb = x[i : i + batch].float()
        x_hat, z = sae(xb)
        errors += float(((xb - x_hat) ** 2).sum())
        active = z > 0
        l0 += float(active.sum())
        fired += active.sum(0)
    variance = float(((x.float() - x.float().mean(0)) ** 2).sum())
    return {
        "fvu": errors / variance,
        "l0": l0 / len(x),
        "dead_fraction": float((fired == 0).float().mean()),
        "dead": int((fired == 0).sum()),
        "rows": len(x),
    }

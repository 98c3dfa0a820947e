"""Multi-head attention, the one class used by the text encoder, the VAE and the UNet.

Attention (Vaswani et al. 2017): every query position takes a weighted average of the value vectors, with weights
softmax(Q K^T / sqrt(d)). In *self*-attention queries, keys and values all come from the same sequence (an image's
pixels, a prompt's tokens); in *cross*-attention the keys and values come from another one: the UNet's pixels ask
the prompt's 77 token embeddings what to draw.

The output is always computed by `F.scaled_dot_product_attention` (a fused kernel that never materialises the
N x M probability matrix). When a trace listens on `hook_probs`, the probabilities are computed *beside* that path,
from the same Q and K, only for the batch rows the listeners asked for, and in chunks of query positions (so that
at most `PROBS_CHUNK_BYTES` of scores and softmax exist at once, even for SD 1.5's 4096 x 4096 self-attention);
each chunk is handed to the hook. The layer's output is untouched, bit for bit.

An *editor* on `hook_probs` (`sdviz.editing`, prompt-to-prompt) may hand back changed probabilities. Then, for the
rows and query positions whose probabilities it changed, and only those, the output is computed from the edited
probabilities, probs @ V; everywhere else the fused kernel's output stays as it was. An edit that changes no
probability (a reweight by 1.0) therefore changes no number.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdviz.hooks import HookPoint

PROBS_CHUNK_BYTES = 64 * 2**20  # observed probabilities are computed at most this many bytes at a time


def probs_chunk(rows: int, heads: int, n: int, m: int, budget: int = PROBS_CHUNK_BYTES) -> int:
    """Query positions per chunk so that scores and their softmax, 2 x (rows, heads, chunk, m) float32, fit `budget`."""
    return max(1, min(n, budget // max(1, 2 * 4 * rows * heads * m)))


def attention_probs(q: Tensor, k: Tensor, causal: bool = False, offset: int = 0) -> Tensor:
    """softmax(Q K^T / sqrt(d)): (B, heads, N, d), (B, heads, M, d) -> (B, heads, N, M). For observation only.

    `offset` is the position of q's first query when q is a chunk of the queries (for the causal mask)."""
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, heads, N, M)
    if causal:
        n, m = scores.shape[-2:]
        mask = torch.ones(n, m, dtype=torch.bool, device=q.device).triu(1 + offset)  # True for keys in the future
        scores = scores.masked_fill(mask, float("-inf"))
    return scores.softmax(dim=-1)


class Attention(nn.Module):
    """Multi-head attention. Self-attention when `context` is None, cross-attention on `context` otherwise."""

    def __init__(
        self,
        query_dim: int,
        heads: int,
        context_dim: int | None = None,
        qkv_bias: bool = False,
    ):
        super().__init__()
        assert query_dim % heads == 0, f"query_dim {query_dim} is not divisible by {heads} heads"
        self.heads = heads
        context_dim = context_dim or query_dim
        self.to_q = nn.Linear(query_dim, query_dim, bias=qkv_bias)
        self.to_k = nn.Linear(context_dim, query_dim, bias=qkv_bias)
        self.to_v = nn.Linear(context_dim, query_dim, bias=qkv_bias)
        self.to_out = nn.Linear(query_dim, query_dim)
        self.hook_probs = HookPoint()  # (B, heads, N, M) attention probabilities, computed only when listened to
        self.hook_values = HookPoint()  # (B, heads, M, d) the values, handed with the probabilities (same rows)

    def forward(self, x: Tensor, context: Tensor | None = None, causal: bool = False) -> Tensor:
        context = x if context is None else context
        b, n, c = x.shape  # (B, N, C): N query positions (pixels or tokens)
        m = context.shape[1]  # M key positions
        h, d = self.heads, c // self.heads
        q = self.to_q(x).view(b, n, h, d).transpose(1, 2)  # (B, N, C) -> (B, N, h, d) -> (B, h, N, d)
        k = self.to_k(context).view(b, m, h, d).transpose(1, 2)  # (B, M, C_ctx) -> (B, h, M, d)
        v = self.to_v(context).view(b, m, h, d).transpose(1, 2)  # (B, M, C_ctx) -> (B, h, M, d)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, h, N, d)
        if self.hook_probs.active:
            out = self.hook_attention(q, k, v, out, causal)  # beside the fused kernel; only an editor changes `out`
        out = out.transpose(1, 2).reshape(b, n, c)  # (B, h, N, d) -> (B, N, h, d) -> (B, N, C)
        return self.to_out(out)  # (B, N, C) -> (B, N, C)

    @torch.compiler.disable  # eager under torch.compile: listeners are Python (see sdviz.hooks.HookPoint._tell)
    def hook_attention(self, q: Tensor, k: Tensor, v: Tensor, out: Tensor, causal: bool) -> Tensor:
        """Hand the probabilities of the rows the listeners want to `hook_probs`, in chunks of query positions, and
        return the attention output (B, h, N, d).

        `out` is the fused kernel's output. Observers leave it as it is. Where an editor hands back probabilities
        that differ (bit for bit) from those it was given, those rows and query positions are recomputed from the
        edited probabilities: probs @ V.
        """
        b, n = q.shape[0], q.shape[2]
        rows = self.hook_probs.wanted_rows(b)  # e.g. the conditional half of a guided batch
        if rows.stop <= rows.start:
            return out
        q, k, v_rows = q[rows], k[rows], v[rows]  # (b', h, N, d), (b', h, M, d), (b', h, M, d)
        self.hook_values(v_rows, rows=rows, batch=b)  # o = probs @ V: what a listener needs to project the output
        chunk = probs_chunk(len(q), self.heads, n, k.shape[2])
        fused = out
        for i in range(0, n, chunk):
            queries = slice(i, min(n, i + chunk))
            probs = attention_probs(q[:, :, queries], k, causal, offset=i)  # (b', h, chunk, M)
            seen = self.hook_probs(probs, rows=rows, batch=b, queries=queries)  # `probs` itself unless edited
            if seen is probs:
                continue
            changed = (seen != probs).flatten(1).any(1).nonzero()[:, 0]  # (c,) the rows an editor changed
            if len(changed):
                out = out.clone() if out is fused else out  # the fused output itself is never written to
                edited = seen[changed].to(v.dtype) @ v_rows[changed]  # (c, h, chunk, M) @ (c, h, M, d)
                out[rows.start + changed, :, queries] = edited  # (c, h, chunk, d) into (B, h, N, d)
        return out

"""Multi-head attention, the one class used by the text encoder, the VAE and the UNet.

Attention (Vaswani et al. 2017): every query position takes a weighted average of the value vectors, with weights
softmax(Q K^T / sqrt(d)). In *self*-attention queries, keys and values all come from the same sequence (an image's
pixels, a prompt's tokens); in *cross*-attention the keys and values come from another one: the UNet's pixels ask
the prompt's 77 token embeddings what to draw.

The output is always computed by `F.scaled_dot_product_attention` (a fused kernel that never materialises the
N x M probability matrix). When a trace listens on `hook_probs`, the probabilities are computed *beside* that path,
from the same Q and K, and handed to the hook; the layer's output is untouched, bit for bit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdviz.models.common import HookPoint


def attention_probs(q: Tensor, k: Tensor, causal: bool = False) -> Tensor:
    """softmax(Q K^T / sqrt(d)): (B, heads, N, d), (B, heads, M, d) -> (B, heads, N, M). For observation only."""
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, heads, N, M)
    if causal:
        n, m = scores.shape[-2:]
        mask = torch.ones(n, m, dtype=torch.bool, device=q.device).triu(1)  # True above the diagonal: the future
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
        self.probs_rows: slice | None = None  # the batch rows hook_probs is computed for (None: all); a trace sets it

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
            rows = slice(None) if self.probs_rows is None else self.probs_rows  # e.g. only the conditional half
            self.hook_probs(attention_probs(q[rows], k[rows], causal))  # (b, h, N, M), beside the fused kernel
        out = out.transpose(1, 2).reshape(b, n, c)  # (B, h, N, d) -> (B, N, h, d) -> (B, N, C)
        return self.to_out(out)  # (B, N, C) -> (B, N, C)

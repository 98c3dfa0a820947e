"""The CLIP text encoder (Radford et al. 2021): token ids (B, 77) -> context (B, 77, 768).

Stable Diffusion 1.x conditions its UNet on the *last hidden state* of the text tower of OpenAI's CLIP ViT-L/14:
one 768-vector per token position, each of which has seen the tokens before it (causal attention). The UNet's
cross-attention layers read all 77 of them.

    ids (B, 77) -> token embedding + learned position embedding (B, 77, 768)
    12 x [ x + attn(LN(x)) ; x + MLP(LN(x)) ]     (pre-LayerNorm transformer, causal self-attention, QuickGELU)
    final LayerNorm -> (B, 77, 768)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sdviz.config import CLIPConfig
from sdviz.hooks import HookPoint
from sdviz.models.attention import Attention


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the cheap GELU approximation CLIP was trained with."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = QuickGELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))  # (B, 77, 768) -> (B, 77, 3072) -> (B, 77, 768)


class EncoderLayer(nn.Module):
    """One pre-LayerNorm transformer layer with causal self-attention."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.attn = Attention(cfg.width, cfg.heads, qkv_bias=True)
        self.layer_norm2 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.mlp = MLP(cfg.width, cfg.mlp_ratio * cfg.width)
        self.hook_resid_post = HookPoint()  # (B, 77, 768) the residual stream after this layer, one vector per token

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.layer_norm1(x), causal=True)  # (B, 77, 768): each token sees itself and earlier ones
        return self.hook_resid_post(x + self.mlp(self.layer_norm2(x)))  # (B, 77, 768)


class CLIPTextEncoder(nn.Module):
    """Token ids (B, max_length) -> last hidden state (B, max_length, width)."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.config = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.position_embedding = nn.Embedding(cfg.max_length, cfg.width)
        self.layers = nn.ModuleList([EncoderLayer(cfg) for _ in range(cfg.layers)])
        self.final_layer_norm = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.hook_out = HookPoint()  # (B, 77, 768) the context the UNet attends to

    def forward(self, ids: Tensor) -> Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)  # (77,)
        x = self.token_embedding(ids) + self.position_embedding(positions)  # (B, 77) -> (B, 77, 768)
        for layer in self.layers:
            x = layer(x)  # (B, 77, 768) -> (B, 77, 768)
        return self.hook_out(self.final_layer_norm(x))  # (B, 77, 768)

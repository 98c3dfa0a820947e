"""The UNet (Ronneberger et al. 2015; Rombach et al. 2022): predicts the noise in a latent at step t, given a prompt.

    eps = UNet(x_t (B, 4, h, w), t (B,), context (B, 77, 768))   ->   (B, 4, h, w)

Layout for SD 1.5 (a 512x512 image, so h = w = 64):

    t -> sinusoidal embedding (B, 320) -> MLP -> (B, 1280), added inside every ResNet block
    conv_in 4 -> 320
    down:  320@64 [Res, Attn] x2, down | 640@32 [Res, Attn] x2, down | 1280@16 [Res, Attn] x2, down | 1280@8 Res x2
    mid:   1280@8 Res, Attn, Res
    up:    1280@8 Res x3, up | 1280@16 [Res, Attn] x3, up | 640@32 [Res, Attn] x3, up | 320@64 [Res, Attn] x3
           (each up ResNet first concatenates the matching down activation: the skip connections of the "U")
    GroupNorm, SiLU, conv_out 320 -> 4

"Attn" is a spatial transformer: self-attention among pixels, cross-attention from pixels to the prompt tokens
(this is where the text steers the image), and a GEGLU feed-forward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdviz.config import UNetConfig
from sdviz.hooks import HookPoint
from sdviz.models.attention import Attention
from sdviz.models.common import GroupNorm, ResnetBlock, Upsample


def timestep_embedding(t: Tensor, dim: int, flip_sin_to_cos: bool = True, shift: float = 0.0) -> Tensor:
    """Sinusoidal embedding of timesteps (Vaswani et al. 2017, section 3.5, with t in place of the position).

    Frequencies go geometrically from 1 to 1/10000; each timestep becomes [cos(t f_i), sin(t f_i)] (SD's order).
    """
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - shift)
    angles = t[:, None].float() * torch.exp(exponent)[None, :]  # (B,) x (half,) -> (B, half)
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)  # (B, half) -> (B, dim)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)  # (B, dim): cos first, then sin
    return emb


class TimeEmbedding(nn.Module):
    """Linear, SiLU, Linear: (B, 320) -> (B, 1280)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))  # (B, 320) -> (B, 1280) -> (B, 1280)


class GEGLU(nn.Module):
    """Gated GELU feed-forward (Shazeer 2020): x -> (x W + b) * GELU(x V + c), then back to the model width."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * mult * dim)
        self.out = nn.Linear(mult * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)  # (B, N, C) -> (B, N, 8C) -> 2 x (B, N, 4C)
        return self.out(x * F.gelu(gate))  # (B, N, 4C) -> (B, N, C)


class TransformerBlock(nn.Module):
    """Self-attention, cross-attention on the prompt, feed-forward; each pre-LayerNorm with a residual."""

    def __init__(self, dim: int, heads: int, context_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads)  # pixels attend to pixels
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, context_dim=context_dim)  # pixels attend to prompt tokens
        self.norm3 = nn.LayerNorm(dim)
        self.ff = GEGLU(dim)
        self.hook_context = HookPoint()  # (B, 77, context_dim) the prompt tokens this block's cross-attention reads

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = x + self.attn1(self.norm1(x))  # (B, HW, C)
        x = x + self.attn2(self.norm2(x), self.hook_context(context))  # (B, HW, C) x (B, 77, 768) -> (B, HW, C)
        return x + self.ff(self.norm3(x))  # (B, HW, C)


class SpatialTransformer(nn.Module):
    """Treat a feature map as a sequence of pixels, run transformer blocks on it, and fold it back."""

    def __init__(self, channels: int, heads: int, context_dim: int, depth: int, groups: int):
        super().__init__()
        self.norm = GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(channels, heads, context_dim) for _ in range(depth)])
        self.proj_out = nn.Conv2d(channels, channels, 1)
        self.hook_block_out = HookPoint()  # (B, C, H, W) the block's output: its input plus the transformer's update

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.proj_in(self.norm(x))  # (B, C, H, W)
        y = y.permute(0, 2, 3, 1).reshape(b, h * w, c)  # (B, C, H, W) -> (B, H, W, C) -> (B, HW, C)
        for block in self.transformer_blocks:
            y = block(y, context)  # (B, HW, C)
        y = y.reshape(b, h, w, c).permute(0, 3, 1, 2)  # (B, HW, C) -> (B, H, W, C) -> (B, C, H, W)
        return self.hook_block_out(x + self.proj_out(y))  # (B, C, H, W)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution: (B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2))."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class DownBlock(nn.Module):
    """ResNet blocks (each optionally followed by a spatial transformer), then optionally a downsampler.

    Returns the output and every intermediate activation, which the up path will concatenate (skip connections).
    """

    def __init__(self, cfg: UNetConfig, in_ch: int, out_ch: int, attention: bool, down: bool):
        super().__init__()
        n, temb = cfg.num_res_blocks, cfg.time_embed_dim
        self.resnets = nn.ModuleList(
            [ResnetBlock(in_ch if i == 0 else out_ch, out_ch, cfg.groups, cfg.eps, temb) for i in range(n)]
        )
        self.attentions = nn.ModuleList(
            [
                SpatialTransformer(out_ch, cfg.num_heads, cfg.context_dim, cfg.transformer_depth, cfg.groups)
                for _ in range(n if attention else 0)
            ]
        )
        self.downsamplers = nn.ModuleList([Downsample(out_ch)] if down else [])

    def forward(self, x: Tensor, temb: Tensor, context: Tensor) -> tuple[Tensor, list[Tensor]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)  # (B, C_in, H, W) -> (B, C_out, H, W)
            if self.attentions:
                x = self.attentions[i](x, context)  # (B, C_out, H, W)
            skips.append(x)
        for down in self.downsamplers:
            x = down(x)  # (B, C_out, H, W) -> (B, C_out, H/2, W/2)
            skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    def __init__(self, cfg: UNetConfig, ch: int):
        super().__init__()
        temb = cfg.time_embed_dim
        self.resnets = nn.ModuleList([ResnetBlock(ch, ch, cfg.groups, cfg.eps, temb) for _ in range(2)])
        self.attentions = nn.ModuleList(
            [SpatialTransformer(ch, cfg.num_heads, cfg.context_dim, cfg.transformer_depth, cfg.groups)]
        )

    def forward(self, x: Tensor, temb: Tensor, context: Tensor) -> Tensor:
        x = self.resnets[0](x, temb)  # (B, 1280, 8, 8)
        x = self.attentions[0](x, context)  # (B, 1280, 8, 8)
        return self.resnets[1](x, temb)  # (B, 1280, 8, 8)


class UpBlock(nn.Module):
    """ResNet blocks that each first concatenate a skip activation, optional transformers, optional upsampler."""

    def __init__(self, cfg: UNetConfig, prev_ch: int, out_ch: int, skip_chs: list[int], attention: bool, up: bool):
        super().__init__()
        temb = cfg.time_embed_dim
        self.resnets = nn.ModuleList(
            [
                ResnetBlock((prev_ch if i == 0 else out_ch) + skip_ch, out_ch, cfg.groups, cfg.eps, temb)
                for i, skip_ch in enumerate(skip_chs)
            ]
        )
        self.attentions = nn.ModuleList(
            [
                SpatialTransformer(out_ch, cfg.num_heads, cfg.context_dim, cfg.transformer_depth, cfg.groups)
                for _ in range(len(skip_chs) if attention else 0)
            ]
        )
        self.upsamplers = nn.ModuleList([Upsample(out_ch)] if up else [])

    def forward(
        self, x: Tensor, skips: list[Tensor], temb: Tensor, context: Tensor, size: tuple[int, int] | None
    ) -> Tensor:
        for i, resnet in enumerate(self.resnets):
            x = torch.cat([x, skips.pop()], dim=1)  # (B, C, H, W) + (B, C_skip, H, W) -> (B, C + C_skip, H, W)
            x = resnet(x, temb)  # (B, C + C_skip, H, W) -> (B, C_out, H, W)
            if self.attentions:
                x = self.attentions[i](x, context)  # (B, C_out, H, W)
        for up in self.upsamplers:
            x = up(x, size)  # (B, C_out, H, W) -> (B, C_out, 2H, 2W)
        return x


class UNet(nn.Module):
    """eps = UNet(x_t, t, context): the noise predicted in latent x_t at timestep t, conditioned on the prompt."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        chs = [cfg.model_channels * m for m in cfg.channel_mult]  # SD 1.5: [320, 640, 1280, 1280]
        levels = len(chs)
        self.hook_time_sinusoid = HookPoint()  # (B, 320) the sinusoidal timestep embedding
        self.time_embedding = TimeEmbedding(cfg.model_channels, cfg.time_embed_dim)
        self.hook_time_embedding = HookPoint()  # (B, 1280) after the MLP
        self.conv_in = nn.Conv2d(cfg.in_channels, chs[0], 3, padding=1)

        # Down path; remember the channel count of every activation kept for a skip connection.
        skip_chs, blocks, ch = [chs[0]], [], chs[0]
        for i, out_ch in enumerate(chs):
            down = i < levels - 1
            blocks.append(DownBlock(cfg, ch, out_ch, cfg.attention_levels[i], down))
            skip_chs += [out_ch] * cfg.num_res_blocks + ([out_ch] if down else [])
            ch = out_ch
        self.down_blocks = nn.ModuleList(blocks)

        self.mid_block = MidBlock(cfg, ch)

        # Up path: mirror image, each block takes num_res_blocks + 1 skips, deepest first.
        blocks = []
        for i, out_ch in enumerate(reversed(chs)):
            level = levels - 1 - i
            taken = [skip_chs.pop() for _ in range(cfg.num_res_blocks + 1)]
            blocks.append(UpBlock(cfg, ch, out_ch, taken, cfg.attention_levels[level], up=level > 0))
            ch = out_ch
        self.up_blocks = nn.ModuleList(blocks)

        self.conv_norm_out = GroupNorm(cfg.groups, chs[0], cfg.eps)
        self.conv_out = nn.Conv2d(chs[0], cfg.out_channels, 3, padding=1)
        self.hook_out = HookPoint()  # (B, 4, h, w) the predicted noise

    def forward(self, x: Tensor, t: Tensor | float | int, context: Tensor) -> Tensor:
        cfg = self.config
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t  # (B,)
        temb = timestep_embedding(t, cfg.model_channels, cfg.flip_sin_to_cos, cfg.freq_shift)  # (B,) -> (B, 320)
        temb = self.hook_time_sinusoid(temb.to(x.dtype))
        temb = self.hook_time_embedding(self.time_embedding(temb))  # (B, 320) -> (B, 1280)

        x = self.conv_in(x)  # (B, 4, 64, 64) -> (B, 320, 64, 64)
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb, context)  # (B, 320, 64, 64) -> ... -> (B, 1280, 8, 8)
            skips += block_skips
        x = self.mid_block(x, temb, context)  # (B, 1280, 8, 8)
        for block in self.up_blocks:
            size = tuple(skips[-cfg.num_res_blocks - 2].shape[-2:]) if block.upsamplers else None
            x = block(x, skips, temb, context, size)  # (B, 1280, 8, 8) -> ... -> (B, 320, 64, 64)
        x = self.conv_out(F.silu(self.conv_norm_out(x)))  # (B, 320, 64, 64) -> (B, 4, 64, 64)
        return self.hook_out(x)

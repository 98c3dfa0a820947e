"""Pieces shared by the networks: GroupNorm with hook points, the ResNet block, the upsampler.

Hook points (`sdviz.hooks.HookPoint`, the idea is TransformerLens') are identity modules placed at every activation
worth seeing; they change no number.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from sdviz.hooks import HookPoint


class GroupNorm(nn.GroupNorm):
    """`nn.GroupNorm` with hook points on its input and output, so a trace can record per-group statistics.

    Group normalisation (Wu & He 2018) splits the C channels into G groups and normalises each group of each sample
    to zero mean and unit variance over (C/G, H, W), then applies a learned per-channel scale and shift.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5):
        super().__init__(num_groups, num_channels, eps=eps, affine=True)
        self.hook_in = HookPoint()
        self.hook_out = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        x = self.hook_in(x)  # (B, C, H, W)
        return self.hook_out(super().forward(x))  # (B, C, H, W) -> (B, C, H, W)


class ResnetBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm and SiLU, and a skip connection (He et al. 2016).

    The UNet's blocks also add the time embedding between the two convolutions (`time_channels` > 0); the VAE's
    blocks have none.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int, eps: float, time_channels: int = 0):
        super().__init__()
        self.norm1 = GroupNorm(groups, in_channels, eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(time_channels, out_channels) if time_channels else None
        self.norm2 = GroupNorm(groups, out_channels, eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # 1x1 convolution to match channels on the skip path, only when they differ
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_in, H, W) -> (B, C_out, H, W)
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]  # (B, T) -> (B, C_out, 1, 1), broadcast
        h = self.conv2(F.silu(self.norm2(h)))  # (B, C_out, H, W) -> (B, C_out, H, W)
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)  # (B, C_in, H, W) -> (B, C_out, H, W)
        return skip + h


class Upsample(nn.Module):
    """Nearest-neighbour upsampling by 2 (or to a given size), then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, C, H, W) -> (B, C, 2H, 2W)
        else:
            x = F.interpolate(x, size=size, mode="nearest")  # (B, C, H, W) -> (B, C, *size)
        return self.conv(x)

"""The variational autoencoder: pixels <-> latents (Kingma & Welling 2014; Rombach et al. 2022, "KL-f8").

Stable Diffusion does not denoise pixels. The encoder compresses a (B, 3, H, W) image into a (B, 4, H/8, W/8)
latent, the UNet works there (48x fewer numbers), and the decoder turns the final latent back into pixels.

The encoder outputs the mean and log-variance of a diagonal Gaussian over latents; a latent is a sample of it
(or simply its mean). Latents are multiplied by `config.scaling_factor` (0.18215 for SD 1.x) before the UNet sees
them and divided by it before decoding: the pipeline does that, with the value from the config.

Layout for SD 1.5 (512x512 input):

    encoder: conv_in 3->128 | 4 down blocks (2 ResNets each, stride-2 conv after the first three)
             128@512 -> 128@256 -> 256@128 -> 512@64 -> 512@64 | mid: ResNet, attention, ResNet
             | GroupNorm, SiLU, conv_out -> 8 channels (mean, logvar) | quant_conv 1x1
    decoder: post_quant_conv 1x1 | conv_in 4->512 | mid | 4 up blocks (3 ResNets each, upsample after the first
             three) 512@64 -> 512@128 -> 512@256 -> 256@512 -> 128@512 | GroupNorm, SiLU, conv_out -> 3
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from sdviz.config import VAEConfig
from sdviz.models.attention import Attention
from sdviz.models.common import GroupNorm, ResnetBlock, Upsample


class Downsample(nn.Module):
    """Stride-2 3x3 convolution with asymmetric padding (one pixel on the right and bottom only)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, (0, 1, 0, 1))  # (B, C, H, W) -> (B, C, H+1, W+1)
        return self.conv(x)  # (B, C, H+1, W+1) -> (B, C, H/2, W/2)


class AttentionBlock(nn.Module):
    """Single-head self-attention over all pixels, with GroupNorm before it and a residual connection around it."""

    def __init__(self, channels: int, groups: int, eps: float):
        super().__init__()
        self.group_norm = GroupNorm(groups, channels, eps)
        self.attn = Attention(channels, heads=1, qkv_bias=True)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.group_norm(x).view(b, c, h * w).transpose(1, 2)  # (B, C, H, W) -> (B, C, HW) -> (B, HW, C)
        y = self.attn(y)  # (B, HW, C) -> (B, HW, C)
        y = y.transpose(1, 2).reshape(b, c, h, w)  # (B, HW, C) -> (B, C, HW) -> (B, C, H, W)
        return x + y


class MidBlock(nn.Module):
    """ResNet, attention, ResNet at the lowest resolution."""

    def __init__(self, channels: int, groups: int, eps: float):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups, eps) for _ in range(2)])
        self.attentions = nn.ModuleList([AttentionBlock(channels, groups, eps)])

    def forward(self, x: Tensor) -> Tensor:
        x = self.resnets[0](x)  # (B, C, h, w)
        x = self.attentions[0](x)  # (B, C, h, w)
        return self.resnets[1](x)  # (B, C, h, w)


class EncoderBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_res_blocks: int, groups: int, eps: float, down: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups, eps)
                for i in range(num_res_blocks)
            ]
        )
        self.downsamplers = nn.ModuleList([Downsample(out_channels)]) if down else nn.ModuleList()

    def forward(self, x: Tensor) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x)  # (B, C_in, H, W) -> (B, C_out, H, W)
        for down in self.downsamplers:
            x = down(x)  # (B, C_out, H, W) -> (B, C_out, H/2, W/2)
        return x


class DecoderBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_res_blocks: int, groups: int, eps: float, up: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups, eps)
                for i in range(num_res_blocks + 1)
            ]
        )
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if up else nn.ModuleList()

    def forward(self, x: Tensor) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x)  # (B, C_in, H, W) -> (B, C_out, H, W)
        for up in self.upsamplers:
            x = up(x)  # (B, C_out, H, W) -> (B, C_out, 2H, 2W)
        return x


class Encoder(nn.Module):
    """Image (B, 3, H, W) in [-1, 1] -> Gaussian moments (B, 2 * latent_channels, H/f, W/f)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        channels = [cfg.base_channels * m for m in cfg.channel_mult]  # SD 1.5: [128, 256, 512, 512]
        self.conv_in = nn.Conv2d(cfg.in_channels, channels[0], 3, padding=1)
        blocks, c_in = [], channels[0]
        for i, c_out in enumerate(channels):
            down = i < len(channels) - 1
            blocks.append(EncoderBlock(c_in, c_out, cfg.num_res_blocks, cfg.groups, cfg.eps, down))
            c_in = c_out
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = MidBlock(channels[-1], cfg.groups, cfg.eps)
        self.conv_norm_out = GroupNorm(cfg.groups, channels[-1], cfg.eps)
        self.conv_out = nn.Conv2d(channels[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)  # (B, 3, H, W) -> (B, 128, H, W)
        for block in self.down_blocks:
            x = block(x)  # SD 1.5: (B, 128, H, W) -> ... -> (B, 512, H/8, W/8)
        x = self.mid_block(x)  # (B, 512, H/8, W/8)
        x = F.silu(self.conv_norm_out(x))  # (B, 512, H/8, W/8)
        return self.conv_out(x)  # (B, 512, H/8, W/8) -> (B, 8, H/8, W/8)


class Decoder(nn.Module):
    """Latent (B, latent_channels, h, w) -> image (B, 3, h*f, w*f), roughly in [-1, 1]."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        channels = [cfg.base_channels * m for m in reversed(cfg.channel_mult)]  # SD 1.5: [512, 512, 256, 128]
        self.conv_in = nn.Conv2d(cfg.latent_channels, channels[0], 3, padding=1)
        self.mid_block = MidBlock(channels[0], cfg.groups, cfg.eps)
        blocks, c_in = [], channels[0]
        for i, c_out in enumerate(channels):
            up = i < len(channels) - 1
            blocks.append(DecoderBlock(c_in, c_out, cfg.num_res_blocks, cfg.groups, cfg.eps, up))
            c_in = c_out
        self.up_blocks = nn.ModuleList(blocks)
        self.conv_norm_out = GroupNorm(cfg.groups, channels[-1], cfg.eps)
        self.conv_out = nn.Conv2d(channels[-1], cfg.in_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.conv_in(z)  # (B, 4, h, w) -> (B, 512, h, w)
        x = self.mid_block(x)  # (B, 512, h, w)
        for block in self.up_blocks:
            x = block(x)  # SD 1.5: (B, 512, h, w) -> ... -> (B, 128, 8h, 8w)
        x = F.silu(self.conv_norm_out(x))  # (B, 128, 8h, 8w)
        return self.conv_out(x)  # (B, 128, 8h, 8w) -> (B, 3, 8h, 8w)


class VAE(nn.Module):
    """The KL autoencoder: `encode` gives the latent Gaussian's (mean, logvar), `decode` maps a latent to pixels.

    Latents here are *unscaled*; multiply by `config.scaling_factor` for the UNet (the pipeline does it).
    """

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 1)
        self.decoder = Decoder(cfg)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        moments = self.quant_conv(self.encoder(x))  # (B, 3, H, W) -> (B, 8, H/8, W/8)
        mean, logvar = moments.chunk(2, dim=1)  # (B, 8, h, w) -> 2 x (B, 4, h, w)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(z))  # (B, 4, h, w) -> (B, 3, H, W)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction through the mean of the latent Gaussian: (B, 3, H, W) -> (B, 3, H, W)."""
        mean, _ = self.encode(x)
        return self.decode(mean)

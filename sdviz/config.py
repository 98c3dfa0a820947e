"""Configurations of the three networks, as plain dataclasses.

`SD15` is Stable Diffusion 1.5 (and every other SD 1.x checkpoint: they share the architecture). `TOY` is the small
model that sdviz trains itself and ships (see `sdviz/toy/`), built from exactly the same classes. `TINY` is a
random-weights configuration for fast tests.

A configuration is pure data: it can be written to and read from JSON (`to_dict` / `from_dict`), which is how
sdviz's own weight files carry their architecture.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CLIPConfig:
    """The CLIP text encoder (ViT-L/14's text tower for SD 1.x)."""

    vocab_size: int = 49408
    max_length: int = 77  # context length: every prompt is padded/truncated to this many tokens
    width: int = 768  # d_model
    layers: int = 12
    heads: int = 12
    mlp_ratio: int = 4  # the MLP's hidden size is mlp_ratio * width (3072)
    eps: float = 1e-5  # LayerNorm epsilon


@dataclass(frozen=True)
class VAEConfig:
    """The KL autoencoder. The latent is `latent_channels` x H/f x W/f with f = 2 ** (len(channel_mult) - 1)."""

    in_channels: int = 3
    latent_channels: int = 4
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    groups: int = 32  # GroupNorm groups
    eps: float = 1e-6  # GroupNorm epsilon
    # Latents are multiplied by this after encoding and divided by it before decoding, so that the
    # UNet sees latents of roughly unit variance (Rombach et al. 2022, section 3.1 / appendix G).
    scaling_factor: float = 0.18215

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


@dataclass(frozen=True)
class UNetConfig:
    """The noise-predicting UNet."""

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    attention_levels: tuple[bool, ...] = (True, True, True, False)  # spatial transformer at this level?
    num_res_blocks: int = 2
    num_heads: int = 8  # SD 1.x: 8 heads at every level (head size 40, 80, 160)
    transformer_depth: int = 1
    context_dim: int = 768  # width of the text encoder's output
    groups: int = 32
    eps: float = 1e-5  # GroupNorm epsilon
    time_embed_mult: int = 4  # time embedding width = time_embed_mult * model_channels (1280)
    flip_sin_to_cos: bool = True  # SD puts cos before sin in the sinusoidal embedding
    freq_shift: int = 0

    @property
    def time_embed_dim(self) -> int:
        return self.time_embed_mult * self.model_channels


@dataclass(frozen=True)
class ScheduleConfig:
    """The training noise schedule ("scaled linear": sqrt(beta) is linear in t)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012


@dataclass(frozen=True)
class SDConfig:
    """A whole latent diffusion model: text encoder, VAE, UNet, schedule and default image size."""

    name: str = "sd15"
    clip: CLIPConfig = field(default_factory=CLIPConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    image_size: int = 512  # default generation size in pixels

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae.downsampling_factor

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SDConfig:
        def build(kind, values):
            names = {f.name for f in dataclasses.fields(kind)}
            unknown = set(values) - names
            if unknown:
                raise ValueError(f"unknown {kind.__name__} field(s): {sorted(unknown)}")
            return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

        d = dict(d)
        return build(
            cls,
            {
                **d,
                "clip": build(CLIPConfig, d.get("clip", {})),
                "vae": build(VAEConfig, d.get("vae", {})),
                "unet": build(UNetConfig, d.get("unet", {})),
                "schedule": build(ScheduleConfig, d.get("schedule", {})),
            },
        )


SD15 = SDConfig()

# Random-weights configuration for fast tests: every code path of SD 1.5 (three attention levels, one plain level,
# cross-attention, GEGLU), tiny widths. 64x64 images -> 8x8 latents.
TINY = SDConfig(
    name="tiny",
    clip=CLIPConfig(width=32, layers=2, heads=2),
    vae=VAEConfig(base_channels=8, channel_mult=(1, 2, 2, 2), num_res_blocks=1, groups=4),
    unet=UNetConfig(
        model_channels=16,
        channel_mult=(1, 2, 2, 2),
        attention_levels=(True, True, True, False),
        num_res_blocks=1,
        num_heads=2,
        context_dim=32,
        groups=4,
    ),
    image_size=64,
)

# The embedded model that sdviz trains on its captioned-shapes world (sdviz/toy): 64x64 RGB images,
# a VAE with downsampling factor 4 (4 x 16 x 16 latents), a 4-layer text encoder and a two-level UNet.
# Sizes chosen so that training both stages takes ~40 min on 2 CPU cores (sdviz/toy/train.py); the trained
# model's own sdviz.json carries the measured scaling factor.
TOY = SDConfig(
    name="toy",
    clip=CLIPConfig(width=128, layers=4, heads=4),
    vae=VAEConfig(base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, groups=8, scaling_factor=1.0),
    unet=UNetConfig(
        model_channels=48,
        channel_mult=(1, 2),
        attention_levels=(True, True),
        num_res_blocks=1,
        num_heads=4,
        context_dim=128,
        groups=16,
    ),
    image_size=64,
)

CONFIGS: dict[str, SDConfig] = {"sd15": SD15, "toy": TOY, "tiny": TINY}


def get_config(name: str) -> SDConfig:
    """Look a configuration up by name, with an error that lists the known ones."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown config {name!r}; known: {', '.join(CONFIGS)}") from None

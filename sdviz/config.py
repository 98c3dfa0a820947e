"""Configurations of the three networks, as plain dataclasses.

`SD15` is Stable Diffusion 1.5 (and every other SD 1.x checkpoint: they share the architecture). `TOY` is the small
model that sdviz trains itself and ships (see `sdviz/toy/`), built from exactly the same classes. `TINY` is a
random-weights configuration for fast tests.

A configuration is pure data: it can be written to and read from JSON (`to_dict` / `from_dict`), which is how
sdviz's own weight files carry their architecture. Every configuration checks its values when it is made (a
positive width, heads that divide it, ...), and `from_dict` also checks the types of what JSON gave it, so that a
bad file is a `ConfigError` naming the field ("unet.model_channels: ...") rather than a crash deep in a network.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A configuration field of the wrong type or out of range. `field` is its name, dotted from the top when the
    value came through `SDConfig.from_dict` ("unet.model_channels")."""

    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        super().__init__(f"{field}: {problem}")


def _require(ok: bool, field: str, problem: str) -> None:
    if not ok:
        raise ConfigError(field, problem)


def _positive(cfg, *names: str) -> None:
    """Each named field is an integer >= 1 (or a tuple of them)."""
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, tuple):
            ok, problem = len(value) > 0 and all(v >= 1 for v in value), f"must be integers >= 1, got {list(value)}"
        else:
            ok, problem = value >= 1, f"must be >= 1, got {value}"
        _require(ok, name, problem)


def _divides(groups: int, channels: int, field: str, what: str) -> None:
    _require(channels % groups == 0, field, f"{groups} {what} do not divide {channels} channels")


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

    def __post_init__(self) -> None:
        _positive(self, "vocab_size", "width", "layers", "heads", "mlp_ratio")
        _require(
            self.max_length >= 2,
            "max_length",
            f"must leave room for the start and end tokens (>= 2), got {self.max_length}",
        )
        _divides(self.heads, self.width, "heads", "heads")
        _require(self.eps > 0, "eps", f"must be > 0, got {self.eps}")


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

    def __post_init__(self) -> None:
        _positive(self, "in_channels", "latent_channels", "base_channels", "channel_mult", "num_res_blocks", "groups")
        _divides(self.groups, self.base_channels, "groups", "groups")
        _require(self.eps > 0, "eps", f"must be > 0, got {self.eps}")
        _require(self.scaling_factor > 0, "scaling_factor", f"must be > 0, got {self.scaling_factor}")

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

    def __post_init__(self) -> None:
        _positive(self, "in_channels", "out_channels", "model_channels", "channel_mult", "num_res_blocks", "num_heads")
        _positive(self, "transformer_depth", "context_dim", "groups", "time_embed_mult")
        _require(
            self.model_channels % 2 == 0,
            "model_channels",
            f"must be even (the sinusoidal time embedding is half cosines, half sines), got {self.model_channels}",
        )
        _require(
            len(self.attention_levels) == len(self.channel_mult),
            "attention_levels",
            f"needs one entry per level of channel_mult ({len(self.channel_mult)}), got {len(self.attention_levels)}",
        )
        _divides(self.groups, self.model_channels, "groups", "groups")
        # the spatial transformers: at every attention level, and always in the middle block
        for mult, attention in [
            *zip(self.channel_mult, self.attention_levels, strict=True),
            (self.channel_mult[-1], True),
        ]:
            if attention:
                _divides(self.num_heads, self.model_channels * mult, "num_heads", "heads")
        _require(self.eps > 0, "eps", f"must be > 0, got {self.eps}")
        _require(
            0 <= self.freq_shift < self.model_channels // 2,
            "freq_shift",
            f"must be in [0, model_channels / 2), got {self.freq_shift}",
        )

    @property
    def time_embed_dim(self) -> int:
        return self.time_embed_mult * self.model_channels


@dataclass(frozen=True)
class ScheduleConfig:
    """The training noise schedule ("scaled linear": sqrt(beta) is linear in t)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012

    def __post_init__(self) -> None:
        _positive(self, "num_train_timesteps")
        _require(
            0 < self.beta_start <= self.beta_end < 1,
            "beta_start",
            f"0 < beta_start <= beta_end < 1 is needed, got {self.beta_start} and {self.beta_end}",
        )


@dataclass(frozen=True)
class SDConfig:
    """A whole latent diffusion model: text encoder, VAE, UNet, schedule and default image size."""

    name: str = "sd15"
    clip: CLIPConfig = field(default_factory=CLIPConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    image_size: int = 512  # default generation size in pixels

    def __post_init__(self) -> None:
        factor = self.vae.downsampling_factor
        _require(
            self.image_size >= factor and self.image_size % factor == 0,
            "image_size",
            f"must be a positive multiple of the VAE's downsampling factor {factor}, got {self.image_size}",
        )

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae.downsampling_factor

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SDConfig:
        """Rebuild a configuration from `to_dict`'s output (e.g. read from JSON), checking every value.

        Missing fields take their defaults; an unknown field, a value of the wrong type (`"48"` for an integer, `1.5`
        for an integer, a list of the wrong things) or out of range raises a `ConfigError` that names the field.
        """
        _require(isinstance(d, dict), "config", f"must be a JSON object, got {_describe(d)}")
        sections = {"clip": CLIPConfig, "vae": VAEConfig, "unet": UNetConfig, "schedule": ScheduleConfig}
        values = {k: v for k, v in d.items() if k not in sections}
        values.update({name: _build(kind, d.get(name, {}), name) for name, kind in sections.items()})
        return _build(cls, values, "")


def _describe(value) -> str:
    """A value as a reader would write it in JSON: 'the string "48"', 'null', 'a list'."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, (list, tuple)):
        return f"a list {list(value)!r}"[:80]
    if isinstance(value, dict):
        return "an object"
    return repr(value)


def _check_type(value, hint, field: str):
    """`value` converted to the field's type (int -> float, list -> tuple), or a ConfigError naming the field."""
    if hint is bool:
        _require(isinstance(value, bool), field, f"must be true or false, got {_describe(value)}")
    elif hint is int:
        _require(
            isinstance(value, int) and not isinstance(value, bool), field, f"must be an integer, got {_describe(value)}"
        )
    elif hint is float:
        _require(
            isinstance(value, (int, float)) and not isinstance(value, bool),
            field,
            f"must be a number, got {_describe(value)}",
        )
        value = float(value)
    elif hint is str:
        _require(isinstance(value, str), field, f"must be a string, got {_describe(value)}")
    elif typing.get_origin(hint) is tuple:
        _require(isinstance(value, (list, tuple)), field, f"must be a list, got {_describe(value)}")
        element = typing.get_args(hint)[0]
        value = tuple(_check_type(v, element, f"{field}[{i}]") for i, v in enumerate(value))
    return value


def _build(kind, values, prefix: str):
    """`kind(**values)` with every value type-checked, and errors naming the field from the top ("unet.groups")."""
    where = prefix or "config"
    _require(isinstance(values, dict), where, f"must be a JSON object, got {_describe(values)}")
    hints = typing.get_type_hints(kind)
    names = [f.name for f in dataclasses.fields(kind)]
    unknown = sorted(set(values) - set(names))
    _require(not unknown, where, f"unknown {kind.__name__} field(s): {unknown}")
    dotted = f"{prefix}." if prefix else ""
    checked = {
        k: v if dataclasses.is_dataclass(hints[k]) else _check_type(v, hints[k], dotted + k) for k, v in values.items()
    }
    try:
        return kind(**checked)  # its __post_init__ checks the ranges
    except ConfigError as e:
        raise ConfigError(dotted + e.field, e.problem) from None


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

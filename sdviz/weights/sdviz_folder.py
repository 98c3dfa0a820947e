"""sdviz's own model folders: `model.safetensors` beside `sdviz.json`.

    model.safetensors   every tensor of the three networks, prefixed by its network: `unet.conv_in.weight`,
                        `vae.decoder.conv_out.bias`, `text_encoder.token_embedding.weight`, ...
    sdviz.json          {"format": "sdviz", "config": {...the SDConfig...}, and optionally
                         "card": {...a model card: what it was trained on, how it scores...},
                         "vocabulary": {"colours": ["red", ...], "shapes": [...], ...},
                         "latent_rgb": {"weight": [[...C numbers...], [...], [...]], "bias": [r, g, b]}}

The two optional keys say what the weights alone cannot:

* `vocabulary`: the words the model was taught, by kind ({kind: list of phrases}). A model trained on a world it
  can describe (sdviz's embedded model) knows which prompts it can draw; any model folder may carry one.
* `latent_rgb`: a linear map from the VAE's C latent channels to RGB, `rgb = weight @ latent + bias`, per pixel, for
  previewing a latent without running the VAE decoder.

Both are checked when read and when written: a malformed value is a one-line `WeightsError` naming the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from sdviz.config import ConfigError, SDConfig
from sdviz.weights.build import Models
from sdviz.weights.files import StateDict, WeightsError, read_json, read_state_dict
from sdviz.weights.rules import COMPONENTS

Vocabulary = dict[str, tuple[str, ...]]  # {"colours": ("red", "green", ...), "shapes": (...), ...}


@dataclass(frozen=True)
class SdvizDescription:
    """What an `sdviz.json` says about its model: the architecture, and the optional vocabulary and preview map."""

    config: SDConfig
    vocabulary: Vocabulary | None = None
    latent_rgb: tuple[Tensor, Tensor] | None = None  # weight (3, C) and bias (3,), float32 on the CPU


def _short(value: object) -> str:
    """A value for a one-line error message: a tensor's shape, or a repr on one line, cut to 80 characters."""
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    text = " ".join(repr(value).split())
    return text if len(text) <= 80 else text[:77] + "..."


def vocabulary_from_json(value: object, where: str) -> Vocabulary:
    """Check a `vocabulary` value ({kind: list of phrases}, kinds and phrases non-empty strings) and make it
    {kind: tuple of phrases}. `where` starts the error message (the file, or the function that writes one)."""

    def bad(why: str) -> WeightsError:
        return WeightsError(f"{where}: vocabulary: {why}")

    if not isinstance(value, dict):
        raise bad(f"expected a JSON object {{kind: [phrases]}}, got {_short(value)}")
    out = {}
    for kind, phrases in value.items():
        if not isinstance(kind, str) or not kind.strip():
            raise bad(f"a kind must be a non-empty string, got {_short(kind)}")
        if not isinstance(phrases, list) or not all(isinstance(p, str) and p.strip() for p in phrases):
            raise bad(f"{kind}: expected a list of non-empty strings, got {_short(phrases)}")
        out[kind] = tuple(phrases)
    return out


def latent_rgb_from_json(value: object, channels: int, where: str) -> tuple[Tensor, Tensor]:
    """Check a `latent_rgb` value ({"weight": 3 rows of `channels` numbers, "bias": 3 numbers}) and make it
    float32 tensors: weight (3, channels), bias (3,). `where` starts the error message."""

    def bad(why: str) -> WeightsError:
        return WeightsError(f"{where}: latent_rgb: {why}")

    def numbers(x: object, n: int) -> bool:
        """A list of `n` JSON numbers (true and false are not numbers, though Python counts them as integers)."""
        return isinstance(x, list) and len(x) == n and all(type(v) in (int, float) for v in x)

    if not isinstance(value, dict) or set(value) != {"weight", "bias"}:
        raise bad(f'expected {{"weight": [3 rows of {channels} numbers], "bias": [3 numbers]}}, got {_short(value)}')
    weight, bias = value["weight"], value["bias"]
    if not (isinstance(weight, list) and len(weight) == 3 and all(numbers(row, channels) for row in weight)):
        raise bad(f"weight: expected 3 rows of {channels} numbers (one per latent channel), got {_short(weight)}")
    if not numbers(bias, 3):
        raise bad(f"bias: expected 3 numbers (red, green, blue), got {_short(bias)}")
    w, b = torch.tensor(weight, dtype=torch.float32), torch.tensor(bias, dtype=torch.float32)  # (3, C), (3,)
    if not (torch.isfinite(w).all() and torch.isfinite(b).all()):
        raise bad("holds a number that is not finite in float32 (NaN, infinity, or beyond 3.4e38)")
    return w, b


def save_sdviz(
    folder: str | Path,
    models: Models,
    dtype: torch.dtype | None = torch.float16,
    card: dict | None = None,
    vocabulary: dict[str, list[str] | tuple[str, ...]] | None = None,
    latent_rgb: tuple[Tensor, Tensor] | None = None,
) -> None:
    """Write `models` as `folder/model.safetensors` + `folder/sdviz.json` (config, and the optional model card,
    vocabulary and latent -> RGB map).

    `vocabulary` and `latent_rgb` default to what `models` carries (a model loaded from an sdviz folder keeps them
    when saved again). Both are checked before anything is written: a malformed one is a WeightsError naming it.
    """
    from safetensors.torch import save_file

    where = "save_sdviz"
    meta = {"format": "sdviz", "config": models.config.to_dict()}
    if card is not None:
        meta["card"] = card
    vocabulary = models.vocabulary if vocabulary is None else vocabulary
    if vocabulary is not None:
        if isinstance(vocabulary, dict):  # tuples of phrases are written as JSON lists: check what will be written
            vocabulary = {k: list(v) if isinstance(v, tuple) else v for k, v in vocabulary.items()}
        vocabulary_from_json(vocabulary, where)
        meta["vocabulary"] = vocabulary
    latent_rgb = models.latent_rgb if latent_rgb is None else latent_rgb
    if latent_rgb is not None:
        if not (isinstance(latent_rgb, (tuple, list)) and len(latent_rgb) == 2):
            raise WeightsError(f"{where}: latent_rgb: expected (weight (3, C), bias (3,)), got {_short(latent_rgb)}")
        weight, bias = (t.detach().float().cpu().tolist() if isinstance(t, Tensor) else t for t in latent_rgb)
        latent_rgb_from_json({"weight": weight, "bias": bias}, models.config.vae.latent_channels, where)
        meta["latent_rgb"] = {"weight": weight, "bias": bias}  # float32 values: JSON's decimals give them back exactly

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {}
    for c in COMPONENTS:
        for k, v in getattr(models, c).state_dict().items():
            sd[f"{c}.{k}"] = (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous().cpu()
    tmp = folder / "model.safetensors.tmp"
    save_file(sd, str(tmp))
    tmp.replace(folder / "model.safetensors")  # never leave a half-written weights file behind
    (folder / "sdviz.json").write_text(json.dumps(meta, indent=2) + "\n")


def read_sdviz_description(folder: str | Path) -> SdvizDescription:
    """Everything an sdviz folder's `sdviz.json` says; every bad value is a WeightsError naming the field."""
    path = Path(folder) / "sdviz.json"
    meta = read_json(path)
    if meta.get("format") != "sdviz" or "config" not in meta:
        raise WeightsError(f"{path}: not an sdviz model description (a JSON object with format 'sdviz' and a config)")
    try:
        config = SDConfig.from_dict(meta["config"])
    except ConfigError as e:
        raise WeightsError(f"{path}: bad config: {e}") from None
    description = SdvizDescription(config)
    if "vocabulary" in meta:  # present means well-formed: `null` is refused like any other malformed value
        description = replace(description, vocabulary=vocabulary_from_json(meta["vocabulary"], str(path)))
    if "latent_rgb" in meta:
        channels = config.vae.latent_channels
        description = replace(description, latent_rgb=latent_rgb_from_json(meta["latent_rgb"], channels, str(path)))
    return description


def read_sdviz_config(folder: str | Path) -> SDConfig:
    """The `SDConfig` of an sdviz folder, from its `sdviz.json`; every bad value is a WeightsError naming the field."""
    return read_sdviz_description(folder).config


def read_sdviz(
    folder: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> tuple[SDConfig, StateDict]:
    """The configuration and the (prefixed: `unet.conv_in.weight`) state dict of an sdviz folder."""
    folder = Path(folder)
    return read_sdviz_config(folder), read_state_dict(folder / "model.safetensors", dtype, device)

"""`load_models`: any supported layout in, the three networks out.

    detect_format(path)     'sdviz' (a folder with sdviz.json), 'diffusers' (a folder with unet/), or 'compvis'
                            (a .safetensors / .ckpt / .pt / .pth / .bin file)
    load_models(path)       read the file(s) (`files.py`), rename the keys (`rules.py`), build the networks on the
                            meta device and give them the tensors (`build.py`)

An sdviz folder's optional vocabulary and latent -> RGB map are handed over on the returned `Models`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from sdviz.config import SD15, SDConfig
from sdviz.weights.build import Models, Source, models_from_state_dicts
from sdviz.weights.diffusers_folder import config_from_diffusers, diffusers_weights_file
from sdviz.weights.files import WeightsError, read_state_dict
from sdviz.weights.rules import COMPONENTS, from_compvis, from_diffusers
from sdviz.weights.sdviz_folder import read_sdviz_description


def detect_format(path: str | Path) -> str:
    """'sdviz', 'diffusers' or 'compvis' for a path, or a WeightsError saying what was expected."""
    path = Path(path)
    if path.is_dir():
        if (path / "sdviz.json").is_file():
            return "sdviz"
        if (path / "unet").is_dir():
            return "diffusers"
        raise WeightsError(
            f"{path}: a folder that is neither sdviz's (sdviz.json) nor diffusers' (unet/, vae/, text_encoder/)"
        )
    if path.suffix in (".safetensors", ".ckpt", ".pt", ".pth", ".bin"):
        return "compvis"
    if not path.exists():
        raise WeightsError(f"{path}: no such file or folder")
    raise WeightsError(
        f"{path}: unknown weights format; expected a .safetensors/.ckpt file or a diffusers/sdviz folder"
    )


def load_models(
    path: str | Path,
    config: SDConfig | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Models:
    """Load a text encoder, VAE and UNet from any supported layout (see `sdviz.weights`' docstring).

    The networks are built on the meta device and take the file's tensors as they are, converted to `dtype` and
    moved to `device` one tensor at a time while reading: host memory peaks near the model's size in `dtype` (plus
    one tensor), whatever the file's precision. `config` overrides the architecture that the files describe
    (CompVis files describe none: SD 1.5 is assumed).
    """
    path = Path(path)
    fmt = detect_format(path)
    overridden = ": the weights do not match the configuration passed to load_models" if config else ""
    if fmt == "sdviz":
        description = read_sdviz_description(path)
        source = Source(
            path / "model.safetensors",
            prefix={c: f"{c}." for c in COMPONENTS},
            why=overridden or f": the weights and the configuration in {path / 'sdviz.json'} describe different models",
        )
        sd = read_state_dict(path / "model.safetensors", dtype, device)
        stray = [k for k in sd if k.split(".")[0] not in COMPONENTS]
        if stray:
            raise WeightsError(
                f"{source.path}: unexpected key {stray[0]!r} (not part of the UNet, VAE or text encoder)"
            )
        sds = {c: {k[len(c) + 1 :]: v for k, v in sd.items() if k.startswith(c + ".")} for c in COMPONENTS}
        del sd
        models = models_from_state_dicts(config or description.config, sds, source)
        return dataclasses.replace(models, vocabulary=description.vocabulary, latent_rgb=description.latent_rgb)
    if fmt == "diffusers":
        cfg = config or config_from_diffusers(path)
        files = {c: diffusers_weights_file(path, c) for c in COMPONENTS}
        sds = {c: from_diffusers(c, read_state_dict(files[c], dtype, device)) for c in COMPONENTS}
        why = overridden or f": the weights and {path / '<component>' / 'config.json'} describe different models"
        return models_from_state_dicts(cfg, sds, Source(path, files=files, why=why))
    cfg, names = config or SD15, {}
    sds = from_compvis(read_state_dict(path, dtype, device), cfg, path, names)
    why = f" (a checkpoint of another model, or of another configuration than {cfg.name}?)"
    return models_from_state_dicts(cfg, sds, Source(path, names=names, why=why))

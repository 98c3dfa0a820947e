"""Loading weights into sdviz's networks: CompVis single files, diffusers folders and sdviz's own folders.

Three layouts of the same numbers exist in the wild:

* **CompVis / LDM single file** (`v1-5-pruned-emaonly.safetensors` or `.ckpt`): one state dict with
  `model.diffusion_model.*` (UNet, numbered `input_blocks` / `middle_block` / `output_blocks`),
  `first_stage_model.*` (VAE, `down.i.block.j`) and `cond_stage_model.transformer.text_model.*` (CLIP, in
  Hugging Face naming), plus noise-schedule buffers (`betas`, `alphas_cumprod`, ...) and sometimes EMA copies
  (`model_ema.*`), which sdviz ignores: it computes its schedule itself.
* **diffusers folder**: `unet/`, `vae/`, `text_encoder/`, each with a `config.json` and a weights file. sdviz's
  module names follow diffusers' closely, so that mapping is a handful of renames.
* **sdviz's own format**: a folder with `model.safetensors` (keys prefixed `text_encoder.`, `vae.`, `unet.`) and
  `sdviz.json` (the `SDConfig`, and optionally a model card, the model's vocabulary and a latent -> RGB map).

The package, one topic per file, in the order a load runs through them:

    files.py             read a .safetensors / .ckpt file into {name: tensor}; read a JSON description
    rules.py             rename keys: from_diffusers, from_compvis (and the CompVis prefix maps)
    diffusers_folder.py  a diffusers folder's weights files and the SDConfig its config.json files describe
    sdviz_folder.py      sdviz's own folders: save_sdviz, read_sdviz, the sdviz.json description
    build.py             Models; build the networks (random, or on the meta device with a file's tensors)
    load.py              detect_format and load_models: the entry point

Every failure is a `WeightsError` with a one-line message that names the file and, for a key problem, the key.

    from sdviz.weights import load_models
    models = load_models("v1-5-pruned-emaonly.safetensors", dtype=torch.float16)
"""

from sdviz.weights.build import Models, Source, build_models, models_from_state_dicts
from sdviz.weights.diffusers_folder import config_from_diffusers, diffusers_weights_file
from sdviz.weights.files import StateDict, WeightsError, read_json, read_state_dict
from sdviz.weights.load import detect_format, load_models
from sdviz.weights.rules import COMPONENTS, compvis_unet_prefixes, compvis_vae_prefixes, from_compvis, from_diffusers
from sdviz.weights.sdviz_folder import (
    SdvizDescription,
    Vocabulary,
    latent_rgb_from_json,
    read_sdviz,
    read_sdviz_config,
    read_sdviz_description,
    save_sdviz,
    vocabulary_from_json,
)

__all__ = [  # in reading order: the entry point, what it returns, then each file's public names
    # load.py
    "load_models",
    "detect_format",
    # build.py
    "Models",
    "build_models",
    "models_from_state_dicts",
    "Source",
    # files.py
    "WeightsError",
    "StateDict",
    "read_state_dict",
    "read_json",
    # rules.py
    "COMPONENTS",
    "from_diffusers",
    "from_compvis",
    "compvis_unet_prefixes",
    "compvis_vae_prefixes",
    # diffusers_folder.py
    "config_from_diffusers",
    "diffusers_weights_file",
    # sdviz_folder.py
    "save_sdviz",
    "read_sdviz",
    "read_sdviz_config",
    "read_sdviz_description",
    "SdvizDescription",
    "Vocabulary",
    "vocabulary_from_json",
    "latent_rgb_from_json",
]

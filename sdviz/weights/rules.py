"""Key-name rules: how the other layouts of Stable Diffusion 1.x name the tensors that sdviz's modules hold.

A state dict is a flat {name: tensor} dict, and the same tensor has a different name in each layout:

    sdviz's own file       unet.down_blocks.0.resnets.0.conv1.weight
    diffusers folder       down_blocks.0.resnets.0.conv1.weight         (in unet/diffusion_pytorch_model.*)
    CompVis single file    model.diffusion_model.input_blocks.1.0.in_layers.2.weight

* `from_diffusers` renames a diffusers UNet / VAE or a transformers CLIPTextModel state dict. sdviz's module names
  follow diffusers' closely, so this is a handful of regular expressions (`_DIFFUSERS_UNET_RULES`, ...).
* `from_compvis` splits a CompVis / LDM single file into the three networks and renames each key. The UNet's
  numbered blocks (`input_blocks.4.1`) depend on the architecture, so the prefix maps (`compvis_unet_prefixes`,
  `compvis_vae_prefixes`) are built from the configuration by walking the network in the order the LDM code
  builds it.

Nothing here reads a file or builds a network: these are pure functions from names to names.
"""

from __future__ import annotations

import re
from pathlib import Path

from sdviz.config import SDConfig, UNetConfig, VAEConfig
from sdviz.weights.files import StateDict, WeightsError

COMPONENTS = ("text_encoder", "vae", "unet")  # the three networks, in the order they run; sdviz's key prefixes


# ----------------------------------------------------------------------------------------------------------------
# diffusers / transformers naming -> sdviz naming


def _rename(key: str, rules: list[tuple[str, str]]) -> str:
    """Apply each (pattern, replacement) rule in turn: `re.sub` over the whole key."""
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


# Inside attention layers and feed-forwards, diffusers wraps single layers in lists (`to_out.0`, `ff.net.0.proj`).
_DIFFUSERS_UNET_RULES = [
    (r"\.to_out\.0\.", ".to_out."),
    (r"\.ff\.net\.0\.proj\.", ".ff.proj."),
    (r"\.ff\.net\.2\.", ".ff.out."),
]
_DIFFUSERS_VAE_RULES = [
    # current names, and the pre-0.14 names still found in older diffusers folders
    (r"attentions\.0\.(to_q|query)\.", "attentions.0.attn.to_q."),
    (r"attentions\.0\.(to_k|key)\.", "attentions.0.attn.to_k."),
    (r"attentions\.0\.(to_v|value)\.", "attentions.0.attn.to_v."),
    (r"attentions\.0\.(to_out\.0|proj_attn)\.", "attentions.0.attn.to_out."),
]
_HF_CLIP_RULES = [
    (r"^(cond_stage_model\.transformer\.)?(text_model\.)?", ""),
    (r"^embeddings\.", ""),
    (r"^encoder\.layers\.", "layers."),
    (r"\.self_attn\.q_proj\.", ".attn.to_q."),
    (r"\.self_attn\.k_proj\.", ".attn.to_k."),
    (r"\.self_attn\.v_proj\.", ".attn.to_v."),
    (r"\.self_attn\.out_proj\.", ".attn.to_out."),
]
# buffers or heads that some text-encoder files carry and sdviz does not use
_CLIP_IGNORED = re.compile(r"(^|\.)position_ids$|^text_projection\.|^logit_scale$|^vision_model\.")


def from_diffusers(component: str, sd: StateDict) -> StateDict:
    """Rename a diffusers UNet/VAE or a transformers CLIPTextModel state dict to sdviz's module names."""
    if component == "unet":
        return {_rename(k, _DIFFUSERS_UNET_RULES): v for k, v in sd.items()}
    if component == "vae":
        out = {}
        for k, v in sd.items():
            k = _rename(k, _DIFFUSERS_VAE_RULES)
            if ".attn.to_" in k and k.endswith(".weight") and v.ndim == 4:
                v = v[:, :, 0, 0]  # very old folders store these as 1x1 convolutions: (C, C, 1, 1) -> (C, C)
            out[k] = v
        return out
    if component == "text_encoder":
        return {
            _rename(k, _HF_CLIP_RULES): v for k, v in sd.items() if not _CLIP_IGNORED.search(_rename(k, _HF_CLIP_RULES))
        }
    raise ValueError(f"unknown component {component!r}; known: {', '.join(COMPONENTS)}")


# ----------------------------------------------------------------------------------------------------------------
# CompVis naming -> sdviz naming. The UNet's numbered blocks depend on the architecture, so the prefix map is built
# from the configuration by walking the network in the same order the LDM code builds it.

_COMPVIS_RESNET = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}


def compvis_unet_prefixes(cfg: UNetConfig) -> dict[str, str]:
    """{CompVis prefix: sdviz prefix} for the UNet, e.g. 'input_blocks.1.0' -> 'down_blocks.0.resnets.0'."""
    m = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2"}
    m["input_blocks.0.0"] = "conv_in"
    levels, n = len(cfg.channel_mult), 1
    for i in range(levels):
        for j in range(cfg.num_res_blocks):
            m[f"input_blocks.{n}.0"] = f"down_blocks.{i}.resnets.{j}"
            if cfg.attention_levels[i]:
                m[f"input_blocks.{n}.1"] = f"down_blocks.{i}.attentions.{j}"
            n += 1
        if i < levels - 1:
            m[f"input_blocks.{n}.0.op"] = f"down_blocks.{i}.downsamplers.0.conv"
            n += 1
    m["middle_block.0"] = "mid_block.resnets.0"
    m["middle_block.1"] = "mid_block.attentions.0"
    m["middle_block.2"] = "mid_block.resnets.1"
    n = 0
    for i in range(levels):
        level = levels - 1 - i
        for j in range(cfg.num_res_blocks + 1):
            m[f"output_blocks.{n}.0"] = f"up_blocks.{i}.resnets.{j}"
            if cfg.attention_levels[level]:
                m[f"output_blocks.{n}.1"] = f"up_blocks.{i}.attentions.{j}"
            if j == cfg.num_res_blocks and level > 0:
                m[f"output_blocks.{n}.{2 if cfg.attention_levels[level] else 1}.conv"] = (
                    f"up_blocks.{i}.upsamplers.0.conv"
                )
            n += 1
    m["out.0"] = "conv_norm_out"
    m["out.2"] = "conv_out"
    return m


def compvis_vae_prefixes(cfg: VAEConfig) -> dict[str, str]:
    """{CompVis prefix: sdviz prefix} for the VAE. The decoder's `up.i` are numbered from the lowest resolution."""
    levels = len(cfg.channel_mult)
    m = {}
    for part in ("encoder", "decoder"):
        m[f"{part}.mid.block_1"] = f"{part}.mid_block.resnets.0"
        m[f"{part}.mid.attn_1"] = f"{part}.mid_block.attentions.0"
        m[f"{part}.mid.block_2"] = f"{part}.mid_block.resnets.1"
        m[f"{part}.norm_out"] = f"{part}.conv_norm_out"
    for i in range(levels):
        for j in range(cfg.num_res_blocks):
            m[f"encoder.down.{i}.block.{j}"] = f"encoder.down_blocks.{i}.resnets.{j}"
        m[f"encoder.down.{i}.downsample.conv"] = f"encoder.down_blocks.{i}.downsamplers.0.conv"
        for j in range(cfg.num_res_blocks + 1):
            m[f"decoder.up.{levels - 1 - i}.block.{j}"] = f"decoder.up_blocks.{i}.resnets.{j}"
        m[f"decoder.up.{levels - 1 - i}.upsample.conv"] = f"decoder.up_blocks.{i}.upsamplers.0.conv"
    return m


def _map_prefix(key: str, prefixes: dict[str, str]) -> str | None:
    """Replace the longest dotted prefix of `key` found in `prefixes`; None when no prefix matches."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # longest matching prefix first
        head = ".".join(parts[:cut])
        if head in prefixes:
            return prefixes[head] + "." + ".".join(parts[cut:])
    return None


# Single-file keys that are not network weights: the LDM noise schedule, EMA bookkeeping, learned-logvar.
_COMPVIS_IGNORED = re.compile(
    r"^(betas|alphas_cumprod|alphas_cumprod_prev|sqrt_\w+|log_one_minus_alphas_cumprod|posterior_\w+|logvar"
    r"|model_ema\..*|lvlb_weights)$"
)
_COMPVIS_PARTS = {
    "model.diffusion_model.": "unet",
    "first_stage_model.": "vae",
    "cond_stage_model.transformer.": "text_encoder",
}


def from_compvis(
    sd: StateDict, cfg: SDConfig, path: str | Path = "<state dict>", names: dict[str, str] | None = None
) -> dict[str, StateDict]:
    """Split a CompVis single-file state dict into {component: sdviz-named state dict}.

    If `names` is given, it is filled with {"component.sdviz_name": file_key}, for error messages.
    """
    if not any(k.startswith("model.diffusion_model.") for k in sd):
        sample = ", ".join(list(sd)[:3]) or "no keys at all"
        raise WeightsError(
            f"{path}: not a Stable Diffusion 1.x single file (no model.diffusion_model.* keys; has {sample})"
        )
    unet_prefixes = compvis_unet_prefixes(cfg.unet)
    vae_prefixes = compvis_vae_prefixes(cfg.vae)
    out: dict[str, StateDict] = {c: {} for c in COMPONENTS}
    for key, value in sd.items():
        if _COMPVIS_IGNORED.match(key):
            continue
        part = next((p for p in _COMPVIS_PARTS if key.startswith(p)), None)
        if part is None:
            raise WeightsError(f"{path}: unexpected key {key!r} (not part of the UNet, VAE or text encoder)")
        component, rest = _COMPVIS_PARTS[part], key[len(part) :]
        if component == "text_encoder":
            name = _rename(rest, _HF_CLIP_RULES)
            if _CLIP_IGNORED.search(name):
                continue
        elif component == "unet":
            name = _map_prefix(rest, unet_prefixes)
            if name is not None:
                name = _rename(name, _DIFFUSERS_UNET_RULES)
        else:
            name = _map_prefix(rest, vae_prefixes) or rest
            if name is not None and ".mid_block.attentions.0." in name:
                leaf = name.rsplit(".mid_block.attentions.0.", 1)
                attn = {"norm": "group_norm", "q": "attn.to_q", "k": "attn.to_k", "v": "attn.to_v",
                        "proj_out": "attn.to_out"}  # fmt: skip
                layer, param = leaf[1].split(".")
                name = f"{leaf[0]}.mid_block.attentions.0.{attn.get(layer, layer)}.{param}"
                if layer in ("q", "k", "v", "proj_out") and value.ndim == 4:
                    value = value[:, :, 0, 0]  # 1x1 convolution weights (C, C, 1, 1) -> linear (C, C)
            if name is not None:
                name = name.replace(".nin_shortcut.", ".conv_shortcut.")
        if component == "unet" and name is not None:
            for old, new in _COMPVIS_RESNET.items():
                name = name.replace(f".{old}.", f".{new}.")
        if name is None:
            raise WeightsError(f"{path}: unexpected key {key!r} (no such layer in a {cfg.name} {component})")
        out[component][name] = value
        if names is not None:
            names[f"{component}.{name}"] = key
    return out

"""Loading weights into sdviz's networks: CompVis single files, diffusers folders and sdviz's own files.

Three layouts of the same numbers exist in the wild:

* **CompVis / LDM single file** (`v1-5-pruned-emaonly.safetensors` or `.ckpt`): one state dict with
  `model.diffusion_model.*` (UNet, numbered `input_blocks` / `middle_block` / `output_blocks`),
  `first_stage_model.*` (VAE, `down.i.block.j`) and `cond_stage_model.transformer.text_model.*` (CLIP, in
  Hugging Face naming), plus noise-schedule buffers (`betas`, `alphas_cumprod`, ...) and sometimes EMA copies
  (`model_ema.*`), which sdviz ignores: it computes its schedule itself.
* **diffusers folder**: `unet/`, `vae/`, `text_encoder/`, each with a `config.json` and a weights file. sdviz's
  module names follow diffusers' closely, so that mapping is a handful of renames.
* **sdviz's own format**: a folder with `model.safetensors` (keys prefixed `text_encoder.`, `vae.`, `unet.`) and
  `sdviz.json` (the `SDConfig`, and optionally a model card).

Every failure is a `WeightsError` with a one-line message that names the file and, for a key problem, the key.
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from sdviz.config import SD15, CLIPConfig, SDConfig, UNetConfig, VAEConfig
from sdviz.models.clip import CLIPTextEncoder
from sdviz.models.unet import UNet
from sdviz.models.vae import VAE

StateDict = dict[str, Tensor]
COMPONENTS = ("text_encoder", "vae", "unet")


class WeightsError(ValueError):
    """A checkpoint that can't be loaded: wrong file, truncated file, wrong or missing keys, wrong shapes."""


@dataclass
class Models:
    """The three networks of a Stable Diffusion model, with the configuration they were built from."""

    config: SDConfig
    text_encoder: CLIPTextEncoder
    vae: VAE
    unet: UNet


# ----------------------------------------------------------------------------------------------------------------
# Reading files


def read_state_dict(path: str | Path) -> StateDict:
    """Read one `.safetensors`, `.ckpt`, `.pt` or `.bin` file into a flat {name: tensor} dict, on the CPU.

    Pickle-based files are read with `torch.load(weights_only=True)`: a checkpoint whose unpickling would need to
    run code (pickled classes, callbacks) is refused rather than executed.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f"{path}: not a readable safetensors file ({_first_line(e)})") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise WeightsError(
                f"{path}: this checkpoint needs code to unpickle ({_unsupported_global(e)}); sdviz refuses to run code "
                "from a weights file. Convert it to .safetensors with a tool you trust, or use a pruned/emaonly file."
            ) from None
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({_first_line(e)})") from None
    except Exception as e:  # torch raises many kinds (RuntimeError, EOFError, IndexError...) on a broken file
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint, or truncated ({_first_line(e)})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # Lightning / LDM checkpoints wrap the weights
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: does not hold a state dict of tensors")
    return obj


def _unsupported_global(e: BaseException) -> str:
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
    return f"it references {found[1]}" if found else "it is not plain tensors"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


# ----------------------------------------------------------------------------------------------------------------
# diffusers / transformers naming -> sdviz naming


def _rename(key: str, rules: list[tuple[str, str]]) -> str:
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


# ----------------------------------------------------------------------------------------------------------------
# Building the networks


def build_models(cfg: SDConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Models:
    """The three networks with fresh random weights (for training and tests)."""
    with torch.device(device):
        te, vae, unet = CLIPTextEncoder(cfg.clip), VAE(cfg.vae), UNet(cfg.unet)
    return Models(cfg, te.to(dtype), vae.to(dtype), unet.to(dtype))


def _load_into(module: nn.Module, sd: StateDict, component: str, path: str | Path, names: dict[str, str] | None = None):
    """Strict load with one-line errors that name the key (in the file's own naming when known) and the file."""
    expected = module.state_dict()
    names = names or {}

    def name(key: str) -> str:
        return names.get(f"{component}.{key}", key)

    for key in expected:
        if key not in sd:
            raise WeightsError(f"{path}: missing key {key!r} of the {component}")
    for key, value in sd.items():
        if key not in expected:
            raise WeightsError(f"{path}: unexpected key {name(key)!r} for the {component}")
        if tuple(value.shape) != tuple(expected[key].shape):
            raise WeightsError(
                f"{path}: key {name(key)!r} has shape {tuple(value.shape)}, the {component} expects "
                f"{tuple(expected[key].shape)} (a checkpoint of another model or configuration?)"
            )
    module.load_state_dict(sd, strict=True, assign=True)


def _from_state_dicts(cfg: SDConfig, sds: dict[str, StateDict], path, device, dtype, names=None) -> Models:
    with torch.device("meta"):  # no time spent on random init: every tensor comes from the file
        modules = {"text_encoder": CLIPTextEncoder(cfg.clip), "vae": VAE(cfg.vae), "unet": UNet(cfg.unet)}
    for component, module in modules.items():
        _load_into(module, sds[component], component, path, names)
        module.to(device=device, dtype=dtype).eval()
    return Models(cfg, modules["text_encoder"], modules["vae"], modules["unet"])


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
    """Load a text encoder, VAE and UNet from any supported layout (see the module docstring)."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "sdviz":
        cfg, sd = read_sdviz(path)
        sds = {c: {k[len(c) + 1 :]: v for k, v in sd.items() if k.startswith(c + ".")} for c in COMPONENTS}
        stray = [k for k in sd if k.split(".")[0] not in COMPONENTS]
        if stray:
            raise WeightsError(f"{path}: unexpected key {stray[0]!r}")
        return _from_state_dicts(config or cfg, sds, path, device, dtype)
    if fmt == "diffusers":
        cfg = config or config_from_diffusers(path)
        sds = {c: from_diffusers(c, read_state_dict(_diffusers_file(path, c))) for c in COMPONENTS}
        return _from_state_dicts(cfg, sds, path, device, dtype)
    cfg, names = config or SD15, {}
    sds = from_compvis(read_state_dict(path), cfg, path, names)
    return _from_state_dicts(cfg, sds, path, device, dtype, names)


# ----------------------------------------------------------------------------------------------------------------
# diffusers folders


_DIFFUSERS_FILES = {
    "unet": [
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.bin",
        "diffusion_pytorch_model.fp16.safetensors",
    ],
    "vae": [
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.bin",
        "diffusion_pytorch_model.fp16.safetensors",
    ],
    "text_encoder": ["model.safetensors", "pytorch_model.bin", "model.fp16.safetensors"],
}


def _diffusers_file(folder: Path, component: str) -> Path:
    for name in _DIFFUSERS_FILES[component]:
        if (folder / component / name).is_file():
            return folder / component / name
    raise WeightsError(f"{folder / component}: no weights file (looked for {', '.join(_DIFFUSERS_FILES[component])})")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise WeightsError(f"{path}: missing") from None
    except json.JSONDecodeError as e:
        raise WeightsError(f"{path}: not valid JSON ({e})") from None


def config_from_diffusers(folder: str | Path) -> SDConfig:
    """Build an `SDConfig` from the `config.json` files of a diffusers folder (SD 1.x architectures only)."""
    folder = Path(folder)
    u = _read_json(folder / "unet" / "config.json")
    v = _read_json(folder / "vae" / "config.json")
    t = _read_json(folder / "text_encoder" / "config.json")
    if u.get("use_linear_projection") or u.get("addition_embed_type"):
        raise WeightsError(f"{folder}: this UNet is not Stable Diffusion 1.x (SD 2.x/XL layouts are not supported)")
    if t.get("hidden_act", "quick_gelu") != "quick_gelu":
        raise WeightsError(f"{folder}: text encoder uses {t['hidden_act']!r}; sdviz's CLIP implements quick_gelu")
    heads = u.get("attention_head_dim", 8)
    if isinstance(heads, list):
        if len(set(heads)) != 1:
            raise WeightsError(f"{folder}: per-level head counts {heads} are not supported")
        heads = heads[0]
    blocks = u.get("block_out_channels", [320, 640, 1280, 1280])
    vblocks = v.get("block_out_channels", [128, 256, 512, 512])
    return SDConfig(
        name=folder.name,
        clip=CLIPConfig(
            vocab_size=t.get("vocab_size", 49408),
            max_length=t.get("max_position_embeddings", 77),
            width=t.get("hidden_size", 768),
            layers=t.get("num_hidden_layers", 12),
            heads=t.get("num_attention_heads", 12),
            mlp_ratio=t.get("intermediate_size", 3072) // t.get("hidden_size", 768),
            eps=t.get("layer_norm_eps", 1e-5),
        ),
        vae=VAEConfig(
            in_channels=v.get("in_channels", 3),
            latent_channels=v.get("latent_channels", 4),
            base_channels=vblocks[0],
            channel_mult=tuple(c // vblocks[0] for c in vblocks),
            num_res_blocks=v.get("layers_per_block", 2),
            groups=v.get("norm_num_groups", 32),
            scaling_factor=v.get("scaling_factor", 0.18215),
        ),
        unet=UNetConfig(
            in_channels=u.get("in_channels", 4),
            out_channels=u.get("out_channels", 4),
            model_channels=blocks[0],
            channel_mult=tuple(c // blocks[0] for c in blocks),
            attention_levels=tuple("CrossAttn" in b for b in u.get("down_block_types", []))
            or (True, True, True, False),
            num_res_blocks=u.get("layers_per_block", 2),
            num_heads=heads,
            transformer_depth=u.get("transformer_layers_per_block", 1)
            if isinstance(u.get("transformer_layers_per_block", 1), int)
            else 1,
            context_dim=u.get("cross_attention_dim", 768),
            groups=u.get("norm_num_groups", 32),
            eps=u.get("norm_eps", 1e-5),
            flip_sin_to_cos=u.get("flip_sin_to_cos", True),
            freq_shift=u.get("freq_shift", 0),
        ),
        image_size=u.get("sample_size", 64) * 2 ** (len(vblocks) - 1),
    )


# ----------------------------------------------------------------------------------------------------------------
# sdviz's own format


def save_sdviz(folder: str | Path, models: Models, dtype: torch.dtype | None = torch.float16, card: dict | None = None):
    """Write `models` as `folder/model.safetensors` + `folder/sdviz.json` (config and optional model card)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {}
    for c in COMPONENTS:
        for k, v in getattr(models, c).state_dict().items():
            sd[f"{c}.{k}"] = (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous().cpu()
    tmp = folder / "model.safetensors.tmp"
    save_file(sd, str(tmp))
    tmp.replace(folder / "model.safetensors")  # never leave a half-written weights file behind
    meta = {"format": "sdviz", "config": models.config.to_dict()}
    if card is not None:
        meta["card"] = card
    (folder / "sdviz.json").write_text(json.dumps(meta, indent=2) + "\n")


def read_sdviz(folder: str | Path) -> tuple[SDConfig, StateDict]:
    folder = Path(folder)
    meta = _read_json(folder / "sdviz.json")
    if meta.get("format") != "sdviz" or "config" not in meta:
        raise WeightsError(f"{folder / 'sdviz.json'}: not an sdviz model description")
    try:
        cfg = SDConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{folder / 'sdviz.json'}: bad config ({e})") from None
    return cfg, read_state_dict(folder / "model.safetensors")

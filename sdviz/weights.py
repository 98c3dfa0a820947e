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

import dataclasses
import json
import math
import pickle
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from sdviz.config import SD15, ConfigError, SDConfig, UNetConfig, VAEConfig
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


def read_state_dict(
    path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> StateDict:
    """Read one `.safetensors`, `.ckpt`, `.pt` or `.bin` file into a flat {name: tensor} dict.

    Tensors are read one at a time; each floating-point one is converted to `dtype` (None keeps the file's) and
    every one is moved to `device` as soon as it is read, so the host never holds the whole file in its stored
    precision as well as the converted copy (SD 1.5 stored in fp32 and loaded in fp16: 2.1 GB instead of 6.4 GB).

    Pickle-based files are read with `torch.load(weights_only=True)`: a checkpoint whose unpickling would need to
    run code (pickled classes, callbacks) is refused rather than executed.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    tensors = _read_safetensors(path, dtype) if path.suffix == ".safetensors" else _read_torch(path)
    out = {}
    for name, tensor in tensors:
        out[name] = tensor.to(device=device, dtype=dtype if dtype is not None and tensor.is_floating_point() else None)
        del tensor  # the file's copy goes before the next one is read
    return out


# The element types of the safetensors format (its "dtype" strings) that torch can hold.
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


def _read_safetensors(path: Path, convert_to: torch.dtype | None = None) -> Iterator[tuple[str, Tensor]]:
    """Yield the tensors of a safetensors file one at a time, with plain file reads.

    A floating-point tensor that the caller will convert to `convert_to` (another dtype) is read into one buffer
    reused from tensor to tensor (a quarter faster than fresh memory for each): it must be converted before the next
    one is asked for.

    The format: 8 bytes (little-endian) giving the length N of a JSON header, the header
    `{name: {"dtype": "F32", "shape": [320, 4, 3, 3], "data_offsets": [begin, end]}, "__metadata__": {...}}`, then
    the tensors' bytes, their offsets counted from the end of the header. The `safetensors` package memory-maps the
    file instead, and every mapped page that is read counts in the process's resident memory until the file is
    closed: converting a 4.3 GB fp32 file to fp16 would then peak at 6.4 GB.
    """

    def bad(why: str) -> WeightsError:
        return WeightsError(f"{path}: not a readable safetensors file ({why})")

    size = path.stat().st_size
    with open(path, "rb") as f:
        first = f.read(8)
        if len(first) < 8:
            raise bad(f"{size} bytes, shorter than the 8-byte header length")
        n = int.from_bytes(first, "little")
        if n > size - 8:
            raise bad(f"the header length {n} exceeds the file's {size} bytes: truncated, or another format")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise bad(f"the header is not JSON: {_first_line(e)}") from None
        if not isinstance(header, dict):
            raise bad("the header is not a JSON object")
        header.pop("__metadata__", None)
        data_start, entries = 8 + n, []
        for name, info in header.items():
            try:
                dtype, shape, (begin, end) = _SAFETENSORS_DTYPES[info["dtype"]], info["shape"], info["data_offsets"]
                if not all(isinstance(v, int) and v >= 0 for v in [*shape, begin, end]):
                    raise ValueError
            except (KeyError, TypeError, ValueError):
                raise bad(f"bad header entry for {name!r}: {info!r}"[:300]) from None
            if end - begin != math.prod(shape) * dtype.itemsize:
                raise bad(f"tensor {name!r}: {end - begin} bytes for shape {tuple(shape)} of {info['dtype']}")
            if data_start + end > size:
                raise bad(f"truncated: tensor {name!r} ends at byte {data_start + end}, the file has {size}")
            entries.append((begin, end, name, dtype, shape))
        scratch = torch.empty(0, dtype=torch.uint8)
        for begin, end, name, dtype, shape in sorted(entries, key=lambda e: e[0]):  # in file order
            f.seek(data_start + begin)
            if convert_to is not None and dtype.is_floating_point and dtype != convert_to:
                if len(scratch) < end - begin:
                    scratch = torch.empty(end - begin, dtype=torch.uint8)
                data = scratch[: end - begin]
            else:
                data = torch.empty(end - begin, dtype=torch.uint8)
            view, done = memoryview(data.numpy()), 0
            while done < len(view):  # a read may return fewer bytes than asked for
                got = f.readinto(view[done:])
                if not got:
                    raise bad(f"truncated while reading tensor {name!r}")
                done += got
            yield name, data.view(dtype).reshape(shape)
            del data, view  # the caller has converted it (or kept it): do not hold it while reading the next one


def _read_torch(path: Path) -> Iterator[tuple[str, Tensor]]:
    """Yield the tensors of a `torch.save` file (zip archive, or the older plain pickle), loaded weights-only.

    `torch.load` reads the whole file first, so for these files host memory peaks near the file's size (not
    memory-mapped, which would count the same and keep the file mapped for the model's lifetime).
    """
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04" and not magic.startswith(b"\x80"):  # a zip archive; pickle protocol 2 or later
        raise WeightsError(
            f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle: it starts with {magic!r})"
        )
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
    while obj:  # hand each tensor over and forget it, so that a converted copy replaces it rather than adds to it
        name = next(iter(obj))
        yield name, obj.pop(name)


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


@dataclass
class Source:
    """Where a model's state dicts came from, for error messages.

    files: the file each component was read from ({component: path}), or `path` itself for all of them.
    names: {"component.sdviz_name": key in the file} where the file names keys differently (CompVis).
    prefix: {component: what the file puts before sdviz's names} (sdviz's own files: "unet.").
    why: appended to a key error: what disagrees with what ("<component>" is replaced by the component's name).
    """

    path: Path
    files: dict[str, Path] = dataclasses.field(default_factory=dict)
    names: dict[str, str] = dataclasses.field(default_factory=dict)
    prefix: dict[str, str] = dataclasses.field(default_factory=dict)
    why: str = ""

    def file(self, component: str) -> Path:
        return self.files.get(component, self.path)

    def why_for(self, component: str) -> str:
        return self.why.replace("<component>", component)


def _load_into(module: nn.Module, sd: StateDict, component: str, source: Source) -> None:
    """Strict `load_state_dict(assign=True)`: the file's tensors become the module's, already in the dtype and on
    the device asked for. Missing, unexpected and mis-shaped keys are one-line errors that name the file and the key
    (in the file's own naming when known)."""
    expected = module.state_dict()  # on the meta device: names and shapes, no memory

    def name(key: str) -> str:
        return source.names.get(f"{component}.{key}", source.prefix.get(component, "") + key)

    file, why = source.file(component), source.why_for(component)
    for key in expected:
        if key not in sd:
            raise WeightsError(f"{file}: missing key {name(key)!r} of the {component}{why}")
    for key, value in sd.items():
        if key not in expected:
            raise WeightsError(f"{file}: unexpected key {name(key)!r} for the {component}{why}")
        if tuple(value.shape) != tuple(expected[key].shape):
            raise WeightsError(
                f"{file}: key {name(key)!r} has shape {tuple(value.shape)}, the {component} expects "
                f"{tuple(expected[key].shape)}{why}"
            )
    module.load_state_dict(sd, strict=True, assign=True)
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:  # only a buffer kept out of the state dict (persistent=False) can be left empty: sdviz has none
        raise RuntimeError(f"the {component}'s {left[0]!r} is not in its state dict and stays unset after a meta build")


def _from_state_dicts(cfg: SDConfig, sds: dict[str, StateDict], source: Source) -> Models:
    """The three networks built on the meta device (no memory, no random init) and given the state dicts' tensors.

    The tensors must already be in the dtype and on the device wanted (`read_state_dict` converts them as it reads):
    nothing is copied here, so the host never holds a second copy of the model.
    """
    with torch.device("meta"):
        modules = {"text_encoder": CLIPTextEncoder(cfg.clip), "vae": VAE(cfg.vae), "unet": UNet(cfg.unet)}
    for component, module in modules.items():
        _load_into(module, sds.pop(component), component, source)
        module.eval()
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
    """Load a text encoder, VAE and UNet from any supported layout (see the module docstring).

    The networks are built on the meta device and take the file's tensors as they are, converted to `dtype` and
    moved to `device` one tensor at a time while reading: host memory peaks near the model's size in `dtype` (plus
    one tensor), whatever the file's precision. `config` overrides the architecture that the files describe
    (CompVis files describe none: SD 1.5 is assumed).
    """
    path = Path(path)
    fmt = detect_format(path)
    overridden = ": the weights do not match the configuration passed to load_models" if config else ""
    if fmt == "sdviz":
        cfg = read_sdviz_config(path)
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
        return _from_state_dicts(config or cfg, sds, source)
    if fmt == "diffusers":
        cfg = config or config_from_diffusers(path)
        files = {c: _diffusers_file(path, c) for c in COMPONENTS}
        sds = {c: from_diffusers(c, read_state_dict(files[c], dtype, device)) for c in COMPONENTS}
        why = overridden or f": the weights and {path / '<component>' / 'config.json'} describe different models"
        return _from_state_dicts(cfg, sds, Source(path, files=files, why=why))
    cfg, names = config or SD15, {}
    sds = from_compvis(read_state_dict(path, dtype, device), cfg, path, names)
    why = f" (a checkpoint of another model, or of another configuration than {cfg.name}?)"
    return _from_state_dicts(cfg, sds, Source(path, names=names, why=why))


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
    """A JSON file that must hold an object ({...}); anything else is a WeightsError naming the file."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeightsError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path}: not valid JSON ({_first_line(e)})") from None
    if not isinstance(value, dict):
        raise WeightsError(f"{path}: not a JSON object (holds {type(value).__name__ if value is not None else 'null'})")
    return value


# Where each SDConfig field comes from in a diffusers folder: (component folder, key of its config.json). Used to
# name the file and the key when a value is unusable.
_DIFFUSERS_KEYS = {
    "clip.vocab_size": ("text_encoder", "vocab_size"),
    "clip.max_length": ("text_encoder", "max_position_embeddings"),
    "clip.width": ("text_encoder", "hidden_size"),
    "clip.layers": ("text_encoder", "num_hidden_layers"),
    "clip.heads": ("text_encoder", "num_attention_heads"),
    "clip.mlp_ratio": ("text_encoder", "intermediate_size"),
    "clip.eps": ("text_encoder", "layer_norm_eps"),
    "vae.in_channels": ("vae", "in_channels"),
    "vae.latent_channels": ("vae", "latent_channels"),
    "vae.base_channels": ("vae", "block_out_channels"),
    "vae.channel_mult": ("vae", "block_out_channels"),
    "vae.num_res_blocks": ("vae", "layers_per_block"),
    "vae.groups": ("vae", "norm_num_groups"),
    "vae.scaling_factor": ("vae", "scaling_factor"),
    "unet.in_channels": ("unet", "in_channels"),
    "unet.out_channels": ("unet", "out_channels"),
    "unet.model_channels": ("unet", "block_out_channels"),
    "unet.channel_mult": ("unet", "block_out_channels"),
    "unet.attention_levels": ("unet", "down_block_types"),
    "unet.num_res_blocks": ("unet", "layers_per_block"),
    "unet.num_heads": ("unet", "attention_head_dim"),
    "unet.transformer_depth": ("unet", "transformer_layers_per_block"),
    "unet.context_dim": ("unet", "cross_attention_dim"),
    "unet.groups": ("unet", "norm_num_groups"),
    "unet.eps": ("unet", "norm_eps"),
    "unet.flip_sin_to_cos": ("unet", "flip_sin_to_cos"),
    "unet.freq_shift": ("unet", "freq_shift"),
    "image_size": ("unet", "sample_size"),
}


def config_from_diffusers(folder: str | Path) -> SDConfig:
    """Build an `SDConfig` from the `config.json` files of a diffusers folder (SD 1.x architectures only).

    A value of the wrong type or out of range is a WeightsError naming the config.json and its key.
    """
    folder = Path(folder)
    u = _read_json(folder / "unet" / "config.json")
    v = _read_json(folder / "vae" / "config.json")
    t = _read_json(folder / "text_encoder" / "config.json")
    if u.get("use_linear_projection") or u.get("addition_embed_type"):
        raise WeightsError(f"{folder}: this UNet is not Stable Diffusion 1.x (SD 2.x/XL layouts are not supported)")
    if t.get("hidden_act", "quick_gelu") != "quick_gelu":
        raise WeightsError(f"{folder}: text encoder uses {t['hidden_act']!r}; sdviz's CLIP implements quick_gelu")

    def number(d: dict, component: str, key: str, default):
        """A value that the arithmetic below needs: a positive integer, or (block_out_channels) a list of them."""
        value, many = d.get(key, default), isinstance(default, list)

        def positive(x) -> bool:
            return isinstance(x, int) and not isinstance(x, bool) and x >= 1

        ok = isinstance(value, list) and len(value) > 0 and all(map(positive, value)) if many else positive(value)
        if not ok:
            expected = "a non-empty list of positive integers" if many else "a positive integer"
            raise WeightsError(f"{folder / component / 'config.json'}: {key}: expected {expected}, got {value!r}")
        return value

    heads = u.get("attention_head_dim", 8)
    if isinstance(heads, list) and len(set(map(repr, heads))) > 1:
        raise WeightsError(f"{folder}: per-level head counts {heads} are not supported")
    depth = u.get("transformer_layers_per_block", 1)
    blocks = number(u, "unet", "block_out_channels", [320, 640, 1280, 1280])
    vblocks = number(v, "vae", "block_out_channels", [128, 256, 512, 512])
    width = number(t, "text_encoder", "hidden_size", 768)
    down_types = u.get("down_block_types", [])
    try:
        return SDConfig.from_dict(
            {
                "name": folder.name,
                "clip": {
                    "vocab_size": t.get("vocab_size", 49408),
                    "max_length": t.get("max_position_embeddings", 77),
                    "width": width,
                    "layers": t.get("num_hidden_layers", 12),
                    "heads": t.get("num_attention_heads", 12),
                    "mlp_ratio": number(t, "text_encoder", "intermediate_size", 3072) // width,
                    "eps": t.get("layer_norm_eps", 1e-5),
                },
                "vae": {
                    "in_channels": v.get("in_channels", 3),
                    "latent_channels": v.get("latent_channels", 4),
                    "base_channels": vblocks[0],
                    "channel_mult": [c // vblocks[0] for c in vblocks],
                    "num_res_blocks": v.get("layers_per_block", 2),
                    "groups": v.get("norm_num_groups", 32),
                    "scaling_factor": v.get("scaling_factor", 0.18215),
                },
                "unet": {
                    "in_channels": u.get("in_channels", 4),
                    "out_channels": u.get("out_channels", 4),
                    "model_channels": blocks[0],
                    "channel_mult": [c // blocks[0] for c in blocks],
                    "attention_levels": [isinstance(b, str) and "CrossAttn" in b for b in down_types]
                    if isinstance(down_types, list) and down_types
                    else [True, True, True, False],
                    "num_res_blocks": u.get("layers_per_block", 2),
                    "num_heads": heads[0] if isinstance(heads, list) and heads else heads,
                    "transformer_depth": depth if isinstance(depth, int) else 1,
                    "context_dim": u.get("cross_attention_dim", 768),
                    "groups": u.get("norm_num_groups", 32),
                    "eps": u.get("norm_eps", 1e-5),
                    "flip_sin_to_cos": u.get("flip_sin_to_cos", True),
                    "freq_shift": u.get("freq_shift", 0),
                },
                "image_size": number(u, "unet", "sample_size", 64) * 2 ** (len(vblocks) - 1),
            }
        )
    except ConfigError as e:
        component, key = _DIFFUSERS_KEYS.get(e.field.split("[")[0], ("unet", e.field))
        raise WeightsError(f"{folder / component / 'config.json'}: {key}: {e.problem} (sdviz's {e.field})") from None


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


def read_sdviz_config(folder: str | Path) -> SDConfig:
    """The `SDConfig` of an sdviz folder, from its `sdviz.json`; every bad value is a WeightsError naming the field."""
    path = Path(folder) / "sdviz.json"
    meta = _read_json(path)
    if not isinstance(meta, dict) or meta.get("format") != "sdviz" or "config" not in meta:
        raise WeightsError(f"{path}: not an sdviz model description (a JSON object with format 'sdviz' and a config)")
    try:
        return SDConfig.from_dict(meta["config"])
    except ConfigError as e:
        raise WeightsError(f"{path}: bad config: {e}") from None


def read_sdviz(
    folder: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> tuple[SDConfig, StateDict]:
    """The configuration and the (prefixed: `unet.conv_in.weight`) state dict of an sdviz folder."""
    folder = Path(folder)
    return read_sdviz_config(folder), read_state_dict(folder / "model.safetensors", dtype, device)

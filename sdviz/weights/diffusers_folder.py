"""diffusers folders: where each network's weights file lies, and the `SDConfig` their `config.json` files describe.

A diffusers model is a folder with one subfolder per network:

    unet/config.json            unet/diffusion_pytorch_model.safetensors   (or .bin, or .fp16.safetensors)
    vae/config.json             vae/diffusion_pytorch_model.safetensors
    text_encoder/config.json    text_encoder/model.safetensors             (a transformers CLIPTextModel)

`config_from_diffusers` translates the three `config.json` files into sdviz's `SDConfig` (diffusers says
`block_out_channels: [320, 640, 1280, 1280]`, sdviz says `model_channels: 320, channel_mult: [1, 2, 4, 4]`), and
names the file and the key of any value it cannot use. The key names inside the weights files are translated by
`rules.from_diffusers`.
"""

from __future__ import annotations

from pathlib import Path

from sdviz.config import ConfigError, SDConfig
from sdviz.weights.files import WeightsError, read_json

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


def diffusers_weights_file(folder: Path, component: str) -> Path:
    """The weights file of a diffusers folder's `component` (unet, vae, text_encoder): the first of the names
    diffusers uses that exists."""
    for name in _DIFFUSERS_FILES[component]:
        if (folder / component / name).is_file():
            return folder / component / name
    raise WeightsError(f"{folder / component}: no weights file (looked for {', '.join(_DIFFUSERS_FILES[component])})")


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
    u = read_json(folder / "unet" / "config.json")
    v = read_json(folder / "vae" / "config.json")
    t = read_json(folder / "text_encoder" / "config.json")
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

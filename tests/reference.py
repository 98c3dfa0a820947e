"""Reference models (diffusers, transformers) built from an sdviz config, and the CompVis single-file rewrite.

Test-only: diffusers and transformers are test extras, never runtime dependencies of sdviz.

`to_compvis` rewrites diffusers/transformers state dicts into the CompVis/LDM single-file layout
(`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.*`) from the published key naming
of the LDM code (ResBlock: in_layers/emb_layers/out_layers/skip_connection; numbered input/output blocks; VAE
down.i.block.j, mid.attn_1 with 1x1-convolution q/k/v). It is written in the diffusers -> CompVis direction, the
reverse of sdviz's loader, so a test that loads its output checks sdviz's mapping against an independent one.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from sdviz.config import SDConfig


def perturb_(module: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Randomise 1-D parameters (norm scales and shifts, biases), which default init sets to 0 or 1.

    Otherwise two LayerNorms swapped by a wrong key mapping would still give the same numbers.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim == 1:
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return module


def diffusers_unet(cfg: SDConfig):
    from diffusers import UNet2DConditionModel

    u = cfg.unet
    return UNet2DConditionModel(
        sample_size=cfg.latent_size,
        in_channels=u.in_channels,
        out_channels=u.out_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in u.attention_levels),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(u.attention_levels)),
        block_out_channels=tuple(u.model_channels * m for m in u.channel_mult),
        layers_per_block=u.num_res_blocks,
        cross_attention_dim=u.context_dim,
        attention_head_dim=u.num_heads,
        norm_num_groups=u.groups,
        norm_eps=u.eps,
        flip_sin_to_cos=u.flip_sin_to_cos,
        freq_shift=u.freq_shift,
        transformer_layers_per_block=u.transformer_depth,
        mid_block_type="UNetMidBlock2DCrossAttn",
    )


def diffusers_vae(cfg: SDConfig):
    from diffusers import AutoencoderKL

    v = cfg.vae
    n = len(v.channel_mult)
    return AutoencoderKL(
        in_channels=v.in_channels,
        out_channels=v.in_channels,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(v.base_channels * m for m in v.channel_mult),
        layers_per_block=v.num_res_blocks,
        latent_channels=v.latent_channels,
        norm_num_groups=v.groups,
        sample_size=cfg.image_size,
        scaling_factor=v.scaling_factor,
    )


def hf_clip(cfg: SDConfig):
    from transformers import CLIPTextConfig, CLIPTextModel

    c = cfg.clip
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=c.vocab_size,
            hidden_size=c.width,
            intermediate_size=c.mlp_ratio * c.width,
            num_hidden_layers=c.layers,
            num_attention_heads=c.heads,
            max_position_embeddings=c.max_length,
            hidden_act="quick_gelu",
            layer_norm_eps=c.eps,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )


# ----------------------------------------------------------------------------------------------------------------
# diffusers -> CompVis


def _unet_to_compvis(sd: dict[str, Tensor], cfg: SDConfig) -> dict[str, Tensor]:
    u = cfg.unet
    n_res, levels = u.num_res_blocks, len(u.channel_mult)
    resnet = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
              "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}  # fmt: skip
    out = {}
    for key, value in sd.items():
        k = key
        k = k.replace("time_embedding.linear_1.", "time_embed.0.").replace("time_embedding.linear_2.", "time_embed.2.")
        k = re.sub(r"^conv_in\.", "input_blocks.0.0.", k)
        k = re.sub(r"^conv_norm_out\.", "out.0.", k)
        k = re.sub(r"^conv_out\.", "out.2.", k)
        if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", k):
            i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            k = f"input_blocks.{i * (n_res + 1) + j + 1}.{0 if kind == 'resnets' else 1}.{rest}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", k):
            k = f"input_blocks.{(int(m[1]) + 1) * (n_res + 1)}.0.op.{m[2]}"
        elif m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", k):
            idx = {("resnets", "0"): 0, ("attentions", "0"): 1, ("resnets", "1"): 2}[(m[1], m[2])]
            k = f"middle_block.{idx}.{m[3]}"
        elif m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", k):
            i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            k = f"output_blocks.{i * (n_res + 1) + j}.{0 if kind == 'resnets' else 1}.{rest}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", k):
            i = int(m[1])
            has_attn = u.attention_levels[levels - 1 - i]
            k = f"output_blocks.{i * (n_res + 1) + n_res}.{2 if has_attn else 1}.conv.{m[2]}"
        if m := re.match(r"((?:input|output)_blocks\.\d+\.0|middle_block\.[02])\.(\w+)\.(weight|bias)$", k):
            if m[2] in resnet:
                k = f"{m[1]}.{resnet[m[2]]}.{m[3]}"
        out["model.diffusion_model." + k] = value
    return out


def _vae_to_compvis(sd: dict[str, Tensor], cfg: SDConfig) -> dict[str, Tensor]:
    levels = len(cfg.vae.channel_mult)
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, value in sd.items():
        k = key
        k = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", k)
        k = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k)
        k = re.sub(
            r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
            lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.",
            k,
        )
        k = re.sub(
            r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
            lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample.",
            k,
        )
        k = re.sub(r"\.mid_block\.resnets\.0\.", ".mid.block_1.", k)
        k = re.sub(r"\.mid_block\.resnets\.1\.", ".mid.block_2.", k)
        k = k.replace(".conv_shortcut.", ".nin_shortcut.").replace(".conv_norm_out.", ".norm_out.")
        if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)$", k):
            k = f"{m[1]}.mid.attn_1.{attn[m[2]]}.{m[3]}"
            if m[2] != "group_norm" and m[3] == "weight":
                value = value[:, :, None, None]  # LDM stores q, k, v, proj_out as 1x1 convolutions
        out["first_stage_model." + k] = value
    return out


def to_compvis(unet_sd, vae_sd, clip_sd, cfg: SDConfig, extras: bool = True) -> dict[str, Tensor]:
    """One CompVis single-file state dict from the three reference state dicts.

    With `extras`, also add what real single files carry besides the weights: the LDM schedule buffers and an EMA
    bookkeeping entry, which the loader must ignore.
    """
    sd = {**_unet_to_compvis(unet_sd, cfg), **_vae_to_compvis(vae_sd, cfg)}
    sd.update({"cond_stage_model.transformer." + k: v for k, v in clip_sd.items()})
    if extras:
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        sd["betas"] = betas.float()
        sd["alphas_cumprod"] = torch.cumprod(1 - betas, 0).float()
        sd["model_ema.decay"] = torch.tensor(0.9999)
    return {k: v.contiguous() for k, v in sd.items()}


def hf_tokenizer():
    """transformers' CLIPTokenizer over sdviz's shipped vocabulary file, built offline.

    The vocabulary is derived the way OpenAI CLIP derives it from the .gz (byte symbols, the same with "</w>", the
    merges, the two special tokens). In transformers 5.x `CLIPTokenizer(vocab_file=..., merges_file=...)` silently
    builds a 2-token vocabulary, so the vocabulary and merges are passed as objects.
    """
    import gzip

    import transformers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from sdviz.tokenizer import vocab_file

    lines = gzip.open(vocab_file()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_symbols = list(bytes_to_unicode().values())
    vocab = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return transformers.CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, model_max_length=77)

"""Shapes without weights: run a network on PyTorch's meta device and note what every part of it sees.

A tensor on the `meta` device has a shape and a dtype but no storage; every operation (a convolution, group norm,
`scaled_dot_product_attention`) computes only its output's shape. A network built there costs no memory, and SD 1.5's
UNet "runs" at 512x512 in a fraction of a second, without weights. `probe` runs one call of a network there and
notes, in the order the forward pass meets them:

- every module's calls: the shapes of the tensors it took and returned (the architecture diagrams are drawn from
  them, so that another configuration draws itself);
- the shape at every hook point; for attention probabilities the whole (B, heads, N, M), although a listener
  receives them in chunks of query positions (see `sdviz.models.attention`);
- every attention layer: self- or cross-attention, its heads, N query and M key positions, and the pixel grid
  (h, w) of its queries when they are the pixels of a feature map;
- every GroupNorm: its groups, channels and pixel grid.

Torch forward hooks watch the modules; nothing listens at the hook points, so the network runs exactly the code of
an unobserved generation (attention probabilities are not computed).

    p = probe(SD15.unet, torch.empty(1, 4, 64, 64), 999, torch.empty(1, 77, 768))
    p.hooks["unet.hook_time_embedding"]                                            # (1, 1280)
    p.attention["unet.mid_block.attentions.0.transformer_blocks.0.attn2.hook_probs"].hw   # (8, 8)

`unet_layout` turns a probe of the UNet into its *layer layout*: every attention layer and GroupNorm by name, with
its shapes for a given latent size. It is the one answer to "which layers are there" (`layers`): the trace, the
edits and the interventions all choose their layers from it. The flowcharts (`sdviz.flowchart`) use `probe` itself,
and run their line tracer inside it (`within=`).
"""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sdviz.config import CLIPConfig, SDConfig, UNetConfig, VAEConfig
from sdviz.hooks import HookPoint
from sdviz.models.attention import Attention

Shape = tuple[int, ...]


@dataclass
class Call:
    """One call of a module: the shapes of its tensor arguments, and of what it returned (a shape, or a tuple or
    list of them, nested as the module returned them; None for anything else)."""

    inputs: tuple[Any, ...]
    output: Any = None


@dataclass(frozen=True)
class AttentionShape:
    kind: str  # "self_attention" or "cross_attention"
    heads: int
    n: int  # query positions
    m: int  # key positions
    hw: tuple[int, int] | None  # the pixel grid of the queries (None for a text encoder's tokens)


@dataclass(frozen=True)
class NormShape:
    groups: int
    channels: int
    hw: tuple[int, int]


@dataclass
class Probe:
    """What one call of a network did, shapes only. Dicts are in the order the forward pass met their keys."""

    network: nn.Module  # the meta-device network that ran (shared: see `meta_network`)
    name: str  # its prefix in hook-point names: "text_encoder", "vae" or "unet"
    output: Any = None  # what the call returned (meta tensors)
    calls: dict[str, list[Call]] = field(default_factory=dict)  # module path -> its calls
    hooks: dict[str, Shape] = field(default_factory=dict)  # hook point -> the shape that passed it (first call)
    attention: dict[str, AttentionShape] = field(default_factory=dict)  # by hook point (`...attn2.hook_probs`)
    groupnorm: dict[str, NormShape] = field(default_factory=dict)  # by module path


def _network_class(cfg) -> tuple[str, type[nn.Module]]:
    from sdviz.models.clip import CLIPTextEncoder
    from sdviz.models.unet import UNet
    from sdviz.models.vae import VAE

    classes = {CLIPConfig: ("text_encoder", CLIPTextEncoder), VAEConfig: ("vae", VAE), UNetConfig: ("unet", UNet)}
    if type(cfg) not in classes:
        raise TypeError(f"expected a CLIPConfig, VAEConfig or UNetConfig, got {type(cfg).__name__}")
    return classes[type(cfg)]


@functools.lru_cache(maxsize=12)
def meta_network(cfg: CLIPConfig | VAEConfig | UNetConfig) -> nn.Module:
    """The network of a configuration, built on the meta device (shapes without storage); one per configuration."""
    _, cls = _network_class(cfg)
    with torch.device("meta"):
        return cls(cfg).eval()


def shape_of(value: Any) -> Any:
    """A tensor's shape; a tuple or list of tensors as a tuple or list of shapes; None for anything else."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (tuple, list)) and value:
        shapes = [shape_of(v) for v in value]
        return None if any(s is None for s in shapes) else type(value)(shapes)
    return None


def _grid(p: Probe, path: str, n: int) -> tuple[int, int] | None:
    """The (h, w) of the nearest enclosing module whose input is a feature map of n pixels."""
    while "." in path:
        path = path.rsplit(".", 1)[0]
        calls = p.calls.get(path)
        x = calls[-1].inputs[0] if calls and calls[-1].inputs else None
        if isinstance(x, tuple) and len(x) == 4 and all(isinstance(d, int) for d in x) and x[2] * x[3] == n:
            return x[2], x[3]
    return None


def _starting(p: Probe, path: str, module: nn.Module, args: tuple, kwargs: dict) -> None:
    inputs = tuple(s for s in map(shape_of, (*args, *kwargs.values())) if s is not None)
    p.calls.setdefault(path, []).append(Call(inputs))
    if isinstance(module, Attention):
        x = args[0]
        context = args[1] if len(args) > 1 else kwargs.get("context")
        kind = "self_attention" if context is None else "cross_attention"
        b, n, m = x.shape[0], x.shape[1], (x if context is None else context).shape[1]
        name = f"{path}.hook_probs"  # the probabilities would be handed there, in chunks, to a listener
        p.hooks.setdefault(name, (b, module.heads, n, m))
        p.attention.setdefault(name, AttentionShape(kind, module.heads, n, m, _grid(p, path, n)))
    elif isinstance(module, nn.GroupNorm):
        p.groupnorm.setdefault(path, NormShape(module.num_groups, module.num_channels, tuple(args[0].shape[-2:])))


# (every hook here returns None: a forward hook that returns a value would replace the module's output)


def _passed(p: Probe, name: str, _point: HookPoint, _args: tuple, output: torch.Tensor) -> None:
    p.hooks.setdefault(name, shape_of(output))


def _finished(p: Probe, path: str, _module: nn.Module, _args: tuple, output: Any) -> None:
    p.calls[path][-1].output = shape_of(output)


def probe(
    cfg: CLIPConfig | VAEConfig | UNetConfig,
    *args: Any,
    method: str = "forward",
    within: AbstractContextManager | None = None,
) -> Probe:
    """Call `method` of the meta network of `cfg` with `args` (tensors are moved to the meta device) and note
    every module's calls, every hook point's shape, every attention layer and every GroupNorm.

    `within`: a context manager the call runs inside (the flowcharts' line tracer).
    """
    name, _ = _network_class(cfg)
    net = meta_network(cfg)
    p = Probe(net, name)
    handles = []
    for path, m in net.named_modules():
        full = f"{name}.{path}" if path else name
        if isinstance(m, HookPoint):  # a torch hook, not a listener: the hook point stays inactive
            handles.append(m.register_forward_hook(functools.partial(_passed, p, full)))
            continue
        handles.append(m.register_forward_pre_hook(functools.partial(_starting, p, full), with_kwargs=True))
        handles.append(m.register_forward_hook(functools.partial(_finished, p, full)))
    meta = tuple(a.to("meta") if isinstance(a, torch.Tensor) else a for a in args)
    try:
        with torch.no_grad(), within or nullcontext():
            p.output = (net if method == "forward" else getattr(net, method))(*meta)  # net(...): its hooks run
    finally:
        for h in handles:
            h.remove()
    return p


# --------------------------------------------------------------------------------------------------------------------
# The layer layout: every attention layer and GroupNorm of a UNet, by name, with its shapes
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionLayer:
    """One attention layer of the UNet: its probabilities are (B, heads, n, m), n = h * w pixels."""

    name: str  # the hook point, e.g. unet.mid_block.attentions.0.transformer_blocks.0.attn2.hook_probs
    kind: str  # "cross_attention" or "self_attention"
    heads: int
    n: int  # query positions (pixels)
    m: int  # key positions (tokens for cross-attention, pixels for self-attention)
    hw: tuple[int, int]  # the pixel grid of the queries
    channels: int = 0  # heads x head width (the values a trace keeps with per-(layer, head) maps are (m, channels))

    @property
    def resolution(self) -> str:
        return f"{self.hw[0]}x{self.hw[1]}"


@dataclass(frozen=True)
class NormLayer:
    """One GroupNorm of the UNet: its input is (B, channels, h, w), normalised in `groups` groups."""

    name: str  # the module path, e.g. unet.down_blocks.0.resnets.0.norm1 (hook points: .hook_in, .hook_out)
    groups: int
    channels: int
    hw: tuple[int, int]


@dataclass(frozen=True)
class UNetLayout:
    """The shapes a UNet sees for one image of a given latent size (see `unet_layout`)."""

    latent: tuple[int, int, int]  # (C, h, w)
    hooks: dict[str, tuple[int, ...]]  # every UNet hook point -> its shape for a batch of 1, in forward order
    attention: dict[str, AttentionLayer]  # by hook name, in forward order
    groupnorm: dict[str, NormLayer]  # by module path, in forward order
    time_dims: tuple[int, int]  # (sinusoid width, MLP output width): (320, 1280) for SD 1.5

    def layers(self, kind: str) -> list[str]:
        """The layer names a record of this kind can watch."""
        if kind == "groupnorm":
            return list(self.groupnorm)
        return [name for name, a in self.attention.items() if a.kind == kind]


@functools.lru_cache(maxsize=16)
def unet_layout(cfg: UNetConfig, latent_hw: tuple[int, int], context_length: int = 77) -> UNetLayout:
    """Run a UNet of configuration `cfg` on the meta device for one latent of size `latent_hw` and note its shapes
    (with the shared shape probe, `sdviz.shapes.probe`).

    Cross- and self-attention are told apart by what the forward pass does (a context is passed or not), not by
    names, and the pixel grid of an attention layer is the (h, w) of the feature map its spatial transformer folds
    into a sequence.
    """
    x = torch.empty(1, cfg.in_channels, *latent_hw, device="meta")
    context = torch.empty(1, context_length, cfg.context_dim, device="meta")
    p = probe(cfg, x, 999, context)
    attention = {
        n: AttentionLayer(n, a.kind, a.heads, a.n, a.m, a.hw, p.calls[n.removesuffix(".hook_probs")][-1].inputs[0][-1])
        for n, a in p.attention.items()
    }
    return UNetLayout(
        latent=(cfg.in_channels, *latent_hw),
        hooks=dict(p.hooks),
        attention=attention,
        groupnorm={n: NormLayer(n, g.groups, g.channels, g.hw) for n, g in p.groupnorm.items()},
        time_dims=(p.hooks["unet.hook_time_sinusoid"][-1], p.hooks["unet.hook_time_embedding"][-1]),
    )


LAYER_KINDS = ("cross_attention", "self_attention", "groupnorm")


def layers(config: SDConfig | UNetConfig | Any, kind: str) -> list[str]:
    """The UNet's layers of one kind, in forward order: "cross_attention" (`...attn2.hook_probs`: pixels -> prompt
    tokens), "self_attention" (`...attn1.hook_probs`) or "groupnorm" (module paths, with `.hook_in`/`.hook_out`).

    `config` is an `SDConfig`, a `UNetConfig` or anything with a `.config` (a pipeline). The names do not depend on
    the picture size; they are the hook names whether or not the UNet is compiled."""
    cfg = getattr(config, "config", config)
    unet = getattr(cfg, "unet", cfg)
    if kind not in LAYER_KINDS:
        raise ValueError(f"unknown layer kind {kind!r}; known: {', '.join(LAYER_KINDS)}")
    size = 8 * 2 ** (len(unet.channel_mult) - 1)  # a latent grid that every level of the UNet can halve
    return unet_layout(unet, (size, size)).layers(kind)

"""The real runs that the flowcharts are drawn from, each traced by `LineTracer`.

No weights and (almost) no arithmetic are needed to learn every shape of Stable Diffusion 1.5 at 512x512:

- The networks are built and run on PyTorch's `meta` device. A meta tensor has a shape and a dtype but no data;
  every operation (convolution, group norm, `scaled_dot_product_attention`) computes only its output's shape. The
  1.07 billion parameters of SD 1.5 cost no memory, and a UNet pass takes a fraction of a second.
- The samplers run on the CPU for real: their tensors are (B, 4, 64, 64) latents, tiny.
- The pipeline runs for real on the CPU, with the three networks replaced by stand-ins that run the real network
  on the meta device (once per input shape) and hand back zeros of the shape it produced. Its tokenizer, guidance
  arithmetic, sampler loop and image conversion all run as they do in a real generation.

Each run returns a `Recording`; runs are cached per configuration, since several sheets share them.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from functools import lru_cache
from types import FrameType

import torch
from PIL import Image

from sdviz.config import SDConfig, get_config
from sdviz.flowchart.source import Function, model_modules, sampler_modules
from sdviz.flowchart.tracer import FunctionIndex, LineTracer, Recording, ShapeFormat

# Images per traced run, printed as B (and the guided UNet batch as 2B). 3 rather than 1 or 2 so that no other
# leading dimension is mistaken for the batch: a single image is (1, ...), a guided pair (2, ...).
BATCH = 3
STEPS = 50  # sampler steps of the traced runs, SD's usual number
STRENGTH = 0.8  # image-to-image and inpainting runs

NETWORK_PARTS = ("text-encoder", "vae-encoder", "vae-decoder", "unet")
QUIET = {"common.HookPoint.forward"}  # drawn as a mark on the calling statement, not as an edge


@contextmanager
def single_thread():
    """Run the (tiny) CPU tensor work on one thread: thread start-up would cost more than the work itself."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@lru_cache(maxsize=1)
def function_index() -> FunctionIndex:
    return FunctionIndex([*model_modules(), *sampler_modules(), "sdviz.pipeline", "sdviz.tokenizer"])


def _is_quiet(fn: Function) -> bool:
    return fn.key in QUIET


def _expand_models(fn: Function) -> bool:
    return fn.module.startswith("sdviz.models.") and fn.name != "__init__"


@lru_cache(maxsize=4)
def _networks(name: str):
    """The three networks of a configuration, built on the meta device: shapes without storage."""
    from sdviz.models.clip import CLIPTextEncoder
    from sdviz.models.unet import UNet
    from sdviz.models.vae import VAE

    cfg = get_config(name)
    with torch.device("meta"):
        return CLIPTextEncoder(cfg.clip).eval(), VAE(cfg.vae).eval(), UNet(cfg.unet).eval()


def _hook_modules(root: torch.nn.Module, prefix: str, recording: Recording) -> list:
    """Forward hooks that note each submodule's input and output shapes by module path (for the architecture
    diagrams, which are drawn per module rather than per statement)."""
    from sdviz.hooks import HookPoint

    fmt = ShapeFormat(recording.batch)
    handles = []

    def make(path: str):
        def hook(module, args, output):
            ins = tuple(d for d in (fmt.value(a, scalars=False) for a in args) if d is not None)
            recording.module_calls.setdefault(path, []).append((ins, fmt.value(output) or ""))

        return hook

    def starting(path: str):
        def pre_hook(module, args):
            recording.module_calls.setdefault(path, [])  # created when the module starts: keys in execution order

        return pre_hook

    for path, m in root.named_modules(prefix=prefix):
        if not isinstance(m, HookPoint):
            handles.append(m.register_forward_pre_hook(starting(path)))
            handles.append(m.register_forward_hook(make(path)))
    return handles


def _size(cfg: SDConfig) -> tuple[int, int]:
    return cfg.image_size, cfg.image_size // cfg.vae.downsampling_factor


@lru_cache(maxsize=16)
def network_recording(name: str, part: str) -> Recording:
    """One traced pass through a network on the meta device: "text-encoder", "vae-encoder", "vae-decoder", "unet"."""
    if part not in NETWORK_PARTS:
        raise ValueError(f"unknown network part {part!r}; known: {', '.join(NETWORK_PARTS)}")
    cfg = get_config(name)
    clip, vae, unet = _networks(name)
    size, lat = _size(cfg)
    meta = torch.device("meta")
    b = BATCH
    if part == "text-encoder":
        root, prefix = clip, "text_encoder"
        call = lambda: clip(torch.zeros(b, cfg.clip.max_length, dtype=torch.long, device=meta))  # noqa: E731
        what = f"ids (B, {cfg.clip.max_length})"
    elif part == "vae-encoder":
        root, prefix = vae, "vae"
        call = lambda: vae.encode(torch.empty(b, cfg.vae.in_channels, size, size, device=meta))  # noqa: E731
        what = f"a {size}x{size} image"
    elif part == "vae-decoder":
        root, prefix = vae, "vae"
        call = lambda: vae.decode(torch.empty(b, cfg.vae.latent_channels, lat, lat, device=meta))  # noqa: E731
        what = f"{lat}x{lat} latents"
    else:
        root, prefix = unet, "unet"
        x = torch.empty(b, cfg.unet.in_channels, lat, lat, device=meta)
        t = torch.zeros(b, dtype=torch.long, device=meta)
        ctx = torch.empty(b, cfg.clip.max_length, cfg.unet.context_dim, device=meta)
        call = lambda: unet(x, t, ctx)  # noqa: E731
        what = f"{lat}x{lat} latents, t, context"
    rec = Recording(f"one pass, {what}, {cfg.name} configuration, meta device", BATCH)
    handles = _hook_modules(root, prefix, rec)
    try:
        tracer = LineTracer(function_index(), rec, expand=_expand_models, quiet=_is_quiet)
        with single_thread(), torch.no_grad(), tracer:
            call()
    finally:
        for h in handles:
            h.remove()
    return rec


def _sampler_function(fn: Function) -> bool:
    return fn.module.startswith("sdviz.samplers.") and fn.name != "__init__"


@lru_cache(maxsize=4)
def sampler_recording(name: str) -> Recording:
    """Every sampler driven through a whole text-to-image loop (and one image-to-image start), on the CPU."""
    from sdviz.samplers import SAMPLERS, get_sampler

    cfg = get_config(name)
    _, lat = _size(cfg)
    shape = (BATCH, cfg.unet.in_channels, lat, lat)
    rec = Recording(f"{STEPS} steps of each sampler on zero latents {shape}, CPU", BATCH)
    samplers = {n: get_sampler(n, cfg.schedule) for n in SAMPLERS}  # built outside the trace: __init__ is not drawn
    with single_thread(), torch.no_grad(), LineTracer(function_index(), rec, expand=_sampler_function):
        for sampler in samplers.values():
            g = [torch.Generator().manual_seed(i) for i in range(BATCH)]
            sampler.set_timesteps(STEPS)
            x = torch.zeros(shape)
            for t in sampler.timesteps:
                x_in = sampler.scale_model_input(x, t)
                eps = torch.zeros_like(x_in)
                x = sampler.step(eps, t, x, generator=g).prev_sample
            sampler.predict_x0(eps, t, x)
            sampler.set_timesteps(STEPS, strength=STRENGTH)
            sampler.add_noise(torch.zeros(shape), torch.zeros(shape), sampler.timesteps[0])
    return rec


# -- the pipeline, with stand-in networks ---------------------------------------------------------------------------


_META_OUTPUTS: dict = {}  # (network, method, input shapes) -> meta output; networks are cached, so ids are stable


class StandIn(torch.nn.Module):
    """Takes a network's place in the pipeline: runs the real network on the meta device, once per input shape,
    and returns zeros of the output's shape on the CPU. The pipeline's own code runs unchanged around it."""

    def __init__(self, network: torch.nn.Module, log: Callable[[str, tuple, object], None]):
        super().__init__()
        object.__setattr__(self, "network", network)  # not a submodule: .to("cpu") must not touch meta weights
        object.__setattr__(self, "log", log)
        self.config = network.config

    def forward(self, *args):
        return self.run("forward", args)

    def encode(self, x):
        return self.run("encode", (x,))

    def decode(self, z):
        return self.run("decode", (z,))

    def run(self, method: str, args: tuple):
        key = (id(self.network), method) + tuple(tuple(a.shape) if isinstance(a, torch.Tensor) else a for a in args)
        if key not in _META_OUTPUTS:
            meta = tuple(a.to("meta") if isinstance(a, torch.Tensor) else a for a in args)
            with torch.no_grad():
                _META_OUTPUTS[key] = getattr(self.network, method)(*meta)
        out = _META_OUTPUTS[key]
        result = tuple(torch.zeros(o.shape) for o in out) if isinstance(out, tuple) else torch.zeros(out.shape)
        self.log(f"{type(self.network).__name__}.{method}", args, result)
        return result


_STAND_IN_CODES = {StandIn.forward.__code__: "forward", StandIn.encode.__code__: "encode"}
_STAND_IN_CODES[StandIn.decode.__code__] = "decode"


def _stand_in_proxy(frame: FrameType) -> Function | None:
    method = _STAND_IN_CODES.get(frame.f_code)
    if method is None:
        return None
    net = frame.f_locals.get("self").network
    return function_index().by_key.get(f"{type(net).__module__.rsplit('.', 1)[-1]}.{type(net).__name__}.{method}")


PIPELINE_MODES = ("txt2img", "img2img", "inpaint")


@lru_cache(maxsize=8)
def pipeline_recording(name: str, mode: str) -> Recording:
    """`StableDiffusion.generate` run for real on the CPU, with stand-in networks: "txt2img", "img2img", "inpaint"."""
    from sdviz.pipeline import StableDiffusion
    from sdviz.weights import Models

    if mode not in PIPELINE_MODES:
        raise ValueError(f"unknown pipeline mode {mode!r}; known: {', '.join(PIPELINE_MODES)}")
    cfg = get_config(name)
    size, _ = _size(cfg)
    clip, vae, unet = _networks(name)
    fmt = ShapeFormat(BATCH)
    rec = Recording("", BATCH)

    def log(what: str, args: tuple, result) -> None:
        ins = tuple(d for d in (fmt.value(a, scalars=False) for a in args) if d is not None)
        rec.module_calls.setdefault(what, []).append((ins, fmt.value(result) or ""))

    pipe = StableDiffusion(Models(cfg, StandIn(clip, log), StandIn(vae, log), StandIn(unet, log)))
    if hasattr(pipe, "batch_invariant"):
        pipe.batch_invariant = False  # one network call for the whole batch, as on a GPU: the shapes of the paper
    kwargs = dict(steps=STEPS, seed=0, progress=False, sampler="ddpm")
    if mode != "txt2img":
        kwargs.update(image=Image.new("RGB", (size, size), (128, 128, 128)), strength=STRENGTH)
    if mode == "inpaint":
        mask = Image.new("L", (size, size), 0)
        mask.paste(255, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
        kwargs["mask"] = mask
    prompts = [f"prompt {i}" for i in range(BATCH)]

    def expand(fn: Function) -> bool:
        return fn.module == "sdviz.pipeline"

    def collapsed(fn: Function) -> bool:
        return fn.module != "sdviz.pipeline" and fn.name != "__init__" and not fn.name.startswith("_")

    with single_thread(), LineTracer(function_index(), rec, expand, collapsed, _is_quiet, proxy=_stand_in_proxy):
        pipe.generate(prompts, **kwargs)
    what = {"txt2img": "text-to-image", "img2img": f"image-to-image (strength {STRENGTH})", "inpaint": "inpainting"}
    rec.description = f"{what[mode]}, {BATCH} prompts, DDPM, {STEPS} steps, {cfg.name} at {size}x{size}"
    return rec


@lru_cache(maxsize=4)
def pipeline_recording_all(name: str) -> Recording:
    """The three pipeline modes merged: every branch of `generate` that a user can reach with these inputs."""
    rec = Recording("", BATCH)
    for mode in PIPELINE_MODES:
        rec.merge(pipeline_recording(name, mode), same_objects=True)
    cfg = get_config(name)
    rec.description = (
        f"text-to-image, image-to-image and inpainting (strength {STRENGTH}); {BATCH} prompts, DDPM, {STEPS} steps; "
        f"{cfg.name} at {cfg.image_size}x{cfg.image_size}; networks on the meta device"
    )
    return rec


@lru_cache(maxsize=4)
def networks_recording(name: str) -> Recording:
    """The four network passes merged: how the shared building blocks (ResNet block, attention, ...) are used."""
    rec = Recording("", BATCH)
    for part in NETWORK_PARTS:
        rec.merge(network_recording(name, part), same_objects=False)
    cfg = get_config(name)
    rec.description = (
        f"one pass through each network (text encoder, VAE encoder, VAE decoder, UNet), {cfg.name} configuration, "
        "meta device"
    )
    return rec

"""The real runs that the flowcharts are drawn from, each recorded by `LineTracer`.

No weights and (almost) no arithmetic are needed to learn every shape of Stable Diffusion 1.5 at 512x512:

- The networks run on PyTorch's `meta` device inside the shared shape probe (`sdviz.shapes.probe`), with the line
  tracer on: one pass gives the shapes of every statement (the sheets) and of every module (the diagrams).
- The samplers run on the CPU for real: their tensors are (B, 4, 64, 64) latents, tiny.
- The pipeline runs for real on the CPU, with the three networks replaced by stand-ins that hand back zeros of the
  shape the real network gives (asked of the probe, once per input shape). Its tokenizer, guidance arithmetic,
  sampler loop and image conversion all run as they do in a real generation.

Runs are cached per configuration, since several charts share them.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache
from types import FrameType

import torch
from PIL import Image

from sdviz.config import get_config
from sdviz.flowchart.source import Function, model_modules, sampler_modules
from sdviz.flowchart.tracer import FunctionIndex, LineTracer, Recording
from sdviz.shapes import Call, Probe, meta_network, probe, shape_of

# Images per traced run, printed as B (and the guided UNet batch as 2B). 3 rather than 1 or 2 so that no other
# leading dimension is mistaken for the batch: a single image is (1, ...), a guided pair (2, ...).
BATCH = 3
STEPS = 50  # sampler steps of the traced runs, SD's usual number
STRENGTH = 0.8  # image-to-image and inpainting runs
NETWORK_PARTS = ("text-encoder", "vae-encoder", "vae-decoder", "unet")
PIPELINE_MODES = ("txt2img", "img2img", "inpaint")


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


@lru_cache(maxsize=16)
def network_run(name: str, part: str) -> tuple[Recording, Probe]:
    """One pass through a network on the meta device ("text-encoder", "vae-encoder", "vae-decoder", "unet"): the
    line tracer's recording and the shape probe's notes."""
    if part not in NETWORK_PARTS:
        raise ValueError(f"unknown network part {part!r}; known: {', '.join(NETWORK_PARTS)}")
    cfg = get_config(name)
    b, size, lat, length = BATCH, cfg.image_size, cfg.latent_size, cfg.clip.max_length
    meta = torch.device("meta")
    if part == "text-encoder":
        net, method, args = cfg.clip, "forward", (torch.zeros(b, length, dtype=torch.long, device=meta),)
        what = f"ids (B, {length})"
    elif part == "vae-encoder":
        net, method, args = cfg.vae, "encode", (torch.empty(b, cfg.vae.in_channels, size, size, device=meta),)
        what = f"a {size}x{size} image"
    elif part == "vae-decoder":
        net, method, args = cfg.vae, "decode", (torch.empty(b, cfg.vae.latent_channels, lat, lat, device=meta),)
        what = f"{lat}x{lat} latents"
    else:
        x = torch.empty(b, cfg.unet.in_channels, lat, lat, device=meta)
        t = torch.zeros(b, dtype=torch.long, device=meta)
        net, method, args = cfg.unet, "forward", (x, t, torch.empty(b, length, cfg.unet.context_dim, device=meta))
        what = f"{lat}x{lat} latents, t, context"
    rec = Recording(f"one pass, {what}, {cfg.name} configuration, meta device", BATCH)
    models = lambda fn: fn.module.startswith("sdviz.models.") and fn.name != "__init__"  # noqa: E731
    with single_thread():
        p = probe(net, *args, method=method, within=LineTracer(function_index(), rec, expand=models))
    return rec, p


@lru_cache(maxsize=4)
def networks_recording(name: str) -> Recording:
    """The four network passes merged: how the shared building blocks (ResNet block, attention, ...) are used."""
    rec = Recording("", BATCH)
    for part in NETWORK_PARTS:
        rec.merge(network_run(name, part)[0], same_objects=False)
    rec.description = f"one pass through each network (text encoder, VAE encoder, VAE decoder, UNet), {name}, meta"
    return rec


@lru_cache(maxsize=4)
def sampler_recording(name: str) -> Recording:
    """Every sampler driven through a whole text-to-image loop (and one image-to-image start), on the CPU."""
    from sdviz.samplers import SAMPLERS, get_sampler

    cfg = get_config(name)
    shape = (BATCH, cfg.unet.in_channels, cfg.latent_size, cfg.latent_size)
    rec = Recording(f"{STEPS} steps of each sampler on zero latents {shape}, CPU", BATCH)
    samplers = {n: get_sampler(n, cfg.schedule) for n in SAMPLERS}  # built outside the trace: __init__ is not drawn
    expand = lambda fn: fn.module.startswith("sdviz.samplers.") and fn.name != "__init__"  # noqa: E731
    with single_thread(), torch.no_grad(), LineTracer(function_index(), rec, expand=expand):
        for sampler in samplers.values():
            g = [torch.Generator().manual_seed(i) for i in range(BATCH)]
            sampler.set_timesteps(STEPS)
            x = torch.zeros(shape)
            for t in sampler.timesteps:
                eps = torch.zeros_like(sampler.scale_model_input(x, t))
                x = sampler.step(eps, t, x, generator=g).prev_sample
            sampler.predict_x0(eps, t, x)
            sampler.set_timesteps(STEPS, strength=STRENGTH)
            sampler.add_noise(torch.zeros(shape), torch.zeros(shape), sampler.timesteps[0])
    return rec


# -- the pipeline, with stand-in networks ---------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _meta_output(cfg, method: str, inputs: tuple) -> object:
    """The output shape(s) of a network's method for inputs given as (shape, dtype) pairs, from the probe."""
    args = [torch.empty(shape, dtype=dtype, device="meta") for shape, dtype in inputs]
    return shape_of(probe(cfg, *args, method=method).output)


class StandIn(torch.nn.Module):
    """Takes a network's place in the pipeline: returns zeros of the shape the real network would return, on the
    CPU, and logs the call's shapes. The pipeline's own code runs unchanged around it."""

    def __init__(self, cfg, log: dict[str, list[Call]]):
        super().__init__()
        self.config, self.log = cfg, log
        self.network_class = type(meta_network(cfg))

    def forward(self, *args):
        return self.run("forward", args)

    def encode(self, x):
        return self.run("encode", (x,))

    def decode(self, z):
        return self.run("decode", (z,))

    def run(self, method: str, args: tuple):
        out = _meta_output(self.config, method, tuple((tuple(a.shape), a.dtype) for a in args))
        self.log.setdefault(f"{self.network_class.__name__}.{method}", []).append(Call(shape_of(args), out))
        if isinstance(out[0], tuple):  # several tensors: the VAE encoder's mean and log-variance
            return tuple(torch.zeros(o) for o in out)
        return torch.zeros(out)


_STAND_IN = {StandIn.forward.__code__: "forward", StandIn.encode.__code__: "encode", StandIn.decode.__code__: "decode"}


def _stand_in_proxy(frame: FrameType) -> Function | None:
    """The network function a stand-in's method stands for (so that the call is drawn to the real one)."""
    method = _STAND_IN.get(frame.f_code)
    if method is None:
        return None
    cls = frame.f_locals["self"].network_class
    return function_index().by_key.get(f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}.{method}")


@lru_cache(maxsize=8)
def pipeline_run(name: str, mode: str) -> tuple[Recording, dict[str, list[Call]]]:
    """`StableDiffusion.generate` run for real on the CPU, with stand-in networks ("txt2img", "img2img",
    "inpaint"): the line tracer's recording and the networks' calls by "Class.method"."""
    from sdviz.pipeline import StableDiffusion
    from sdviz.weights import Models

    if mode not in PIPELINE_MODES:
        raise ValueError(f"unknown pipeline mode {mode!r}; known: {', '.join(PIPELINE_MODES)}")
    cfg = get_config(name)
    size = cfg.image_size
    log: dict[str, list[Call]] = {}
    pipe = StableDiffusion(Models(cfg, StandIn(cfg.clip, log), StandIn(cfg.vae, log), StandIn(cfg.unet, log)))
    pipe.batch_invariant = False  # one network call for the whole batch, as on a GPU: the shapes of the paper
    kwargs = dict(steps=STEPS, seed=0, progress=False, sampler="ddpm")
    if mode != "txt2img":
        kwargs.update(image=Image.new("RGB", (size, size), (128, 128, 128)), strength=STRENGTH)
    if mode == "inpaint":
        kwargs["mask"] = Image.new("L", (size, size), 0)
        kwargs["mask"].paste(255, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    what = {"txt2img": "text-to-image", "img2img": f"image-to-image (strength {STRENGTH})", "inpaint": "inpainting"}
    rec = Recording(f"{what[mode]}, {BATCH} prompts, DDPM, {STEPS} steps, {cfg.name} at {size}x{size}", BATCH)
    expand = lambda fn: fn.module == "sdviz.pipeline"  # noqa: E731
    collapsed = lambda fn: fn.module != "sdviz.pipeline" and fn.name != "__init__" and not fn.name.startswith("_")  # noqa: E731
    tracer = LineTracer(function_index(), rec, expand, collapsed, proxy=_stand_in_proxy)
    with single_thread(), tracer:
        pipe.generate([f"prompt {i}" for i in range(BATCH)], **kwargs)
    return rec, log


@lru_cache(maxsize=4)
def pipeline_recording_all(name: str) -> Recording:
    """The three pipeline modes merged: every branch of `generate` that a user can reach with these inputs."""
    rec = Recording("", BATCH)
    for mode in PIPELINE_MODES:
        rec.merge(pipeline_run(name, mode)[0], same_objects=True)
    cfg = get_config(name)
    rec.description = (
        f"text-to-image, image-to-image and inpainting (strength {STRENGTH}); {BATCH} prompts, DDPM, {STEPS} steps; "
        f"{cfg.name} at {cfg.image_size}x{cfg.image_size}; networks on the meta device"
    )
    return rec

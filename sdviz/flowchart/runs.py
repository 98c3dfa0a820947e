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

import warnings
from contextlib import contextmanager
from functools import cache, partialmethod
from types import FrameType

import torch
from PIL import Image

from sdviz.config import get_config
from sdviz.flowchart.source import Function, modules_in
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


@cache
def function_index() -> FunctionIndex:
    return FunctionIndex([*modules_in("models"), *modules_in("samplers"), "sdviz.pipeline", "sdviz.tokenizer"])


@cache
def network_run(name: str, part: str) -> tuple[Recording, Probe]:
    """One pass through a network (one of NETWORK_PARTS) on the meta device: the recording and the probe's notes."""
    cfg, b = get_config(name), BATCH
    size, lat, length = cfg.image_size, cfg.latent_size, cfg.clip.max_length
    empty = lambda *shape, dtype=torch.float32: torch.zeros(shape, dtype=dtype, device="meta")  # noqa: E731
    x, t = empty(b, cfg.unet.in_channels, lat, lat), empty(b, dtype=torch.long)
    context = empty(b, length, cfg.unet.context_dim)
    net, method, args, what = {
        "text-encoder": (cfg.clip, "forward", [empty(b, length, dtype=torch.long)], f"ids (B, {length})"),
        "vae-encoder": (cfg.vae, "encode", [empty(b, cfg.vae.in_channels, size, size)], f"a {size}x{size} image"),
        "vae-decoder": (cfg.vae, "decode", [empty(b, cfg.vae.latent_channels, lat, lat)], f"{lat}x{lat} latents"),
        "unet": (cfg.unet, "forward", [x, t, context], f"{lat}x{lat} latents, t, context"),
    }[part]
    rec = Recording(f"one pass, {what}, {cfg.name} configuration, meta device", BATCH)
    tracer = LineTracer(function_index(), rec, expand=lambda fn: fn.module.startswith("sdviz.models."))
    with single_thread():
        return rec, probe(net, *args, method=method, within=tracer)


# -- the pipeline, with stand-in networks ---------------------------------------------------------------------------


@cache
def _output_shape(cfg, method: str, inputs: tuple) -> object:
    """The output shape(s) of a network's method for inputs given as (shape, dtype) pairs, from the probe."""
    return shape_of(probe(cfg, *[torch.zeros(s, dtype=d, device="meta") for s, d in inputs], method=method).output)


class StandIn(torch.nn.Module):
    """Takes a network's place in the pipeline: returns zeros of the shape the real network would return, on the
    CPU, and logs the call's shapes. The pipeline's own code runs unchanged around it."""

    def __init__(self, cfg, log: dict[str, list[Call]]):
        super().__init__()
        self.config, self.log, self.network_class = cfg, log, type(meta_network(cfg))

    def run(self, method: str, *args):
        out = _output_shape(self.config, method, tuple((tuple(a.shape), a.dtype) for a in args))
        self.log.setdefault(f"{self.network_class.__name__}.{method}", []).append(Call(shape_of(args), out))
        return tuple(map(torch.zeros, out)) if isinstance(out[0], tuple) else torch.zeros(out)  # (mean, logvar)

    forward, encode, decode = partialmethod(run, "forward"), partialmethod(run, "encode"), partialmethod(run, "decode")


def _stand_in_proxy(frame: FrameType) -> Function | None:
    """The network function a stand-in's `run` stands for (so that the call is drawn to the real one)."""
    if frame.f_code is not StandIn.run.__code__:
        return None
    cls, method = frame.f_locals["self"].network_class, frame.f_locals["method"]
    return function_index().by_key.get(f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}.{method}")


@cache
def pipeline_run(name: str, mode: str) -> tuple[Recording, dict[str, list[Call]]]:
    """`StableDiffusion.generate` run for real on the CPU with stand-in networks, in a mode of PIPELINE_MODES: the
    tracer's recording and the networks' calls by "Class.method"."""
    from sdviz.pipeline import StableDiffusion
    from sdviz.weights import Models

    cfg, log = get_config(name), {}
    size = cfg.image_size
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
    ours = lambda fn: fn.module == "sdviz.pipeline"  # noqa: E731
    with single_thread(), warnings.catch_warnings(), LineTracer(function_index(), rec, ours, _stand_in_proxy):
        warnings.simplefilter("ignore")  # e.g. the embedded model's: "no word it was trained on"
        pipe.generate([f"prompt {i}" for i in range(BATCH)], **kwargs)
    return rec, log


@cache
def recording(name: str, sheet: str) -> Recording:
    """The traced run a repository sheet draws: a network's pass, every sampler driven through a whole text-to-image
    loop (and one image-to-image start) on the CPU, or one recording of several runs: the three pipeline modes
    ("pipeline": every branch of `generate` a user can reach with these inputs) or the four network passes ("blocks":
    how the shared building blocks are used)."""
    if sheet in NETWORK_PARTS:
        return network_run(name, sheet)[0]
    cfg, pipeline = get_config(name), sheet == "pipeline"
    if sheet == "sampler":
        from sdviz.samplers import SAMPLERS, get_sampler

        shape = (BATCH, cfg.unet.in_channels, cfg.latent_size, cfg.latent_size)
        rec = Recording(f"{STEPS} steps of each sampler on zero latents {shape}, CPU", BATCH)
        samplers = [get_sampler(n, cfg.schedule) for n in SAMPLERS]  # built outside the trace: __init__ is not drawn
        expand = lambda fn: fn.module.startswith("sdviz.samplers.") and fn.name != "__init__"  # noqa: E731
        with single_thread(), torch.no_grad(), LineTracer(function_index(), rec, expand):
            for sampler in samplers:
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
    what = (f"text-to-image, image-to-image and inpainting (strength {STRENGTH}); {BATCH} prompts, DDPM, {STEPS} steps"
            if pipeline else "one pass through each network (text encoder, VAE encoder, VAE decoder, UNet)")
    rec = Recording(f"{what}; {cfg.name} at {cfg.image_size}x{cfg.image_size}; networks on the meta device", BATCH)
    run, items = (pipeline_run, PIPELINE_MODES) if pipeline else (network_run, NETWORK_PARTS)
    for item in items:  # each pipeline run builds one pipeline: their object counts do not add up
        rec.merge(run(name, item)[0], same_objects=pipeline)
    return rec

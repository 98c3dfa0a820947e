"""The generation pipeline: text-to-image, image-to-image and inpainting, with classifier-free guidance.

    pipe = load_pipeline()         # the embedded model; or load_pipeline("v1-5-pruned-emaonly.safetensors")
    result = pipe.generate("a red circle on the left", seed=1)
    result.images[0].save("circle.png")

The loop, as in the seed's architecture pictures:

    prompt ──tokenizer──> ids (B, 77) ──CLIP──> context (B, 77, 768)
    seed ──> noise latents (B, 4, H/8, W/8)            [img2img: image ──VAE encoder──> latents ──add_noise(t_start)]
    for t in sampler.timesteps:
        UNet([latents; latents], t, [context_uncond; context_cond]) ──> eps_uncond, eps_cond
        eps = eps_uncond + cfg_scale * (eps_cond - eps_uncond)            (Ho & Salimans 2022, eq. 6)
        latents = sampler.step(eps, t, latents)      [inpainting: re-impose the known region, noised to the next t]
    latents ──VAE decoder──> image (B, 3, H, W)

Randomness: image i of a call with `seed=s` draws all its noise from its own generator seeded with s + i (or with
`seed[i]` for a list), always on the CPU, so a seed gives the same picture whatever the batch. On the CPU the
networks also run image by image (`batch_invariant`): BLAS kernels choose their summation order by matrix size, so a
batch of 3 can differ from a batch of 1 in the last bit; run alone, each picture is bit-identical at any batch position.
That promise is the CPU's: on a GPU the whole batch runs in one call (`batch_invariant` is False there, for speed), and
a seed gives the same picture at any batch position only up to rounding (`benchmarks/gpu.py` measures how close). Set
`pipe.batch_invariant = True` to run image by image on a GPU too.

Compiled networks (`pipe.unet.compile()` or `pipe.unet = torch.compile(pipe.unet)`): hook names do not change, and
while anything listens at a hook point (a trace, `sdviz.hooks`, an edit) `generate` runs them eagerly (torch.compile's
"force_eager" stance), so the listeners see every call; the compiled graph is used again as soon as nobody listens.

Numbers that overflow (float16) never become a black picture: non-finite latents raise an error naming the step
where they went non-finite, and a float16 VAE that overflows decodes again in float32, with a warning.
"""

from __future__ import annotations

import functools
import numbers
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from sdviz.hooks import hook_points
from sdviz.samplers import Sampler, get_sampler
from sdviz.tokenizer import Tokenizer
from sdviz.weights import Models, load_models

EMBEDDED_MODEL = Path(__file__).parent / "toy" / "model"


@dataclass
class GenerationResult:
    """What `generate` returns: the pictures, the final (scaled) latents and the seed of each picture."""

    images: list[Image.Image]
    latents: Tensor  # (B, 4, h, w) on the CPU, float32, as the UNet saw them (multiplied by the scaling factor)
    seeds: list[int]

    @property
    def image(self) -> Image.Image:
        return self.images[0]


@dataclass
class StepInfo:
    """Everything one denoising step computed; handed to observers (the trace, a live preview) after the step."""

    index: int  # 0 .. len(timesteps) - 1
    t: int  # the timestep
    latents: Tensor  # x_t, (B, 4, h, w)
    eps_cond: Tensor  # the UNet's noise prediction given the prompt
    eps_uncond: Tensor | None  # given the negative/empty prompt (None without guidance)
    eps: Tensor  # the guided prediction the sampler used
    x0: Tensor  # the clean latents this prediction implies (the sampler's `pred_original_sample`)
    next_latents: Tensor  # x_{t-1}, after inpainting's re-imposition


@dataclass
class GenerationInfo:
    """What a generation is about to do; handed to observers before the first step."""

    prompts: list[str]
    negative_prompts: list[str]
    height: int
    width: int
    timesteps: list[int]
    cfg_scale: float
    sampler: str
    seeds: list[int]
    # The UNet calls of one step, in order: the images (batch rows) each call holds. With guidance a call's UNet
    # batch is [uncond rows; cond rows] of those images. On the CPU one call per image (see `batch_invariant`).
    unet_calls: list[slice] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def guided(self) -> bool:
        return self.cfg_scale > 1.0


class Observer(Protocol):
    """What the pipeline tells an observer (`pipe.observe(obs)`; `sdviz.trace` is one): three events per generation.

    `on_start` before the first step, `on_step` after every step with what it computed, `on_end` with the result.
    """

    def on_start(self, pipe: StableDiffusion, info: GenerationInfo) -> None: ...

    def on_step(self, pipe: StableDiffusion, step: StepInfo) -> None: ...

    def on_end(self, pipe: StableDiffusion, result: GenerationResult) -> None: ...


def _integer(name: str, value: Any, minimum: int) -> int:
    """Any integral number (int, numpy integer; not bool) >= minimum, as a Python int; else a one-line error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _strings(name: str, value: Any) -> list[str]:
    """A string or a non-empty sequence of strings -> a list; anything else is a one-line TypeError."""
    values = [value] if isinstance(value, str) else value
    if isinstance(values, Sequence) and values and all(isinstance(v, str) for v in values):
        return list(values)
    raise TypeError(f"{name} must be a string or a non-empty list of strings, got {value!r}")


def _alias(name: str, value: Any, default: Any, alias: str, alias_value: Any) -> Any:
    """diffusers' parameter names are accepted beside sdviz's: `guidance_scale` for `cfg_scale`, ..."""
    if alias_value is None:
        return value
    if value != default:
        raise ValueError(f"{name} and {alias} are the same setting; give one")
    return alias_value


def _check_size(name: str, value: int, multiple: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % multiple:
        raise ValueError(f"{name} must be a positive multiple of {multiple} pixels, got {value!r}")
    return value


def image_to_tensor(image: Image.Image | Tensor, height: int, width: int) -> Tensor:
    """A PIL image (any mode: L, RGBA, P are converted to RGB) -> (1, 3, height, width) in [-1, 1]."""
    if isinstance(image, Tensor):
        x = image if image.ndim == 4 else image[None]
        if x.shape[-2:] != (height, width):
            raise ValueError(f"image is {x.shape[-1]}x{x.shape[-2]}, expected {width}x{height}")
        return x.float()
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL image or a tensor, got {type(image).__name__}")
    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())  # (H, W, 3) in [0, 255]
    return (x / 127.5 - 1.0).permute(2, 0, 1)[None]  # (H, W, 3) -> (1, 3, H, W) in [-1, 1]


def tensor_to_images(x: Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> B PIL images. Non-finite values raise (clamped, a NaN would be a black pixel)."""
    if not torch.isfinite(x).all():
        raise FloatingPointError("the decoded pictures hold non-finite values (NaN or inf); they would be black pixels")
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (B, 3, H, W) in [0, 255]
    return [Image.fromarray(a.permute(1, 2, 0).cpu().numpy()) for a in x]  # (3, H, W) -> (H, W, 3)


def mask_to_tensor(mask: Image.Image | Tensor, height: int, width: int, factor: int) -> Tensor:
    """Inpainting mask, white = repaint, black = keep, the image's size -> (1, 1, H/f, W/f) in {0, 1}."""
    if isinstance(mask, Image.Image):
        if mask.size != (width, height):
            raise ValueError(f"mask is {mask.size[0]}x{mask.size[1]} but the image is {width}x{height}")
        m = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) / 255.0)[None, None]  # (1, 1, H, W)
    elif isinstance(mask, Tensor):
        m = mask.float()
        m = m.reshape(1, 1, *m.shape[-2:]) if m.numel() == m.shape[-1] * m.shape[-2] else m
        if m.shape[-2:] != (height, width):
            raise ValueError(f"mask is {m.shape[-1]}x{m.shape[-2]} but the image is {width}x{height}")
    else:
        raise TypeError(f"mask must be a PIL image or a tensor, got {type(mask).__name__}")
    m = torch.nn.functional.max_pool2d(m, factor)  # (1, 1, H, W) -> (1, 1, H/f, W/f): repaint a latent if any pixel
    return (m > 0.5).float()


def _eager_while_listening(generate: Callable) -> Callable:
    """Run `generate` with torch.compile's "force_eager" stance while anyone listens at one of the pipeline's hook
    points. Compiled, a network would have to recompile around every listening hook point (each a graph break that
    dynamo also meets inside loops, where it gives up on whole frames); eager, the listeners see exactly what an
    uncompiled pipeline computes, at once. Without listeners the compiled graph runs."""

    @functools.wraps(generate)
    def wrapper(self: StableDiffusion, *args: Any, **kwargs: Any) -> GenerationResult:
        set_stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
        if set_stance is None or not any(p.listeners for p in hook_points(self).values()):
            return generate(self, *args, **kwargs)
        with set_stance("force_eager"):
            return generate(self, *args, **kwargs)

    return wrapper


def world_vocabulary() -> dict[str, tuple[str, ...]]:
    """What a model trained on sdviz's shapes world (the embedded model) was taught, by kind of word: six colours,
    three shapes, two sizes, five positions of one object and four relations between two (`sdviz/toy/world.py`)."""
    from sdviz.toy import world

    return {
        "colours": world.COLOURS,
        "shapes": world.SHAPES,
        "sizes": world.SIZES,
        "positions": tuple(world.POSITION_PHRASES.values()),
        "relations": tuple(world.RELATION_PHRASES.values()),
    }


def _unknown_prompts(prompts: Sequence[str], vocabulary: dict[str, tuple[str, ...]]) -> list[str]:
    """The prompts that hold words but not one word that names something of the world (a colour, a shape, a size, a
    position or a relation; "a", "the", "of" name nothing). The empty prompt is the unconditional one: never listed."""
    import re

    from sdviz.toy.world import _SYNONYMS

    glue = {"a", "an", "the", "on", "at", "in", "to", "of", "and"}
    known = {w for phrases in vocabulary.values() for p in phrases for w in p.split()} - glue | set(_SYNONYMS)
    words = [set(re.findall(r"[a-z]+", p.lower())) for p in prompts]
    return [p for p, ws in zip(prompts, words, strict=True) if ws and not ws & known]


class StableDiffusion:
    """Tokenizer, text encoder, VAE and UNet, and the loop that turns a prompt into a picture."""

    def __init__(
        self,
        models: Models,
        tokenizer: Tokenizer | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.config = models.config
        self.device, self.dtype = torch.device(device), dtype
        self.tokenizer = tokenizer or Tokenizer(max_length=models.config.clip.max_length)
        self.text_encoder = models.text_encoder.to(self.device, dtype).eval().requires_grad_(False)
        self.vae = models.vae.to(self.device, dtype).eval().requires_grad_(False)
        self.unet = models.unet.to(self.device, dtype).eval().requires_grad_(False)
        self.observers: list[Observer] = []  # told on_start / on_step / on_end (see `observe`)
        # explicit edits of x_{t-1} after each step, fn(index, t, latents) -> latents (sdviz.editing's local blend)
        self.latent_editors: list[Callable[[int, int, Tensor], Tensor]] = []
        # run the networks one image at a time, so that results do not depend on the batch (see module docstring)
        self.batch_invariant = self.device.type == "cpu"
        # the words it was trained on, for a model of sdviz's shapes world (the embedded model); None for SD weights
        self.vocabulary: dict[str, tuple[str, ...]] | None = world_vocabulary() if self.config.name == "toy" else None

    @contextmanager
    def observe(self, observer: Observer) -> Iterator[Observer]:
        """Tell `observer` about every generation inside the `with` block; it is removed on exit, also on error."""
        self.observers.append(observer)
        try:
            yield observer
        finally:
            self.observers[:] = [o for o in self.observers if o is not observer]

    @property
    def models(self) -> Models:
        return Models(self.config, self.text_encoder, self.vae, self.unet)

    def modules(self) -> dict[str, torch.nn.Module]:
        """The three networks by name: the roots of every hook point's path (`unet.down_blocks.0...`)."""
        return {"text_encoder": self.text_encoder, "vae": self.vae, "unet": self.unet}

    # -- the pieces ------------------------------------------------------------------------------------------------

    def _chunks(self, b: int) -> list[slice]:
        """The batch rows each network call takes: one image at a time when batch_invariant, else all at once."""
        return [slice(i, i + 1) for i in range(b)] if self.batch_invariant else [slice(0, b)]

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Tensor:
        """Prompts -> context (B, 77, 768)."""
        ids = self.tokenizer(prompts).to(self.device)  # (B, 77)
        return torch.cat([self.text_encoder(ids[c]) for c in self._chunks(len(prompts))])  # (B, 77) -> (B, 77, 768)

    @torch.no_grad()
    def encode_images(self, x: Tensor, generators: list[torch.Generator] | None = None) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> scaled latents (B, 4, H/8, W/8), sampled from the posterior if
        generators are given (one per image; a single image is then sampled once per generator), else its mean."""
        x = x.to(self.device, self.dtype)
        moments = [self.vae.encode(x[c]) for c in self._chunks(len(x))]  # (B, 3, H, W) -> 2 x (B, 4, h, w)
        mean, logvar = torch.cat([m for m, _ in moments]), torch.cat([lv for _, lv in moments])
        if generators is not None:
            if len(mean) == 1:  # one picture for a whole batch: encoded once, sampled once per image
                mean, logvar = mean.expand(len(generators), -1, -1, -1), logvar.expand(len(generators), -1, -1, -1)
            eps = torch.cat([torch.randn(m.shape, generator=g) for m, g in zip(mean.split(1), generators, strict=True)])
            mean = mean + torch.exp(0.5 * logvar) * eps.to(mean)  # reparameterisation: z = mu + sigma * eps
        return mean * self.config.vae.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: Tensor) -> Tensor:
        """Scaled latents (B, 4, h, w) -> images (B, 3, H, W), roughly in [-1, 1]."""
        z = latents.to(self.device, self.dtype) / self.config.vae.scaling_factor
        return torch.cat([self.vae.decode(z[c]) for c in self._chunks(len(z))])  # (B, 4, h, w) -> (B, 3, H, W)

    @torch.no_grad()
    def decode_checked(self, latents: Tensor, finite: Sequence[Tensor] = (), timesteps: Sequence[int] = ()) -> Tensor:
        """`decode_latents` that never hands on a NaN or an inf (which would become a black picture).

        Non-finite latents raise FloatingPointError naming the first step whose x_{t-1} was non-finite (`finite`:
        one 0-dim bool tensor per step). A half-precision VAE that overflows on finite latents (a known SD problem at
        high resolution) decodes again in float32, with a warning; non-finite pixels after that raise too.
        """
        if not torch.isfinite(latents).all():
            bad = [i for i, ok in enumerate(torch.stack(list(finite)).tolist()) if not ok] if len(finite) else []
            where = f"at step {bad[0]} of {len(finite)} (t={timesteps[bad[0]]})" if bad else "before the first step"
            half = self.dtype == torch.float16
            hint = "; float16 overflows: try dtype=torch.bfloat16 or torch.float32" if half else ""
            raise FloatingPointError(f"the latents became non-finite (NaN or inf) {where}, nothing to decode{hint}")
        images = self.decode_latents(latents)  # (B, 4, h, w) -> (B, 3, H, W)
        if not torch.isfinite(images).all() and self.dtype != torch.float32:
            what = f"the {self.dtype} VAE decoder overflowed (non-finite pixels); decoded again in float32"
            warnings.warn(what, RuntimeWarning, stacklevel=2)
            z = latents.to(self.device, torch.float32) / self.config.vae.scaling_factor
            self.vae.float()  # in place and back: float16 -> float32 -> float16 changes no weight
            try:
                images = torch.cat([self.vae.decode(z[c]) for c in self._chunks(len(z))])
            finally:
                self.vae.to(self.dtype)
        if not torch.isfinite(images).all():
            raise FloatingPointError("the VAE decoder gave non-finite pixels (NaN or inf) from finite latents")
        return images

    # -- the loop --------------------------------------------------------------------------------------------------

    @torch.no_grad()
    @_eager_while_listening
    def generate(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = "",
        image: Image.Image | Tensor | None = None,
        mask: Image.Image | Tensor | None = None,
        strength: float = 0.8,
        cfg_scale: float = 7.5,
        steps: int = 50,
        sampler: str | Sampler = "ddpm",
        seed: int | Sequence[int] | None = None,
        height: int | None = None,
        width: int | None = None,
        latents: Tensor | None = None,
        eta: float | None = None,
        use_karras_sigmas: bool | None = None,
        progress: bool = True,
        on_step: Callable[[StepInfo], None] | None = None,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
    ) -> GenerationResult:
        """Generate images.

        Args:
            prompt: one prompt or a list (one image each).
            negative_prompt: what guidance steers away from ("" or None = unconditional); one, or one per prompt.
            image: start from this picture (image-to-image); any PIL mode is converted to RGB and resized.
            mask: with `image`, inpaint: white pixels are repainted, black ones kept. Same size as `image`.
            strength: image-to-image only: how much noise to add to the image, 0 (none) .. 1 (all of it).
            cfg_scale: classifier-free guidance weight; 1 or less disables guidance (one UNet pass per step).
                diffusers calls it `guidance_scale`, which is accepted too.
            steps: number of denoising steps (before `strength` shortens them); diffusers' `num_inference_steps`.
            sampler: "ddpm", "ddim", "euler", "euler_a", "pndm", "dpmpp_2m", "unipc", or a Sampler instance.
            seed: an int (image i uses seed + i), a list of ints, or None for a random one. Any integral number
                (a numpy integer too) is accepted.
            height, width: in pixels, multiples of 8; default the model's image size (or the input image's).
            latents: initial noise (B, 4, h, w) to use instead of drawing it from the seed (text-to-image).
            eta: DDIM's stochasticity (0 = deterministic); only the "ddim" sampler has it.
            use_karras_sigmas: Karras et al.'s noise levels; an option of "dpmpp_2m" and "unipc" only.
            progress: show a tqdm progress bar.
            on_step: called with each step's `StepInfo` after the step (e.g. a live preview).
        """
        cfg_scale = _alias("cfg_scale", cfg_scale, 7.5, "guidance_scale", guidance_scale)
        steps = _alias("steps", steps, 50, "num_inference_steps", num_inference_steps)
        prompts = _strings("prompt", prompt)
        unknown = _unknown_prompts(prompts, self.vocabulary) if self.vocabulary else []
        if unknown:  # the embedded model draws shapes whatever it is asked: say so once per call
            words = "; ".join(f"{kind}: {', '.join(ws)}" for kind, ws in self.vocabulary.items())
            what = f"{', '.join(map(repr, unknown))}: no word the embedded model was trained on; it knows {words}"
            warnings.warn(what, UserWarning, stacklevel=4)  # 4: the caller, past no_grad and the compile wrapper
        negative_prompt = "" if negative_prompt is None else negative_prompt
        negatives = _strings("negative_prompt", negative_prompt)
        negatives = negatives * len(prompts) if isinstance(negative_prompt, str) else negatives
        if len(negatives) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(negatives)} negative prompts; give one or one each")
        b = len(prompts)
        factor = self.config.vae.downsampling_factor
        default = self.config.image_size
        if image is not None and isinstance(image, Image.Image) and height is None and width is None:
            width, height = image.size
        height = _check_size("height", default if height is None else height, max(8, factor))
        width = _check_size("width", default if width is None else width, max(8, factor))
        steps = _integer("steps", steps, minimum=1)
        if image is not None and not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be between 0 and 1, got {strength!r}")
        if mask is not None and image is None:
            raise ValueError("a mask needs an image to inpaint (image=...)")
        options = {k: v for k, v in {"eta": eta, "use_karras_sigmas": use_karras_sigmas}.items() if v is not None}
        if isinstance(sampler, str):  # options given only; one the sampler does not take is an error
            sampler = get_sampler(sampler, self.config.schedule, **options)
        elif options:
            raise ValueError(f"{', '.join(options)}: options of the sampler; pass them when you build the instance")
        seeds = self._seeds(seed, b)
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        x_image = image_to_tensor(image, height, width) if image is not None else None  # (1, 3, H, W)
        m = mask_to_tensor(mask, height, width, factor).to(self.device, self.dtype) if mask is not None else None
        sampler.set_timesteps(steps, strength if image is not None else 1.0)
        timesteps = [int(t) for t in sampler.timesteps]

        # 1. the prompt -> context
        guided = cfg_scale > 1.0
        context = self.encode_prompts(prompts)  # (B, 77, 768)
        uncond = self.encode_prompts(negatives) if guided else None  # (B, 77, 768)

        # 2. the starting latents
        shape = (b, self.config.unet.in_channels, height // factor, width // factor)
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        known = None
        if x_image is not None:  # image-to-image: encode (a posterior sample, first draw of each image's generator)
            known = self.encode_images(x_image, generators)  # (1, 3, H, W) -> (B, 4, h, w)
        noise = self._randn(shape, generators) if latents is None else latents.to(self.device, self.dtype)
        if known is None:
            x = noise * sampler.init_noise_sigma  # text-to-image: pure noise
        else:
            x = sampler.add_noise(known, noise, timesteps[0]) if timesteps else known  # q(x_t | x_0), DDPM eq. 4

        calls = self._chunks(b)
        info = GenerationInfo(prompts, negatives, height, width, timesteps, cfg_scale, sampler.name, seeds, calls)
        observers = list(self.observers)
        for obs in observers:
            obs.on_start(self, info)
        finite: list[Tensor] = []  # per step: are x_{t-1}'s values all finite? (on the device; read at the end only)

        # 3. the denoising loop
        for i, t in enumerate(tqdm(timesteps, desc="denoising", disable=not progress, leave=False)):
            x_in = sampler.scale_model_input(x, t)  # Euler: x / sqrt(sigma^2 + 1)
            eps_cond, eps_uncond = self.predict_noise(x_in, t, context, uncond)
            # classifier-free guidance (Ho & Salimans 2022, eq. 6): move away from the unconditional prediction
            eps = eps_uncond + cfg_scale * (eps_cond - eps_uncond) if guided else eps_cond
            out = sampler.step(eps, t, x, generator=generators)  # x_t -> x_{t-1}; noise from each image's seed
            x_next = out.prev_sample
            if m is not None:
                # inpainting: outside the mask, replace the model's latents by the original's, noised to the next t
                nxt = timesteps[i + 1] if i + 1 < len(timesteps) else None
                original = known if nxt is None else sampler.add_noise(known, noise, nxt)
                x_next = m * x_next + (1 - m) * original
            for edit in self.latent_editors:  # only explicit edits (sdviz.editing); observers see their result
                x_next = edit(i, t, x_next)  # (B, 4, h, w) -> (B, 4, h, w)
            if observers or on_step is not None:
                step = StepInfo(i, t, x, eps_cond, eps_uncond, eps, out.pred_original_sample, x_next)
                for obs in observers:
                    obs.on_step(self, step)
                if on_step is not None:
                    on_step(step)
            finite.append(torch.isfinite(x_next).all())
            x = x_next

        # 4. latents -> pixels
        images = tensor_to_images(self.decode_checked(x, finite, timesteps))
        result = GenerationResult(images, x.float().cpu(), seeds)
        for obs in observers:
            obs.on_end(self, result)
        return result

    @torch.no_grad()
    def predict_noise(self, x: Tensor, t: int, context: Tensor, uncond: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The UNet's noise predictions for latents x (B, 4, h, w) at timestep t: (eps_cond, eps_uncond).

        With guidance (uncond given), each call runs [uncond; cond] as one batch: (2b, 4, h, w).
        """
        cond_rows, uncond_rows = [], []
        for rows in self._chunks(len(x)):
            xc, ctx = x[rows], context[rows]  # (b, 4, h, w), (b, 77, 768)
            if uncond is not None:
                xc, ctx = torch.cat([xc, xc]), torch.cat([uncond[rows], ctx])  # (2b, 4, h, w), (2b, 77, 768)
            out = self.unet(xc, torch.full((len(xc),), t, device=self.device), ctx)  # (2b or b, 4, h, w)
            if uncond is not None:
                eps_u, out = out.chunk(2)  # (2b, 4, h, w) -> 2 x (b, 4, h, w)
                uncond_rows.append(eps_u)
            cond_rows.append(out)
        return torch.cat(cond_rows), (torch.cat(uncond_rows) if uncond is not None else None)

    # -- randomness ------------------------------------------------------------------------------------------------

    @staticmethod
    def _seeds(seed: int | Sequence[int] | None, b: int) -> list[int]:
        if seed is None:
            base = random.SystemRandom().randrange(2**31)
            return [base + i for i in range(b)]
        if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
            return [_integer("seed", seed, minimum=0) + i for i in range(b)]
        if isinstance(seed, (str, bytes)) or not isinstance(seed, Sequence | np.ndarray):
            raise TypeError(f"seed must be an integer, a list of integers or None, got {seed!r}")
        seeds = [_integer("seed", s, minimum=0) for s in seed]
        if len(seeds) != b:
            raise ValueError(f"{b} prompts but {len(seeds)} seeds")
        return seeds

    def _randn(self, shape: tuple[int, ...], generators: list[torch.Generator]) -> Tensor:
        """Standard normal noise, one row per image from that image's own CPU generator."""
        rows = [torch.randn((1, *shape[1:]), generator=g) for g in generators]  # B x (1, 4, h, w)
        return torch.cat(rows).to(self.device, self.dtype)  # (B, 4, h, w)


def load_pipeline(
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    config=None,
) -> StableDiffusion:
    """A ready pipeline from real SD 1.x weights (CompVis file, diffusers folder, sdviz folder) or, with no
    argument, from the small model sdviz ships.

    The networks are built on the meta device and each tensor is converted to `dtype` and moved to `device` as it
    is read (see `load_models`): loading SD 1.5 in float16 from a float32 file peaks at about 2.7 GB of host
    memory (the model's 2.1 GB, Python and torch), not the 6.8 GB of a float32 build followed by a cast
    (`benchmarks/load_memory.py`)."""
    if weights is None:
        if not (EMBEDDED_MODEL / "sdviz.json").is_file():
            raise FileNotFoundError("no embedded model yet: pass the path of Stable Diffusion 1.x weights")
        weights = EMBEDDED_MODEL
    models = load_models(weights, config=config, device=device, dtype=dtype)
    return StableDiffusion(models, device=device, dtype=dtype)

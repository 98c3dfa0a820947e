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
import re
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm  # the text bar, in notebooks too: a closed notebook bar's widget is gone after a page reload

from sdviz.events import GenerationInfo, GenerationResult, Scope, StepInfo, UNetCall, unet_call
from sdviz.hooks import hook_points
from sdviz.inputs import (  # noqa: F401  (image_to_tensor, tensor_to_images, mask_to_tensor: re-exported)
    alias,
    check_size,
    fit_picture,
    image_to_tensor,
    integer,
    mask_to_tensor,
    real,
    strings,
    tensor_to_images,
)
from sdviz.samplers import Sampler, get_sampler
from sdviz.tokenizer import Tokenizer
from sdviz.weights import Models, load_models

EMBEDDED_MODEL = Path(__file__).parent / "toy" / "model"


class Observer(Protocol):
    """What the pipeline tells an observer (`pipe.observe(obs)`; `sdviz.trace` is one): three events per generation.

    `on_start` before the first step, `on_step` after every step with what it computed, `on_end` with the result.
    """

    def on_start(self, pipe: StableDiffusion, info: GenerationInfo) -> None: ...

    def on_step(self, pipe: StableDiffusion, step: StepInfo) -> None: ...

    def on_end(self, pipe: StableDiffusion, result: GenerationResult) -> None: ...



_STANCE_LOCK = threading.Lock()
_STANCE: dict[str, Any] = {"users": 0, "previous": None}  # generations running eagerly now; torch's stance before


@contextmanager
def _force_eager() -> Iterator[None]:
    """torch.compile's "force_eager" stance while this block runs, shared by every generation that asks for it.

    The stance is process-wide (one setting for every thread). Generations that overlap, on one pipeline or several,
    count themselves in and out: the first sets the stance, the last one out restores what was there before, so a
    thread that finishes last can never leave every compiled model of the process running uncompiled."""
    set_stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
    if set_stance is None:
        yield
        return
    with _STANCE_LOCK:
        if _STANCE["users"] == 0:
            _STANCE["previous"] = set_stance("force_eager")  # sets it now; remembers the stance before
        _STANCE["users"] += 1
    try:
        yield
    finally:
        with _STANCE_LOCK:
            _STANCE["users"] -= 1
            if _STANCE["users"] == 0:
                _STANCE.pop("previous").__exit__(None, None, None)  # back to the stance before the first
                _STANCE["previous"] = None


def _one_at_a_time(generate: Callable) -> Callable:
    """A pipeline runs one generation at a time: a second caller (another thread, a widget callback) waits for the
    first to finish. While anyone listens at one of the pipeline's hook points, the networks run eagerly
    (torch.compile's "force_eager" stance, see `_force_eager`): compiled, a network would have to recompile around
    every listening hook point; eager, the listeners see exactly what an uncompiled pipeline computes."""

    @functools.wraps(generate)
    def wrapper(self: StableDiffusion, *args: Any, **kwargs: Any) -> GenerationResult:
        with self._lock:
            if not any(p.listeners for p in hook_points(self).values()):
                return generate(self, *args, **kwargs)
            with _force_eager():
                return generate(self, *args, **kwargs)

    return wrapper


GLUE = frozenset({"a", "an", "the", "on", "at", "in", "to", "of", "and"})  # words that name nothing


def unknown_prompts(prompts: Sequence[str], vocabulary: dict[str, tuple[str, ...]]) -> list[str]:
    """The prompts that hold words but not one word of a model's vocabulary (`pipe.vocabulary`: phrases by kind;
    "a", "the", "of" name nothing). The empty prompt is the unconditional one: never listed."""
    known = {w for phrases in vocabulary.values() for p in phrases for w in p.lower().split()} - GLUE
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
        # who is told about generations (see `observe`), and explicit edits of x_{t-1} after each step,
        # fn(index, t, latents) -> latents (sdviz.editing's local blend); each heard only inside its own scope
        self._observers: list[tuple[Observer, Scope | None]] = []
        self._latent_editors: list[tuple[Callable[[int, int, Tensor], Tensor], Scope | None]] = []
        self._lock = threading.RLock()  # one generation at a time (see `_one_at_a_time`)
        # run the networks one image at a time, so that results do not depend on the batch (see module docstring)
        self.batch_invariant = self.device.type == "cpu"
        # the words it was taught, by kind, when its folder says (the embedded model's sdviz.json); None for SD weights
        self.vocabulary: dict[str, tuple[str, ...]] | None = models.vocabulary
        # its linear latent -> RGB preview map, when its folder ships one (else fitted when a trace asks for it)
        self.latent_rgb: tuple[Tensor, Tensor] | None = models.latent_rgb

    @contextmanager
    def observe(self, observer: Observer) -> Iterator[Observer]:
        """Tell `observer` about every generation started inside the `with` block, in this thread or task; it is
        removed on exit, also on error."""
        scope = Scope()
        scope.open()
        self.add_observer(observer, scope)
        try:
            yield observer
        finally:
            scope.close()
            self.remove_observer(observer)

    def add_observer(self, observer: Observer, scope: Scope | None = None) -> None:
        """Tell `observer` about the generations started where `scope` is open (None: every generation)."""
        self._observers.append((observer, scope))

    def remove_observer(self, observer: Observer) -> None:
        self._observers[:] = [(o, s) for o, s in self._observers if o is not observer]

    def add_latent_editor(self, fn: Callable[[int, int, Tensor], Tensor], scope: Scope | None = None) -> None:
        """Let `fn(index, t, x_next) -> x_next` change the latents after every step of the generations started where
        `scope` is open (an explicit edit: `sdviz.editing`'s local blend)."""
        self._latent_editors.append((fn, scope))

    def remove_latent_editor(self, fn: Callable[[int, int, Tensor], Tensor]) -> None:
        self._latent_editors[:] = [(f, s) for f, s in self._latent_editors if f != fn]

    @property
    def observers(self) -> list[Observer]:
        """Every observer attached now (each hears only the generations of its own scope)."""
        return [o for o, _ in self._observers]

    @property
    def latent_editors(self) -> list[Callable[[int, int, Tensor], Tensor]]:
        return [f for f, _ in self._latent_editors]

    @property
    def models(self) -> Models:
        return Models(self.config, self.text_encoder, self.vae, self.unet, self.vocabulary, self.latent_rgb)

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
    @_one_at_a_time
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
        null_embeddings: Tensor | None = None,
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
            height: in pixels, a multiple of 8; default the model's image size (or the input image's; an input
                image of another size is resized, with its mask, and a warning says so).
            width: likewise.
            latents: initial noise (B, 4, h, w) to use instead of drawing it from the seed (text-to-image).
            eta: DDIM's stochasticity (0 = deterministic); only the "ddim" sampler has it.
            use_karras_sigmas: Karras et al.'s noise levels; an option of "dpmpp_2m" and "unipc" only.
            progress: show a tqdm progress bar.
            on_step: called with each step's `StepInfo` after the step (e.g. a live preview).
            null_embeddings: (steps, 77, D), step i's unconditional context instead of negative_prompt's, for every
                image (null-text inversion's optimised embeddings, `sdviz.inversion`); needs cfg_scale > 1.
        """
        cfg_scale = alias("cfg_scale", cfg_scale, 7.5, "guidance_scale", guidance_scale)
        steps = alias("steps", steps, 50, "num_inference_steps", num_inference_steps)
        prompts = strings("prompt", prompt)
        unknown = unknown_prompts(prompts, self.vocabulary) if self.vocabulary else []
        if unknown:  # a model of a small world (the embedded one) draws it whatever it is asked: say so once per call
            words = "; ".join(f"{kind}: {', '.join(ws)}" for kind, ws in self.vocabulary.items())
            what = f"{', '.join(map(repr, unknown))}: no word this model was trained on; it knows {words}"
            warnings.warn(what, UserWarning, stacklevel=4)  # 4: the caller, past no_grad and the compile wrapper
        negative_prompt = "" if negative_prompt is None else negative_prompt
        negatives = strings("negative_prompt", negative_prompt)
        negatives = negatives * len(prompts) if isinstance(negative_prompt, str) else negatives
        if len(negatives) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(negatives)} negative prompts; give one or one each")
        b = len(prompts)
        cfg_scale = real("cfg_scale", cfg_scale)  # NaN would silently give the unguided picture
        factor = self.config.vae.downsampling_factor
        default = self.config.image_size
        source = ""
        if isinstance(image, Image.Image):
            image, mask, height, width, source = fit_picture(image, mask, height, width)
        height = check_size("height", default if height is None else height, max(8, factor), source)
        width = check_size("width", default if width is None else width, max(8, factor), source)
        steps = integer("steps", steps, minimum=1)
        if image is not None:
            strength = real("strength", strength, 0.0, 1.0)
        if mask is not None and image is None:
            raise ValueError("a mask needs an image to inpaint (image=...)")
        if isinstance(image, Image.Image) and image.size != (width, height):  # resize both, and say so
            what = f"the image{' and its mask' if isinstance(mask, Image.Image) else ''}"
            warnings.warn(f"{what} ({image.size[0]}x{image.size[1]}) resized to {width}x{height}", stacklevel=4)
            image = image.resize((width, height), Image.Resampling.LANCZOS)
            if isinstance(mask, Image.Image):
                mask = mask.resize((width, height), Image.Resampling.NEAREST)
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
        want = (len(timesteps), *context.shape[1:])  # null_embeddings: one (77, D) context per step
        if null_embeddings is not None and (not guided or tuple(null_embeddings.shape) != want):
            got = f"{tuple(null_embeddings.shape)} at cfg_scale {cfg_scale}"
            raise ValueError(f"null_embeddings must be {want} with cfg_scale > 1, got {got}")

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
        latent_hw = (height // factor, width // factor)
        info = GenerationInfo(
            prompts, negatives, height, width, timesteps, cfg_scale, sampler.name, seeds, calls, latent_hw
        )
        observers = [o for o, scope in self._observers if scope is None or scope.visible()]
        editors = [f for f, scope in self._latent_editors if scope is None or scope.visible()]
        for obs in observers:
            obs.on_start(self, info)
        finite: list[Tensor] = []  # per step: are x_{t-1}'s values all finite? (on the device; read at the end only)

        # 3. the denoising loop
        for i, t in enumerate(tqdm(timesteps, desc="denoising", disable=not progress)):  # text: no widget to lose
            x_in = sampler.scale_model_input(x, t)  # Euler: x / sqrt(sigma^2 + 1)
            u = uncond if null_embeddings is None else null_embeddings[i].to(uncond).expand(b, -1, -1)  # (B, 77, D)
            eps_cond, eps_uncond = self.predict_noise(x_in, t, context, u, info=info, step=i)
            # classifier-free guidance (Ho & Salimans 2022, eq. 6): move away from the unconditional prediction
            eps = eps_uncond + cfg_scale * (eps_cond - eps_uncond) if guided else eps_cond
            out = sampler.step(eps, t, x, generator=generators)  # x_t -> x_{t-1}; noise from each image's seed
            x_next = out.prev_sample
            if m is not None:
                # inpainting: outside the mask, replace the model's latents by the original's, noised to the next t
                nxt = timesteps[i + 1] if i + 1 < len(timesteps) else None
                original = known if nxt is None else sampler.add_noise(known, noise, nxt)
                x_next = m * x_next + (1 - m) * original
            for edit in editors:  # only explicit edits (sdviz.editing); observers see their result
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
    def predict_noise(
        self,
        x: Tensor,
        t: int,
        context: Tensor,
        uncond: Tensor | None,
        info: GenerationInfo | None = None,
        step: int = 0,
    ) -> tuple[Tensor, Tensor | None]:
        """The UNet's noise predictions for latents x (B, 4, h, w) at timestep t: (eps_cond, eps_uncond).

        With guidance (uncond given), each call runs [uncond; cond] as one batch: (2b, 4, h, w). Inside a generation
        (`info`, `step`), every UNet call is announced as a `UNetCall` (`sdviz.events.current_call()`), so that a
        hook listener knows which step, images and rows the tensor it is handed belongs to.
        """
        cond_rows, uncond_rows = [], []
        for k, rows in enumerate(self._chunks(len(x))):
            xc, ctx = x[rows], context[rows]  # (b, 4, h, w), (b, 77, 768)
            if uncond is not None:
                xc, ctx = torch.cat([xc, xc]), torch.cat([uncond[rows], ctx])  # (2b, 4, h, w), (2b, 77, 768)
            timestep = torch.full((len(xc),), t, device=self.device)
            if info is None:
                out = self.unet(xc, timestep, ctx)  # (2b or b, 4, h, w)
            else:
                with unet_call(UNetCall(info, step, int(t), k, rows)):
                    out = self.unet(xc, timestep, ctx)  # (2b or b, 4, h, w)
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
            return [integer("seed", seed, minimum=0) + i for i in range(b)]
        if isinstance(seed, (str, bytes)) or not isinstance(seed, Sequence | np.ndarray):
            raise TypeError(f"seed must be an integer, a list of integers or None, got {seed!r}")
        seeds = [integer("seed", s, minimum=0) for s in seed]
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

"""`invert(pipe, picture, caption, method=...)`: the start noise (and null embeddings) that redraw an existing picture.

    inv = invert(pipe, "circle.png", "a red circle on the left", method="null_text")
    inv.redraw(pipe).image                  # the picture again, drawn by the model (cfg 5, 50 DDIM steps)
    pipe.generate(**inv.generate_kwargs(pipe))   # the same, spelled out: latents=, null_embeddings=, ...
    inv.save("circle.inversion.pt"); Inversion.load("circle.inversion.pt")

Three methods, in the order of the papers (the walks themselves are in `walk.py`):

    "ddim"             DDIM inversion at cfg 1 (Song et al. 2021): the start noise z_T only. Redrawn at cfg 1 it gives
                       the picture back; redrawn with guidance it drifts (the redraw's cfg is `cfg_scale`).
    "null_text"        null-text inversion (Mokady et al. 2023): z_T and one optimised null embedding per step, so that
                       the guided redraw at `cfg_scale` retraces the cfg-1 walk.
    "negative_prompt"  negative-prompt inversion (Miyake et al. 2023): z_T, and the caption's own embedding as the null
                       one: eps_u + w (eps_c - eps_u) = eps_c whatever w, so the guided redraw *is* the cfg-1 redraw.
                       No optimisation: it costs one cfg-1 walk. Edits then use the source caption as negative prompt.

An `Inversion` belongs to the weights and the size it was made with: `weights_id` is a fingerprint of the networks'
parameters; handing it to another pipeline or asking for another size is a one-line ValueError.
"""

from __future__ import annotations

import hashlib
import io
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from sdviz.inversion.walk import INNER_STEPS, ddim_invert, null_text_optimise
from sdviz.pipeline import StableDiffusion, image_to_tensor

METHODS = ("ddim", "null_text", "negative_prompt")
FORMAT = 1  # of a saved inversion


def weights_id(pipe: StableDiffusion) -> str:
    """A fingerprint of the pipeline's weights: the config's name and, per parameter, its name, shape and first 16
    values, hashed (a few milliseconds even for SD 1.5; any retrained or other model differs)."""
    h = hashlib.sha1(pipe.config.name.encode())
    for root, module in pipe.modules().items():
        for name, p in module.state_dict().items():
            h.update(f"{root}.{name}{tuple(p.shape)}".encode())
            h.update(p.detach().flatten()[:16].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def load_picture(picture: str | Path | Image.Image, height: int, width: int, resize: bool = True) -> Image.Image:
    """The picture to invert as an RGB image of the model's size.

    A path is opened (an empty or unreadable file is a one-line ValueError); any mode (L, LA, RGBA, P, CMYK) is
    converted to RGB, transparency onto black. A picture of another size is resized to height x width (never cropped)
    with a one-line warning, or refused with `resize=False`."""
    if isinstance(picture, str | Path):
        path = Path(picture)
        if not path.is_file():
            raise ValueError(f"picture: no such file {str(path)!r}")
        if path.stat().st_size == 0:
            raise ValueError(f"picture: {str(path)!r} is empty")
        try:
            with Image.open(path) as im:
                im.load()
                picture = im.copy()
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise ValueError(f"picture: {str(path)!r} is not a readable image ({type(e).__name__})") from None
    if not isinstance(picture, Image.Image):
        raise TypeError(f"picture must be a path or a PIL image, got {type(picture).__name__}")
    if picture.mode != "RGB":
        rgba = picture.convert("RGBA")  # palette, grey, CMYK ... with or without transparency
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        picture = Image.alpha_composite(background, rgba).convert("RGB")
    if picture.size != (width, height):
        if not resize:
            raise ValueError(f"picture is {picture.size[0]}x{picture.size[1]}, the model draws {width}x{height}")
        what = f"picture: resized from {picture.size[0]}x{picture.size[1]} to {width}x{height} (the model's size)"
        warnings.warn(what, UserWarning, stacklevel=3)
        picture = picture.resize((width, height), Image.Resampling.LANCZOS)
    return picture


def caption_context(pipe: StableDiffusion, caption: str) -> Tensor:
    """The caption's context (1, 77, D); a caption over the tokenizer's length is warned about and truncated, as in
    `generate`."""
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a string, got {type(caption).__name__}")
    return pipe.encode_prompts([caption])


@dataclass
class Inversion:
    """What redraws a picture: the start latents, the per-step null embeddings (null-text), and the settings."""

    method: str
    prompt: str
    latents: Tensor  # z_T (1, 4, h, w)
    steps: int
    cfg_scale: float  # the redraw's guidance
    height: int
    width: int
    weights_id: str
    null_embeddings: Tensor | None = None  # null-text: (steps, 77, D), noisiest step first
    trajectory: Tensor | None = None  # the cfg-1 walk z*_0 .. z*_T, (steps + 1, 4, h, w)
    losses: list[float] = field(default_factory=list)  # null-text: each step's last loss
    start: str = "caption"  # null-text: where the optimisation started ("caption" or "empty", see walk.py)
    seconds: float = 0.0
    picture: Image.Image | None = None  # the picture that was inverted (RGB, the model's size)

    def check(self, pipe: StableDiffusion, height: int | None = None, width: int | None = None) -> None:
        """One-line ValueError unless this inversion fits `pipe` (its weights) and the size asked for."""
        if weights_id(pipe) != self.weights_id:
            raise ValueError(
                f"inversion: made with other weights (id {self.weights_id}, this pipeline's is {weights_id(pipe)})"
            )
        h, w = height or self.height, width or self.width
        if (h, w) != (self.height, self.width):
            raise ValueError(f"inversion: made at {self.width}x{self.height}, asked for {w}x{h}")

    def generate_kwargs(self, pipe: StableDiffusion, prompts: int = 1, **changes: Any) -> dict[str, Any]:
        """`pipe.generate`'s arguments that redraw the picture (checked against `pipe`); `prompts` > 1 repeats the
        start latents for a batch (prompt-to-prompt: the source and its targets); `changes` override any."""
        self.check(pipe, changes.get("height"), changes.get("width"))
        kwargs: dict[str, Any] = {
            "prompt": self.prompt,
            "latents": self.latents.expand(prompts, -1, -1, -1).clone(),  # (1, 4, h, w) -> (prompts, 4, h, w)
            "steps": self.steps,
            "cfg_scale": self.cfg_scale,
            "sampler": "ddim",
            "height": self.height,
            "width": self.width,
            "seed": [0] * prompts,  # unused (the latents are given): p2p checks that a batch shares one seed
            "progress": False,
        }
        if self.method == "null_text" and self.cfg_scale > 1:
            kwargs["null_embeddings"] = self.null_embeddings
        if self.method == "negative_prompt":
            kwargs["negative_prompt"] = self.prompt  # the caption as the null one (Miyake et al.), for every row
        return {**kwargs, **changes}

    def redraw(self, pipe: StableDiffusion, **changes: Any):
        """Generate from the inversion: the picture again (the `GenerationResult`)."""
        return pipe.generate(**self.generate_kwargs(pipe, **changes))

    def settings(self) -> dict[str, Any]:
        """The plain settings (no tensors), as a record keeps them."""
        keep = ("method", "prompt", "steps", "cfg_scale", "height", "width", "weights_id", "seconds", "start")
        return {k: getattr(self, k) for k in keep}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        state = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "picture"}
        if self.picture is not None:
            buffer = io.BytesIO()
            self.picture.save(buffer, format="PNG")
            state["picture"] = buffer.getvalue()
        torch.save({"format": FORMAT, **state}, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Inversion:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.pop("format", None) != FORMAT:
            raise ValueError(f"{str(path)!r} is not an sdviz inversion of format {FORMAT}")
        png = state.pop("picture", None)
        return cls(**state, picture=Image.open(io.BytesIO(png)).convert("RGB") if png is not None else None)


def invert(
    pipe: StableDiffusion,
    picture: str | Path | Image.Image,
    prompt: str,
    method: str = "null_text",
    steps: int = 50,
    cfg_scale: float = 5.0,
    inner_steps: int = INNER_STEPS,
    start: str = "caption",
    resize: bool = True,
    progress: bool = True,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> Inversion:
    """Invert `picture` (a path or a PIL image) described by `prompt` with one of METHODS (see the module docstring);
    `cfg_scale` is the guidance the redraw will use (the DDIM walk itself always runs at cfg 1). null-text's `start`:
    "caption" (default) or "empty", the paper's (see `walk.py`: on the embedded model it does not get far).
    `on_progress(phase, done, steps)` is called after each step of each phase ("walk", then "null_text"), for a
    progress display of one's own (the studio's)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if start not in ("caption", "empty"):
        raise ValueError(f"start must be 'caption' or 'empty', got {start!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 999:
        raise ValueError(f"steps must be an integer from 1 to 999, got {steps!r}")
    height = width = pipe.config.image_size
    image = load_picture(picture, height, width, resize)
    began = time.perf_counter()
    context = caption_context(pipe, prompt)  # (1, 77, D)
    x = image_to_tensor(image, height, width)  # (1, 3, H, W) in [-1, 1]
    z0 = pipe.encode_images(x)  # (1, 3, H, W) -> (1, 4, h, w): the posterior's mean, as the paper's code
    walked = None if on_progress is None else (lambda k: on_progress("walk", k + 1, steps))
    trajectory = ddim_invert(pipe, z0, context, steps, progress=progress, on_step=walked)  # [z*_0 .. z*_T]
    null_embeddings, losses = None, []
    if method == "null_text" and cfg_scale > 1:
        null = context if start == "caption" else pipe.encode_prompts([""])  # (1, 77, D): where Alg. 1 starts
        optimised = None if on_progress is None else (lambda i, _loss: on_progress("null_text", i + 1, steps))
        null_embeddings, losses = null_text_optimise(
            pipe, trajectory, context, null, cfg_scale, inner_steps, progress=progress, on_step=optimised
        )
    return Inversion(
        method=method,
        prompt=prompt,
        latents=trajectory[-1].detach().cpu(),
        steps=steps,
        cfg_scale=float(cfg_scale),
        height=height,
        width=width,
        weights_id=weights_id(pipe),
        null_embeddings=None if null_embeddings is None else null_embeddings.cpu(),
        trajectory=torch.cat(trajectory).cpu(),  # (steps + 1, 4, h, w)
        losses=losses,
        start=start,
        seconds=time.perf_counter() - began,
        picture=image,
    )


def psnr(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR (dB) of two 8-bit pictures (over the pixels of `mask`, (H, W) bool, when given)."""
    x = np.asarray(a, dtype=np.float64) / 255.0
    y = np.asarray(b, dtype=np.float64) / 255.0
    d = (x - y) ** 2  # (H, W, 3)
    mse = float(d[mask].mean() if mask is not None else d.mean())
    return float("inf") if mse == 0 else 10.0 * float(np.log10(1.0 / mse))

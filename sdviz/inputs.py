"""What `generate` takes, checked and converted: numbers, prompts, sizes, pictures and masks.

Every argument a user types is checked here, with a one-line error that names it (`cfg_scale must be a finite
number, got nan`), and pictures move between PIL and tensors here:

    image_to_tensor   a PIL picture (any mode) -> (1, 3, H, W) in [-1, 1]
    tensor_to_images  (B, 3, H, W) in [-1, 1] -> PIL pictures (a non-finite value raises: it would be a black pixel)
    mask_to_tensor    an inpainting mask, white = repaint -> (1, 1, H/f, W/f) in {0, 1}
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def integer(name: str, value: Any, minimum: int) -> int:
    """Any integral number (int, numpy integer; not bool) >= minimum, as a Python int; else a one-line error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def strings(name: str, value: Any) -> list[str]:
    """A string or a non-empty sequence of strings -> a list; anything else is a one-line TypeError."""
    values = [value] if isinstance(value, str) else value
    if isinstance(values, Sequence) and values and all(isinstance(v, str) for v in values):
        return list(values)
    raise TypeError(f"{name} must be a string or a non-empty list of strings, got {value!r}")


def alias(name: str, value: Any, default: Any, alias: str, alias_value: Any) -> Any:
    """diffusers' parameter names are accepted beside sdviz's: `guidance_scale` for `cfg_scale`, ..."""
    if alias_value is None:
        return value
    if value != default:
        raise ValueError(f"{name} and {alias} are the same setting; give one")
    return alias_value


def check_size(name: str, value: Any, multiple: int, source: str = "") -> int:
    """A picture side: any integral number (a numpy integer too) that is a positive multiple of `multiple`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0 or value % multiple:
        raise ValueError(f"{name} must be a positive multiple of {multiple} pixels, got {value!r}{source}")
    return int(value)


def real(name: str, value: Any, lo: float | None = None, hi: float | None = None) -> float:
    """A finite real number (not bool, not a string) within [lo, hi]; else a one-line error naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not np.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{name} must be between {lo:g} and {hi:g}, got {value!r}")
    return float(value)


def fit_picture(
    image: Image.Image, mask: Any, height: int | None, width: int | None
) -> tuple[Image.Image, Any, int | None, int | None, str]:
    """An input picture (and its mask) brought to the size asked for, saying so: both are resized or neither.

    Returns (image, mask, height, width, where the size came from). With no height and width given, the picture's
    own size is used (checked afterwards, with a note that it came from the image)."""
    if height is None and width is None:
        w, h = image.size
        note = f" (the input image's size is {w}x{h}: pass height= and width= to resize it)"
        return image, mask, h, w, note
    if isinstance(mask, Image.Image) and mask.size != image.size:
        raise ValueError(f"mask is {mask.size[0]}x{mask.size[1]} but the image is {image.size[0]}x{image.size[1]}")
    return image, mask, height, width, ""


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

"""The `sdviz` command (also `python -m sdviz`).

    sdviz demo                                   a picture from the embedded model, written to out/demo.png
    sdviz generate "a prompt" --out picture.png  [--negative ...] [--image in.png --strength 0.6] [--mask m.png]
                                                 [--sampler ddim] [--karras] [--steps 30] [--cfg 7.5] [--seed 1]
                                                 [--size 512x512] [--weights PATH]
    sdviz flowchart [--config sd15|toy] [--out flowcharts/] [--format svg,png,dot]
    sdviz figures [--out readme-images/]
    sdviz animate "a prompt" --out denoise.gif  [--word circle] [--trace trace.pt] [--fps 8]
    sdviz train ...  /  sdviz evaluate ...  /  sdviz validate-attention ...

Errors in what the user typed are one line on stderr and exit status 2; nothing half-written is left on disk.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

DEMO_PROMPT = "a large red circle above a small blue square"

# subcommands implemented in their own modules, each with a `main(argv) -> int`
DELEGATED = {
    "flowchart": ("sdviz.flowchart", "draw the repository flowchart and the architecture diagrams"),
    "figures": ("sdviz.viz.figures", "draw the README figures with sdviz's own code"),
    "animate": ("sdviz.viz.animate", "animate a generation (the denoising, or a word's attention) as GIF, WebP, MP4"),
    "export": ("sdviz.tracing.export_cli", "a saved trace as one self-contained web page: player and explorer"),
    "train": ("sdviz.toy.train", "train the embedded model on the captioned-shapes world"),
    "evaluate": ("sdviz.toy.evaluate", "measure how well the embedded model follows its prompts"),
    "validate-attention": ("sdviz.toy.validate_attention", "compare attention maps with ground-truth object masks"),
    "invert": ("sdviz.inversion_cli:main_invert", "invert your own picture: the noise (and null text) that redraw it"),
    "explain": ("sdviz.inversion_cli:main_explain", "where each word looks, on your own picture (inverted, traced)"),
    "sae": ("sdviz.concepts.cli", "sparse autoencoders on UNet activations: collect, train, grade, check causally"),
    "causal": ("sdviz.toy.causal_tracing", "causal tracing on the toy world, graded by the judge (--quick: few pairs)"),
}


class UsageError(Exception):
    """Bad input on the command line: reported as one line, exit status 2."""


def parse_size(text: str) -> tuple[int, int]:
    """'512x768' -> (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--size must look like 512x512 (width x height), got {text!r}") from None
    return w, h


def pick_device(name: str) -> str:
    import torch

    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def open_image(path: str, what: str):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()
        return image
    except FileNotFoundError:
        raise UsageError(f"{what} {path}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise UsageError(f"{what} {path}: not a readable image ({e})") from None


def save_atomically(image, out: Path) -> None:
    """Write to a temporary file beside `out`, then rename: an interrupted run never leaves half a PNG."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    try:
        image.save(tmp, format=FORMATS[out.suffix.lower()])
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from sdviz.pipeline import load_pipeline

    out = Path(args.out)
    if out.suffix.lower() not in FORMATS:
        raise UsageError(f"--out {out}: unknown image format; use one of {', '.join(FORMATS)}")
    image = open_image(args.image, "--image") if args.image else None
    mask = open_image(args.mask, "--mask") if args.mask else None
    if mask is not None and image is None:
        raise UsageError("--mask needs --image (the picture to inpaint)")
    width, height = parse_size(args.size) if args.size else (None, None)
    if image is not None and args.size is None:
        width, height = image.size
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    device = pick_device(args.device)
    if dtype != torch.float32 and device == "cpu":
        raise UsageError(f"--dtype {args.dtype} needs a GPU; on the CPU use float32")
    try:
        pipe = load_pipeline(args.weights, device=device, dtype=dtype)
    except FileNotFoundError as e:
        raise UsageError(f"{e} (--weights PATH)") from None
    result = pipe.generate(
        args.prompt,
        negative_prompt=args.negative,
        image=image,
        mask=mask,
        strength=args.strength,
        cfg_scale=args.cfg,
        steps=args.steps,
        sampler=args.sampler,
        use_karras_sigmas=True if getattr(args, "karras", False) else None,  # `demo` has no --karras
        seed=args.seed,
        height=height,
        width=width,
        progress=not args.quiet,
    )
    save_atomically(result.image, out)
    print(f"wrote {out} ({result.image.size[0]}x{result.image.size[1]}, seed {result.seeds[0]})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from sdviz.pipeline import EMBEDDED_MODEL

    if not (EMBEDDED_MODEL / "sdviz.json").is_file():
        print("no embedded model yet: run `sdviz generate PROMPT --weights PATH` with Stable Diffusion 1.x weights")
        return 0
    args.prompt, args.negative, args.image, args.mask, args.strength = DEMO_PROMPT, "", None, None, 0.8
    args.cfg, args.size, args.weights, args.device, args.dtype = 5.0, None, None, "cpu", "float32"
    print(f'generating "{args.prompt}" with the embedded model')
    return cmd_generate(args)


def build_parser() -> argparse.ArgumentParser:
    from sdviz.samplers import SAMPLERS

    parser = argparse.ArgumentParser(prog="sdviz", description="Stable Diffusion 1.x from scratch, instrumented.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser("generate", help="text-to-image, image-to-image or inpainting")
    g.add_argument("prompt")
    g.add_argument("--out", default="out.png", help="image file to write (default out.png)")
    g.add_argument("--negative", default="", help="negative prompt")
    g.add_argument("--image", help="start from this picture (image-to-image)")
    g.add_argument("--strength", type=float, default=0.8, help="image-to-image: how much noise to add, 0..1")
    g.add_argument("--mask", help="inpainting mask, same size as --image: white = repaint")
    g.add_argument("--sampler", default="ddpm", help=f"one of {', '.join(SAMPLERS)} (default ddpm)")
    g.add_argument("--karras", action="store_true", help="Karras et al.'s noise levels (dpmpp_2m, unipc)")
    g.add_argument("--steps", type=int, default=50)
    g.add_argument("--cfg", type=float, default=7.5, help="classifier-free guidance scale")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--size", help="WIDTHxHEIGHT in pixels, multiples of 8 (default: the model's)")
    g.add_argument("--weights", help="SD 1.x weights: .safetensors/.ckpt file, diffusers or sdviz folder")
    g.add_argument("--device", default="auto", help="cpu, cuda, mps or auto")
    g.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=cmd_generate)

    d = sub.add_parser("demo", help="a picture from the embedded model")
    d.add_argument("--out", default="out/demo.png")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--steps", type=int, default=50)
    d.add_argument("--sampler", default="ddim")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)

    for name, (_, help_text) in DELEGATED.items():
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    from sdviz.weights import WeightsError

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:
        module, _, function = DELEGATED[argv[0]][0].partition(":")  # "module" (its main) or "module:function"
        return getattr(importlib.import_module(module), function or "main")(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, WeightsError, ValueError, FloatingPointError) as e:  # one line, no traceback
        print(f"sdviz {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`sdviz invert` and `sdviz explain`: your own picture on the command line (`sdviz.inversion` does the work).

    sdviz invert picture.png "a red circle on the left" --out picture.inv.pt [--method null_text] [--steps 50]
    sdviz explain picture.png "a red circle on the left" --word circle --out map.png [--method negative_prompt]
    sdviz explain picture.inv.pt --word circle --out map.png           # from a saved inversion
    sdviz invert picture.png "a red circle on the left" --edit "a blue circle on the left" --out edited.png

`invert` writes the inversion (a .pt file that `Inversion.load` reads) and, beside it, the redraw as PNG with its
PSNR against the picture; with --edit it writes the prompt-to-prompt edit of the picture instead. `explain` inverts
(or loads) and draws the picture with the cross-attention map of each --word over it. Bad input (no such file, an
unreadable picture, weights that do not match a saved inversion) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

METHODS = ("null_text", "negative_prompt", "ddim")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="null_text", choices=METHODS, help="inversion method (default null_text)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--cfg", type=float, default=5.0, help="the redraw's guidance (default 5)")
    p.add_argument("--weights", default=None, help="SD 1.x weights (default: the embedded model)")
    p.add_argument("--no-resize", action="store_true", help="refuse a picture of another size instead of resizing")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _inversion(a: argparse.Namespace) -> tuple[Any, Any]:
    """The pipeline and the inversion the arguments ask for: a saved one (.pt), or a picture inverted now."""
    import torch

    from sdviz.inversion import Inversion, invert
    from sdviz.pipeline import load_pipeline

    if a.threads:
        torch.set_num_threads(a.threads)
    pipe = load_pipeline(a.weights)
    if Path(a.picture).suffix == ".pt":
        inv = Inversion.load(a.picture)
        inv.check(pipe)
        return pipe, inv
    if a.caption is None:
        raise ValueError("give the picture's caption: sdviz invert picture.png \"a red circle on the left\"")
    return pipe, invert(pipe, a.picture, a.caption, a.method, a.steps, a.cfg, resize=not a.no_resize,
                        progress=not a.quiet)  # fmt: skip


def main_invert(argv: list[str] | None = None) -> int:
    """`sdviz invert PICTURE CAPTION --out FILE.pt [--edit TARGET --out FILE.png]`"""
    p = argparse.ArgumentParser(prog="sdviz invert", description="Invert a picture: the noise that redraws it.")
    p.add_argument("picture", help="a PNG/JPEG picture (or a saved inversion .pt)")
    p.add_argument("caption", nargs="?", default=None, help="what the picture shows, in the model's words")
    p.add_argument("--out", required=True, help="the inversion (.pt), or with --edit the edited picture (.png)")
    p.add_argument("--edit", default=None, help="a target caption: write the prompt-to-prompt edit of the picture")
    p.add_argument("--blend", default=None, help="--edit: local blend words 'source,target' (e.g. red,blue)")
    _common(p)
    a = p.parse_args(argv)
    try:
        from sdviz.inversion import edit_inverted, psnr

        pipe, inv = _inversion(a)
        out = Path(a.out)
        if a.edit is not None:
            blend = a.blend.split(",") if a.blend else None
            result = edit_inverted(pipe, inv, a.edit, blend=blend)
            result.images[1].save(out)
            print(f"{out}: {a.edit!r} (the picture: {inv.prompt!r}, {inv.method}, {inv.seconds:.1f} s)")
            return 0
        redraw = inv.redraw(pipe).image
        inv.save(out)
        redraw_path = out.with_name(out.stem + ".redraw.png")
        redraw.save(redraw_path)
        quality = f"PSNR {psnr(inv.picture, redraw):.1f} dB" if inv.picture is not None else ""
        print(f"{out} ({inv.method}, {inv.steps} steps, cfg {inv.cfg_scale:g}, {inv.seconds:.1f} s); "
              f"redraw {redraw_path}: {quality}")  # fmt: skip
    except (ValueError, TypeError, FileNotFoundError, FloatingPointError) as e:
        print(f"sdviz invert: error: {e}", file=sys.stderr)
        return 2
    return 0


def main_explain(argv: list[str] | None = None) -> int:
    """`sdviz explain PICTURE CAPTION --word W [--word W2] --out map.png`"""
    p = argparse.ArgumentParser(prog="sdviz explain", description="Where each word looks, on your own picture.")
    p.add_argument("picture", help="a PNG/JPEG picture (or a saved inversion .pt)")
    p.add_argument("caption", nargs="?", default=None, help="what the picture shows, in the model's words")
    p.add_argument("--word", action="append", default=None, help="a word of the caption (repeat for several)")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--map-method", default="sdviz", help="word-map method: sdviz, daam or best (default sdviz)")
    _common(p)
    a = p.parse_args(argv)
    try:
        from sdviz.inversion import explain
        from sdviz.tracing import aggregate
        from sdviz.viz.attention_figures import attention_overlay
        from sdviz.viz.style import save

        agg = aggregate.get(a.map_method)
        pipe, inv = _inversion(a)
        tr = explain(pipe, inv, **agg.needs())
        for w in a.word or []:
            tr.word_positions(w)  # a word not in the caption: one line listing the caption's words
        fig = attention_overlay(tr, words=a.word, method=agg, scale="panel")
        print(save(fig, Path(a.out)))
    except (ValueError, TypeError, FileNotFoundError, FloatingPointError, KeyError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"sdviz explain: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main_invert())

"""Animations of a traced generation, for slides, READMEs and static notebook renders: GIF, animated WebP, MP4.

    sdviz animate "a red circle above a blue square" --out denoise.gif          # the denoising
    sdviz animate "a red circle above a blue square" --word circle --out circle.webp   # a word's attention
    sdviz animate --trace trace.pt --out denoise.mp4                            # a saved trace (MP4 needs ffmpeg)

    from sdviz.viz.animate import animate_denoising, animate_attention
    animate_denoising(tr, "denoise.gif")           # tr: a trace (sdviz.trace(pipe) around pipe.generate)
    animate_attention(tr, "circle", "circle.webp")  # needs a trace with keep=["step"]

Every frame is drawn from the trace's numbers with numpy and pillow (`sdviz.viz.widgets.frames`): the noisy latent
x_t and the predicted clean picture x₀ through the fitted linear latent -> RGB map, the VAE's decode of x₀ when the
trace holds it (decode=True), and a word's cross-attention at each step beside the final picture, with its objects'
outlines, on one colour scale for every step. The file's format
follows its suffix: .gif and .webp are written by pillow; .mp4 by `ffmpeg` if it is on the PATH (otherwise a
one-line error and nothing written). Files are written atomically and hold no timestamp, so the same trace gives
the same bytes.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from sdviz.viz.style import PROMPT, SEED, SETTINGS, trace_picture
from sdviz.viz.widgets import frames as F

if TYPE_CHECKING:
    from sdviz.pipeline import StableDiffusion
    from sdviz.tracing import Trace

FORMATS = (".gif", ".webp", ".mp4")


class AnimationError(ValueError):
    """A request that cannot be animated (unknown format, no ffmpeg, a trace without what is asked): one line."""


# --------------------------------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------------------------------


def _step_caption(tr: Trace, i: int) -> str:
    return f"step {i} / {len(tr.timesteps) - 1}   t = {tr.timesteps[i]}"


def _same_size(frames: list[np.ndarray]) -> list[np.ndarray]:
    """Frames padded with white at the bottom and right to the largest one's size (an animation's frames must be
    equal; a caption that needs two lines makes its frame taller)."""
    h = max(f.shape[0] for f in frames)
    w = max(f.shape[1] for f in frames)
    out = []
    for f in frames:
        padded = np.full((h, w, 3), 255, np.uint8)
        padded[: f.shape[0], : f.shape[1]] = f
        out.append(padded)
    return out


def denoising_frames(tr: Trace, image: int = 0, size: int = 128, decoded: bool | None = None) -> list[np.ndarray]:
    """One frame per step, then the result: x_t and the predicted x₀ (linear RGB previews) and, when the trace holds
    it (decode=True; `decoded=False` leaves it out), the VAE's decode of x₀, side by side with a caption.
    The last frame shows the final latent (and the last predicted x₀) beside the generated picture."""
    from sdviz.viz.widgets.checks import need_latents

    rec = need_latents(tr, "the denoising animation")
    with_decode = rec.decoded is not None and decoded is not False
    x_t, x0 = rec.preview("x_t", image=image), rec.preview("x0", image=image)  # (S, h, w, 3) each
    picture = trace_picture(tr, image)
    bar = max(18, size // 12)  # caption height: readable at every size
    out = []
    for i in range(len(rec.timesteps)):
        panels = [F.label(F.enlarge(x_t[i], size), "x_t", bar), F.label(F.enlarge(x0[i], size), "predicted x₀", bar)]
        if with_decode:
            pic = rec.decoded[i, image].permute(1, 2, 0).numpy()
            panels.append(F.label(F.enlarge(pic, size), "x₀, VAE decode", bar))
        out.append(F.label(F.hstack(panels), _step_caption(tr, i), height=bar + 2))
    last = [F.label(F.enlarge(rec.preview("final", image=image), size), "final latent", bar)]
    if with_decode:
        last.append(F.label(F.enlarge(x0[-1], size), "last predicted x₀", bar))
    last.append(F.label(F.enlarge(picture, size), "the picture", bar))
    out.append(F.label(F.hstack(last), "done: the VAE decodes the final latent", height=bar + 2))
    return _same_size(out)


def attention_frames(tr: Trace, word: str, image: int = 0, size: int = 128, scale: str = "shared") -> list[np.ndarray]:
    """One frame per recorded step: the picture, and beside it `word`'s cross-attention at that step in
    `style.HEAT` with the outlines of the picture's objects. `scale="shared"` (default) puts every step on one
    colour scale (the lowest to the highest value of any step: a map that forms brightens), "step" each step on its
    own min..max; a colour bar with its end values is under the map. Needs a trace recorded with keep=["step"]."""
    from sdviz.viz.widgets.checks import need_cross_attention
    from sdviz.viz.widgets.maps import AttentionMaps, map_size

    if scale not in ("shared", "step"):
        raise AnimationError(f"scale must be 'shared' or 'step', got {scale!r}")
    need_cross_attention(tr, "the attention animation", per_step=True)
    positions = tr.word_positions(word, image)  # a word not in the prompt: one line listing the prompt's words
    picture = trace_picture(tr, image)
    shown = F.enlarge(picture, size)
    lines = F.outlines(picture, shown.shape[:2])
    maps = AttentionMaps(tr, image, map_size(tr.image_size)).per_step(positions)
    lo = min(float(m.min()) for m in maps.values())
    hi = max(float(m.max()) for m in maps.values())
    bar = max(18, size // 12)
    out = []
    for s, m in maps.items():
        a, b = (lo, hi) if scale == "shared" else (float(m.min()), float(m.max()))
        view = F.label(F.attention(m, a, b, lines), f'"{word}"', bar)
        view = np.concatenate([view, F.colour_strip(a, b, view.shape[1], bar)], 0)
        panels = [F.label(shown, "picture", bar), view]
        what = "one colour scale" if scale == "shared" else "each step on its own scale"
        out.append(F.label(F.hstack(panels), f"{_step_caption(tr, s)}   ({what})", height=bar + 2))
    return _same_size(out)


# --------------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------------


def _durations(n: int, fps: float, hold: float) -> list[int]:
    """Milliseconds per frame: 1/fps each, and `hold` seconds on the last."""
    d = max(20, round(1000 / fps))
    return [d] * (n - 1) + [max(d, round(hold * 1000))]


def encode(frames: Sequence[np.ndarray], fmt: str = "gif", fps: float = 8, hold: float = 1.5) -> bytes:
    """Frames (h, w, 3) uint8 of equal size -> the bytes of an endlessly looping GIF or animated WebP."""
    if not frames:
        raise AnimationError("no frames to animate")
    pictures = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
    buf = io.BytesIO()
    options: dict[str, Any] = {"save_all": True, "append_images": pictures[1:], "loop": 0}
    options["duration"] = _durations(len(pictures), fps, hold)
    if fmt == "gif":
        pictures[0].save(buf, format="GIF", optimize=False, disposal=1, **options)
    elif fmt == "webp":
        pictures[0].save(buf, format="WEBP", quality=85, method=4, **options)
    else:
        raise AnimationError(f"unknown animation format {fmt!r}; use gif or webp (or write a .mp4 file)")
    return buf.getvalue()


def write(frames: Sequence[np.ndarray], out: str | Path, fps: float = 8, hold: float = 1.5) -> Path:
    """Write frames to `out`; the format follows its suffix (.gif, .webp, .mp4). Atomic: a temporary file beside
    `out` is renamed at the end, so an error leaves nothing half-written."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise AnimationError(f"{out}: unknown animation format {out.suffix or '(none)'!r}; use {', '.join(FORMATS)}")
    ffmpeg = shutil.which("ffmpeg") if suffix == ".mp4" else None
    if suffix == ".mp4" and ffmpeg is None:
        raise AnimationError(f"{out}: MP4 needs ffmpeg on the PATH, and there is none; write a .gif or .webp instead")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.partial{out.suffix}")
    try:
        if suffix == ".mp4":
            _write_mp4(ffmpeg, frames, tmp, fps, hold)
        else:
            tmp.write_bytes(encode(frames, suffix[1:], fps, hold))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _write_mp4(ffmpeg: str, frames: Sequence[np.ndarray], out: Path, fps: float, hold: float) -> None:
    """H.264 through ffmpeg (frames piped as raw RGB, padded to even sizes, the last one repeated for `hold` s)."""
    h, w = frames[0].shape[:2]
    frames = list(frames) + [frames[-1]] * max(0, round(hold * fps) - 1)
    cmd = [ffmpeg, "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}"]
    cmd += ["-r", f"{fps:g}", "-i", "-", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2:color=white"]
    cmd += ["-pix_fmt", "yuv420p", "-movflags", "+faststart", "-f", "mp4", str(out)]
    data = b"".join(np.ascontiguousarray(f[..., :3]).tobytes() for f in frames)
    done = subprocess.run(cmd, input=data, capture_output=True, check=False)
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip().splitlines()
        raise AnimationError(f"{out}: ffmpeg failed: {message[-1] if message else done.returncode}")


def animate_denoising(tr: Trace, out: str | Path, image: int = 0, size: int = 128, fps: float = 8, **kw: Any) -> Path:
    """Write the denoising of a traced generation (x_t, predicted x0, its VAE decode if traced) to `out`."""
    return write(denoising_frames(tr, image, size, **kw), out, fps)


def animate_attention(
    tr: Trace, word: str, out: str | Path, image: int = 0, size: int = 128, fps: float = 8, scale: str = "shared"
) -> Path:
    """Write a word's cross-attention over the steps (a trace with keep=["step"]) to `out`."""
    return write(attention_frames(tr, word, image, size, scale), out, fps)


def gif(frames: Sequence[np.ndarray], fps: float = 8) -> bytes:
    """The frames as GIF bytes (what a notebook embeds after a live widget)."""
    return encode(frames, "gif", fps)


# --------------------------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------------------------


def traced_run(
    prompt: str,
    pipe: StableDiffusion | None = None,
    seed: int = 1,
    steps: int = SETTINGS["steps"],
    cfg_scale: float = SETTINGS["cfg_scale"],
    sampler: str = SETTINGS["sampler"],
    decode: bool = True,
    **kw: Any,
) -> Any:
    """Generate `prompt` inside a trace that keeps every step (latents, per-step cross-attention, x0 decodes)."""
    from sdviz.pipeline import load_pipeline
    from sdviz.tracing import trace

    pipe = load_pipeline() if pipe is None else pipe
    with trace(pipe, record=["cross_attention", "latents"], keep=["step"], decode=decode) as tr:
        pipe.generate(prompt, seed=seed, steps=steps, cfg_scale=cfg_scale, sampler=sampler, progress=False, **kw)
    return tr


README_ANIMATION = "denoising.gif"


def readme_animation(
    out_dir: str | Path,
    pipe: StableDiffusion | None = None,
    prompt: str | None = None,
    seed: int | None = None,
    steps: int = SETTINGS["steps"],
) -> Path:
    """The README's animation, `out_dir/denoising.gif`: the denoising of the README figures' prompt and seed (see
    `sdviz.viz.style`; `sdviz figures` calls this), 128 pixels per panel, 10 frames a second."""
    tr = traced_run(prompt or PROMPT, pipe, SEED if seed is None else seed, steps)
    return animate_denoising(tr, Path(out_dir) / README_ANIMATION, size=128, fps=10)


def main(argv: Sequence[str] | None = None) -> int:
    """`sdviz animate ["prompt"] --out denoise.gif [--word W] [--trace FILE] [--weights PATH] [...]`"""
    p = argparse.ArgumentParser(
        prog="sdviz animate",
        description="Animate a generation: the denoising, or one word's cross-attention over the steps.",
    )
    p.add_argument("prompt", nargs="?", help="what to generate (or give --trace)")
    p.add_argument("--out", default="denoise.gif", help="file to write: .gif, .webp or .mp4 (default denoise.gif)")
    p.add_argument("--word", help="animate this word's cross-attention instead of the denoising")
    p.add_argument("--trace", help="a trace saved with Trace.save, instead of generating")
    p.add_argument("--weights", help="SD 1.x weights (default: the embedded model)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--steps", type=int, default=SETTINGS["steps"])
    p.add_argument("--cfg", type=float, default=SETTINGS["cfg_scale"], help="classifier-free guidance scale")
    p.add_argument("--sampler", default=SETTINGS["sampler"])
    p.add_argument("--size", type=int, default=128, help="pixels per panel (default 128)")
    p.add_argument("--fps", type=float, default=8)
    a = p.parse_args(argv)
    try:
        if (a.prompt is None) == (a.trace is None):
            raise AnimationError("give a prompt or --trace FILE (one of them)")
        if Path(a.out).suffix.lower() not in FORMATS:
            raise AnimationError(f"--out {a.out}: unknown animation format; use {', '.join(FORMATS)}")
        if Path(a.out).suffix.lower() == ".mp4" and shutil.which("ffmpeg") is None:
            raise AnimationError(f"--out {a.out}: MP4 needs ffmpeg on the PATH, and there is none; use .gif or .webp")
        if a.trace:
            from sdviz.tracing import load

            tr = load(a.trace)
        else:
            from sdviz.pipeline import load_pipeline

            pipe = load_pipeline(a.weights)
            if a.word is not None:
                words, wanted = pipe.tokenizer.encode(a.prompt).words, a.word.lower().strip()
                if not any(w == wanted or w.strip(".,;:!?\"'()") == wanted for w in words):
                    raise AnimationError(f"{a.word!r} is not a word of the prompt {a.prompt!r}; its words: {words}")
            tr = traced_run(a.prompt, pipe, a.seed, a.steps, a.cfg, a.sampler, decode=a.word is None)
        if a.word is None:
            out = animate_denoising(tr, a.out, size=a.size, fps=a.fps)
        else:
            out = animate_attention(tr, a.word, a.out, size=a.size, fps=a.fps)
    except (AnimationError, ValueError, KeyError, FileNotFoundError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"sdviz animate: error: {message}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

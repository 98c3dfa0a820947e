"""One self-contained web page per trace: the player and the explorer, offline, in any browser.

    tr.to_html("run.html")                      # or: sdviz export trace.pt --out run.html [--max-mb 25]
    export(tr, "run.html", drop=["decoded"])     # the same, leaving the VAE decodes out

The page needs no Python, no server and no network: the frames are embedded as PNG (small pictures, lossless) or
WebP (large ones) data URIs, the numbers as compact JSON, and a small hand-written script (`export_assets/page.js`)
draws everything on canvases. It mirrors the Jupyter widgets (`sdviz.viz.widgets`):

- the player: Play / pause / loop and a step slider over x_t and the predicted x0 (the linear latent preview, and
  the VAE decode when the trace holds it), the guided noise eps and the guidance direction eps_cond - eps_uncond,
  the readouts t, sigma_t, alpha_bar_t and SNR, and the noise schedule with a marker at t;
- the explorer: word and token buttons, a window of steps, layer and head pickers (where the trace kept them), a
  per-map or shared colour scale, the overlay's opacity; click a pixel to rank the words there.

How the maps stay exact. The trace's cross-attention record holds, per key (a resolution, or a layer with
keep=["layer"]), step slot and head, the *sums* of single-head attention maps on the layer's own grid, and how many
maps went into each sum. The page embeds those sums (float32, the prompt's token columns only, the padding averaged
into one column) and the counts. For a choice of steps, layers and heads the script adds the chosen sums (a window of
steps is one subtraction of running sums), upsamples each resolution bilinearly (torch's align_corners=False) to the
map grid and divides by the number of maps: exactly `Trace.word_map`'s default method ("sdviz"), which
`tests/test_export.py` checks within 1e-5 and `tests/test_export_browser.py` checks in Chromium.

This module takes the trace duck-typed (its public attributes and query methods) and imports nothing from the
Trace's own module, so that `Trace.to_html` can call it; `sdviz.tracing.export_cli` is the command.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ASSETS = Path(__file__).with_name("export_assets")
CMAP = "magma"  # perceptually uniform and sequential: equal steps of attention look like equal steps of colour
MAP_CAP = 128  # the attention maps are computed at the picture's size, at most this many pixels on its longer side
LOSSLESS_CAP = 128  # pictures up to this side are PNG (exact); larger ones WebP
DROPS = ("decoded", "steps", "layers", "heads")  # what `drop=` can leave out (or sum) to make a page smaller
START, END = "<|startoftext|>", "<|endoftext|>"


@dataclass
class Export:
    """What `export` wrote: the file, its size, the bytes of each part, and one line on what the trace lacked."""

    path: Path | None
    nbytes: int
    parts: dict[str, int] = field(default_factory=dict)
    note: str = ""

    def __str__(self) -> str:
        where = f"wrote {self.path}" if self.path else "page"
        return f"{where} ({self.nbytes / 1e6:.2f} MB)" + (f"; {self.note}" if self.note else "")


class ExportSizeError(ValueError):
    """The page would exceed the size limit given (`max_mb`); nothing was written."""


# --------------------------------------------------------------------------------------------------------------------
# Pictures and numbers, encoded
# --------------------------------------------------------------------------------------------------------------------


def data_uri(a: np.ndarray) -> str:
    """An RGB picture (h, w, 3) uint8 -> a data URI: PNG (lossless) when small, WebP (quality 90) when large."""
    buf = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(a))
    if max(a.shape[:2]) <= LOSSLESS_CAP:
        image.save(buf, format="PNG", optimize=True)
        kind = "png"
    else:
        image.save(buf, format="WEBP", quality=90, method=4)
        kind = "webp"
    return f"data:image/{kind};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def floats(x: np.ndarray) -> str:
    """An array as base64 of its float32 bytes, little-endian (what a JavaScript Float32Array reads)."""
    return base64.b64encode(np.ascontiguousarray(x, dtype="<f4").tobytes()).decode("ascii")


def colour_lut(name: str = CMAP) -> str:
    """A matplotlib colour map as 256 RGB triples (768 bytes), base64."""
    import matplotlib

    lut = (matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
    return base64.b64encode(lut.tobytes()).decode("ascii")


def signed_rgb(z: np.ndarray, weight: np.ndarray, scale: float) -> np.ndarray:
    """Signed latents (S, C, h, w) (a noise prediction, a guidance direction) -> RGB (S, h, w, 3) uint8: the colour
    direction the latent -> RGB preview map gives them, mid-grey at 0, full colour at +-scale (as the player)."""
    rgb = np.einsum("oc,schw->shwo", weight, z) / (2 * scale) + 0.5
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def robust_max(x: np.ndarray) -> float:
    """The 99.5th percentile of |x|, never 0: a colour scale that one outlier does not flatten."""
    v = float(np.percentile(np.abs(x), 99.5)) if x.size else 0.0
    return v if v > 0 else 1.0


def map_grid(image_hw: tuple[int, int], cap: int = MAP_CAP) -> tuple[int, int]:
    """The grid the page computes attention maps on: the picture's, at most `cap` pixels on its longer side."""
    h, w = image_hw
    f = min(1.0, cap / max(h, w))
    return max(1, round(h * f)), max(1, round(w * f))


def _sig(x: float, digits: int = 5) -> float:
    return float(f"{x:.{digits}g}")


# --------------------------------------------------------------------------------------------------------------------
# The parts of the page
# --------------------------------------------------------------------------------------------------------------------


def _records(tr: Any) -> set[str]:
    return set(getattr(tr, "records", {}) or {})


def player_part(tr: Any, image: int, drop: set[str]) -> tuple[dict, list[str]]:
    """The player's frames and numbers: data URIs per step for each panel, readouts per step, the schedule curve."""
    rec = tr.latents
    missing: list[str] = []
    frames: dict[str, list[str]] = {
        "x_t": [data_uri(a) for a in rec.preview("x_t", image=image)],  # (S, h, w, 3) each
        "x0": [data_uri(a) for a in rec.preview("x0", image=image)],
    }
    decoded = getattr(rec, "decoded", None)
    if decoded is not None and "decoded" not in drop:
        frames["decoded"] = [data_uri(a) for a in decoded[:, image].permute(0, 2, 3, 1).numpy()]  # (S, H, W, 3)
    elif decoded is None:
        missing.append("the VAE decode of every step (trace with decode=True)")
    weight = rec.rgb_weight.float().numpy()  # (3, C)
    eps = rec.tensors["eps"][:, image].float().numpy()  # (S, C, h, w)
    scales = {"eps": robust_max(np.einsum("oc,schw->shwo", weight, eps))}
    frames["eps"] = [data_uri(a) for a in signed_rgb(eps, weight, scales["eps"])]
    if "eps_uncond" in rec.tensors:
        direction = (rec.tensors["eps_cond"][:, image] - rec.tensors["eps_uncond"][:, image]).float().numpy()
        scales["guidance"] = robust_max(np.einsum("oc,schw->shwo", weight, direction))
        frames["guidance"] = [data_uri(a) for a in signed_rgb(direction, weight, scales["guidance"])]
    else:
        missing.append("the guidance direction (generate with cfg_scale > 1)")
    schedule = _schedule(tr)
    ab = schedule.alphas_cumprod.double().numpy()
    steps = []
    for t in tr.timesteps:
        i = int(min(max(int(t), 0), len(ab) - 1))
        steps.append(
            {
                "t": int(t),
                "sigma": _sig(float(schedule.sigmas[i])),
                "alpha_bar": _sig(float(ab[i])),
                "snr": _sig(float(schedule.snr[i])),
            }
        )
    part = {
        "frames": frames,
        "scales": {k: _sig(v, 3) for k, v in scales.items()},
        "steps": steps,
        "curve": [_sig(float(v), 4) for v in ab],  # alpha_bar_t for every training timestep t
    }
    return part, missing


def _schedule(tr: Any) -> Any:
    from sdviz.config import SDConfig
    from sdviz.samplers.schedule import NoiseSchedule

    return NoiseSchedule(SDConfig.from_dict(tr.info["config"]).schedule)


def _token_name(token: str) -> str:
    return {START: "<start>", END: "<end>"}.get(token, token.replace("</w>", ""))


def attention_part(tr: Any, image: int, drop: set[str]) -> tuple[dict, list[str]]:
    """The explorer's numbers: per key, the sums of the token columns (S, H, T, n) and the counts (S,), with what
    the trace kept, summed further over the axes in `drop` ("steps", "layers", "heads")."""
    rec = tr.cross_attention
    keep = set(rec.keep)
    enc = tr.encodings[image]
    length = int(enc["length"])
    missing = []
    per_step, by_layer, by_head = "step" in keep, "layer" in keep, "head" in keep
    dropped = {"steps": per_step and "steps" in drop, "layers": by_layer and "layers" in drop}
    dropped["heads"] = by_head and "heads" in drop  # summed here on request: not missing from the trace
    keys = []
    for key, sums in rec.sums.items():
        x = sums[:, image].double().numpy()  # (S, H, n, 77): summed single-head maps per step slot and head
        cols = x[..., :length]
        if length < x.shape[-1]:  # the padding, as one column: the mean of the padding positions' maps
            cols = np.concatenate([cols, x[..., length:].mean(-1, keepdims=True)], -1)
        counts = rec.counts[key][:, image].double().numpy()  # (S,)
        keys.append(
            {"key": str(key), "grid": list(rec.grid[key]), "sums": cols.transpose(0, 1, 3, 2), "counts": counts}
        )
    if by_head and "heads" in drop:  # sum the heads: every head's map counted once per layer call
        for k in keys:
            k["counts"] = k["counts"] * k["sums"].shape[1]
            k["sums"] = k["sums"].sum(1, keepdims=True)
        by_head = False
    if by_layer and "layers" in drop:  # sum the layers of each resolution
        merged: dict[tuple, dict] = {}
        for k in keys:
            g = tuple(k["grid"])
            if g in merged:
                if merged[g]["sums"].shape != k["sums"].shape:
                    raise ValueError("drop=['layers'] needs the layers of a resolution to share their heads")
                merged[g]["sums"] = merged[g]["sums"] + k["sums"]
                merged[g]["counts"] = merged[g]["counts"] + k["counts"]
            else:
                merged[g] = {**k, "key": f"{g[0]}x{g[1]}"}
        keys, by_layer = list(merged.values()), False
    steps = list(rec.steps)
    if per_step and "steps" in drop:
        for k in keys:
            k["sums"], k["counts"] = k["sums"].sum(0, keepdims=True), k["counts"].sum(0, keepdims=True)
        per_step = False
    if not per_step and not dropped["steps"]:
        missing.append("a window of steps (trace with keep=['step'])")
    if not by_layer and not dropped["layers"]:
        missing.append("single layers (trace with keep=['layer'])")
    if not by_head and not dropped["heads"]:
        missing.append("single heads (trace with keep=['head'])")
    tokens = [{"name": f"{p}: {_token_name(t)}", "columns": [p]} for p, t in enumerate(enc["tokens"][:length])]
    if length < len(enc["tokens"]):
        tokens.append({"name": f"padding ({length}-{len(enc['tokens']) - 1})", "columns": [length]})
    words = [{"name": w, "columns": list(tr.word_positions(w, image))} for w in dict.fromkeys(enc["words"])]
    part = {
        "grid": list(map_grid(tuple(tr.image_size))),
        "steps": steps,
        "per_step": per_step,
        "layers_kept": by_layer,
        "heads": int(keys[0]["sums"].shape[1]) if by_head else 0,
        "words": words,
        "tokens": tokens,
        "keys": [
            {
                "key": k["key"],
                "grid": k["grid"],
                "heads": int(k["sums"].shape[1]),
                "counts": [float(c) for c in k["counts"]],
                "sums": floats(k["sums"]),  # (S, H, T, n) float32
            }
            for k in keys
        ],
    }
    return part, missing


def page_data(tr: Any, image: int = 0, drop: Iterable[str] = ()) -> tuple[dict, dict[str, int], str]:
    """Everything the page shows, as one JSON-ready dict; the bytes of each part; one line on what is missing."""
    drop = set(drop)
    unknown = drop - set(DROPS)
    if unknown:
        raise ValueError(f"drop: unknown part {sorted(unknown)[0]!r}; known: {', '.join(DROPS)}")
    if getattr(tr, "info", None) is None:
        raise ValueError("this trace holds no generation: run pipe.generate(...) inside `with sdviz.trace(pipe)`")
    records = _records(tr)
    if not {"latents", "cross_attention"} & records:
        raise ValueError(
            "this trace holds neither latents nor cross-attention, nothing to show: "
            "trace with record=['latents', 'cross_attention'] (the default records both)"
        )
    info = tr.info
    if not 0 <= image < len(tr.prompts):
        raise ValueError(f"image={image} is out of range: this trace holds {len(tr.prompts)} picture(s)")
    picture = np.asarray(tr.images[image].convert("RGB"))  # (H, W, 3)
    data: dict[str, Any] = {
        "prompt": tr.prompts[image],
        "negative": (info.get("negative_prompts") or [""] * (image + 1))[image],
        "seed": info["seeds"][image],
        "sampler": info.get("sampler"),
        "cfg": info.get("cfg_scale"),
        "model": info.get("config", {}).get("name", ""),
        "size": [int(picture.shape[0]), int(picture.shape[1])],
        "picture": data_uri(picture),
        "lut": colour_lut(),
    }
    missing: list[str] = []
    if "latents" in records:
        data["player"], lack = player_part(tr, image, drop)
        missing += lack
    else:
        missing.append("the player (trace with record=[..., 'latents'])")
    if "cross_attention" in records:
        data["attention"], lack = attention_part(tr, image, drop)
        missing += lack
    else:
        missing.append("the explorer (trace with record=[..., 'cross_attention'])")
    parts = {
        "pictures": len(data["picture"]),
        "previews": sum(
            len(u) for k, fs in data.get("player", {}).get("frames", {}).items() if k != "decoded" for u in fs
        ),
        "decoded": sum(len(u) for u in data.get("player", {}).get("frames", {}).get("decoded", [])),
        "attention": sum(len(k["sums"]) for k in data.get("attention", {}).get("keys", [])),
    }
    note = "not in this trace: " + "; ".join(missing) if missing else ""
    data["note"] = note
    return data, parts, note


def render(data: dict) -> str:
    """The page: the template with the style, the script and the data inlined (every `<` of the JSON written as
    \\u003c, so that no prompt can close or comment out the script element that holds it)."""
    page = (ASSETS / "page.html").read_text()
    payload = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    title = f"sdviz: {data['prompt']}"
    return (
        page.replace("{{title}}", html.escape(title))
        .replace("/*{{style}}*/", (ASSETS / "page.css").read_text())
        .replace("/*{{script}}*/", (ASSETS / "page.js").read_text())
        .replace("{{data}}", payload)
    )


HOW = {
    "decoded": "the VAE decodes (drop=['decoded'] / --drop decoded, or trace without decode=True)",
    "heads": "single heads (drop=['heads'] / --drop heads, or trace without keep=['head'])",
    "layers": "single layers (drop=['layers'] / --drop layers, or trace without keep=['layer'])",
    "steps": "the per-step attention (drop=['steps'] / --drop steps, or trace without keep=['step'])",
}


def _advice(tr: Any, image: int, drop: set[str], parts: dict[str, int], data: dict) -> str:
    """Which parts to drop, largest saving first, with what each saves (measured by building that part again)."""
    att = data.get("attention")
    options = []
    if parts["decoded"]:
        options.append((parts["decoded"], HOW["decoded"]))
    kept = {"heads": bool(att and att["heads"]), "layers": bool(att and att["layers_kept"])}
    kept["steps"] = bool(att and att["per_step"] and len(att["steps"]) > 1)
    for what in ("heads", "layers", "steps"):
        if kept[what]:
            smaller, _ = attention_part(tr, image, drop | {what})
            options.append((parts["attention"] - sum(len(k["sums"]) for k in smaller["keys"]), HOW[what]))
    options.sort(key=lambda o: -o[0])
    if not options:
        return "nothing left to drop: trace fewer steps (steps=...) or a smaller picture"
    return "drop " + "; or ".join(f"{what}: -{size / 1e6:.1f} MB" for size, what in options)


def export(
    tr: Any,
    path: str | Path | None = None,
    image: int = 0,
    max_mb: float | None = None,
    drop: Iterable[str] = (),
) -> Export:
    """Write one self-contained HTML page of a trace (the player and the explorer) to `path`.

    Args:
        tr: a trace (live or loaded with `sdviz.load_trace`) with latents and/or cross-attention.
        path: the HTML file to write (None: build the page and measure it, write nothing).
        image: which picture of a batch.
        max_mb: refuse (`ExportSizeError`, nothing written) when the page would be larger than this many MB; the
            message says how large it would be and which parts to drop.
        drop: parts to leave out or sum, to make the page smaller: "decoded" (the VAE decodes), "steps" (sum the
            attention over the steps: no step window), "layers" (sum the layers of each resolution), "heads".
    """
    if max_mb is not None and not max_mb > 0:
        raise ValueError(f"max_mb must be a positive number of megabytes, not {max_mb}")
    data, parts, note = page_data(tr, image, drop)
    text = render(data)
    body = text.encode("utf-8")
    if max_mb is not None and len(body) > max_mb * 1e6:
        raise ExportSizeError(
            f"the page would be {len(body) / 1e6:.1f} MB, over max_mb={max_mb:g}: "
            f"{_advice(tr, image, set(drop), parts, data)}"
        )
    out = None
    if path is not None:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.partial")
        try:
            tmp.write_bytes(body)
            tmp.replace(out)
        finally:
            tmp.unlink(missing_ok=True)
    return Export(out, len(body), parts, note)

"""The README's two sampler figures (`sdviz figures` draws them with the others).

    quality_chart(data)        colour, shape and position accuracy of the embedded model on 40 of its held-out
                               prompts, at 5, 10, 20 and 50 steps, one line per sampler
    predictions_figure(pipe)   one seed through every sampler at 10 steps: the clean picture each step predicts

Measuring the accuracies means generating and judging 8 runs (the 7 samplers, DPM-Solver++(2M) also with Karras
sigmas) x 4 step counts x 40 pictures: some 27,000 guided UNet calls, a quarter of an hour on one CPU thread. So they
are measured once and kept in `readme-images/sampler_quality.json` (with the prompts, seeds, settings and how long
the measurement took), and the chart is drawn from that file; `sdviz figures` only draws. To measure again:

    python -m sdviz.viz.sampler_figures --measure          # writes readme-images/sampler_quality.json, redraws

`quality_table(data)` writes the same numbers as the README's Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sdviz.viz.display import Figure
from sdviz.viz.style import PROMPT, SEED, SETTINGS, no_ticks, save

if TYPE_CHECKING:
    from sdviz.pipeline import StableDiffusion

REPO_ROOT = Path(__file__).resolve().parents[2]
QUALITY_JSON = REPO_ROOT / "readme-images" / "sampler_quality.json"
FORMAT = 1  # of the JSON file; bump when its layout changes

# Every sampler, and DPM-Solver++(2M) once more with Karras sigmas: (label, sampler name, its options)
RUNS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("ddpm", "ddpm", {}),
    ("ddim", "ddim", {}),
    ("euler", "euler", {}),
    ("euler_a", "euler_a", {}),
    ("pndm", "pndm", {}),
    ("dpmpp_2m", "dpmpp_2m", {}),
    ("dpmpp_2m karras", "dpmpp_2m", {"use_karras_sigmas": True}),
    ("unipc", "unipc", {}),
)
STEP_COUNTS = (5, 10, 20, 50)
METRICS = ("colour", "shape", "position")  # the chart's panels; the JSON also keeps count and correct
KEPT = ("colour", "shape", "position", "count", "correct")
# The evaluation's prompts, seeds and guidance (sdviz/toy/evaluate.py), but the first 40 of its 100 pairs: one call
# costs ~33 ms on one thread, and 40 pictures at 8 runs x 85 steps take ~15 minutes. They name 60 objects: one
# verdict moves a colour or shape rate by 1.7 points.
N_PROMPTS, PROMPT_SEED, CFG_SCALE = 40, 0, SETTINGS["cfg_scale"]

PREVIEW_STEPS = 10  # the predictions figure: the README's headline prompt and seed (style.py), 10 steps


# -- measuring ------------------------------------------------------------------------------------------------------


def measure_quality(
    pipe: StableDiffusion | None = None,
    runs: Sequence[tuple[str, str, dict[str, Any]]] = RUNS,
    step_counts: Sequence[int] = STEP_COUNTS,
    n: int = N_PROMPTS,
    progress: bool = True,
) -> dict[str, Any]:
    """Judge the embedded model's first `n` held-out pictures for every run and step count; returns the JSON's
    content: the settings (with the (prompt, seed) pairs), per run and step count the judge's rates and the UNet
    calls per picture, and how long it took."""
    from sdviz.pipeline import load_pipeline
    from sdviz.samplers import get_sampler
    from sdviz.toy import evaluate, judge, world

    pipe = load_pipeline() if pipe is None else pipe
    pairs = world.held_out_prompts(n, PROMPT_SEED)  # (prompt, seed): the evaluation's first n
    start = time.perf_counter()
    measured = []
    for label, name, options in runs:
        rates, calls = {}, {}
        for steps in step_counts:
            sampler = get_sampler(name, pipe.config.schedule, **options)  # the pipeline restarts it per picture
            made = evaluate.pictures(pipe, pairs, steps, CFG_SCALE, sampler, progress=progress,
                                     desc=f"{label}, {steps} steps")  # fmt: skip
            summary = judge.summarise(judge.judge(p.image, p.prompt) for p in made)
            rates[str(steps)] = {k: round(float(summary[k]), 4) for k in KEPT}
            calls[str(steps)] = len(sampler.timesteps)  # UNet calls per picture (PNDM: steps + 1)
        measured.append({"label": label, "sampler": name, "options": options, "rates": rates, "unet_calls": calls})
    return {
        "format": FORMAT,
        "what": "accuracy of the embedded model on held-out prompts, judged per named object (sdviz/toy/judge.py)",
        "settings": {
            "n_prompts": n,
            "prompt_seed": PROMPT_SEED,
            "cfg_scale": CFG_SCALE,
            "steps": list(step_counts),
            "pairs": [list(pair) for pair in pairs],  # (prompt, seed)
        },
        "measured": {
            "minutes": round((time.perf_counter() - start) / 60, 1),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__.split("+")[0],
            "machine": platform.machine(),
        },
        "runs": measured,
    }


def check_quality_data(data: dict[str, Any]) -> None:
    """Raise a one-line ValueError unless `data` is a sampler-quality record this module can draw."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"not a sampler-quality record of format {FORMAT}")
    steps = data["settings"]["steps"]
    if not data["runs"] or not steps or sorted(steps) != list(steps):
        raise ValueError("sampler-quality record: no runs, or steps not in increasing order")
    if len(data["settings"]["pairs"]) != data["settings"]["n_prompts"]:
        raise ValueError("sampler-quality record: n_prompts is not the number of (prompt, seed) pairs")
    for run in data["runs"]:
        for key in ("label", "sampler", "options", "rates", "unet_calls"):
            if key not in run:
                raise ValueError(f"sampler-quality record: run {run.get('label')!r} has no {key!r}")
        for s in steps:
            rates = run["rates"].get(str(s))
            if rates is None or any(not 0.0 <= rates.get(k, -1) <= 1.0 for k in KEPT):
                raise ValueError(f"sampler-quality record: run {run['label']!r} at {s} steps lacks rates in [0, 1]")


def load_quality(path: str | Path = QUALITY_JSON) -> dict[str, Any]:
    data = json.loads(Path(path).read_text())
    check_quality_data(data)
    return data


def save_quality(data: dict[str, Any], path: str | Path = QUALITY_JSON) -> Path:
    check_quality_data(data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


# -- drawing --------------------------------------------------------------------------------------------------------

# A colour and marker per sampler: DDIM (the reference setting) in black, the stochastic ones in red and orange, the
# Karras variant dashed, Euler dotted (it often lies on DDIM).
STYLE = {
    "ddpm": dict(color="#d62728", marker="v"),
    "ddim": dict(color="black", marker="o"),
    "euler": dict(color="#9467bd", marker="s", linestyle=":"),
    "euler_a": dict(color="#ff7f0e", marker="^"),
    "pndm": dict(color="#8c564b", marker="P"),
    "dpmpp_2m": dict(color="#1f77b4", marker="D"),
    "dpmpp_2m karras": dict(color="#1f77b4", marker="D", linestyle="--", markerfacecolor="white"),
    "unipc": dict(color="#2ca02c", marker="X"),
}


def quality_chart(data: dict[str, Any] | None = None) -> Figure:
    """Accuracy (%) against steps, one panel per metric and one line per sampler, from the measured record."""
    data = load_quality() if data is None else data
    check_quality_data(data)
    steps = data["settings"]["steps"]
    fig = Figure(figsize=(13, 4.3), layout="constrained")
    axes = fig.subplots(1, len(METRICS), sharey=True)
    for ax, metric in zip(axes, METRICS, strict=True):
        for run in data["runs"]:
            values = [100 * run["rates"][str(s)][metric] for s in steps]
            style = {"color": "grey", "marker": "o", **STYLE.get(run["label"], {})}
            ax.plot(steps, values, label=run["label"], linewidth=1.6, markersize=6, **style)
        ax.set_xscale("log")
        ax.set_xticks(steps, [str(s) for s in steps])
        ax.minorticks_off()
        ax.set_xlabel("steps")
        ax.set_title(metric, fontsize=11)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy on the held-out prompts (%)")
    axes[0].set_ylim(0, 101)
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=9, title="sampler", frameon=False)
    s = data["settings"]
    fig.suptitle(f"embedded model, {s['n_prompts']} held-out prompts, cfg {s['cfg_scale']:g}: how many steps each "
                 "sampler needs", fontsize=11)  # fmt: skip
    return fig


def quality_table(data: dict[str, Any] | None = None) -> str:
    """The record as a Markdown table: a row per sampler, colour / shape / position (%) per step count."""
    data = load_quality() if data is None else data
    check_quality_data(data)
    steps = data["settings"]["steps"]
    head = "| sampler | " + " | ".join(f"{s} steps" for s in steps) + " |"
    lines = [head, "|---|" + "---|" * len(steps)]
    for run in data["runs"]:
        cells = []
        for s in steps:
            r = run["rates"][str(s)]
            cells.append(" / ".join(f"{100 * r[k]:.0f}" for k in METRICS))
        lines.append(f"| {run['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def predictions_figure(
    pipe: StableDiffusion | None = None,
    prompt: str = PROMPT,
    seed: int = SEED,
    steps: int = PREVIEW_STEPS,
    runs: Sequence[tuple[str, str, dict[str, Any]]] = RUNS,
) -> Figure:
    """One row per sampler: the VAE decode of the clean latents x0 each UNet call predicts, then the picture."""
    from sdviz.pipeline import load_pipeline, tensor_to_images
    from sdviz.samplers import get_sampler

    pipe = load_pipeline() if pipe is None else pipe
    rows = []
    for label, name, options in runs:
        x0s, ts = [], []

        def keep(step, x0s=x0s, ts=ts):
            x0s.append(step.x0[:1])  # (1, 4, h, w)
            ts.append(step.t)

        sampler = get_sampler(name, pipe.config.schedule, **options)
        result = pipe.generate(prompt, seed=seed, steps=steps, cfg_scale=CFG_SCALE, sampler=sampler,
                               progress=False, on_step=keep)  # fmt: skip
        pictures = tensor_to_images(pipe.decode_latents(torch.cat(x0s)))  # (calls, 4, h, w) -> (calls, 3, H, W)
        rows.append((label, ts, pictures, result.image))

    columns = max(len(ts) for _, ts, _, _ in rows) + 1
    fig = Figure(figsize=(1.08 * columns + 0.9, 1.2 * len(rows) + 0.7), layout="constrained")
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for r, (label, ts, pictures, final) in enumerate(rows):
        for c in range(columns):
            ax = axes[r, c]
            no_ticks(ax)
            if c < len(pictures):
                ax.imshow(pictures[c], interpolation="nearest")
                ax.set_title(f"t={ts[c]}", fontsize=7, pad=2)
            elif c == columns - 1:
                ax.imshow(final, interpolation="nearest")
                ax.set_title("picture", fontsize=7, pad=2, fontweight="bold")
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center")
    fig.suptitle(f"the clean picture each step predicts (decoded x₀), {steps} steps, seed {seed}, cfg {CFG_SCALE:g}: "
                 f"{prompt!r}", fontsize=10)  # fmt: skip
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m sdviz.viz.sampler_figures [--measure] [--threads 1] [--out readme-images] [--json PATH]`"""
    p = argparse.ArgumentParser(prog="python -m sdviz.viz.sampler_figures", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--out", default=str(REPO_ROOT / "readme-images"), help="folder for the PNG files")
    p.add_argument("--json", default=str(QUALITY_JSON), help="the measured accuracies (read, or written by --measure)")
    p.add_argument("--measure", action="store_true", help="measure the accuracies again (long) before drawing")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the record says how many it used)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.measure:
        data = measure_quality()
        print(f"measured in {data['measured']['minutes']} min: {save_quality(data, a.json)}")
        print(quality_table(data))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    print(save(quality_chart(load_quality(a.json)), out / "sampler_quality.png"))
    print(save(predictions_figure(), out / "sampler_predictions.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

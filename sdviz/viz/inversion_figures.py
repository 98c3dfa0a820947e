"""The README's inversion figure, drawn from the measured record `readme-images/inversion.json`.

    inversion_chart(data)     three panels: reconstruction PSNR per inversion method, word-map mIoU on inverted
                              scenes beside generated pictures per map method, and the colour edit's success

The record is measured once (`python -m sdviz.inversion.measure`, long: a null-text inversion per scene) and kept;
`sdviz figures` only draws it. `check_record` refuses a damaged record with one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sdviz.viz.display import Figure

REPO_ROOT = Path(__file__).resolve().parents[2]
RECORD = REPO_ROOT / "readme-images" / "inversion.json"
FORMAT = 1
INVERSIONS = ("ddim_cfg1", "ddim_cfg5", "null_text", "negative_prompt")
LABELS = {"ddim_cfg1": "DDIM\ncfg 1", "ddim_cfg5": "DDIM\ncfg 5", "null_text": "null-text\ncfg 5",
          "negative_prompt": "negative-\nprompt, cfg 5"}  # fmt: skip
ROW_KEYS = ("prompt", "seed", "objects", "seconds", "psnr_db", "iou_inverted", "iou_generated", "edit")


def check_record(data: Any) -> None:
    """Raise a one-line ValueError unless `data` is an inversion record this module can draw."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"not an inversion record of format {FORMAT}")
    for key in ("settings", "measured", "summary", "rows"):
        if key not in data:
            raise ValueError(f"inversion record: no {key!r}")
    rows, summary = data["rows"], data["summary"]
    if not rows or summary.get("n") != len(rows):
        raise ValueError("inversion record: no rows, or summary n is not the number of rows")
    for k in INVERSIONS:
        v = summary["psnr_db"].get(k)
        if not isinstance(v, int | float) or not 0 < v < 100:
            raise ValueError(f"inversion record: psnr_db of {k!r} is not a PSNR in dB")
        if not isinstance(summary["seconds"].get(k), int | float):
            raise ValueError(f"inversion record: no seconds for {k!r}")
    for m, v in summary["miou"].items():
        if any(not isinstance(v.get(x), int | float) or not 0 <= v[x] <= 1 for x in ("inverted", "generated")):
            raise ValueError(f"inversion record: mIoU of map method {m!r} not in [0, 1]")
    if not 0 <= summary["edit"].get("colour_rate", -1) <= 1:
        raise ValueError("inversion record: edit colour_rate not in [0, 1]")
    for i, row in enumerate(rows):
        missing = [k for k in ROW_KEYS if k not in row]
        if missing:
            raise ValueError(f"inversion record: row {i} has no {', '.join(map(repr, missing))}")


def load_record(path: str | Path = RECORD) -> dict[str, Any]:
    data = json.loads(Path(path).read_text())
    check_record(data)
    return data


def inversion_chart(data: dict[str, Any] | None = None) -> Figure:
    """PSNR per inversion method (goal and the VAE's ceiling as lines), mIoU inverted vs generated per map method,
    the edit's colour rate and PSNR outside the object."""
    data = load_record() if data is None else data
    check_record(data)
    s, rows = data["summary"], data["rows"]
    goals = data["settings"]["goals"]
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    ax1, ax2, ax3 = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.3, 1.2, 0.8]})

    for i, k in enumerate(INVERSIONS):  # one dot per scene, the mean as a bar
        values = [r["psnr_db"][k] for r in rows]
        ax1.bar(i, s["psnr_db"][k], color="#9ecae1" if k != "null_text" else "#3182bd", width=0.65)
        ax1.scatter([i] * len(values), values, s=6, color="black", alpha=0.4, zorder=3)
        ax1.text(i, 1.5, f"{s['psnr_db'][k]:.1f} dB\n{s['seconds'][k]:.1f} s", ha="center", va="bottom",
                 fontsize=8, bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})  # in the bar, below the dots
    ax1.axhline(goals["null_text_psnr_db"], color="#d62728", linestyle="--", linewidth=1, label="goal (null-text)")
    ax1.axhline(s["psnr_db"]["vae"], color="grey", linestyle=":", linewidth=1, label="VAE round trip (ceiling)")
    ax1.set_xticks(range(len(INVERSIONS)), [LABELS[k] for k in INVERSIONS], fontsize=8)
    ax1.set_ylabel("reconstruction PSNR (dB)")
    ax1.set_ylim(0, max(45, s["psnr_db"]["vae"] + 6))
    ax1.legend(fontsize=7, loc="center right")  # over the bars, clear of the dots and the numbers
    ax1.set_title("redraw of the inverted scene", fontsize=10)

    methods = list(s["miou"])
    for j, m in enumerate(methods):
        v = s["miou"][m]
        ax2.bar(j - 0.18, v["inverted"], width=0.36, color="#3182bd", label="inverted scenes" if j == 0 else None)
        ax2.bar(j + 0.18, v["generated"], width=0.36, color="#bdbdbd", label="generated pictures" if j == 0 else None)
        top = max(v["inverted"], v["generated"]) + 0.02
        ax2.text(j, top, f"gen. - inv.\n{v['gap']:+.2f}", ha="center", va="bottom", fontsize=8)
    ax2.set_xticks(range(len(methods)), methods)
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("noun-map mIoU against the true masks")
    ax2.legend(fontsize=7, loc="upper left")
    ax2.set_title("word maps (null-text redraw)", fontsize=10)

    bars = [("null-text", s["edit"])] + [(k[len("edit_on_"):], v) for k, v in data.items() if k.startswith("edit_on_")]
    for i, (_, e) in enumerate(bars):
        ax3.bar(i, 100 * e["colour_rate"], color="#31a354", width=0.6)
        ax3.text(i, 100 * e["colour_rate"] + 2, f"{100 * e['colour_rate']:.0f} %\n{e['outside_psnr_db']:.1f} dB",
                 ha="center", fontsize=8)  # fmt: skip
    ax3.axhline(100 * goals["edit_colour_rate"], color="#d62728", linestyle="--", linewidth=1)
    ax3.set_ylim(0, 115)
    ax3.set_xticks(range(len(bars)), [f"on {name}" for name, _ in bars], fontsize=8)
    ax3.set_ylabel("% of edits whose new colour the judge reads")
    goal = goals["edit_outside_psnr_db"]
    ax3.set_title(f"colour replaced (p2p + local blend);\ndB: PSNR outside the object (goal {goal:g})", fontsize=9)
    st = data["settings"]
    fig.suptitle(f"inverting {s['n']} of the toy world's own held-out scenes (never drawn by the model), "
                 f"{st['steps']} DDIM steps, cfg {st['cfg_scale']:g}; seconds per scene on "
                 f"{data['measured']['torch_threads']} thread(s)", fontsize=10)  # fmt: skip
    return fig

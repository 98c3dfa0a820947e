"""The causal map: which block, at which steps, and which text-encoder state carries each attribute of a picture.

Drawn from the committed record `readme-images/causal_tracing.json` (measured by `sdviz causal`, module
`sdviz.toy.causal_tracing`), never from a new run: `sdviz figures` redraws `readme-images/causal_map.png` from it.
One column per attribute the judge reads (colour, shape, size, position, relation), one row per cell patched from
the clean run into the corrupted one; the colour and the number are the share of pairs whose clean attribute came
back. Beside it, the faithfulness of the word maps (`sdviz/toy/faithfulness.json`): their deletion curves.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sdviz.viz.display import Figure  # a matplotlib Figure that shows itself as a picture in Jupyter

SHORT = {  # hook point -> a label a reader can place in the UNet
    "unet.down_blocks.0.attentions.0.hook_block_out": "down 16x16",
    "unet.down_blocks.1.attentions.0.hook_block_out": "down 8x8",
    "unet.mid_block.attentions.0.hook_block_out": "mid 8x8",
    "unet.up_blocks.0.attentions.1.hook_block_out": "up 8x8",
    "unet.up_blocks.1.attentions.1.hook_block_out": "up 16x16",
}


def cell_label(cell: dict[str, Any]) -> str:
    """'mid 8x8, steps 0-0.5' or 'text layer 0, subject token'."""
    if cell["kind"] == "text":
        return f"text layer {cell['layer']}, {cell['token']} token"
    return f"{SHORT.get(cell['hook'], cell['hook'])}, {cell['window']} steps"


def causal_table(data: dict[str, Any]) -> tuple[list[str], list[str], np.ndarray, dict[str, int]]:
    """(row labels, attributes, shares (rows, attributes) with NaN where not measured, pairs per attribute)."""
    attributes = list(data["attributes"])
    rows: list[str] = []
    for entry in data["attributes"].values():
        for cell in entry["cells"]:
            if cell_label(cell) not in rows:
                rows.append(cell_label(cell))
    shares = np.full((len(rows), len(attributes)), np.nan)
    pairs = {}
    for j, a in enumerate(attributes):
        pairs[a] = len(data["attributes"][a]["valid"])
        for cell in data["attributes"][a]["cells"]:
            shares[rows.index(cell_label(cell)), j] = cell["restored"]
    return rows, attributes, shares, pairs


def causal_map(data: dict[str, Any] | None = None) -> Figure:
    """The share restored per cell and attribute, as a heat map with its numbers."""
    from sdviz.toy.causal_tracing import MIN_PAIRS, load

    data = load() if data is None else data
    rows, attributes, shares, pairs = causal_table(data)
    few = [j for j, a in enumerate(attributes) if pairs[a] < MIN_PAIRS]  # too few pairs for a share to mean much
    shares[:, few] = np.nan
    fig = Figure(figsize=(8.5, 0.34 * len(rows) + 2.0), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(shares), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for (i, j), v in np.ndenumerate(shares):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="white" if v < 0.6 else "black")
    for j in few:
        a = attributes[j]
        ax.text(j, (len(rows) - 1) / 2, f"{pairs[a]} pairs:\ntoo few\n(< {MIN_PAIRS})\nto measure", ha="center",
                va="center", fontsize=8, color="0.35")  # fmt: skip
    ax.set_xticks(range(len(attributes)), [f"{a}\n({pairs[a]} pairs)" for a in attributes], fontsize=9)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.xaxis.tick_top()
    fig.colorbar(im, ax=ax, shrink=0.6, label="share of the clean attribute restored")
    s = data["settings"]
    fig.suptitle(
        f"Causal tracing on the embedded model: one cell of the clean run restored in the corrupted run\n"
        f"({s['steps']} {s['sampler']} steps, cfg {s['cfg_scale']:g}; graded by the judge; blank: not measured)",
        fontsize=10,
    )
    return fig


def deletion_chart(data: dict[str, Any] | None = None) -> Figure:
    """The word maps' deletion curves: share of the pixel change an ablated word causes that lies in the map's top
    pixels, against the fraction of pixels (the noise map follows the diagonal)."""
    from sdviz.toy.faithfulness import load

    data = load() if data is None else data
    fig = Figure(figsize=(5.5, 4.2), layout="constrained")
    ax = fig.subplots()
    fractions = data["fractions"]
    for method, entry in data["summary"].items():
        a = entry["all"]
        ax.plot(fractions, a["deletion"], marker="o", label=f"{method} (ratio {a['ratio']:.2f})")
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("fraction of pixels, the map's highest first")
    ax.set_ylabel("share of the ablation's pixel change")
    ax.set_title(f"Faithfulness of the word maps ({data['summary']['sdviz']['all']['pictures']} pictures)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig

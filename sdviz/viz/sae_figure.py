"""The README's SAE figure: how well each world concept is found by one feature of the shipped SAEs.

    concepts_chart(record)   one row per concept (colours, shapes, sizes, positions, relations, counts), one bar per
                             shipped SAE: the AUROC of the concept's best feature at its objects' pixels against
                             the other objects' pixels, on held-out pictures; a black tick marks the best raw
                             channel's AUROC (the baseline), the dotted line chance (0.5), the dashed line 0.95

Drawn from the measured record `sdviz/toy/sae/sae_record.json` only (`sdviz sae grade` measures it), so `sdviz
figures` draws it without generating anything.
"""

from __future__ import annotations

from typing import Any

from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from sdviz.viz.display import Figure

KIND_COLOURS = {
    "colour": "#C0392B",
    "shape": "#2471A3",
    "size": "#7D3C98",
    "position": "#138D75",
    "relation": "#B9770E",
    "count": "#566573",
}


def concepts_chart(record: dict[str, Any] | None = None) -> Figure:
    """The AUROC of each concept's best feature, per shipped SAE (see the module docstring)."""
    from sdviz.concepts.card import check_record, load_record

    record = load_record() if record is None else check_record(record)
    saes = list(record["saes"].items())
    rows = [r["concept"] for r in saes[0][1]["grade"]["table"]]
    kinds = {r["concept"]: r["kind"] for r in saes[0][1]["grade"]["table"]}
    fig = Figure(figsize=(3.2 * len(saes) + 1.2, 6.4), layout="constrained")
    axes = fig.subplots(1, len(saes), sharey=True, squeeze=False)
    for ax, (point, entry) in zip(axes[0], saes, strict=True):
        table = {r["concept"]: r for r in entry["grade"]["table"]}
        y = list(range(len(rows)))[::-1]
        values = [table[c]["auroc"] for c in rows]
        ax.barh(y, values, color=[KIND_COLOURS[kinds[c]] for c in rows], height=0.7)
        channels = [table[c]["channel_auroc"] for c in rows]
        ax.scatter(channels, y, marker="|", s=120, color="black", linewidths=1.6, zorder=3)
        ax.axvline(0.95, color="black", linestyle="--", linewidth=0.8)
        ax.axvline(0.5, color="grey", linestyle=":", linewidth=0.8)
        ax.set_xlim(0.3, 1.0)
        ax.set_yticks(y)
        ax.set_yticklabels(rows, fontsize=8)
        short = point.removeprefix("unet.").removesuffix(".hook_block_out")
        share = entry["grade"]["share_at_0.95"]
        ax.set_title(f"{short}\n{100 * share:.0f}% of concepts >= 0.95", fontsize=9)
        ax.set_xlabel("AUROC of the best feature", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
    handles = [Patch(color="#999999", label="best SAE feature (bar; its colour: the concept's kind)"),
               Line2D([], [], color="black", marker="|", linestyle="", markersize=10, label="best raw channel")]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle("Which world concepts one SAE feature finds (held-out pictures)", fontsize=10)
    return fig

"""Charts: `graphviz.Digraph`s in the house style, that write themselves to files and show themselves in Jupyter.

Graphviz (graphviz.org) lays out a graph described in its DOT language; the `graphviz` package writes that text and
runs Graphviz's `dot` program on it. Every chart starts from `chart()` (fonts, sizes, the title block with its
legend) and is written in a fixed order from the code and a traced run, so the same code gives the same DOT text on
any machine: the `.dot` files in flowcharts/ are compared with what the code draws by a test. Rendering (`.svg`,
`.png`) needs the `dot` executable; the DOT text does not.
"""

from __future__ import annotations

import re
import textwrap
from html import escape as esc  # text in an HTML-like label: & < > " ' written as entities
from pathlib import Path

import graphviz

INSTALL_HINT = ("Graphviz's `dot` executable was not found: install Graphviz (apt-get install graphviz, "
                "brew install graphviz, conda install graphviz, or see graphviz.org/download)")


class GraphvizMissing(RuntimeError):
    """Raised when rendering needs the `dot` executable and it is not installed."""


# -- the house style, after the seed's hand-drawn LLaMA-2 flowchart -----------------------------------------------

FONT, MONO = "DejaVu Sans", "DejaVu Sans Mono"
SHAPE_COLOR = "#17365D"  # tensor shapes, in bold italics
CALL_COLOR = "#1F618D"  # call edges
PNG_DPI = 110  # resolution of the PNG files
CALL = dict(color=CALL_COLOR, penwidth="1.1", arrowhead="vee")  # a call edge's attributes
STYLE = {  # kind of node: fill, line, and in the legend: a sample, what it means
    "header": ("#FFE45C", "#9A7D0A", "Class.method(args)", "a function: file, objects, calls"),  # yellow hexagon
    "stmt": ("#FFFFFF", "#555555", "x = f(x)  (B, C) → (B, 2C)", "a statement and the shapes it produced"),
    "return": ("#FDEBD0", "#A04000", "return x", "what it returns"),
    "cond": ("#F5B7B1", "#B03A2E", "if …", "a condition: how often each branch ran"),  # red diamond
    "guard": ("#FADBD8", "#B03A2E", "2 argument checks", "checks that raise on bad input"),
    "loop": ("#D6EAF8", "#1F618D", "for … ×4", "a loop, iterations per call (dashed: next one)"),
    "module": ("#C8E6C9", "#2E7D32", "Module.forward", "drawn as one box (on the sheet named)"),
    "call": ("#FFFFFF", CALL_COLOR, "──▶", "a call"),
    "block": ("#E8F5E9", "#2E7D32", "", "a network's block (architecture diagrams)"),
    "layer": ("#FFFFFF", "#2E7D32", "", "a network's layer"),
    "op": ("#FFF3C4", "#9A7D0A", "", "a pipeline's operation: tokenizer, guidance, sampler step"),
    "data": ("#FFFFFF", "#333333", "", "data: tensors, images, text"),
    "cluster": ("#FAFAFA", "#B0B0B0", "", "a function's box"),
}


def styled(kind: str, **attrs) -> dict:
    """Graphviz attributes in the colours of a kind of node: styled("cond", shape="diamond")."""
    return {"fillcolor": STYLE[kind][0], "color": STYLE[kind][1]} | attrs


def wrap(text: str, width: int, max_lines: int = 6, indent: str = "  ") -> list[str]:
    """Wrap code or prose into lines of at most `width` characters (continuation lines indented)."""
    lines = textwrap.wrap(text, width, subsequent_indent=indent, break_long_words=True, break_on_hyphens=False) or [""]
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [lines[max_lines - 1][: width - 1] + "…"]
    return lines


def left(lines: list[str]) -> str:
    """Lines of an HTML label, each escaped and left-aligned."""
    return "".join(esc(line) + '<BR ALIGN="LEFT"/>' for line in lines)


def font(text: str, size: int | None = None, color: str | None = None, face: str | None = None) -> str:
    if not text:
        return ""  # Graphviz refuses an empty <FONT></FONT>
    attrs = "".join(f' {k}="{v}"' for k, v in (("POINT-SIZE", size), ("COLOR", color), ("FACE", face)) if v)
    return f"<FONT{attrs}>{text}</FONT>"


def title_block(title: str, about: str, note: str, legend: list[tuple[str, str, str, str]] = ()) -> str:
    """A chart's title, subtitle, grey provenance line and legend (fill, line, sample, meaning), as an HTML label."""
    rows = [font(f"<B>{esc(title)}</B>", 26), font(esc(about), 13)]
    rows += [font(esc(line), 10, "#555555") for line in wrap(note, 150, indent="")]
    cells = "".join(f'<TD BGCOLOR="{fill}" COLOR="{line}" BORDER="1">{font(esc(sample), 9)}</TD><TD ALIGN="LEFT">'
                    f'{font(esc(meaning), 9, "#333333")}</TD>' for fill, line, sample, meaning in legend)
    if cells:
        rows.append(f'<TABLE BORDER="0" CELLSPACING="3" CELLPADDING="3"><TR>{cells}</TR></TABLE>')
    body = "".join(f'<TR><TD ALIGN="LEFT" BALIGN="LEFT">{r}</TD></TR>' for r in rows)
    return f'<<TABLE BORDER="0" CELLSPACING="0" CELLPADDING="1">{body}</TABLE>>'


class Chart(graphviz.Digraph):
    """A generated diagram: a `graphviz.Digraph` (`.source` is its DOT text) that draws itself in Jupyter, scaled to
    the width of the notebook's column, and writes itself as files.

        chart = sdviz.flowchart.repository_flowchart("unet")
        chart                                  # in a notebook: the picture
        chart.write("out/", ("dot", "svg", "png"))
    """

    def picture(self, fmt: str = "svg", dpi: int | None = None) -> bytes:
        """The chart drawn by Graphviz's `dot` in format `fmt` ("svg", "png", "pdf", ...)."""
        graph = self.copy()
        graph.graph_attr |= {"dpi": str(dpi)} if dpi else {}
        try:
            return graph.pipe(format=fmt)
        except graphviz.ExecutableNotFound:
            raise GraphvizMissing(INSTALL_HINT) from None

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs) -> dict:
        svg = self.picture("svg").decode("utf-8")
        return {"image/svg+xml": re.sub(r"<svg width=", '<svg style="max-width:100%;height:auto" width=', svg, count=1)}

    def write(self, directory: str | Path, formats=("dot", "svg", "png"), dpi: int = PNG_DPI) -> list[Path]:
        """Write `<directory>/<name>.<format>` for each format; returns the paths. DOT needs no Graphviz."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        paths = [Path(directory) / f"{self.name}.{fmt}" for fmt in formats]
        for path, fmt in zip(paths, formats, strict=True):
            data = self.source.encode("utf-8") if fmt == "dot" else self.picture(fmt, dpi if fmt == "png" else None)
            path.write_bytes(data)
        return paths


def chart(name: str, **graph_attrs) -> Chart:
    """A new chart in the house style: top to bottom, title at the top left, Graphviz's `newrank` (so that
    `rank=same` works across clusters) and `compound` (edges may end at a cluster's border)."""
    graph = dict(rankdir="TB", newrank="true", compound="true", fontname=FONT, labelloc="t", labeljust="l", pad="0.3")
    node = dict(fontname=FONT, fontsize="10", shape="box", style="filled", margin="0.08,0.04")
    edge = dict(fontname=FONT, fontsize="9", arrowsize="0.6", color="#555555", fontcolor=SHAPE_COLOR)
    return Chart(name, graph_attr=graph | graph_attrs, node_attr=node, edge_attr=edge)

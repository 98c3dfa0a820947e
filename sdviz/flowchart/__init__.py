"""Flowcharts of sdviz, drawn from its own code and a real (traced) run, so that they never go stale.

- The *repository flowchart* (`repository.py`), after the seed's hand-drawn LLaMA-2 chart: an
  overview of the files and their classes, and one sheet per component where each function is a yellow hexagon over
  one box per statement, with its code and, in bold italics, the tensor shapes it produced. The statements come
  from `ast` (`source.py`), the shapes, branches and calls from running the code under `sys.settrace` (`tracer.py`,
  `runs.py`) at the SD 1.5 configuration, the networks on PyTorch's `meta` device.
- *Architecture diagrams* (`architecture.py`): the pipelines as the seed drew them and the UNet as a U, derived from
  the module tree and the shape probe (`sdviz.shapes`).

    repository_flowchart("unet")                   # in Jupyter: displays itself (SVG, as wide as the column)
    architecture_diagram("unet", depth=3).source   # the DOT text (a `graphviz.Digraph`)
    write_all("flowcharts/")                       # every chart as .dot, .svg, .png: `sdviz flowchart` does this

`sdviz flowchart [--config toy] [--out DIR] [--format dot,svg]`. The `.dot` files need nothing but Python; SVG and
PNG need Graphviz's `dot`: without it, the `.dot` files are still written, and one line says how to install it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from sdviz.config import CONFIGS
from sdviz.flowchart.architecture import DEPTHS, KINDS, architecture_diagram
from sdviz.flowchart.graph import INSTALL_HINT, PNG_DPI, Chart, GraphvizMissing
from sdviz.flowchart.repository import SHEETS, component_sheet, overview

__all__ = ["DEPTHS", "KINDS", "SHEETS", "Chart", "GraphvizMissing", "architecture_diagram", "repository_flowchart"]
__all__ += ["PNG_DPI", "all_charts", "write_all", "main"]

FORMATS = ("dot", "svg", "png", "pdf")
# the architecture diagrams written by `write_all`: (kind, depth)
ARCHITECTURE = (("txt2img", 1), ("txt2img", 2), ("img2img", 1), ("inpaint", 1), ("unet", 1), ("unet", 2), ("unet", 3))


def repository_flowchart(sheet: str = "overview", config: str = "sd15") -> Chart:
    """One sheet of the repository flowchart, "overview" or a component (see SHEETS), from code and a traced run."""
    if sheet not in SHEETS:
        raise ValueError(f"unknown sheet {sheet!r}; known: {', '.join(SHEETS)}")
    return overview(config) if sheet == "overview" else component_sheet(sheet, config)


def all_charts(config: str = "sd15") -> list[Chart]:
    """Every chart `write_all` writes, in a fixed order: the repository sheets, then the architecture diagrams."""
    charts = [repository_flowchart(name, config) for name in SHEETS]
    return charts + [architecture_diagram(kind, depth, config) for kind, depth in ARCHITECTURE]


def write_all(out_dir: str | Path = "flowcharts", config: str = "sd15", formats=("dot", "svg", "png")) -> list[Path]:
    """Write every chart to `out_dir` in each format; returns the paths written. The `.dot` files are written first,
    and always: if Graphviz is missing, `GraphvizMissing` is raised after them (the DOT text is never lost)."""
    formats = tuple(f.strip().lower().lstrip(".") for f in formats if f.strip())
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"unknown format {', '.join(map(repr, unknown)) or '(none)'}; known: {', '.join(FORMATS)}")
    charts = all_charts(config)
    written = [path for c in charts for path in c.write(out_dir, ("dot",))]
    rendered = [f for f in formats if f != "dot"]
    if rendered and shutil.which("dot") is None:
        raise GraphvizMissing(INSTALL_HINT)
    return written + [path for c in charts for path in c.write(out_dir, rendered)]


def main(argv: Sequence[str] | None = None) -> int:
    """`sdviz flowchart`; returns the exit status (0 ok, 1 Graphviz missing, 2 bad arguments)."""
    about = "Draw sdviz's repository flowchart and architecture diagrams from its code and a traced run."
    parser = argparse.ArgumentParser(prog="sdviz flowchart", description=about)
    parser.add_argument("--config", default="sd15", help=f"model configuration: {', '.join(CONFIGS)} (default sd15)")
    parser.add_argument("--out", default="flowcharts", help="output folder (default flowcharts/)")
    parser.add_argument("--format", default="dot,svg,png", help=f"comma-separated, among {', '.join(FORMATS)}")
    args = parser.parse_args(argv)
    try:  # a bad configuration or format fails before anything is drawn
        written = write_all(args.out, args.config, args.format.split(","))
    except ValueError as e:
        print(f"sdviz flowchart: error: {e}", file=sys.stderr)
        return 2
    except GraphvizMissing as e:
        print(f"sdviz flowchart: {e}; the .dot files were written to {args.out}", file=sys.stderr)
        return 1
    print(f"wrote {len(written)} files to {args.out}")
    return 0

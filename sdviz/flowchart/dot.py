"""Writing Graphviz DOT text, deterministically, and rendering it with the `dot` program.

Graphviz (graphviz.org) lays out a graph described in its DOT language. A flowchart here is written as
DOT text by a small writer (`Dot`), so that the same code always gives the same bytes: node names come from
function names and statement positions, attributes are written in a fixed order, and nothing depends on memory
addresses, timing or the machine. The `.dot` files in `flowcharts/` are therefore checked by a test: regenerate
them, compare, and fail when the code has changed but the charts have not been redrawn.

Rendering (`.svg`, `.png`) needs the `dot` executable; the DOT text does not.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from contextlib import contextmanager
from pathlib import Path

INSTALL_HINT = (
    "Graphviz's `dot` executable was not found: install Graphviz (apt-get install graphviz, brew install graphviz, "
    "conda install graphviz, or see graphviz.org/download)"
)


class GraphvizMissing(RuntimeError):
    """Raised when rendering needs the `dot` executable and it is not installed."""


# -- the house style, after the seed's hand-drawn LLaMA-2 flowchart -----------------------------------------------

FONT = "DejaVu Sans"
MONO = "DejaVu Sans Mono"
STYLE = {
    "header": dict(fill="#FFE45C", line="#9A7D0A"),  # yellow hexagon: a class's method or a function
    "stmt": dict(fill="#FFFFFF", line="#555555"),  # a statement: code and the shapes it produced
    "return": dict(fill="#FDEBD0", line="#A04000"),  # what the function hands back
    "cond": dict(fill="#F5B7B1", line="#B03A2E"),  # red diamond: a condition
    "guard": dict(fill="#FADBD8", line="#B03A2E"),  # argument checks, summarised
    "loop": dict(fill="#D6EAF8", line="#1F618D"),  # a loop header
    "note": dict(fill="#EEEEEE", line="#AAAAAA", font="#555555"),  # grey side note: the code's own comments
    "module": dict(fill="#C8E6C9", line="#2E7D32"),  # a big module: a component drawn on its own sheet
    "cluster": dict(fill="#FAFAFA", line="#B0B0B0"),
    "call": dict(line="#1F618D"),  # call edges
    "shape": dict(font="#17365D"),  # shapes, bold italic
    "data": dict(fill="#FFFFFF", line="#333333"),  # architecture diagrams: data (tensors, images, text)
}


class HTML(str):
    """A Graphviz HTML-like label: written between < > instead of quotes."""


def esc(text: str) -> str:
    """Escape text for an HTML-like label."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def wrap(text: str, width: int, max_lines: int = 6, indent: str = "  ") -> list[str]:
    """Wrap code or prose into lines of at most `width` characters (continuation lines indented)."""
    lines = textwrap.wrap(text, width, subsequent_indent=indent, break_long_words=True, break_on_hyphens=False) or [""]
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [lines[max_lines - 1][: width - 1] + "…"]
    return lines


def left_lines(lines: list[str]) -> str:
    """Lines of an HTML label, each left-aligned."""
    return "".join(esc(line) + '<BR ALIGN="LEFT"/>' for line in lines)


def _quote(value) -> str:
    if isinstance(value, HTML):
        return f"<{value}>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    s = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{s}"'


def _attrs(attrs: dict) -> str:
    items = [f"{k}={_quote(v)}" for k, v in attrs.items() if v is not None]
    return f" [{', '.join(items)}]" if items else ""


class Dot:
    """Accumulates DOT text. Statements are written in call order, so the output is as deterministic as the caller."""

    def __init__(self, name: str, graph: dict | None = None, node: dict | None = None, edge: dict | None = None):
        self.lines = [f"digraph {_quote(name)} {{"]
        self.depth = 1
        if graph:
            self.line("graph" + _attrs(graph))
        if node:
            self.line("node" + _attrs(node))
        if edge:
            self.line("edge" + _attrs(edge))

    def line(self, text: str) -> None:
        self.lines.append("  " * self.depth + text)

    def node(self, name: str, **attrs) -> None:
        self.line(_quote(name) + _attrs(attrs))

    def edge(self, a: str, b: str, **attrs) -> None:
        self.line(f"{_quote(a)} -> {_quote(b)}" + _attrs(attrs))

    def attr(self, **attrs) -> None:
        for k, v in attrs.items():
            if v is not None:
                self.line(f"{k}={_quote(v)}")

    @contextmanager
    def subgraph(self, name: str = "", **attrs):
        self.line(f"subgraph {_quote(name)} {{" if name else "{")
        self.depth += 1
        self.attr(**attrs)
        try:
            yield
        finally:
            self.depth -= 1
            self.line("}")

    def same_rank(self, names: list[str]) -> None:
        if len(names) > 1:
            self.line("{rank=same; " + "; ".join(_quote(n) for n in names) + "}")

    def source(self) -> str:
        return "\n".join(self.lines + ["}"]) + "\n"


# -- charts ---------------------------------------------------------------------------------------------------------


def dot_executable() -> str | None:
    return shutil.which("dot")


class Chart:
    """A generated diagram: `.source` is its DOT text; in Jupyter it displays itself as SVG (needs Graphviz).

    chart = sdviz.flowchart.repository_flowchart("unet")
    chart                         # in a notebook: the picture
    chart.source                  # the DOT text
    chart.save("out/", ("dot", "svg", "png"))
    """

    def __init__(self, name: str, source: str, title: str = ""):
        self.name = name
        self.source = source
        self.title = title

    def __repr__(self) -> str:
        return f"Chart({self.name!r}, {len(self.source.splitlines())} lines of DOT)"

    def render(self, fmt: str = "svg", dpi: int | None = None) -> bytes:
        """The chart drawn by Graphviz's `dot` in format `fmt` ("svg", "png", "pdf", ...)."""
        exe = dot_executable()
        if exe is None:
            raise GraphvizMissing(INSTALL_HINT)
        cmd = [exe, f"-T{fmt}"] + ([f"-Gdpi={dpi}"] if dpi else [])
        proc = subprocess.run(cmd, input=self.source.encode("utf-8"), capture_output=True, check=False)
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            raise RuntimeError(f"dot failed on {self.name}: {err[-1] if err else proc.returncode}")
        return proc.stdout

    def _repr_svg_(self) -> str:
        return self.render("svg").decode("utf-8")

    def save(self, directory: str | Path, formats=("dot", "svg", "png"), dpi: int = 110) -> list[Path]:
        """Write `<directory>/<name>.<format>` for each format; returns the paths written. DOT needs no Graphviz."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for fmt in formats:
            path = directory / f"{self.name}.{fmt}"
            if fmt == "dot":
                path.write_text(self.source, encoding="utf-8")
            else:
                path.write_bytes(self.render(fmt, dpi=dpi if fmt == "png" else None))
            written.append(path)
        return written

"""The shape of the house: sdviz's modules import one another without circles, lower layers never import higher
ones, and every file is short enough to read start to end.

Imports are read with `ast`, so lazy imports inside functions and imports for type checking count too: a circle
that only closes at run time, in a function, is still a circle a reader has to untangle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent / "sdviz"
MAX_LINES = 560


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The sdviz modules a file imports, anywhere in it (top level, functions, TYPE_CHECKING blocks)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph[todo.pop()]:
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_no_import_circle_among_sdvizs_files():
    assert _circles(_graph()) == []


def test_the_checker_sees_a_circle_closed_inside_a_function(tmp_path, monkeypatch):
    """The check itself: two modules that import each other, one of them lazily, are a circle."""
    pkg = tmp_path / "sdviz"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from sdviz import b\n")
    (pkg / "b.py").write_text("def f():\n    from sdviz.a import x\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", pkg)
    assert _circles(_graph()) == [["sdviz.a", "sdviz.b"]]


@pytest.mark.parametrize("lower", ["sdviz.pipeline", "sdviz.tracing", "sdviz.editing", "sdviz.events", "sdviz.hooks"])
def test_lower_layers_never_import_the_toy_world_or_the_figures(lower):
    graph = _graph()
    starts = [m for m in graph if m == lower or m.startswith(lower + ".")]
    reached = set().union(*(_reaches(graph, s) | {s} for s in starts))
    assert not {m for m in reached if m.startswith(("sdviz.toy", "sdviz.viz", "sdviz.cli"))}


def test_editing_does_not_import_tracing():
    graph = _graph()
    editing = [m for m in graph if m.startswith("sdviz.editing")]
    assert not {w for m in editing for w in graph[m] if w.startswith("sdviz.tracing")}


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_file_reads_start_to_end(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES

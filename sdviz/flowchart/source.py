"""Reading sdviz's own source with Python's `ast`: which functions exist, and what their statements are.

The flowchart draws a function as a chain of statements. This module turns a function's source into that chain:

    def forward(self, x, temb=None):                      Function  ResnetBlock.forward
        h = self.conv1(F.silu(self.norm1(x)))    ->         Stmt "simple"  h = self.conv1(...)
        if self.time_emb_proj is not None:                  Stmt "if"      (body: [Stmt "simple"])
            h = h + self.time_emb_proj(...)
        return skip + h                                     Stmt "return"

Each statement keeps what the drawing and the shape tracer need: its code (comments removed, multi-line statements
joined), the comments written on or just above it (the chart's grey notes, minus the shape comments that the traced
shapes replace), the names it reads (whose shapes are its inputs) and the source lines that belong to it (so that a
line event of the tracer can be mapped back to the statement that is running).
"""

from __future__ import annotations

import ast
import importlib
import io
import re
import tokenize
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # .../sdviz
KINDS = {getattr(ast, kind.title()): kind for kind in ("if", "for", "while", "with", "try", "return", "raise")}


@dataclass(eq=False)
class Stmt:
    """One statement of a function, as drawn: a box (simple), a diamond (if), a loop header (for/while)."""

    index: int  # pre-order position in the function: a stable id that survives edits elsewhere in the file
    kind: str  # "simple" | "return" | "raise" | "if" | "for" | "while" | "with" | "try"
    code: str  # source text without comments; for compound statements only the header ("for x in y:")
    notes: list[str]  # comments on the statement's own lines and the comment block just above it
    lines: range  # source lines whose line events belong to this statement
    loads: list[str]  # names read by the statement's own expressions (its inputs), those it also assigns first
    target: ast.expr | None  # what holds its output: an assignment's (first) target, a `for`'s loop variable
    body: list[Stmt] = field(default_factory=list)
    orelse: list[Stmt] = field(default_factory=list)

    def walk(self):
        yield self
        for s in self.body + self.orelse:
            yield from s.walk()

    @property
    def is_guard(self) -> bool:
        """`if <bad input>: raise ...`: an argument check, drawn summarised so that it does not hide the data path."""
        one_raise = len(self.body) == 1 and self.body[0].kind == "raise"
        return self.kind == "if" and not self.orelse and one_raise and not self.code.startswith("elif")


@dataclass
class Function:
    """A function or method of sdviz, located in its file, with its statements."""

    module: str  # "sdviz.models.unet"
    relpath: str  # "sdviz/models/unet.py" (relative: generated files hold no absolute path)
    class_name: str | None
    name: str
    params: list[str]  # its parameters, without self
    firstlineno: int  # what the code object reports: the first decorator's line, else the `def` line
    doc: str  # first sentence of the docstring, or ""
    body: list[Stmt]

    @property
    def qualname(self) -> str:
        return f"{self.class_name}.{self.name}" if self.class_name else self.name

    @property
    def key(self) -> str:
        """Unique and stable: `unet.MidBlock.forward` differs from `vae.MidBlock.forward`."""
        return f"{self.module.rsplit('.', 1)[-1]}.{self.qualname}"


# -- comments ---------------------------------------------------------------------------------------------------------

_PART = r"\s*\*?(?:\d*[A-Za-z_]\w*|\d+)(?:\s*[*+/\-]\s*(?:\d*[A-Za-z_]\w*|\d+))*\s*"
_SHAPE = re.compile(r"(?:\d+\s*x\s*)?\((?:" + _PART + r"(?:," + _PART + r")*,?\s*)?\)")  # (B, C, H/2, W/2), 2 x (B,)
_ARROWS = re.compile(r"->|\.\.\.|\bx\b|\+|;|,")


def clean_comment(text: str) -> str:
    """A comment minus its tensor shapes: "(B, 77, 768): each token sees earlier ones" -> "each token sees ...".

    Shape comments are what the traced shapes replace; whatever prose is left is a note worth keeping. Returns ""
    when nothing but shapes, arrows and punctuation is left.
    """
    text = text.lstrip("#").strip()
    stripped = _SHAPE.sub(" ", text)
    rest = re.sub(r"^SD 1\.5\s*:?", "", _ARROWS.sub(" ", stripped).strip()).strip(" :.,;-")
    if not re.findall(r"[A-Za-z]{3,}", rest):
        return ""
    if stripped == text:
        return text
    # keep the prose, drop the leading shapes (a trailing explanation is what a learner needs)
    prose = re.sub(r"^[\s:;,.\-]*", "", _SHAPE.sub("", text).replace("->", " ").strip())
    prose = re.sub(r"^(?:\.\.\.|[\s:;,\-])+", "", prose)
    return re.sub(r"\s{2,}", " ", prose).strip(" :;,")


# -- statements ---------------------------------------------------------------------------------------------------


class _Builder:
    """Builds the `Stmt`s of one file's functions, numbering them in pre-order from 0 in each function."""

    def __init__(self, source: str):
        self.lines = source.splitlines()
        tokens = tokenize.generate_tokens(io.StringIO(source).readline)  # below: line -> (column, text) of a comment
        self.comments = {t.start[0]: (t.start[1], t.string) for t in tokens if t.type == tokenize.COMMENT}
        self.counter = 0

    def code_of(self, first: int, last: int, end_col: int | None = None) -> str:
        parts = []
        for ln in range(first, last + 1):
            text = self.lines[ln - 1][: end_col if ln == last else None]
            parts.append(text[: self.comments[ln][0]] if ln in self.comments else text)
        code = " ".join(p.strip() for p in parts if p.strip())
        return re.sub(r",? ([)\]}])", r"\1", re.sub(r"([(\[{]) ", r"\1", code))

    def notes_of(self, first: int, last: int) -> list[str]:
        """Comments on the statement's lines, and the block of whole-line comments right above it (one sentence)."""
        above, ln = [], first - 1
        while ln >= 1 and self.lines[ln - 1].strip().startswith("#"):
            above.insert(0, self.lines[ln - 1].strip().lstrip("#").strip())
            ln -= 1
        raw = [" ".join(above)] if above else []
        raw += [self.comments[n][1] for n in range(first, last + 1) if n in self.comments]
        return [n for n in map(clean_comment, raw) if n]

    def build(self, stmts: list[ast.stmt], elif_: bool = False) -> list[Stmt]:
        docstring = lambda n: isinstance(n, ast.Expr) and isinstance(getattr(n.value, "value", None), str)  # noqa: E731
        skip = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
        return [self.stmt(n, elif_) for n in stmts if not docstring(n) and not isinstance(n, skip)]

    def stmt(self, node: ast.stmt, elif_: bool = False) -> Stmt:
        index, self.counter = self.counter, self.counter + 1
        kind = KINDS.get(type(node), "simple")
        compound = kind in ("if", "for", "while", "with", "try")
        last = node.end_lineno
        if compound:
            first = node.body[0]
            last = first.lineno - 1 if first.lineno > node.lineno else node.lineno
            code = self.code_of(node.lineno, last, first.col_offset if first.lineno == node.lineno else None)
            code = "el" + code if elif_ and code.startswith("if ") else code
            # the expressions the header evaluates: an `if`'s or `while`'s test, a `for`'s iterable, a `with`'s items
            exprs = [getattr(node, a) for a in ("test", "iter") if hasattr(node, a)]
            exprs += [item.context_expr for item in getattr(node, "items", [])]
        else:
            code, exprs = self.code_of(node.lineno, last), [node]
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        loads = _loads(exprs, node, target)
        s = Stmt(index, kind, code, self.notes_of(node.lineno, last), range(node.lineno, last + 1), loads, target)
        if compound:
            s.body = self.build(node.body)
            orelse = getattr(node, "orelse", [])
            s.orelse = self.build(orelse, elif_=kind == "if" and len(orelse) == 1 and isinstance(orelse[0], ast.If))
            if kind == "try":
                s.orelse += [x for h in node.handlers for x in self.build(h.body)] + self.build(node.finalbody)
        return s


_META_ATTRS = {"device", "dtype", "shape", "ndim", "is_floating_point"}


def _loads(exprs: list[ast.AST], node: ast.stmt, target: ast.expr | None) -> list[str]:
    """Names a statement reads, those it assigns first (`x = f(x, y)`: x, y), except names only asked for their
    device, dtype or shape (`x.device` does not make x an input; `b, c, h, w = x.shape` does: it is about x)."""
    unpacks_shape = isinstance(node, ast.Assign) and getattr(node.value, "attr", None) == "shape"
    meta = lambda n: isinstance(n, ast.Attribute) and n.attr in _META_ATTRS and isinstance(n.value, ast.Name)  # noqa: E731
    skip = set() if unpacks_shape else {id(n.value) for e in exprs for n in ast.walk(e) if meta(n)}
    loads = [n for e in exprs for n in ast.walk(e) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)]
    names = list(dict.fromkeys(n.id for n in loads if id(n) not in skip))
    assigned = {n.id for n in ast.walk(target) if isinstance(n, ast.Name)} if target else ()
    return sorted(names, key=lambda n: n not in assigned)


_ABBREVIATIONS = ("et al.", "e.g.", "i.e.", "eq.", "eqs.", "Fig.", "cf.", "vs.")


def first_sentence(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph (not fooled by "et al." or "eq.")."""
    para = " ".join((doc or "").strip().split("\n\n")[0].split())
    ends = (m.end() for m in re.finditer(r"\.(?= |$)", para) if not para[: m.end()].endswith(_ABBREVIATIONS))
    return para[: next(ends, len(para))]


@cache
def functions_of(module_name: str) -> tuple[Function, ...]:
    """Every function and method of a module of sdviz (nested functions and properties excepted), in source order."""
    path = Path(importlib.import_module(module_name).__file__).resolve()
    source = path.read_text(encoding="utf-8")
    relpath = path.relative_to(PACKAGE_ROOT.parent).as_posix()
    b, out = _Builder(source), []
    for top in ast.parse(source).body:
        cls = top.name if isinstance(top, ast.ClassDef) else None
        for fn in (n for n in (top.body if cls else [top]) if isinstance(n, ast.FunctionDef)):
            if {"property", "setter"} & {getattr(d, "attr", getattr(d, "id", "")) for d in fn.decorator_list}:
                continue  # properties are attribute reads, not steps of the data path
            b.counter = 0
            first = min([fn.lineno] + [d.lineno for d in fn.decorator_list])
            a, doc = fn.args, first_sentence(ast.get_docstring(fn))
            params = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
            out.append(Function(module_name, relpath, cls, fn.name, params, first, doc, b.build(fn.body)))
    return tuple(out)


def modules_in(folder: str) -> list[str]:
    """The modules of `sdviz/<folder>/`, found on disk (a new file joins the flowchart without being listed here)."""
    return sorted(f"sdviz.{folder}.{p.stem}" for p in (PACKAGE_ROOT / folder).glob("*.py") if p.stem != "__init__")

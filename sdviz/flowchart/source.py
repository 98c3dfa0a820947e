"""Reading sdviz's own source with Python's `ast`: which functions exist, and what their statements are.

The flowchart draws a function as a chain of statements. This module turns a function's source into that chain:

    def forward(self, x, temb=None):                      Function  ResnetBlock.forward
        h = self.conv1(F.silu(self.norm1(x)))    ->         Stmt "simple"  h = self.conv1(...)
        if self.time_emb_proj is not None:                  Stmt "if"      (body: [Stmt "simple"])
            h = h + self.time_emb_proj(...)
        ...
        return skip + h                                     Stmt "return"

Each statement keeps what the drawing and the shape tracer need: its code (comments removed, multi-line statements
joined), the comments written on or just above it (they become the chart's grey notes, minus the shape comments
that the traced shapes replace), the names it reads (whose shapes are its inputs), the targets it assigns (whose
shapes are its outputs) and the source lines that belong to it (so that a line event of the tracer can be mapped
back to the statement that is running).
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
REPO_ROOT = PACKAGE_ROOT.parent


@dataclass
class Stmt:
    """One statement of a function, as drawn: a box (simple), a diamond (if), a loop header (for/while)."""

    index: int  # pre-order position in the function: a stable id that survives edits elsewhere in the file
    kind: str  # "simple" | "return" | "raise" | "if" | "for" | "while" | "with" | "try"
    node: ast.stmt
    code: str  # source text without comments; for compound statements only the header ("for x in y:")
    notes: list[str]  # comments on the statement's own lines and the comment block just above it
    lines: list[int]  # source lines whose line events belong to this statement
    loads: list[str]  # names read by the statement's own expressions (its inputs)
    body: list[Stmt] = field(default_factory=list)
    orelse: list[Stmt] = field(default_factory=list)
    is_elif: bool = False

    def walk(self):
        yield self
        for s in self.body + self.orelse:
            yield from s.walk()

    @property
    def is_guard(self) -> bool:
        """`if <bad input>: raise ...`: an argument check, drawn summarised so that it does not hide the data path."""
        return (
            self.kind == "if"
            and not self.orelse
            and len(self.body) == 1
            and self.body[0].kind == "raise"
            and not self.is_elif
        )


@dataclass
class Function:
    """A function or method of sdviz, located in its file, with its statements."""

    module: str  # "sdviz.models.unet"
    relpath: str  # "sdviz/models/unet.py" (relative, so that generated files hold no absolute path)
    class_name: str | None
    name: str
    node: ast.FunctionDef
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

    @property
    def filename(self) -> str:
        return self.relpath.rsplit("/", 1)[-1]

    def statements(self):
        for s in self.body:
            yield from s.walk()

    @property
    def params(self) -> list[str]:
        a = self.node.args
        names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
        return [n for n in names if n not in ("self", "cls")]


# -- comments ---------------------------------------------------------------------------------------------------------

_PART = r"\s*\*?(?:\d*[A-Za-z_]\w*|\d+)(?:\s*[*+/\-]\s*(?:\d*[A-Za-z_]\w*|\d+))*\s*"
_SHAPE = re.compile(r"(?:\d+\s*x\s*)?\((?:" + _PART + r"(?:," + _PART + r")*,?\s*)?\)")  # (B, C, H/2, W/2), 2 x (B,)
_ARROWS = re.compile(r"->|\.\.\.|\bx\b|\+|;|,")


def clean_comment(text: str) -> str:
    """A comment minus its tensor shapes: "(B, 77, 768): each token sees earlier ones" -> "each token sees ...".

    Shape comments are what the traced shapes replace (and check); whatever prose is left is a note worth keeping.
    Returns "" when nothing but shapes, arrows and punctuation is left.
    """
    text = text.lstrip("#").strip()
    stripped = _SHAPE.sub(" ", text)
    rest = _ARROWS.sub(" ", stripped)
    rest = re.sub(r"^SD 1\.5\s*:?", "", rest.strip()).strip(" :.,;-")
    words = re.findall(r"[A-Za-z]{3,}", rest)
    if not words:
        return ""
    if stripped == text:
        return text
    # keep the prose, drop the leading shapes (a trailing explanation is what a learner needs)
    prose = re.sub(r"^[\s:;,.\-]*", "", _SHAPE.sub("", text).replace("->", " ").strip())
    prose = re.sub(r"^(?:\.\.\.|[\s:;,\-])+", "", prose)
    prose = re.sub(r"\s{2,}", " ", prose).strip(" :;,")
    return prose


def _comments(source: str) -> dict[int, tuple[int, str]]:
    """line -> (column, comment text) for every comment of a file."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = (tok.start[1], tok.string)
    return out


# -- statements ---------------------------------------------------------------------------------------------------


class _Builder:
    def __init__(self, source: str):
        self.lines = source.splitlines()
        self.comments = _comments(source)
        self.counter = 0

    def code_of(self, first: int, last: int, end_col: int | None = None) -> str:
        parts = []
        for ln in range(first, last + 1):
            text = self.lines[ln - 1]
            if ln == last and end_col is not None:
                text = text[:end_col]
            if ln in self.comments:
                text = text[: self.comments[ln][0]]
            parts.append(text.strip())
        code = " ".join(p for p in parts if p)
        code = re.sub(r"([(\[{]) ", r"\1", code)
        code = re.sub(r",? ([)\]}])", r"\1", code)
        return code

    def notes_of(self, first: int, last: int) -> list[str]:
        """Comments on the statement's lines, and the block of whole-line comments right above it."""
        above = []
        ln = first - 1
        while ln >= 1 and self.lines[ln - 1].strip().startswith("#"):
            above.append(self.lines[ln - 1].strip())
            ln -= 1
        raw = list(reversed(above)) + [self.comments[n][1] for n in range(first, last + 1) if n in self.comments]
        if above:  # a block comment is one sentence broken over lines: join it
            joined = " ".join(c.lstrip("#").strip() for c in reversed(above))
            raw = [joined] + raw[len(above) :]
        notes = [clean_comment(c) for c in raw]
        return [n for n in notes if n]

    def build(self, stmts: list[ast.stmt], elif_: bool = False) -> list[Stmt]:
        out = []
        for node in stmts:
            if isinstance(node, ast.Expr) and isinstance(getattr(node.value, "value", None), str):
                continue  # docstring
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            out.append(self.stmt(node, elif_))
        return out

    def stmt(self, node: ast.stmt, elif_: bool = False) -> Stmt:
        index = self.counter
        self.counter += 1
        compound = isinstance(node, (ast.If, ast.For, ast.While, ast.With, ast.Try))
        if compound:
            first_body = node.body[0]
            header_last = first_body.lineno - 1 if first_body.lineno > node.lineno else node.lineno
            end_col = first_body.col_offset if first_body.lineno == node.lineno else None
            code = self.code_of(node.lineno, header_last, end_col)
            if elif_ and code.startswith("if "):
                code = "el" + code
            lines = list(range(node.lineno, header_last + 1))
            exprs = {
                ast.If: lambda n: [n.test],
                ast.For: lambda n: [n.iter],
                ast.While: lambda n: [n.test],
                ast.With: lambda n: [i.context_expr for i in n.items],
                ast.Try: lambda n: [],
            }[type(node)](node)
        else:
            header_last = node.end_lineno
            code = self.code_of(node.lineno, node.end_lineno)
            lines = list(range(node.lineno, node.end_lineno + 1))
            exprs = [node]
        kind = {
            ast.If: "if",
            ast.For: "for",
            ast.While: "while",
            ast.With: "with",
            ast.Try: "try",
            ast.Return: "return",
            ast.Raise: "raise",
        }.get(type(node), "simple")
        loads = _loads(exprs, node)
        s = Stmt(index, kind, node, code, self.notes_of(node.lineno, header_last), lines, loads, is_elif=elif_)
        if compound:
            s.body = self.build(node.body)
            orelse = getattr(node, "orelse", [])
            if kind == "if" and len(orelse) == 1 and isinstance(orelse[0], ast.If):
                s.orelse = self.build(orelse, elif_=True)
            else:
                s.orelse = self.build(orelse)
            if kind == "try":
                for h in node.handlers:
                    s.orelse += self.build(h.body)
                s.orelse += self.build(node.finalbody)
        return s


_META_ATTRS = {"device", "dtype", "shape", "ndim", "is_floating_point"}


def _loads(exprs: list[ast.AST], node: ast.stmt) -> list[str]:
    """Names a statement reads, in order, except those only asked for their device, dtype or shape (`x.device`
    does not make x an input). `b, c, h, w = x.shape` keeps x: unpacking a shape is what it is about."""
    unpacks_shape = (
        isinstance(node, ast.Assign) and isinstance(node.value, ast.Attribute) and node.value.attr == "shape"
    )
    skip = set()
    if not unpacks_shape:
        for e in exprs:
            for n in ast.walk(e):
                if isinstance(n, ast.Attribute) and n.attr in _META_ATTRS and isinstance(n.value, ast.Name):
                    skip.add(id(n.value))
    loads: list[str] = []
    for e in exprs:
        for n in ast.walk(e):
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and id(n) not in skip and n.id not in loads:
                loads.append(n.id)
    return loads


_ABBREVIATIONS = ("et al.", "e.g.", "i.e.", "eq.", "eqs.", "Fig.", "cf.", "vs.")


def _first_sentence(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph (not fooled by "et al." or "eq.")."""
    if not doc:
        return ""
    para = " ".join(doc.strip().split("\n\n")[0].split())
    for i, ch in enumerate(para):
        if ch == "." and (i + 1 == len(para) or para[i + 1] == " "):
            if not any(para[: i + 1].endswith(a) for a in _ABBREVIATIONS):
                return para[: i + 1]
    return para


@cache
def functions_of(module_name: str) -> tuple[Function, ...]:
    """Every function and method defined in a module of sdviz (nested functions excepted), in source order."""
    mod = importlib.import_module(module_name)
    path = Path(mod.__file__).resolve()
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    relpath = path.relative_to(REPO_ROOT).as_posix()
    out = []
    b = _Builder(source)

    def add(fn: ast.FunctionDef, cls: str | None):
        if any(_decorator_name(d) in ("property", "setter") for d in fn.decorator_list):
            return  # properties are attribute reads, not steps of the data path
        b.counter = 0
        first = min([fn.lineno] + [d.lineno for d in fn.decorator_list])
        doc = _first_sentence(ast.get_docstring(fn))
        out.append(Function(module_name, relpath, cls, fn.name, fn, first, doc, b.build(fn.body)))

    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            add(node, None)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    add(item, node.name)
    return tuple(out)


def _decorator_name(d: ast.expr) -> str:
    if isinstance(d, ast.Attribute):
        return d.attr
    if isinstance(d, ast.Name):
        return d.id
    return ""


@cache
def classes_of(module_name: str) -> tuple[tuple[str, str], ...]:
    """(class name, first sentence of its docstring) for every class a module defines, in source order."""
    mod = importlib.import_module(module_name)
    tree = ast.parse(Path(mod.__file__).read_text(encoding="utf-8"))
    return tuple((n.name, _first_sentence(ast.get_docstring(n))) for n in tree.body if isinstance(n, ast.ClassDef))


def model_modules() -> list[str]:
    """The modules of `sdviz/models/`, found on disk (a new file joins the flowchart without being listed here)."""
    return sorted(f"sdviz.models.{p.stem}" for p in (PACKAGE_ROOT / "models").glob("*.py") if p.stem != "__init__")


def sampler_modules() -> list[str]:
    return sorted(f"sdviz.samplers.{p.stem}" for p in (PACKAGE_ROOT / "samplers").glob("*.py") if p.stem != "__init__")

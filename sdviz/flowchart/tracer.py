"""Recording, statement by statement, what a real run of sdviz's code does: the shapes each line produced, how
often it ran, which branch each `if` took and which function each line called.

It uses Python's own debugger hook, `sys.settrace`. Python calls the trace function at every function call; for
the functions we draw it asks for *line* events too, one each time a new source line starts. When the line that
starts belongs to a new statement, the previous statement has finished: its assigned variables hold its outputs.
When a statement starts, the variables it reads hold its inputs. Shapes of both are recorded, as strings:

    x = self.conv_in(x)        start: x is (2, 4, 64, 64)   finish: x is (2, 320, 64, 64)
                               -> recorded "(B, 4, 64, 64) -> (B, 320, 64, 64)"  (B: the batch, here 2)

A call event whose caller (the nearest traced frame down the stack) is running statement s of function f
records the edge "f, statement s -> callee". Nothing is changed in the code being traced: this is observation only,
and it is switched off again when the `with` block ends, even if the run raises.

Only strings are kept, never tensors, and object ids only to count distinct instances: the records are small
and their rendering is deterministic.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType, FrameType

import torch

from sdviz.flowchart.source import Function, Stmt, functions_of

# -- describing values --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeFormat:
    """Tensor shapes as strings, with the batch dimension written symbolically.

    The run uses a known batch size `batch`; a leading dimension equal to it prints as B, one equal to twice it as
    2B (classifier-free guidance runs the UNet on [unconditional; conditional]). Every other number is printed as is.
    """

    batch: int = 2

    def shape(self, shape: Iterable[int]) -> str:
        dims = [str(int(d)) for d in shape]
        if not dims:
            return "scalar"
        if self.batch > 1 and dims[0] == str(self.batch):
            dims[0] = "B"
        elif self.batch > 1 and dims[0] == str(2 * self.batch):
            dims[0] = "2B"
        return "(" + ", ".join(dims) + (",)" if len(dims) == 1 else ")")

    def value(self, v, scalars: bool = True) -> str | None:
        """A short description of a value: a tensor's shape, a sequence of tensors, a Python number's type."""
        if isinstance(v, torch.Tensor):
            return self.shape(v.shape)
        if isinstance(v, (bool, int)):
            return str(v) if scalars else None  # a count or a size: its value says more than its type
        if isinstance(v, float):
            return "float" if scalars else None
        if isinstance(v, (list, tuple)) and v and all(isinstance(e, torch.Tensor) for e in v):
            shapes = [self.shape(e.shape) for e in v]
            if len(set(shapes)) == 1:
                inner = f"{len(v)} x {shapes[0]}"
            elif len(v) <= 2:
                inner = ", ".join(shapes)
            else:
                inner = f"{len(v)} tensors"
            return f"[{inner}]" if isinstance(v, list) else inner
        if isinstance(v, tuple) and 1 < len(v) <= 3:
            parts = [self.value(e, scalars) for e in v]
            if all(p is not None for p in parts):
                return ", ".join(parts)
        return None


# -- records --------------------------------------------------------------------------------------------------------


@dataclass
class StmtRecord:
    count: int = 0  # times it ran, over the whole recording
    max_per_call: int = 0  # most times it ran within one call of its function (a loop's iteration count)
    variants: dict[str, int] = field(default_factory=dict)  # "in -> out" -> times seen, in order of first sight
    yes: int = 0  # for an `if`: times its body ran
    no: int = 0


@dataclass
class FunctionRecord:
    calls: int = 0
    instances: int = 0  # distinct `self` objects (16 TransformerBlock instances in the SD 1.5 UNet)
    stmts: dict[int, StmtRecord] = field(default_factory=dict)


@dataclass
class Recording:
    """What a traced run did. Keys are `Function.key` ("unet.ResnetBlock.forward"); dicts are in order of first use."""

    description: str
    batch: int
    functions: dict[str, FunctionRecord] = field(default_factory=dict)
    edges: dict[tuple[str, int, str], int] = field(default_factory=dict)  # (caller, stmt index, callee) -> calls
    roots: list[str] = field(default_factory=list)
    expanded: list[str] = field(default_factory=list)  # functions whose lines were recorded (the others: calls only)

    def merge(self, other: Recording, same_objects: bool) -> None:
        """Add another run's counts to this one. `same_objects`: the runs used the same objects (the pipeline's
        three modes), so instance counts do not add up; different networks' objects do."""
        for key, rec in other.functions.items():
            mine = self.functions.setdefault(key, FunctionRecord())
            mine.calls += rec.calls
            mine.instances = max(mine.instances, rec.instances) if same_objects else mine.instances + rec.instances
            for i, s in rec.stmts.items():
                m = mine.stmts.setdefault(i, StmtRecord())
                m.count += s.count
                m.max_per_call = max(m.max_per_call, s.max_per_call)
                m.yes += s.yes
                m.no += s.no
                for v, n in s.variants.items():
                    m.variants[v] = m.variants.get(v, 0) + n
        for e, n in other.edges.items():
            self.edges[e] = self.edges.get(e, 0) + n
        self.roots += [r for r in other.roots if r not in self.roots]
        self.expanded += [r for r in other.expanded if r not in self.expanded]


# -- the function index ---------------------------------------------------------------------------------------------


class FunctionIndex:
    """Finds the `Function` (source, statements) of a running code object, by file and first line."""

    def __init__(self, modules: Iterable[str]):
        self.by_location: dict[tuple[str, int], Function] = {}
        self.by_key: dict[str, Function] = {}
        for m in modules:
            for fn in functions_of(m):
                path = str(Path(sys.modules[m].__file__).resolve())
                self.by_location[(path, fn.firstlineno)] = fn
                self.by_key[fn.key] = fn
        self._cache: dict[CodeType, Function | None] = {}
        self._paths: dict[str, str] = {}

    def lookup(self, code: CodeType) -> Function | None:
        try:
            return self._cache[code]
        except KeyError:
            pass
        path = self._paths.get(code.co_filename)
        if path is None:
            try:
                path = str(Path(code.co_filename).resolve())
            except (OSError, ValueError):
                path = code.co_filename
            self._paths[code.co_filename] = path
        fn = self.by_location.get((path, code.co_firstlineno))
        if fn is not None and fn.name != code.co_name:
            fn = None
        self._cache[code] = fn
        return fn


# -- the tracer -----------------------------------------------------------------------------------------------------


@dataclass
class _Frame:
    fn: Function
    lines: dict[int, Stmt]
    record: FunctionRecord
    current: Stmt | None = None
    inputs: str = ""
    counts: dict[int, int] = field(default_factory=dict)


def _line_map(fn: Function) -> dict[int, Stmt]:
    out: dict[int, Stmt] = {}
    for s in fn.statements():
        for ln in s.lines:
            out.setdefault(ln, s)
    return out


def _body_indices(s: Stmt) -> frozenset[int]:
    return frozenset(x.index for b in s.body for x in b.walk())


class LineTracer:
    """Context manager: while active, records into `self.recording` every call of the selected functions.

    expand(fn): draw this function's statements (record its lines); collapsed(fn): record calls *to* it but not
    inside it (a component drawn on another sheet). `proxy(frame)` may map a stand-in's frame to the function it
    stands for.
    """

    def __init__(
        self,
        index: FunctionIndex,
        recording: Recording,
        expand: Callable[[Function], bool],
        collapsed: Callable[[Function], bool] = lambda fn: False,
        proxy: Callable[[FrameType], Function | None] | None = None,
    ):
        self.index = index
        self.recording = recording
        self.fmt = ShapeFormat(recording.batch)
        self.expand, self.collapsed, self.proxy = expand, collapsed, proxy
        self._active: dict[FrameType, _Frame] = {}
        self._lines: dict[str, dict[int, Stmt]] = {}
        self._bodies: dict[tuple[str, int], frozenset[int]] = {}
        self._instances: dict[str, set[int]] = {}
        self._role: dict[CodeType, tuple[str, Function | None]] = {}
        self._previous = None

    # role of a code object: "expand" | "collapsed" | "proxy" | "" (not ours)
    def _role_of(self, frame: FrameType) -> tuple[str, Function | None]:
        code = frame.f_code
        try:
            role, fn = self._role[code]
        except KeyError:
            fn = self.index.lookup(code)
            if fn is None:
                role = ""
            elif self.expand(fn):
                role = "expand"
            elif self.collapsed(fn):
                role = "collapsed"
            else:
                role = ""
            if role == "" and self.proxy is not None and self.proxy(frame) is not None:
                role = "proxy"
            self._role[code] = (role, fn)
        if role == "proxy":
            return role, self.proxy(frame)
        return role, fn

    def __enter__(self) -> LineTracer:
        self._previous = sys.gettrace()
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc) -> None:
        sys.settrace(self._previous)
        for key, ids in self._instances.items():
            rec = self.recording.functions[key]
            rec.instances = max(rec.instances, len(ids))
        self._active.clear()

    def _caller(self, frame: FrameType) -> tuple[str, _Frame | None]:
        """The nearest traced frame below this one: ("expand", state) | ("blocked", None) | ("root", None)."""
        f = frame.f_back
        while f is not None:
            st = self._active.get(f)
            if st is not None:
                return "expand", st
            role, _ = self._role_of(f)
            if role in ("collapsed", "proxy"):
                return "blocked", None
            f = f.f_back
        return "root", None

    def _global(self, frame: FrameType, event: str, arg):
        if event != "call":
            return None
        role, fn = self._role_of(frame)
        if not role:
            return None
        where, caller = self._caller(frame)
        if where == "blocked":
            return None
        rec = self.recording
        frec = rec.functions.setdefault(fn.key, FunctionRecord())
        frec.calls += 1
        self_obj = frame.f_locals.get("self") if fn.class_name else None
        if self_obj is not None:
            self._instances.setdefault(fn.key, set()).add(id(self_obj))
        if caller is None:
            if fn.key not in rec.roots:
                rec.roots.append(fn.key)
        elif caller.current is not None:
            edge = (caller.fn.key, caller.current.index, fn.key)
            rec.edges[edge] = rec.edges.get(edge, 0) + 1
        if role != "expand":
            return None
        if fn.key not in rec.expanded:
            rec.expanded.append(fn.key)
        lines = self._lines.get(fn.key)
        if lines is None:
            lines = self._lines[fn.key] = _line_map(fn)
        self._active[frame] = _Frame(fn, lines, frec)
        return self._local

    def _local(self, frame: FrameType, event: str, arg):
        st = self._active.get(frame)
        if st is None:
            return None
        if event == "line":
            s = st.lines.get(frame.f_lineno)
            if s is not None and s is not st.current:
                local = frame.f_locals
                self._finish(st, local, None, returning=False, next_stmt=s)
                self._begin(st, s, local)
        elif event == "return":
            self._finish(st, frame.f_locals, arg, returning=True, next_stmt=None)
            for i, n in st.counts.items():
                r = st.record.stmts[i]
                r.max_per_call = max(r.max_per_call, n)
            del self._active[frame]
        return self._local

    def _begin(self, st: _Frame, s: Stmt, local: dict) -> None:
        st.current = s
        st.counts[s.index] = st.counts.get(s.index, 0) + 1
        r = st.record.stmts.setdefault(s.index, StmtRecord())
        r.count += 1
        ins: list[str] = []
        names = list(s.loads)
        target_names = _target_names(s)
        names.sort(key=lambda n: n not in target_names)  # x = f(x, ...): x first
        for n in names:
            v = local.get(n)
            d = self.fmt.value(v, scalars=False) if isinstance(v, (torch.Tensor, tuple)) else None
            if d is not None and d not in ins:
                ins.append(d)
        st.inputs = ", ".join(ins[:3])

    def _finish(self, st: _Frame, local: dict, returned, returning: bool, next_stmt: Stmt | None) -> None:
        s = st.current
        if s is None:
            return
        r = st.record.stmts[s.index]
        if s.kind == "if":
            key = (st.fn.key, s.index)
            body = self._bodies.get(key)
            if body is None:
                body = self._bodies[key] = _body_indices(s)
            if next_stmt is not None and next_stmt.index in body:
                r.yes += 1
            else:
                r.no += 1
            return
        out = None
        if s.kind == "return" and returning:
            out = self.fmt.value(returned)
        elif s.kind == "for":
            out = self._targets(s.node.target, local, tensors_only=True)
        elif s.kind == "simple":
            out = self._assigned(s, local)
        if out and st.inputs and not any(c in out for c in "([") and "scalar" not in out:
            out = None  # `b, c, h, w = x.shape`: the input's shape already says it
        if out or st.inputs:
            text = f"{st.inputs} -> {out}" if st.inputs and out else (out or st.inputs)
            r.variants[text] = r.variants.get(text, 0) + 1
        st.current = None

    def _assigned(self, s: Stmt, local: dict) -> str | None:
        node = s.node
        if isinstance(node, ast.Assign):
            return self._targets(node.targets[0], local)
        if isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            return self._targets(node.target, local)
        return None

    def _targets(self, target, local: dict, tensors_only: bool = False) -> str | None:
        if isinstance(target, ast.Tuple):
            parts = [self._targets(e, local, tensors_only) for e in target.elts]
            parts = [p for p in parts if p]
            return ", ".join(parts) if parts else None
        value = _resolve(target, local)
        if value is _MISSING:
            return None
        if tensors_only and not isinstance(value, (torch.Tensor, list, tuple)):
            return None
        return self.fmt.value(value)


_MISSING = object()


def _resolve(node, local: dict):
    """The value of a Name or an attribute chain (`self.timesteps`) in the frame's locals, without side effects."""
    if isinstance(node, ast.Name):
        return local.get(node.id, _MISSING)
    if isinstance(node, ast.Attribute):
        base = _resolve(node.value, local)
        if base is _MISSING:
            return _MISSING
        try:
            return object.__getattribute__(base, node.attr) if node.attr in getattr(base, "__dict__", {}) else _MISSING
        except AttributeError:
            return _MISSING
    return _MISSING


def _target_names(s: Stmt) -> set[str]:
    node = s.node
    targets = []
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        targets = [node.target]
    names = set()
    for t in targets:
        for n in ast.walk(t):
            if isinstance(n, ast.Name):
                names.add(n.id)
    return names

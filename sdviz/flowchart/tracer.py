"""Recording, statement by statement, what a real run of sdviz's code does: the shapes each statement produced, how
often it ran, which branch each `if` took and which function each statement called.

It uses Python's own debugger hook, `sys.settrace`. Python calls the trace function at every function call; for
the functions we draw it asks for *line* events too, one each time a new source line starts. When the line that
starts belongs to a new statement, the previous statement has finished: its assigned variables hold its outputs.
When a statement starts, the variables it reads hold its inputs. Shapes of both are recorded, as strings:

    x = self.conv_in(x)        start: x is (3, 4, 64, 64)   finish: x is (3, 320, 64, 64)
                               -> recorded "(B, 4, 64, 64) → (B, 320, 64, 64)"  (B: the batch, here 3)

A call event whose caller (the nearest traced frame down the stack) is running statement s of function f records
the edge "f, statement s -> callee". Nothing is changed in the code being traced, and tracing is switched off when
the `with` block ends, even if the run raises. Only strings are kept (and object ids, to count distinct objects).
"""

from __future__ import annotations

import ast
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import CodeType, FrameType

import torch

from sdviz.flowchart.source import Function, Stmt, functions_of


@dataclass(frozen=True)
class ShapeFormat:
    """Tensor shapes as strings, with the batch written B: a leading dimension equal to `batch` prints as B, one
    equal to twice it as 2B (classifier-free guidance runs the UNet on [unconditional; conditional])."""

    batch: int = 2

    def shape(self, shape: tuple) -> str:
        """(B, 4, 64, 64); shapes in a tuple or a list: 2× (B, 4, 64, 64), [3× (B, 320)], (B, 4), (B, 77), 5 tensors."""
        if shape and isinstance(shape[0], (tuple, list)):
            texts, n = [self.shape(s) for s in shape], len(shape)
            inner = f"{n}× {texts[0]}" if len(set(texts)) == 1 else ", ".join(texts) if n <= 2 else f"{n} tensors"
            return f"[{inner}]" if isinstance(shape, list) else inner
        dims = [str(int(d)) for d in shape]
        if dims and self.batch > 1 and dims[0] in (str(self.batch), str(2 * self.batch)):
            dims[0] = "B" if dims[0] == str(self.batch) else "2B"
        return "(" + ", ".join(dims) + (",)" if len(dims) == 1 else ")") if dims else "scalar"

    def value(self, v, scalars: bool = True) -> str | None:
        """A short description of a value: a tensor's shape, a sequence of tensors, a count or a size."""
        if isinstance(v, torch.Tensor):
            return self.shape(v.shape)
        if isinstance(v, (bool, int, float)):  # a count or a size: its value says more than its type
            return ("float" if isinstance(v, float) else str(v)) if scalars else None
        if isinstance(v, (list, tuple)) and v and all(isinstance(e, torch.Tensor) for e in v):
            shapes = [tuple(e.shape) for e in v]
            return self.shape(shapes if isinstance(v, list) else tuple(shapes))
        if isinstance(v, tuple) and 1 < len(v) <= 3:
            parts = [self.value(e, scalars) for e in v]
            return None if None in parts else ", ".join(parts)
        return None


@dataclass
class StmtRecord:
    count: int = 0  # times it ran, over the whole recording
    max_per_call: int = 0  # most times it ran within one call of its function (a loop's iteration count)
    variants: Counter = field(default_factory=Counter)  # "in → out" (or one shape if kept) -> times seen, in order
    yes: int = 0  # for an `if`: times its body ran, and times it did not
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
    edges: Counter = field(default_factory=Counter)  # (caller, statement index, callee) -> calls
    roots: list[str] = field(default_factory=list)  # functions called from outside the traced code
    expanded: list[str] = field(default_factory=list)  # functions whose lines were recorded (the others: calls only)

    def merge(self, other: Recording, same_objects: bool) -> None:
        """Add another run's counts. `same_objects`: the runs used the same objects (the pipeline's three modes), so
        instance counts do not add up; different networks' objects do."""
        for key, rec in other.functions.items():
            mine = self.functions.setdefault(key, FunctionRecord())
            mine.calls += rec.calls
            mine.instances = max(mine.instances, rec.instances) if same_objects else mine.instances + rec.instances
            for i, s in rec.stmts.items():
                m = mine.stmts.setdefault(i, StmtRecord())
                m.count, m.yes, m.no = m.count + s.count, m.yes + s.yes, m.no + s.no
                m.max_per_call = max(m.max_per_call, s.max_per_call)
                m.variants.update(s.variants)
        self.edges.update(other.edges)
        self.roots += [r for r in other.roots if r not in self.roots]
        self.expanded += [r for r in other.expanded if r not in self.expanded]


class FunctionIndex:
    """Finds the `Function` (source, statements) of a running code object, by file, first line and name."""

    def __init__(self, modules: Iterable[str]):
        functions = [(sys.modules[m].__file__, fn) for m in modules for fn in functions_of(m)]
        self.by_key = {fn.key: fn for _, fn in functions}
        self._where = {(path, fn.firstlineno, fn.name): fn for path, fn in functions}

    def lookup(self, code: CodeType) -> Function | None:
        return self._where.get((code.co_filename, code.co_firstlineno, code.co_name))


@dataclass
class _Frame:
    fn: Function
    record: FunctionRecord
    current: Stmt | None = None
    inputs: str = ""
    counts: Counter = field(default_factory=Counter)  # statement index -> times it ran in this call


_MISSING = object()


class LineTracer:
    """Context manager: while active, records into `self.recording` every call of the selected functions.

    expand(fn): draw this function's statements (record its lines). The other public functions of sdviz are
    "collapsed": calls *to* them are recorded, not what happens inside (a component drawn on another sheet), and
    so are those of stand-ins: `proxy(frame)` may map a stand-in's frame to the function it stands for.
    """

    def __init__(self, index, recording: Recording, expand: Callable[[Function], bool], proxy=None):
        self.index, self.recording, self.fmt = index, recording, ShapeFormat(recording.batch)
        self.expand, self.proxy = expand, proxy
        self._active: dict[FrameType, _Frame] = {}
        self._roles: dict[CodeType, tuple[str, Function | None]] = {}
        self._lines: dict[str, dict[int, Stmt]] = {}  # function key -> line -> the statement it belongs to
        self._instances: defaultdict[str, set[int]] = defaultdict(set)
        self._previous = None

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

    def _role(self, frame: FrameType) -> tuple[str, Function | None]:
        """("expand", fn): record its lines; ("collapsed", fn): record the call only; ("", None): not ours."""
        if frame.f_code not in self._roles:
            fn = self.index.lookup(frame.f_code)
            role = "" if fn is None else "expand" if self.expand(fn) else "" if fn.name.startswith("_") else "collapsed"
            self._roles[frame.f_code] = role, fn
        role, fn = self._roles[frame.f_code]
        stands_for = self.proxy(frame) if self.proxy and not role else None
        return ("collapsed", stands_for) if stands_for else (role, fn)

    def _caller(self, frame: FrameType) -> _Frame | None | bool:
        """The nearest traced frame below this one; None if there is none; False if a collapsed call is between."""
        f = frame.f_back
        while f is not None:
            if f in self._active:
                return self._active[f]
            if self._role(f)[0] == "collapsed":
                return False
            f = f.f_back
        return None

    def _global(self, frame: FrameType, event: str, arg):
        role, fn = self._role(frame) if event == "call" else ("", None)
        caller = self._caller(frame) if role else False
        if caller is False:
            return None
        rec = self.recording
        frec = rec.functions.setdefault(fn.key, FunctionRecord())
        frec.calls += 1
        if fn.class_name and frame.f_locals.get("self") is not None:
            self._instances[fn.key].add(id(frame.f_locals["self"]))
        if caller is None and fn.key not in rec.roots:
            rec.roots.append(fn.key)
        elif caller is not None and caller.current is not None:
            rec.edges[(caller.fn.key, caller.current.index, fn.key)] += 1
        if role != "expand":
            return None
        if fn.key not in rec.expanded:
            rec.expanded.append(fn.key)
        if fn.key not in self._lines:
            statements = [x for s in fn.body for x in s.walk()]
            self._lines[fn.key] = {ln: s for s in reversed(statements) for ln in s.lines}
        self._active[frame] = _Frame(fn, frec)
        return self._local

    def _local(self, frame: FrameType, event: str, arg):
        st = self._active.get(frame)
        if st is not None and event == "line":
            s = self._lines[st.fn.key].get(frame.f_lineno)
            if s is not None and s is not st.current:
                self._finish(st, frame.f_locals, next_stmt=s)
                self._begin(st, s, frame.f_locals)
        elif st is not None and event == "return":
            self._finish(st, frame.f_locals, returned=arg)
            for i, n in st.counts.items():
                st.record.stmts[i].max_per_call = max(st.record.stmts[i].max_per_call, n)
            del self._active[frame]
        return self._local if st is not None else None

    def _begin(self, st: _Frame, s: Stmt, local: dict) -> None:
        st.current = s
        st.counts[s.index] += 1
        st.record.stmts.setdefault(s.index, StmtRecord()).count += 1
        values = [local.get(name) for name in s.loads]
        ins = [self.fmt.value(v, scalars=False) for v in values if isinstance(v, (torch.Tensor, tuple))]
        st.inputs = ", ".join(list(dict.fromkeys(d for d in ins if d is not None))[:3])

    def _finish(self, st: _Frame, local: dict, next_stmt: Stmt | None = None, returned=_MISSING) -> None:
        s, st.current = st.current, None
        if s is None:
            return
        r = st.record.stmts[s.index]
        if s.kind == "if":
            taken = bool(s.body) and next_stmt is s.body[0]  # a taken branch starts with its first statement
            r.yes, r.no = r.yes + taken, r.no + (not taken)
            return
        out = None
        if s.kind == "return" and returned is not _MISSING:
            out = self.fmt.value(returned)
        elif s.target is not None:
            out = self._describe(s.target, local, tensors_only=s.kind == "for")
        if out and st.inputs and not any(c in out for c in "([") and "scalar" not in out:
            out = None  # `b, c, h, w = x.shape`: the input's shape already says it
        text = out if out == st.inputs else " → ".join(x for x in (st.inputs, out) if x)  # one shape: kept
        r.variants.update([text] if text else [])

    def _describe(self, target: ast.expr, local: dict, tensors_only: bool = False) -> str | None:
        """What an assignment target holds now: `x`, `self.timesteps`, or a tuple of those."""
        if isinstance(target, ast.Tuple):
            return ", ".join(p for p in (self._describe(e, local, tensors_only) for e in target.elts) if p) or None
        value = _resolve(target, local)
        if value is _MISSING or (tensors_only and not isinstance(value, (torch.Tensor, list, tuple))):
            return None
        return self.fmt.value(value)


def _resolve(node: ast.expr, local: dict):
    """The value of a name or an attribute chain (`self.timesteps`) in a frame's locals, without side effects."""
    if isinstance(node, ast.Name):
        return local.get(node.id, _MISSING)
    if isinstance(node, ast.Attribute):
        base = _resolve(node.value, local)
        return _MISSING if base is _MISSING else getattr(base, "__dict__", {}).get(node.attr, _MISSING)
    return _MISSING

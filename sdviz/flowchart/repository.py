"""The repository flowchart: one overview sheet, and one sheet per component drawn statement by statement.

A component sheet draws every function that a traced run of that component executed, the way the seed's
hand-drawn LLaMA-2 chart did:

    ⬢ yellow hexagon      the function (`ResnetBlock.forward`), its file, how often it ran and on how many objects
    ▭ boxes below it      one per statement of its body, with the code and, in bold italics, the shapes that
                          statement produced in the traced run: `(B, 320, 64, 64) → (B, 640, 32, 32)`
    ◆ red diamonds        conditions, with how often each branch was taken
    ▭ blue boxes          loops, with their number of iterations per call
    ▱ grey notes          the comments written beside the code
    ─▶ blue arrows        calls: from the statement that calls to the function it calls

A class used many times (the 16 transformer blocks of the UNet) is drawn once, its header saying "×16". The
shapes shown are the first ones the run produced; when a statement saw several (a ResNet block runs at four
resolutions), the count of the others follows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from sdviz.config import get_config
from sdviz.flowchart import runs
from sdviz.flowchart.dot import FONT, HTML, MONO, STYLE, Chart, Dot, esc, left_lines, wrap
from sdviz.flowchart.source import Function, Stmt, classes_of, model_modules
from sdviz.flowchart.tracer import FunctionRecord, Recording, StmtRecord

CODE_WIDTH = 46  # characters of code per line in a statement box
NOTE_WIDTH = 34


SHARED = ("sdviz.models.common", "sdviz.models.attention")  # building blocks used by several networks


@dataclass(frozen=True)
class Sheet:
    name: str  # file stem: flowchart-<name>
    title: str
    about: str
    record: Callable[[str], Recording] | None  # config name -> the traced run it draws
    draws: Callable[[Function], bool] = lambda fn: True  # which executed functions it draws statement by statement


def _network(part: str) -> Callable[[str], Recording]:
    return lambda config: runs.network_recording(config, part)


def _in(*modules: str) -> Callable[[Function], bool]:
    return lambda fn: fn.module in modules


SHEETS: dict[str, Sheet] = {
    s.name: s
    for s in [
        Sheet("overview", "sdviz: the repository", "the components and how they call each other", None),
        Sheet(
            "pipeline",
            "Pipeline: StableDiffusion.generate",
            "prompt -> context; noise or image -> latents; the denoising loop with guidance; latents -> image",
            runs.pipeline_recording_all,
            # the pipeline's own methods in full; its small helpers (image <-> tensor, seeds) as one box each
            lambda fn: fn.module == "sdviz.pipeline" and fn.class_name is not None and not fn.name.startswith("_"),
        ),
        Sheet(
            "text-encoder",
            "Text encoder (CLIP ViT-L/14 text tower)",
            "token ids -> one 768-vector per token: the context the UNet attends to",
            _network("text-encoder"),
            _in("sdviz.models.clip"),
        ),
        Sheet(
            "vae-encoder",
            "VAE encoder",
            "pixels -> the mean and log-variance of the latent Gaussian (image-to-image, inpainting)",
            _network("vae-encoder"),
            _in("sdviz.models.vae"),
        ),
        Sheet(
            "vae-decoder",
            "VAE decoder",
            "latents -> pixels: the last step of every generation",
            _network("vae-decoder"),
            _in("sdviz.models.vae"),
        ),
        Sheet(
            "unet",
            "UNet",
            "predicts the noise in the latents at timestep t, given the prompt",
            _network("unet"),
            _in("sdviz.models.unet"),
        ),
        Sheet(
            "blocks",
            "Building blocks: ResNet block, attention, group norm, upsampling",
            "the pieces the text encoder, the VAE and the UNet share",
            runs.networks_recording,
            _in(*SHARED),
        ),
        Sheet(
            "sampler",
            "Samplers",
            "turn the UNet's noise prediction into one denoising step: DDPM, DDIM, Euler, Euler ancestral",
            runs.sampler_recording,
            # the samplers' methods in full; small helpers (timestep checks, broadcasting) as one box each
            lambda fn: (
                fn.module.startswith("sdviz.samplers.") and fn.class_name is not None and not fn.name.startswith("_")
            ),
        ),
    ]
}


def partition(heights: list[float], k: int) -> list[int]:
    """Cut a sequence into k consecutive runs with the smallest possible tallest run (linear partition, by dynamic
    programming). Returns the start index of each run."""
    n = len(heights)
    k = max(1, min(k, n))
    prefix = [0.0]
    for h in heights:
        prefix.append(prefix[-1] + h)
    inf = float("inf")
    # best[j][i]: the smallest tallest run when the first i items are cut into j runs
    best = [[inf] * (n + 1) for _ in range(k + 1)]
    cut = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0.0
    for j in range(1, k + 1):
        for i in range(1, n + 1):
            for m in range(j - 1, i):
                v = max(best[j - 1][m], prefix[i] - prefix[m])
                if v < best[j][i]:
                    best[j][i], cut[j][i] = v, m
    starts, i = [], n
    for j in range(k, 0, -1):
        i = cut[j][i]
        starts.append(i)
    return sorted(starts)


def balanced_columns(
    items: list, heights: list[float], column_width: float, extra_width: float, aspect: float = 1.41
) -> list[list]:
    """Columns (in reading order) of about equal height, as many as bring width / height closest to `aspect`."""
    best, best_score = [items], float("inf")
    for k in range(1, len(items) + 1):
        starts = partition(heights, k) + [len(items)]
        columns = [items[a:b] for a, b in zip(starts, starts[1:], strict=False) if b > a]
        tallest = max(sum(heights[a:b]) for a, b in zip(starts, starts[1:], strict=False) if b > a)
        score = abs(math.log((len(columns) * column_width + extra_width) / tallest / aspect))
        if score < best_score - 1e-9:
            best, best_score = columns, score
    return best


def _node_id(fn: Function, suffix: str) -> str:
    return f"{fn.key}:{suffix}"


def _unchanged(variant: str) -> str:
    """ "(B, C) -> (B, C)" is shown as "(B, C)": one shape means the statement kept it."""
    a, sep, b = variant.partition(" -> ")
    return a if sep and a == b else variant


def _arrow(text: str) -> str:
    return text.replace(" -> ", " → ")


def _loop_iterations(s: Stmt, rec: FunctionRecord) -> int:
    """Iterations per call of a loop: the most times its first body statement ran within one call."""
    if not s.body:
        return 0
    r = rec.stmts.get(s.body[0].index)
    return r.max_per_call if r else 0


def _hooks(code: str) -> list[str]:
    return re.findall(r"\b(hook_\w+)\(", code)


def _stmt_height(s: Stmt) -> float:
    """A rough height in points of a statement's drawing, its body included: ~15 per text line, ~24 between boxes,
    more for diamonds. Used to balance the columns of a sheet (Graphviz is not needed to write a sheet)."""
    if s.kind == "if" and not s.is_guard:
        own = 60 + 14 * (len(s.code) // 30)
    else:
        own = 15 * (len(wrap(s.code, CODE_WIDTH)) + 1 + len(s.notes)) + 24
    if s.kind in ("for", "while") and len(s.body) == 1 and s.body[0].kind == "simple" and not s.orelse:
        return own + 15 * len(wrap(s.body[0].code, CODE_WIDTH))
    return own + sum(_stmt_height(b) for b in s.body + s.orelse)


def _estimate_height(fn: Function) -> float:
    return 130.0 + sum(_stmt_height(s) for s in fn.body)  # 130: header, cluster margins, gap to the next cluster


def split_body(fn: Function, parts: int) -> list[list[Stmt]]:
    """A long function's top-level statements cut into `parts` runs of about equal height (drawn side by side)."""
    heights = [_stmt_height(s) for s in fn.body]
    starts = partition(heights, parts) + [len(fn.body)]
    return [fn.body[a:b] for a, b in zip(starts, starts[1:], strict=False) if b > a]


class SheetDrawer:
    """Draws one component sheet from a `Recording` of that component's traced run."""

    def __init__(self, sheet: Sheet, config: str, rec: Recording, other_sheets: dict[str, str]):
        self.sheet, self.config, self.rec = sheet, config, rec
        self.index = runs.function_index()
        self.other_sheets = other_sheets  # function key -> name of the sheet that draws it statement by statement
        executed = [self.index.by_key[k] for k in rec.functions]
        recorded = set(rec.expanded)
        self.drawn = [fn for fn in executed if fn.key in recorded and sheet.draws(fn)]
        drawn_keys = {fn.key for fn in self.drawn}
        self.edges = {e: n for e, n in rec.edges.items() if e[0] in drawn_keys}
        called = {callee for (_, _, callee) in self.edges}
        self.modules = [fn for fn in executed if fn.key in called and fn.key not in drawn_keys]
        self.expanded = drawn_keys
        self.stmt_node: dict[tuple[str, int], str] = {}  # (function key, statement index) -> drawn node
        self.last_node: dict[str, str] = {}
        self.used = {"header", "call"}  # kinds of node drawn: the legend shows only these
        self.segments: dict[str, list[list[Stmt]]] = {}  # long functions drawn in several columns
        self.segment_first: dict[tuple[str, int], str] = {}
        self._break: tuple[str, int] | None = None  # the next flow edge continues a long function's next column

    # -- the whole sheet ------------------------------------------------------------------------------------------

    def draw(self) -> Chart:
        cfg = get_config(self.config)
        name = f"flowchart-{self.sheet.name}"
        title = (
            f'<FONT POINT-SIZE="26"><B>{esc(self.sheet.title)}</B></FONT><BR/>'
            f'<FONT POINT-SIZE="13">{esc(self.sheet.about)}</FONT><BR/>'
            f'<FONT POINT-SIZE="11" COLOR="#555555">drawn by sdviz from its source and a traced run: '
            f"{esc(self.rec.description)}. B = batch size (traced with B = {self.rec.batch}); "
            f"config {esc(cfg.name)}, {cfg.image_size}x{cfg.image_size} images.</FONT>"
        )
        d = Dot(
            name,
            graph=dict(
                rankdir="TB",
                newrank=True,
                compound=True,
                fontname=FONT,
                label=HTML(title),
                labelloc="t",
                labeljust="l",
                nodesep=0.15,
                ranksep=0.16,
                pad=0.3,
            ),
            node=dict(fontname=FONT, fontsize=10, shape="box", style="filled", margin="0.08,0.04"),
            edge=dict(fontname=FONT, fontsize=9, arrowsize=0.6, color="#555555"),
        )
        columns = self._columns()
        for column in columns:
            for fn, seg in column:
                if seg is not None and seg > 0:
                    continue  # drawn with its first segment
                if fn.key in self.expanded:
                    self._function(d, fn)
                else:
                    self._module(d, fn)
        self._stack(d, columns)
        self._calls(d)
        legend(d, tuple(k for k in LEGEND if k in self.used))
        return Chart(name, d.source(), self.sheet.title)

    def _columns(self) -> list[list[Function]]:
        """Functions in reading order (callers before callees, then order of first call), cut into columns of
        about equal height, as many as make the sheet about as wide as a landscape page is for its height."""
        called = {callee for (_, _, callee) in self.edges}
        roots = [fn.key for fn in self.drawn if fn.key not in called]
        depth: dict[str, int] = {k: 0 for k in roots}
        callees: dict[str, list[str]] = {}
        for caller, _, callee in self.edges:
            callees.setdefault(caller, []).append(callee)
        frontier = list(roots)
        while frontier:
            nxt = []
            for k in frontier:
                for c in callees.get(k, []):
                    if c not in depth:
                        depth[c] = depth[k] + 1
                        nxt.append(c)
            frontier = nxt
        order = {fn.key: i for i, fn in enumerate(self.drawn)}
        drawn = sorted(self.drawn, key=lambda fn: (depth.get(fn.key, 0), order[fn.key]))
        heights = {fn.key: _estimate_height(fn) for fn in drawn}
        cw, extra, aspect = CODE_WIDTH * 7 + 110, 450, 1.41
        ideal = math.sqrt(sum(heights.values()) * cw / aspect)  # the column height of a sheet of that aspect
        split_columns: list[list[tuple[Function, int | None]]] = []
        tallest_segment = 0.0
        rest = []
        for fn in drawn:
            if heights[fn.key] > 1.3 * ideal and len(fn.body) > 1:
                segments = split_body(fn, math.ceil(heights[fn.key] / ideal))
                self.segments[fn.key] = segments
                split_columns += [[(fn, j)] for j in range(len(segments))]
                tallest_segment = max([tallest_segment] + [130 + sum(map(_stmt_height, g)) for g in segments])
            else:
                rest.append(fn)
        columns = list(split_columns)
        if rest:
            h = [heights[fn.key] for fn in rest]
            best, best_score = None, float("inf")
            for k in range(1, len(rest) + 1):
                starts = partition(h, k) + [len(rest)]
                cols = [rest[a:b] for a, b in zip(starts, starts[1:], strict=False) if b > a]
                runs_h = [sum(h[a:b]) for a, b in zip(starts, starts[1:], strict=False) if b > a]
                tallest = max([tallest_segment, *runs_h])
                score = abs(math.log(((len(cols) + len(split_columns)) * cw + extra) / tallest / aspect))
                if score < best_score - 1e-9:
                    best, best_score = cols, score
            columns += [[(fn, None) for fn in col] for col in best]
        if self.modules:
            columns.append([(fn, None) for fn in self.modules])
        return columns

    def _stack(self, d: Dot, columns: list[list[tuple[Function, int | None]]]) -> None:
        """Invisible edges: clusters of a column one below the other; an invisible spine orders the columns."""
        d.node("spine", shape="point", style="invis", ordering="out")
        d.edge("spine", "legend:header", style="invis")  # the legend first, left of everything: no call crosses it
        for column in columns:
            fn, seg = column[0]
            d.edge("spine", self.segment_first.get((fn.key, seg or 0), _node_id(fn, "h")), style="invis")
            for (a, _), (b, _) in zip(column, column[1:], strict=False):
                d.edge(self.last_node[a.key], _node_id(b, "h"), style="invis", weight=5)

    def _calls(self, d: Dot) -> None:
        for (caller, index, callee), _n in self.edges.items():
            src = self.stmt_node.get((caller, index))
            if src is None:
                continue
            fn = self.index.by_key[callee]
            ports = dict(tailport="e", headport="w") if callee not in self.expanded else dict(tailport="e")
            d.edge(
                src,
                _node_id(fn, "h"),
                color=STYLE["call"]["line"],
                penwidth=1.1,
                constraint=False,
                arrowhead="vee",
                **ports,
            )

    # -- one function ---------------------------------------------------------------------------------------------

    def _header_label(self, fn: Function, frec: FunctionRecord, module: bool = False) -> str:
        times = []
        if frec.instances > 1:
            times.append(f"×{frec.instances} objects")
        if frec.calls > 1 and frec.calls != frec.instances:
            times.append(f"{frec.calls} calls")
        params = ", ".join(fn.params)
        if len(fn.qualname) + len(params) <= 30:
            lines = [f"<B>{esc(fn.qualname)}</B>({esc(params)})"]
        else:
            wrapped = "<BR/>".join(esc(x) for x in wrap(f"({params})", 44, max_lines=4, indent=" "))
            lines = [f"<B>{esc(fn.qualname)}</B>", f'<FONT POINT-SIZE="10">{wrapped}</FONT>']
        lines.append(f'<FONT POINT-SIZE="9">{esc(" · ".join([fn.relpath] + times))}</FONT>')
        if module:
            sheet = self.other_sheets.get(fn.key)
            if sheet:
                lines.append(f'<FONT POINT-SIZE="9"><I>{esc("drawn on sheet flowchart-" + sheet)}</I></FONT>')
            elif fn.doc:
                doc = "<BR/>".join(esc(x) for x in wrap(fn.doc, 44, max_lines=3, indent=""))
                lines.append(f'<FONT POINT-SIZE="9"><I>{doc}</I></FONT>')
        return HTML("<BR/>".join(lines))

    def _module(self, d: Dot, fn: Function) -> None:
        """A function drawn on another sheet (a big module here): one green box."""
        frec = self.rec.functions[fn.key]
        st = STYLE["module"]
        self.used.add("module")
        with d.subgraph(f"cluster_{fn.key}", label="", style="invis"):
            d.node(
                _node_id(fn, "h"),
                label=self._header_label(fn, frec, module=True),
                shape="box",
                style="filled,bold",
                fillcolor=st["fill"],
                color=st["line"],
                fontsize=12,
            )
        self.last_node[fn.key] = _node_id(fn, "h")

    def _function(self, d: Dot, fn: Function) -> None:
        frec = self.rec.functions[fn.key]
        st = STYLE["cluster"]
        doc = left_lines(wrap(fn.doc, 60, max_lines=3, indent="")) if fn.doc else ""
        label = HTML(f'<FONT POINT-SIZE="9" COLOR="#666666"><I>{doc}</I></FONT>') if doc else ""
        with d.subgraph(
            f"cluster_{fn.key}",
            label=label,
            labeljust="l",
            style="rounded,filled",
            fillcolor=st["fill"],
            color=st["line"],
        ):
            head = _node_id(fn, "h")
            hs = STYLE["header"]
            d.node(
                head,
                label=self._header_label(fn, frec),
                shape="hexagon",
                fillcolor=hs["fill"],
                color=hs["line"],
                fontsize=12,
                margin="0.02,0.02",
            )
            self.last_node[fn.key] = head
            preds = [(head, None)]
            for j, segment in enumerate(self.segments.get(fn.key, [fn.body])):
                self._break = (fn.key, j) if j > 0 else None
                preds = self._block(d, fn, frec, segment, preds)

    def _link(self, d: Dot, fn: Function, preds: list[tuple[str, str | None]], node: str) -> None:
        if self._break:
            # a long function continues in the next column: "continued" marks instead of an edge across the sheet
            j = self._break[1]
            end, start = _node_id(fn, f"to{j}"), _node_id(fn, f"from{j}")
            d.node(
                end,
                label=f"continued in column {j + 1} →",
                shape="plaintext",
                style="",
                fontsize=10,
                fontcolor=STYLE["header"]["line"],
            )
            self._edges(d, preds, end)
            d.node(
                start,
                label=f"→ column {j + 1}, continued",
                shape="plaintext",
                style="",
                fontsize=10,
                fontcolor=STYLE["header"]["line"],
            )
            self.segment_first[self._break] = start
            self._break = None
            preds = [(start, None)]
        self._edges(d, preds, node)
        self.last_node[fn.key] = node

    def _edges(self, d: Dot, preds: list[tuple[str, str | None]], node: str) -> None:
        for p, label in preds:
            attrs = dict(weight=8)
            if label:
                attrs["label"] = label
                if label.endswith("(never)"):
                    attrs.update(style="dashed", color="#AAAAAA", fontcolor="#888888")
            d.edge(p, node, **attrs)

    def _shapes(self, srec: StmtRecord | None, calls: int) -> list[str]:
        """The first shapes a statement produced (two for a function that ran once), and how many others it saw."""
        if srec is None or not srec.variants:
            return []
        variants = list(srec.variants)
        limit = 2 if calls <= 1 else 1
        more = len(variants) - limit
        texts = [_arrow(_unchanged(v)) for v in variants[:limit]]
        if more > 0:
            texts[-1] += f"  (+{more} more)"
        return [line for t in texts for line in wrap(t, CODE_WIDTH + 4, indent="   ")]

    def _label(
        self, code_lines: list[str], shapes: list[str], extra: list[str], grey: bool = False, badge: str = ""
    ) -> HTML:
        code = [esc(line) for line in code_lines]
        if badge:
            code[0] += f'<FONT FACE="{FONT}" COLOR="{STYLE["loop"]["line"]}"><B>  {esc(badge)}</B></FONT>'
        parts = [f'<FONT FACE="{MONO}">' + "".join(c + '<BR ALIGN="LEFT"/>' for c in code) + "</FONT>"]
        color = "#888888" if grey else STYLE["shape"]["font"]
        for sh in shapes:
            parts.append(f'<FONT POINT-SIZE="10" COLOR="{color}"><B><I>{esc(sh)}</I></B></FONT><BR ALIGN="LEFT"/>')
        for e in extra:
            parts.append(f'<FONT POINT-SIZE="9" COLOR="#707070">{esc(e)}</FONT><BR ALIGN="LEFT"/>')
        return HTML("".join(parts))

    def _stmt_node(
        self,
        d: Dot,
        fn: Function,
        frec: FunctionRecord,
        s: Stmt,
        kind: str,
        code_lines: list[str],
        srec: StmtRecord | None,
        badge: str = "",
    ) -> str:
        nid = _node_id(fn, str(s.index))
        notes = s.notes + (s.body[0].notes if kind == "loop" and len(s.body) == 1 else [])
        extra = [line for n in notes for line in wrap("# " + n, CODE_WIDTH, max_lines=3, indent="  ")]
        hooks = _hooks(s.code) if srec and srec.hooks else []
        if hooks:
            extra.append("hook point: " + ", ".join(hooks))
        ran = srec is not None and srec.count > 0
        if not ran:
            extra.append("not run in this trace")
        st = STYLE[kind]
        self.used.update({kind, "note"} if s.notes else {kind})
        attrs = dict(fillcolor=st["fill"], color=st["line"])
        if kind == "loop":
            attrs["style"] = "filled,rounded"
        if not ran:
            attrs.update(style="filled,dashed", fontcolor="#888888", color="#AAAAAA")
        label = self._label(code_lines, self._shapes(srec, frec.calls), extra, grey=not ran, badge=badge)
        d.node(nid, label=label, **attrs)
        return nid

    def _block(
        self, d: Dot, fn: Function, frec: FunctionRecord, stmts: list[Stmt], preds: list[tuple[str, str | None]]
    ) -> list[tuple[str, str | None]]:
        i = 0
        while i < len(stmts):
            s = stmts[i]
            srec = frec.stmts.get(s.index)
            if s.is_guard:
                group = [s]
                while i + 1 < len(stmts) and stmts[i + 1].is_guard:
                    i += 1
                    group.append(stmts[i])
                nid = _node_id(fn, f"{s.index}g")
                lines = []
                for g in group:
                    cond = g.code[3:].rstrip(":") if g.code.startswith("if ") else g.code
                    lines += wrap("? " + cond, CODE_WIDTH, max_lines=2, indent="    ")
                exc = re.match(r"raise (\w+)", group[0].body[0].code)
                head = f"{len(group)} argument check{'s' if len(group) > 1 else ''}"
                head += f": raise {exc.group(1)} if" if exc else ""
                st = STYLE["guard"]
                self.used.add("guard")
                code = f'<FONT FACE="{MONO}" POINT-SIZE="9">{left_lines(lines)}</FONT>'
                label = HTML(f"<B>{esc(head)}</B><BR/>{code}")
                d.node(nid, label=label, fillcolor=st["fill"], color=st["line"], style="filled,rounded")
                for g in group:
                    self.stmt_node[(fn.key, g.index)] = nid
                    for b in g.walk():
                        self.stmt_node[(fn.key, b.index)] = nid
                self._link(d, fn, preds, nid)
                preds = [(nid, None)]
            elif s.kind == "if":
                nid = _node_id(fn, str(s.index))
                st = STYLE["cond"]
                self.used.add("cond")
                lines = wrap(s.code, 30, max_lines=4, indent=" ")
                d.node(
                    nid,
                    label=HTML(f'<FONT FACE="{MONO}">{left_lines(lines)}</FONT>'),
                    shape="diamond",
                    fillcolor=st["fill"],
                    color=st["line"],
                    margin="0.02,0.02",
                )
                self.stmt_node[(fn.key, s.index)] = nid
                self._link(d, fn, preds, nid)
                yes = srec.yes if srec else 0
                no = srec.no if srec else 0
                ylab = f"yes ×{yes}" if yes else "yes (never)"
                nlab = f"no ×{no}" if no else "no (never)"
                body = self._block(d, fn, frec, s.body, [(nid, ylab)])
                orelse = self._block(d, fn, frec, s.orelse, [(nid, nlab)]) if s.orelse else [(nid, nlab)]
                preds = body + orelse
            elif s.kind in ("for", "while"):
                iters = _loop_iterations(s, frec)
                count = f"×{iters}" if srec else ""
                simple_body = len(s.body) == 1 and s.body[0].kind == "simple" and not s.orelse
                if simple_body:
                    b = s.body[0]
                    lines = wrap(s.code, CODE_WIDTH) + ["    " + x for x in wrap(b.code, CODE_WIDTH - 4)]
                    nid = self._stmt_node(d, fn, frec, s, "loop", lines, frec.stmts.get(b.index), count)
                    self.stmt_node[(fn.key, b.index)] = nid
                    self.stmt_node[(fn.key, s.index)] = nid
                    self._link(d, fn, preds, nid)
                    preds = [(nid, None)]
                else:
                    nid = self._stmt_node(d, fn, frec, s, "loop", wrap(s.code, CODE_WIDTH), srec, count)
                    self.stmt_node[(fn.key, s.index)] = nid
                    self._link(d, fn, preds, nid)
                    body = self._block(d, fn, frec, s.body, [(nid, None)])
                    for p, _ in body:
                        d.edge(p, nid, style="dashed", color=STYLE["loop"]["line"], constraint=False, arrowhead="vee")
                    # the way out is drawn from the end of the body, so that the chain stays one column wide
                    preds = body or [(nid, None)]
            elif s.kind in ("with", "try"):
                nid = self._stmt_node(d, fn, frec, s, "stmt", wrap(s.code, CODE_WIDTH), srec)
                self.stmt_node[(fn.key, s.index)] = nid
                self._link(d, fn, preds, nid)
                preds = self._block(d, fn, frec, s.body + s.orelse, [(nid, None)])
            else:
                kind = "return" if s.kind in ("return", "raise") else "stmt"
                nid = self._stmt_node(d, fn, frec, s, kind, wrap(s.code, CODE_WIDTH), srec)
                self.stmt_node[(fn.key, s.index)] = nid
                self._link(d, fn, preds, nid)
                preds = [] if s.kind in ("return", "raise") else [(nid, None)]
            i += 1
        return preds


# -- the legend -----------------------------------------------------------------------------------------------------


LEGEND = {
    # kind: (shape, sample text, explanation)
    "header": ("hexagon", "Class.method(args)", "a method or function: its file,\nhow many objects, how many calls"),
    "stmt": ("box", "x = f(x)\n(B, C) → (B, 2C)", "a statement and, in bold italics,\nthe shapes it produced"),
    "return": ("box", "return x", "what the function returns"),
    "cond": ("diamond", "if …", "a condition; its edges say how\noften each branch ran"),
    "guard": ("box", "2 argument checks", "checks that raise on bad input"),
    "loop": ("box", "for … ×4", "a loop and its iterations per call;\ndashed edge: the next iteration"),
    "note": ("box", "# comment", "grey: the code's own comments"),
    "module": ("box", "Module.forward", "a function drawn as one box\n(named: the sheet that draws it)"),
    "component": ("box", "Component", "a component and its classes"),
    "data": ("box", "name (B, 4, 64, 64)", "data, with its shape"),
    "call": ("box", "f(x)", "blue arrow: a call"),
}


def legend(d: Dot, kinds: tuple[str, ...]) -> None:
    """A compact legend: one row per kind of node, a small example beside its explanation."""
    with d.subgraph("cluster_legend", label=HTML("<B>Legend</B>"), fontsize=12, style="rounded", color="#888888"):
        prev = None
        for k in kinds:
            shape, sample, words = LEGEND[k]
            st = STYLE.get(k, STYLE["stmt"])
            nid = f"legend:{k}"
            style = {"loop": "filled,rounded", "guard": "filled,rounded", "module": "filled,bold"}.get(k, "filled")
            attrs = dict(
                shape=shape,
                fillcolor=st.get("fill", "#FFFFFF"),
                color=st.get("line", "#555555"),
                style=style,
                fontsize=9,
                label=sample,
                margin="0.05,0.02",
            )
            if k == "note":
                attrs.update(fontcolor=STYLE["note"]["font"], fillcolor="#FFFFFF", color="#555555")
            if k == "call":
                attrs.update(fillcolor="#FFFFFF", color="#555555")
            d.node(nid, **attrs)
            d.node(nid + "~text", label=words, shape="plaintext", style="", fontsize=9)
            d.same_rank([nid, nid + "~text"])
            if k == "call":
                d.edge(nid, nid + "~text", color=STYLE["call"]["line"], arrowhead="vee", penwidth=1.1)
            else:
                d.edge(nid, nid + "~text", style="invis")
            if prev:
                d.edge(prev, nid, style="invis")
            prev = nid


# -- sheets ---------------------------------------------------------------------------------------------------------


def _sheet_owners(config: str) -> dict[str, str]:
    """Function key -> the first component sheet that draws it statement by statement."""
    owners: dict[str, str] = {}
    index = runs.function_index()
    for sheet in SHEETS.values():
        if sheet.record is None:
            continue
        for key in sheet.record(config).expanded:
            if sheet.draws(index.by_key[key]):
                owners.setdefault(key, sheet.name)
    return owners


def component_sheet(name: str, config: str = "sd15") -> Chart:
    sheet = SHEETS[name]
    rec = sheet.record(config)
    return SheetDrawer(sheet, config, rec, _sheet_owners(config)).draw()


def all_model_classes() -> list[tuple[str, str]]:
    """(module, class) for every class defined in sdviz/models/, found by reading the files."""
    return [(m, c) for m in model_modules() for c, _ in classes_of(m)]


def overview(config: str = "sd15") -> Chart:
    """Components (clusters), their classes (nodes, with object counts) and the calls between them."""
    from sdviz.flowchart.overview import draw_overview

    return draw_overview(config)

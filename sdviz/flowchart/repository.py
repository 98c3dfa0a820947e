"""The repository flowchart's component sheets: every function a traced run executed, drawn statement by statement.

A sheet draws its functions the way the seed's hand-drawn LLaMA-2 chart did:

    ⬢ yellow hexagon      the function (`ResnetBlock.forward`), its file, how often it ran and on how many objects
    ▭ boxes below it      one per statement of its body, with the code and, in bold italics, the shapes that
                          statement produced in the traced run: `(B, 320, 64, 64) → (B, 640, 32, 32)`
    ◆ red diamonds        conditions, with how often each branch was taken
    ▭ blue boxes          loops, with their number of iterations per call
    ─▶ blue arrows        calls: from the statement that calls to the function it calls

A class used many times (the 16 transformer blocks of the UNet) is drawn once, its header saying "×16 objects". The
shapes shown are the first ones the run produced; when a statement saw several (a ResNet block runs at four
resolutions), the count of the others follows. Graphviz places everything: a called function hangs below the
statement that calls it (call edges rank their heads below their tails), methods of one class are stacked in one
column, and a function drawn on another sheet is a green box beside its first caller.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

from sdviz.config import get_config
from sdviz.flowchart import runs
from sdviz.flowchart.graph import CALL_COLOR, MONO, SHAPE_COLOR, STYLE, Chart, chart, esc, font, left, title_block, wrap
from sdviz.flowchart.source import Function, Stmt
from sdviz.flowchart.tracer import FunctionRecord, Recording, StmtRecord

CODE_WIDTH = 46  # characters of code per line in a statement box
COLUMNS = 5  # classes side by side at most (the samplers); more go in another row below


@dataclass(frozen=True)
class Sheet:
    name: str  # file stem: flowchart-<name>
    title: str
    about: str
    record: Callable[[str], Recording] | None  # config name -> the traced run it draws
    draws: Callable[[Function], bool]  # which executed functions it draws statement by statement


def _network(part: str) -> Callable[[str], Recording]:
    return lambda config: runs.network_run(config, part)[0]


def _in(*modules: str) -> Callable[[Function], bool]:
    return lambda fn: fn.module in modules


def _public_methods(prefix: str) -> Callable[[Function], bool]:
    """A class's public methods in full; small helpers (checks, broadcasting, seeds) as one box each."""
    return lambda fn: fn.module.startswith(prefix) and fn.class_name is not None and not fn.name.startswith("_")


SHEETS: dict[str, Sheet] = {
    s.name: s
    for s in [
        Sheet("overview", "sdviz: the repository", "the components and how they call each other", None, bool),
        Sheet(
            "pipeline",
            "Pipeline: StableDiffusion.generate",
            "prompt -> context; noise or image -> latents; the denoising loop with guidance; latents -> image",
            runs.pipeline_recording_all,
            _public_methods("sdviz.pipeline"),
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
            _in("sdviz.models.common", "sdviz.models.attention"),
        ),
        Sheet(
            "sampler",
            "Samplers",
            "turn the UNet's noise prediction into one denoising step: every sampler of sdviz/samplers/",
            runs.sampler_recording,
            _public_methods("sdviz.samplers."),
        ),
    ]
}

# kind: (sample text, meaning), in the legend's order
LEGEND = {
    "header": ("Class.method(args)", "a function: file, objects, calls"),
    "stmt": ("x = f(x)  (B, C) → (B, 2C)", "a statement and the shapes it produced"),
    "return": ("return x", "what it returns"),
    "cond": ("if …", "a condition: how often each branch ran"),
    "guard": ("2 argument checks", "checks that raise on bad input"),
    "loop": ("for … ×4", "a loop, iterations per call (dashed: next one)"),
    "module": ("Module.forward", "drawn as one box (on the sheet named)"),
    "call": ("──▶", "a call"),
}


def _node_id(fn: Function, suffix: str) -> str:
    return f"{fn.key}~{suffix}"


def _shape_text(variant: str) -> str:
    """ "(B, C) -> (B, C)" is shown as "(B, C)": one shape means the statement kept it."""
    a, sep, b = variant.partition(" -> ")
    return (a if sep and a == b else variant).replace(" -> ", " → ")


class SheetDrawer:
    """Draws one component sheet from a `Recording` of that component's traced run."""

    def __init__(self, sheet: Sheet, config: str, rec: Recording, owners: dict[str, str]):
        self.sheet, self.config, self.rec, self.owners = sheet, config, rec, owners
        self.index = runs.function_index()
        executed = [self.index.by_key[k] for k in rec.functions]
        self.drawn = [fn for fn in executed if fn.key in rec.expanded and sheet.draws(fn)]
        keys = {fn.key for fn in self.drawn}
        self.edges = [e for e in rec.edges if e[0] in keys]
        called = {callee for (_, _, callee) in self.edges}
        self.modules = [fn for fn in executed if fn.key in called and fn.key not in keys]
        self.stmt_node: dict[tuple[str, int], str] = {}  # (function key, statement index) -> its node
        self.last: dict[str, str] = {}  # function key -> the last node drawn of it
        self.used = {"header", "call"}  # kinds of node drawn: the legend shows only these

    def draw(self) -> Chart:
        cfg = get_config(self.config)
        g = chart(f"flowchart-{self.sheet.name}", nodesep="0.2", ranksep="0.18")
        classes: dict[str, list[Function]] = {}  # a class's methods: in a box of their own
        for fn in self.drawn:
            classes.setdefault(f"{fn.module}.{fn.class_name or fn.name}", []).append(fn)
        roots = set(self.rec.roots) | ({fn.key for fn in self.drawn} - {callee for (_, _, callee) in self.edges})
        columns = []  # (top, bottom) of each class's column of entry points (methods run from outside this sheet)
        for methods in classes.values():
            box = g.subgraph(name=f"cluster_{methods[0].module}.{methods[0].class_name}")
            with box if len(methods) > 1 else nullcontext(g) as c:
                if c is not g:
                    label = f"<B>{esc(methods[0].class_name)}</B>  {font(esc(methods[0].relpath), 10)}"
                    c.attr(label=f"<{label}>", style="rounded", color=STYLE["header"][1], fontsize="14")
                for fn in methods:
                    self._function(c, fn)
            entries = [fn for fn in methods if fn.key in roots]
            for x, y in zip(entries, entries[1:], strict=False):
                g.edge(self.last[x.key], _node_id(y, "h"), style="invis")
            if entries:
                columns.append((_node_id(entries[0], "h"), self.last[entries[-1].key]))
        for (_, bottom), (top, _) in zip(columns, columns[COLUMNS:], strict=False):  # rows of at most COLUMNS
            g.edge(bottom, top, style="invis")
        for fn in self.modules:
            self._module(g, fn)
        placed = set(roots)  # a function hangs below the first statement that calls it; other calls just point
        for caller, index, callee in self.edges:
            tie = "true" if callee not in placed else "false"
            placed.add(callee)
            attrs = dict(color=CALL_COLOR, penwidth="1.1", arrowhead="vee", constraint=tie)
            g.edge(self.stmt_node[(caller, index)], _node_id(self.index.by_key[callee], "h"), **attrs)
        note = (
            f"drawn by sdviz from its source and a traced run: {self.rec.description}. B = batch size (traced with "
            f"B = {self.rec.batch}); config {cfg.name}, {cfg.image_size}x{cfg.image_size} images."
        )
        legend = [(*STYLE.get(k, ("#FFFFFF", CALL_COLOR)), *LEGEND[k]) for k in LEGEND if k in self.used]
        g.attr(label=title_block(self.sheet.title, self.sheet.about, note, legend))
        return g

    # -- one function ---------------------------------------------------------------------------------------------

    def _header(self, fn: Function, frec: FunctionRecord, module: bool = False) -> str:
        times = [f"×{frec.instances} objects"] if frec.instances > 1 else []
        times += [f"{frec.calls} calls"] if frec.calls > 1 and frec.calls != frec.instances else []
        params = ", ".join(fn.params)
        if len(fn.qualname) + len(params) <= 30:
            lines = [f"<B>{esc(fn.qualname)}</B>({esc(params)})"]
        else:
            wrapped = "<BR/>".join(esc(x) for x in wrap(f"({params})", 44, max_lines=4, indent=" "))
            lines = [f"<B>{esc(fn.qualname)}</B>", font(wrapped, 10)]
        lines.append(font(esc(" · ".join([fn.relpath] + times)), 9))
        if module and fn.key in self.owners:
            lines.append(font(f"<I>drawn on sheet flowchart-{esc(self.owners[fn.key])}</I>", 9))
        elif module and fn.doc:
            lines.append(
                font("<I>" + "<BR/>".join(esc(x) for x in wrap(fn.doc, 44, max_lines=3, indent="")) + "</I>", 9)
            )
        return f"<{'<BR/>'.join(lines)}>"

    def _module(self, g: Chart, fn: Function) -> None:
        """A function drawn on another sheet (or a small helper): one green box."""
        self.used.add("module")
        fill, line = STYLE["module"]
        label = self._header(fn, self.rec.functions[fn.key], module=True)
        g.node(_node_id(fn, "h"), label=label, style="filled,bold", fillcolor=fill, color=line, fontsize="11")

    def _function(self, g: Chart, fn: Function) -> None:
        frec = self.rec.functions[fn.key]
        doc = font(f"<I>{left(wrap(fn.doc, 60, max_lines=3, indent=''))}</I>", 9, "#666666") if fn.doc else ""
        with g.subgraph(name=f"cluster_{fn.key}") as c:
            c.attr(
                label=f"<{doc}>",
                labeljust="l",
                style="rounded,filled",
                fillcolor=STYLE["cluster"][0],
                color=STYLE["cluster"][1],
            )
            head = _node_id(fn, "h")
            fill, line = STYLE["header"]
            c.node(
                head,
                label=self._header(fn, frec),
                shape="hexagon",
                fillcolor=fill,
                color=line,
                fontsize="12",
                margin="0.02,0.02",
            )
            self.last[fn.key] = head
            self._block(c, fn, frec, fn.body, [(head, None)])

    def _edges(self, g: Chart, fn: Function, preds: list[tuple[str, str | None]], node: str) -> None:
        for p, label in preds:
            never = dict(style="dashed", color="#AAAAAA", fontcolor="#888888") if "never" in (label or "") else {}
            g.edge(p, node, label=label, weight="8", **never)
        self.last[fn.key] = node

    def _stmt_node(
        self,
        g: Chart,
        fn: Function,
        frec: FunctionRecord,
        s: Stmt,
        kind: str,
        code: list[str],
        srec: StmtRecord | None,
        badge: str = "",
    ) -> str:
        """A statement's box: its code, the shapes it produced, its comments; dashed and grey if it never ran."""
        nid = _node_id(fn, str(s.index))
        notes = s.notes + (s.body[0].notes if kind == "loop" and len(s.body) == 1 else [])
        extra = [line for n in notes for line in wrap("# " + n, CODE_WIDTH, max_lines=3, indent="  ")]
        hooks = re.findall(r"\b(hook_\w+)\(", s.code)
        extra += ["hook point: " + ", ".join(hooks)] if hooks else []  # where a trace can listen
        ran = srec is not None and srec.count > 0
        extra += [] if ran else ["not run in this trace"]
        shapes = []
        if srec and srec.variants:
            variants = list(srec.variants)[: 2 if frec.calls <= 1 else 1]
            texts = [_shape_text(v) for v in variants]
            if len(srec.variants) > len(variants):
                texts[-1] += f"  (+{len(srec.variants) - len(variants)} more)"
            shapes = [line for t in texts for line in wrap(t, CODE_WIDTH + 4, indent="   ")]
        lines = [esc(x) for x in code]
        if badge:
            lines[0] += font(f"<B>  {esc(badge)}</B>", color=STYLE["loop"][1], face="DejaVu Sans")
        label = font("".join(x + '<BR ALIGN="LEFT"/>' for x in lines), face=MONO)
        label += "".join(
            font(f"<B><I>{esc(x)}</I></B>", 10, SHAPE_COLOR if ran else "#888888") + '<BR ALIGN="LEFT"/>'
            for x in shapes
        )
        label += "".join(font(esc(x), 9, "#707070") + '<BR ALIGN="LEFT"/>' for x in extra)
        self.used.add(kind)
        fill, line = STYLE[kind]
        attrs = dict(style="filled,rounded") if kind == "loop" else {}
        if not ran:
            attrs = dict(style="filled,dashed", fontcolor="#888888", color="#AAAAAA")
        g.node(nid, label=f"<{label}>", **{"fillcolor": fill, "color": line, **attrs})
        self.stmt_node[(fn.key, s.index)] = nid
        return nid

    def _block(
        self, g: Chart, fn: Function, frec: FunctionRecord, stmts: list[Stmt], preds: list[tuple[str, str | None]]
    ) -> list[tuple[str, str | None]]:
        """Draw statements as a chain from `preds` ((node, edge label) pairs); returns the chain's open ends."""
        i = 0
        while i < len(stmts):
            s = stmts[i]
            srec = frec.stmts.get(s.index)
            if s.is_guard:  # consecutive `if bad: raise` checks: one pink box
                group = [s]
                while i + 1 < len(stmts) and stmts[i + 1].is_guard:
                    i += 1
                    group.append(stmts[i])
                exc = re.match(r"raise (\w+)", s.body[0].code)
                head = f"{len(group)} argument check{'s' if len(group) > 1 else ''}"
                head += f": raise {exc.group(1)} if" if exc else ""
                lines = [x for c in group for x in wrap("? " + c.code[3:].rstrip(":"), CODE_WIDTH, 2, "    ")]
                nid = _node_id(fn, f"{s.index}g")
                self.used.add("guard")
                g.node(
                    nid,
                    label=f"<<B>{esc(head)}</B><BR/>{font(left(lines), 9, face=MONO)}>",
                    fillcolor=STYLE["guard"][0],
                    color=STYLE["guard"][1],
                    style="filled,rounded",
                )
                for c in group:
                    for x in c.walk():
                        self.stmt_node[(fn.key, x.index)] = nid
                self._edges(g, fn, preds, nid)
                preds = [(nid, None)]
            elif s.kind == "if":
                nid = _node_id(fn, str(s.index))
                self.used.add("cond")
                g.node(
                    nid,
                    label=f"<{font(left(wrap(s.code, 30, 4, ' ')), face=MONO)}>",
                    shape="diamond",
                    fillcolor=STYLE["cond"][0],
                    color=STYLE["cond"][1],
                    margin="0.02,0.02",
                )
                self.stmt_node[(fn.key, s.index)] = nid
                self._edges(g, fn, preds, nid)
                yes, no = (srec.yes, srec.no) if srec else (0, 0)
                ylab, nlab = (f"yes ×{yes}" if yes else "yes (never)"), (f"no ×{no}" if no else "no (never)")
                body = self._block(g, fn, frec, s.body, [(nid, ylab)])
                preds = body + (self._block(g, fn, frec, s.orelse, [(nid, nlab)]) if s.orelse else [(nid, nlab)])
            elif s.kind in ("for", "while"):
                first = frec.stmts.get(s.body[0].index) if s.body else None
                badge = f"×{first.max_per_call if first else 0}" if srec else ""
                if len(s.body) == 1 and s.body[0].kind == "simple" and not s.orelse:  # a one-line loop: one box
                    b = s.body[0]
                    code = wrap(s.code, CODE_WIDTH) + ["    " + x for x in wrap(b.code, CODE_WIDTH - 4)]
                    nid = self._stmt_node(g, fn, frec, s, "loop", code, frec.stmts.get(b.index), badge)
                    self.stmt_node[(fn.key, b.index)] = nid
                    self._edges(g, fn, preds, nid)
                    preds = [(nid, None)]
                else:
                    nid = self._stmt_node(g, fn, frec, s, "loop", wrap(s.code, CODE_WIDTH), srec, badge)
                    self._edges(g, fn, preds, nid)
                    body = self._block(g, fn, frec, s.body, [(nid, None)])
                    for p, _ in body:
                        g.edge(p, nid, style="dashed", color=STYLE["loop"][1], constraint="false", arrowhead="vee")
                    preds = body or [(nid, None)]  # the way out leaves from the body's end: one column
            else:
                kind = "return" if s.kind in ("return", "raise") else "stmt"
                nid = self._stmt_node(g, fn, frec, s, kind, wrap(s.code, CODE_WIDTH), srec)
                self._edges(g, fn, preds, nid)
                preds = [] if s.kind in ("return", "raise") else [(nid, None)]
                if s.kind in ("with", "try"):
                    preds = self._block(g, fn, frec, s.body + s.orelse, [(nid, None)])
            i += 1
        return preds


# -- sheets ---------------------------------------------------------------------------------------------------------


def _sheet_owners(config: str) -> dict[str, str]:
    """Function key -> the first component sheet that draws it statement by statement."""
    owners: dict[str, str] = {}
    index = runs.function_index()
    for sheet in SHEETS.values():
        if sheet.record is not None:
            for key in sheet.record(config).expanded:
                if sheet.draws(index.by_key[key]):
                    owners.setdefault(key, sheet.name)
    return owners


def component_sheet(name: str, config: str = "sd15") -> Chart:
    sheet = SHEETS[name]
    return SheetDrawer(sheet, config, sheet.record(config), _sheet_owners(config)).draw()

"""The repository flowchart: an overview of the files, and sheets where every function a traced run executed is drawn
statement by statement.

The overview has one box per source file (the samplers' files share one), one row per class in it and per public
function that ran, with the class's base and the number of its objects in one model, and arrows for the calls seen
in the traced runs from a class to a class of another file. It is small enough to read at the width of a README.

A component sheet draws its functions the way the seed's hand-drawn LLaMA-2 chart did:

    ⬢ yellow hexagon      the function (`ResnetBlock.forward`), its file, how often it ran and on how many objects
    ▭ boxes below it      one per statement of its body, with the code and, in bold italics, the shapes that
                          statement produced in the traced run: `(B, 320, 64, 64) → (B, 640, 32, 32)`
    ◆ red diamonds        conditions, with how often each branch was taken
    ▭ blue boxes          loops, with their number of iterations per call
    ─▶ blue arrows        calls: from the statement that calls to the function it calls

A class used many times (the 16 transformer blocks of the UNet) is drawn once, its header saying "×16 objects". The
shapes shown are the first ones the run produced; when a statement saw several (a ResNet block runs at four
resolutions), the count of the others follows. Graphviz places everything: a function hangs below the first
statement that calls it (that call edge ranks it), the entry points of a class (methods called from outside the
sheet) are stacked in one column, and classes stand side by side, in rows of at most `COLUMNS`.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections import Counter
from contextlib import nullcontext
from itertools import takewhile
from pathlib import Path

from sdviz.config import get_config
from sdviz.flowchart import graph, runs
from sdviz.flowchart.graph import STYLE, Chart, esc, font, left, styled, wrap
from sdviz.flowchart.source import Function, Stmt, modules_in
from sdviz.shapes import meta_network

CODE_WIDTH = 46  # characters of code per line in a statement box
COLUMNS = 5  # classes side by side at most (the samplers); more go in another row below
BR = '<BR ALIGN="LEFT"/>'

SHEETS = {  # name (file flowchart-<name>): title, what it shows
    "overview": ("sdviz: the repository", "every class on the data path, by file, and who calls whom"),
    "pipeline": ("Pipeline: StableDiffusion.generate",
                 "prompt -> context; noise or image -> latents; the denoising loop with guidance; latents -> image"),
    "text-encoder": ("Text encoder (CLIP ViT-L/14 text tower)", "token ids -> one vector per token: the context"),
    "vae-encoder": ("VAE encoder", "pixels -> the mean and log-variance of the latent Gaussian (img2img, inpainting)"),
    "vae-decoder": ("VAE decoder", "latents -> pixels: the last step of every generation"),
    "unet": ("UNet", "predicts the noise in the latents at timestep t, given the prompt"),
    "blocks": ("Building blocks: ResNet block, attention, group norm, upsampling", "what the three networks share"),
    "sampler": ("Samplers", "turn the UNet's noise prediction into a denoising step: every sampler of sdviz/samplers/"),
}
MODULES = {  # the modules whose functions a sheet draws statement by statement
    "pipeline": ("sdviz.pipeline",), "text-encoder": ("sdviz.models.clip",), "vae-encoder": ("sdviz.models.vae",),
    "vae-decoder": ("sdviz.models.vae",), "unet": ("sdviz.models.unet",),
    "blocks": ("sdviz.models.common", "sdviz.models.attention"), "sampler": ("sdviz.samplers",),
}


def draws(sheet: str, fn: Function) -> bool:
    """Does a sheet draw this function statement by statement (else, when called, as one box)? The pipeline's and
    the samplers' sheets draw a class's public methods; their small helpers (checks, seeds) are one box each."""
    if sheet in ("pipeline", "sampler"):
        return fn.module.startswith(MODULES[sheet][0]) and fn.class_name is not None and not fn.name.startswith("_")
    return fn.module in MODULES[sheet]


def _id(fn: Function, suffix: object) -> str:
    return f"{fn.key}~{suffix}"


class SheetDrawer:
    """Draws one component sheet from a `Recording` of that component's traced run."""

    def __init__(self, sheet: str, config: str, owners: dict[str, str]):
        self.sheet, self.config, self.owners = sheet, config, owners  # owners: function key -> the sheet drawing it
        self.rec = runs.recording(config, sheet)
        self.index = runs.function_index()
        executed = [self.index.by_key[k] for k in self.rec.functions]
        self.drawn = [fn for fn in executed if fn.key in self.rec.expanded and draws(sheet, fn)]
        keys = {fn.key for fn in self.drawn}
        self.edges = [e for e in self.rec.edges if e[0] in keys]  # (caller, statement index, callee)
        self.modules = [fn for fn in executed if fn.key in {e[2] for e in self.edges} and fn.key not in keys]
        self.stmt_node: dict[tuple[str, int], str] = {}  # (function key, statement index) -> its node
        self.last: dict[str, str] = {}  # function key -> the last node drawn of it
        self.used = {"header", "call"}  # kinds of node drawn: the legend shows only these

    def draw(self) -> Chart:
        g = graph.chart(f"flowchart-{self.sheet}", nodesep="0.2", ranksep="0.18")
        classes: dict[str, list[Function]] = {}
        for fn in self.drawn:
            classes.setdefault(f"{fn.module}.{fn.class_name or fn.name}", []).append(fn)
        entries = set(self.rec.roots) | ({fn.key for fn in self.drawn} - {e[2] for e in self.edges})
        columns = []  # (top, bottom) of each class's column of entry points
        for methods in classes.values():  # a class with several methods drawn: in a box of its own
            box = g.subgraph(name=f"cluster_{methods[0].module}.{methods[0].class_name}") if len(methods) > 1 else None
            with box or nullcontext(g) as c:
                if c is not g:
                    label = f"<<B>{esc(methods[0].class_name)}</B>  {font(esc(methods[0].relpath), 10)}>"
                    c.attr(label=label, style="rounded", color=STYLE["header"][1], fontsize="14")
                for fn in methods:
                    self.function(c, fn)
            column = [fn for fn in methods if fn.key in entries]
            for x, y in zip(column, column[1:], strict=False):
                g.edge(self.last[x.key], _id(y, "h"), style="invis")
            columns += [(_id(column[0], "h"), self.last[column[-1].key])] if column else []
        for (_, bottom), (top, _) in zip(columns, columns[COLUMNS:], strict=False):  # rows of at most COLUMNS
            g.edge(bottom, top, style="invis")
        for fn in self.modules:  # drawn on another sheet, or not at all: one green box
            self.used.add("module")
            g.node(_id(fn, "h"), label=self.header(fn, True), **styled("module", style="filled,bold", fontsize="11"))
        placed = set(entries)  # a function hangs below the first statement that calls it; other calls just point
        for caller, index, callee in self.edges:
            tie = "false" if callee in placed else "true"
            placed.add(callee)
            g.edge(self.stmt_node[(caller, index)], _id(self.index.by_key[callee], "h"), **graph.CALL, constraint=tie)
        cfg = get_config(self.config)
        note = (f"drawn by sdviz from its source and a traced run: {self.rec.description}. B = batch size (traced "
                f"with B = {self.rec.batch}); config {cfg.name}, {cfg.image_size}x{cfg.image_size} images.")
        legend = [style for kind, style in STYLE.items() if kind in self.used]
        g.attr(label=graph.title_block(*SHEETS[self.sheet], note, legend))
        return g

    def header(self, fn: Function, module: bool = False) -> str:
        """A function's name, parameters, file and counts (and, for a green box, where it is drawn)."""
        frec = self.rec.functions[fn.key]
        times = [f"×{frec.instances} objects"] if frec.instances > 1 else []
        times += [f"{frec.calls} calls"] if frec.calls > 1 and frec.calls != frec.instances else []
        params = ", ".join(fn.params)
        lines = [f"<B>{esc(fn.qualname)}</B>({esc(params)})"]
        if len(fn.qualname) + len(params) > 30:
            lines = [f"<B>{esc(fn.qualname)}</B>", font("<BR/>".join(map(esc, wrap(f"({params})", 44, 4, " "))), 10)]
        lines.append(font(esc(" · ".join([fn.relpath] + times)), 9))
        if module and fn.key in self.owners:
            lines.append(font(f"<I>drawn on sheet flowchart-{esc(self.owners[fn.key])}</I>", 9))
        elif module and fn.doc:
            lines.append(font("<I>" + "<BR/>".join(map(esc, wrap(fn.doc, 44, 3, ""))) + "</I>", 9))
        return f"<{'<BR/>'.join(lines)}>"

    def function(self, g: Chart, fn: Function) -> None:
        """A function: a box (its docstring's first sentence as label) around its header and its statements."""
        doc = font(f"<I>{left(wrap(fn.doc, 60, 3, ''))}</I>", 9, "#666666") if fn.doc else ""
        with g.subgraph(name=f"cluster_{fn.key}") as c:
            c.attr(label=f"<{doc}>", labeljust="l", **styled("cluster", style="rounded,filled"))
            hexagon = styled("header", shape="hexagon", fontsize="12", margin="0.02,0.02")
            c.node(_id(fn, "h"), label=self.header(fn), **hexagon)
            self.last[fn.key] = _id(fn, "h")
            self.block(c, fn, fn.body, [(_id(fn, "h"), None)])

    def node(self, g: Chart, fn: Function, stmts: list[Stmt], kind: str, label: str, preds: list, suffix="", **attrs):
        """The node of `stmts` (one statement, or several drawn as one: checks, a one-line loop), with flow edges from
        the open ends `preds` ((node, edge label) pairs); returns the node as the new open end."""
        nid = _id(fn, f"{stmts[0].index}{suffix}")
        self.used.add(kind)
        g.node(nid, label=label, **styled(kind, **attrs))
        self.stmt_node.update({(fn.key, x.index): nid for s in stmts for x in s.walk()})  # its body may come next
        for p, text in preds:
            grey = dict(style="dashed", color="#AAAAAA", fontcolor="#888888") if "never" in (text or "") else {}
            g.edge(p, nid, label=text, weight="8", **grey)
        self.last[fn.key] = nid
        return [(nid, None)]

    def statement(self, g: Chart, fn: Function, s: Stmt, kind: str, code: list[str], srec, preds, badge="") -> list:
        """A statement's box: its code, the shapes it produced, its comments; dashed and grey if it never ran."""
        notes = s.notes + (s.body[0].notes if kind == "loop" and len(s.body) == 1 else [])
        extra = [line for n in notes for line in wrap("# " + n, CODE_WIDTH, 3, "  ")]
        hooks = re.findall(r"\b(hook_\w+)\(", s.code)
        extra += ["hook point: " + ", ".join(hooks)] if hooks else []  # where a trace can listen
        ran = srec is not None and srec.count > 0
        extra += [] if ran else ["not run in this trace"]
        variants = list(srec.variants) if srec else []
        texts = variants[: 2 if self.rec.functions[fn.key].calls <= 1 else 1]
        if len(variants) > len(texts):
            texts[-1] += f"  (+{len(variants) - len(texts)} more)"
        shapes = [line for t in texts for line in wrap(t, CODE_WIDTH + 4, indent="   ")]
        badge = font(f"<B>  {esc(badge)}</B>", color=STYLE["loop"][1], face="DejaVu Sans") if badge else ""
        label = font(esc(code[0]) + badge + BR + left(code[1:]), face=graph.MONO)
        color = graph.SHAPE_COLOR if ran else "#888888"
        label += "".join(font(f"<B><I>{esc(x)}</I></B>", 10, color) + BR for x in shapes)
        label += "".join(font(esc(x), 9, "#707070") + BR for x in extra)
        attrs = {"style": "filled,rounded"} if kind == "loop" else {}
        attrs |= {} if ran else dict(style="filled,dashed", fontcolor="#888888", color="#AAAAAA")
        return self.node(g, fn, [s], kind, f"<{label}>", preds, **attrs)

    def block(self, g: Chart, fn: Function, stmts: list[Stmt], preds: list[tuple[str, str | None]]) -> list:
        """Draw statements as a chain from the open ends `preds`; returns the chain's open ends."""
        frec = self.rec.functions[fn.key]
        for i, s in enumerate(stmts):
            srec = frec.stmts.get(s.index)
            if s.is_guard and i and stmts[i - 1].is_guard:
                continue  # drawn in the box of the checks before it
            if s.is_guard:  # consecutive `if bad: raise` checks: one pink box
                group = list(takewhile(lambda x: x.is_guard, stmts[i:]))
                exc = re.match(r"raise (\w+)", s.body[0].code)
                head = f"{len(group)} argument check{'s' if len(group) > 1 else ''}"
                head += f": raise {exc.group(1)} if" if exc else ""
                lines = [x for c in group for x in wrap("? " + c.code[3:].rstrip(":"), CODE_WIDTH, 2, "    ")]
                label = f"<<B>{esc(head)}</B><BR/>{font(left(lines), 9, face=graph.MONO)}>"
                preds = self.node(g, fn, group, "guard", label, preds, "g", style="filled,rounded")
            elif s.kind == "if":
                label = f"<{font(left(wrap(s.code, 30, 4, ' ')), face=graph.MONO)}>"
                self.node(g, fn, [s], "cond", label, preds, shape="diamond", margin="0.02,0.02")
                yes, no = (srec.yes, srec.no) if srec else (0, 0)
                ends = [(_id(fn, s.index), f"{w} ×{n}" if n else f"{w} (never)") for w, n in (("yes", yes), ("no", no))]
                body = self.block(g, fn, s.body, ends[:1])
                preds = body + (self.block(g, fn, s.orelse, ends[1:]) if s.orelse else ends[1:])
            elif s.kind in ("for", "while"):
                first = frec.stmts.get(s.body[0].index) if s.body else None
                badge = f"×{first.max_per_call if first else 0}" if srec else ""
                if len(s.body) == 1 and s.body[0].kind == "simple" and not s.orelse:  # a one-line loop: one box
                    code = wrap(s.code, CODE_WIDTH) + ["    " + x for x in wrap(s.body[0].code, CODE_WIDTH - 4)]
                    preds = self.statement(g, fn, s, "loop", code, first, preds, badge)
                else:
                    loop = self.statement(g, fn, s, "loop", wrap(s.code, CODE_WIDTH), srec, preds, badge)
                    body = self.block(g, fn, s.body, loop)
                    back = dict(style="dashed", color=STYLE["loop"][1], constraint="false", arrowhead="vee")
                    for p, _ in body:  # back to the loop's head: the next iteration
                        g.edge(p, loop[0][0], **back)
                    preds = body or loop  # the way out leaves from the body's end: one column
            else:
                kind = "return" if s.kind in ("return", "raise") else "stmt"
                preds = self.statement(g, fn, s, kind, wrap(s.code, CODE_WIDTH), srec, preds)
                preds = [] if s.kind in ("return", "raise") else preds
                preds = self.block(g, fn, s.body + s.orelse, preds) if s.kind in ("with", "try") else preds
        return preds


def component_sheet(name: str, config: str = "sd15") -> Chart:
    """One component sheet; functions drawn on another sheet are named there by the sheet that draws them."""
    index, owners = runs.function_index(), {}  # owners: function key -> the first sheet that draws it
    for sheet in MODULES:
        drawn = [key for key in runs.recording(config, sheet).expanded if draws(sheet, index.by_key[key])]
        owners |= {key: sheet for key in drawn if key not in owners}
    return SheetDrawer(name, config, owners).draw()


# -- the overview ----------------------------------------------------------------------------------------------------

def rows_of(module: str) -> list[tuple[str, str]]:
    """(name, base class, or "()" for a function) of each class and public function a module defines."""
    tree = ast.parse(Path(importlib.import_module(module).__file__).read_text(encoding="utf-8"))
    base = lambda n: next((b.id for b in n.bases if isinstance(b, ast.Name)), "")  # noqa: E731
    classes = [(n.name, base(n)) for n in tree.body if isinstance(n, ast.ClassDef)]
    return classes + [(n.name, "()") for n in tree.body if isinstance(n, ast.FunctionDef) and n.name[0] != "_"]


def overview(config: str = "sd15") -> Chart:
    cfg = get_config(config)
    index = runs.function_index()
    recordings = [runs.recording(config, sheet) for sheet in ("pipeline", "blocks", "sampler")]
    owner = lambda key: f"{index.by_key[key].module}.{index.by_key[key].qualname.split('.')[0]}"  # noqa: E731
    ran = {owner(k) for rec in recordings for k in rec.functions}
    calls = {(owner(a), owner(b)) for rec in recordings for (a, _, b) in rec.edges}
    networks = [meta_network(c) for c in (cfg.clip, cfg.vae, cfg.unet)]
    counts = Counter(f"{type(x).__module__}.{type(x).__name__}" for net in networks for x in net.modules())
    files = {m: [m] for m in ["sdviz.pipeline", "sdviz.tokenizer", *modules_in("models")]}
    files["sdviz.samplers"] = modules_in("samplers")

    g = graph.chart("flowchart-overview", rankdir="LR", nodesep="0.15", ranksep="0.6")
    port: dict[str, str] = {}  # class -> "file node:its row"
    for box, modules in files.items():
        title = box.replace(".", "/") + ("/" if len(modules) > 1 else ".py")
        sheets = [sheet for sheet, modules in MODULES.items() if box in modules]
        sheet = font(f"<BR/>sheet: flowchart-{', -'.join(sheets)}", 9) if sheets else ""
        rows = [f'<TR><TD ALIGN="LEFT" BGCOLOR="{STYLE["module"][0]}"><B>{esc(title)}</B>{sheet}</TD></TR>']
        for m in modules:
            for name, base in rows_of(m):
                if base == "()" and f"{m}.{name}" not in ran:
                    continue  # a function that no traced run called
                port[f"{m}.{name}"] = f"{box}:{name}"
                text = f"<B>{esc(name)}</B>" + font(esc(f"({base})" if base not in ("", "()") else base), 9)
                text += font(f"  ×{counts[f'{m}.{name}']}", 9) if counts[f"{m}.{name}"] > 1 else ""
                text += font(f"  {m.rsplit('.', 1)[-1]}.py", 8, "#777777") if len(modules) > 1 else ""
                rows.append(f'<TR><TD ALIGN="LEFT" PORT="{name}" BGCOLOR="{STYLE["header"][0]}">{text}</TD></TR>')
        table = f'<TABLE BORDER="1" CELLBORDER="0" CELLSPACING="1" CELLPADDING="3" COLOR="#2E7D32">{"".join(rows)}'
        g.node(box, label=f"<{table}</TABLE>>", shape="plaintext", style="", margin="0")
    with g.subgraph(graph_attr={"rank": "same"}) as s:  # the samplers beside the building blocks: as wide as high
        s.edge("sdviz.models.attention", "sdviz.samplers", style="invis")
    for a, b in sorted(calls):
        if a in port and b in port and port[a].split(":")[0] != port[b].split(":")[0]:
            g.edge(port[a], port[b], **graph.CALL)
    note = (f"drawn by sdviz from its source (ast) and traced runs; ×N: objects of that class in one {cfg.name} "
            "model; each file's code is drawn statement by statement on the sheet it names")
    legend = [(STYLE["header"][0], "#2E7D32", "Class (Base) ×N", "its objects in one model"), STYLE["call"]]
    g.attr(label=graph.title_block(*SHEETS["overview"], note, legend))
    return g

"""The overview sheet: every file of the data path, its classes, and who calls whom.

One cluster per source file, one node per class (or free function) in it, with the number of objects of that class
in a Stable Diffusion 1.5 model (counted on the meta-device networks). Blue arrows are calls observed in the traced
runs (pipeline, the four network passes, the samplers), aggregated from statements to classes; dashed arrows are
inheritance, dotted ones "is built from" (a constructor that creates an object of another class, found by reading
`__init__`). Each cluster names the sheet that draws its code statement by statement.
"""

from __future__ import annotations

import ast
import importlib
from collections import Counter
from pathlib import Path

from sdviz.config import get_config
from sdviz.flowchart import runs
from sdviz.flowchart.dot import FONT, HTML, STYLE, Chart, Dot, esc, wrap
from sdviz.flowchart.source import classes_of, model_modules, sampler_modules

FILE_SHEETS = {
    "sdviz.pipeline": "pipeline",
    "sdviz.models.clip": "text-encoder",
    "sdviz.models.vae": "vae-encoder, vae-decoder",
    "sdviz.models.unet": "unet",
    "sdviz.models.common": "blocks",
    "sdviz.models.attention": "blocks",
}


def overview_modules() -> list[str]:
    return ["sdviz.pipeline", "sdviz.tokenizer", *model_modules(), *sampler_modules()]


def _functions(module: str) -> list[str]:
    mod = importlib.import_module(module)
    tree = ast.parse(Path(mod.__file__).read_text(encoding="utf-8"))
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")]


def _class_links(module: str, known: set[str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(class, base) inheritance pairs, and (class, built) pairs: the classes each class's methods construct."""
    mod = importlib.import_module(module)
    tree = ast.parse(Path(mod.__file__).read_text(encoding="utf-8"))
    inherits, builds = [], []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        for b in node.bases:
            name = b.id if isinstance(b, ast.Name) else None
            if name in known:
                inherits.append((node.name, name))
        for item in node.body:
            if isinstance(item, ast.FunctionDef):
                for n in ast.walk(item):
                    if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in known:
                        if (node.name, n.func.id) not in builds and n.func.id != node.name:
                            builds.append((node.name, n.func.id))
    return inherits, builds


def _object_counts(config: str) -> Counter:
    """How many objects of each nn.Module class of sdviz one model holds (text encoder + VAE + UNet)."""
    counts: Counter = Counter()
    for net in runs._networks(config):
        for m in net.modules():
            if type(m).__module__.startswith("sdviz."):
                counts[f"{type(m).__module__}.{type(m).__name__}"] += 1
    return counts


def draw_overview(config: str = "sd15") -> Chart:
    cfg = get_config(config)
    recordings = [runs.pipeline_recording_all(config), runs.networks_recording(config), runs.sampler_recording(config)]
    index = runs.function_index()

    def owner(key: str) -> str:
        fn = index.by_key[key]
        return f"{fn.module}.{fn.class_name or fn.name}"

    calls: dict[tuple[str, str], int] = {}
    ran: set[str] = set()
    for rec in recordings:
        for key in rec.functions:
            ran.add(owner(key))
        for (caller, _, callee), n in rec.edges.items():
            a, b = owner(caller), owner(callee)
            if a != b:
                calls[(a, b)] = calls.get((a, b), 0) + n
    ran.add("sdviz.models.common.HookPoint")  # called on every hook point, quietly (not drawn as edges)
    known_all: set[str] = set()
    for m in overview_modules():
        known_all |= {c for c, _ in classes_of(m)}
    links = {m: _class_links(m, known_all) for m in overview_modules()}
    changed = True
    while changed:  # a class built by a class on the path is on it too (NoiseSchedule, GenerationResult, ...)
        changed = False
        for m, (_, builds) in links.items():
            for a, b in builds:
                fa, fb = f"{m}.{a}", _qualify(b, m)
                if fa in ran and fb not in ran:
                    ran.add(fb)
                    changed = True

    counts = _object_counts(config)
    modules = overview_modules()
    title = (
        f'<FONT POINT-SIZE="28"><B>sdviz: the repository</B></FONT><BR/>'
        f'<FONT POINT-SIZE="13">every class on the data path, by file; the number of objects of each in one '
        f"{esc(cfg.name)} model; who calls whom in a traced generation</FONT><BR/>"
        f'<FONT POINT-SIZE="11" COLOR="#555555">drawn by sdviz from its source (ast) and traced runs; '
        f"each file's code is drawn statement by statement on the sheet named beside it</FONT>"
    )
    d = Dot(
        "flowchart-overview",
        graph=dict(
            rankdir="LR",
            newrank=True,
            compound=True,
            fontname=FONT,
            label=HTML(title),
            labelloc="t",
            labeljust="l",
            nodesep=0.12,
            ranksep=0.55,
            pad=0.3,
        ),
        node=dict(fontname=FONT, fontsize=11, shape="box", style="filled,rounded", margin="0.1,0.05"),
        edge=dict(fontname=FONT, fontsize=9, arrowsize=0.7),
    )
    node_ids: dict[str, str] = {}
    for m in modules:
        rel = m.replace(".", "/") + ".py"
        sheet = FILE_SHEETS.get(m) or ("sampler" if m.startswith("sdviz.samplers.") else "")
        label = f"<B>{esc(rel)}</B>"
        if sheet:
            label += f'<BR/><FONT POINT-SIZE="10">sheet: flowchart-{esc(sheet)}</FONT>'
        st = STYLE["cluster"]
        with d.subgraph(
            f"cluster_{m}",
            label=HTML(label),
            fontsize=12,
            style="rounded,filled",
            fillcolor=st["fill"],
            color=st["line"],
            labeljust="l",
        ):
            entries = [(c, doc, True) for c, doc in classes_of(m)]
            entries += [(f, "", False) for f in _functions(m) if f"{m}.{f}" in ran]
            for name, doc, is_class in entries:
                full = f"{m}.{name}"
                nid = full
                node_ids[full] = nid
                lines = [f"<B>{esc(name)}</B>" if is_class else f"<B>{esc(name)}()</B>"]
                n = counts.get(full, 0)
                if n:
                    lines[0] += f'<FONT POINT-SIZE="10">  ×{n}</FONT>'
                for line in wrap(doc, 40, max_lines=3, indent=""):
                    if line:
                        lines.append(f'<FONT POINT-SIZE="9" COLOR="#555555">{esc(line)}</FONT>')
                used = full in ran
                if not used:
                    lines.append('<FONT POINT-SIZE="9" COLOR="#888888"><I>not on the traced path</I></FONT>')
                kind = "header" if used else "note"
                d.node(
                    nid,
                    label=HTML("<BR/>".join(lines)),
                    fillcolor=STYLE[kind]["fill"],
                    color=STYLE[kind]["line"],
                    style="filled,rounded" if used else "filled,rounded,dashed",
                )
    for (a, b), _n in calls.items():
        if a in node_ids and b in node_ids:
            d.edge(node_ids[a], node_ids[b], color=STYLE["call"]["line"], penwidth=1.2, arrowhead="vee")
    for m in modules:
        inherits, builds = links[m]
        for a, b in inherits:
            fa, fb = f"{m}.{a}", _qualify(b, m)
            if fa in node_ids and fb in node_ids:
                d.edge(
                    node_ids[fa],
                    node_ids[fb],
                    style="dashed",
                    color="#7D3C98",
                    arrowhead="onormal",
                    label="inherits",
                    fontcolor="#7D3C98",
                )
        for a, b in builds:
            fa, fb = f"{m}.{a}", _qualify(b, m)
            if fb == "sdviz.models.common.HookPoint":
                continue  # built by almost every class: noted on its own node instead
            if fa in node_ids and fb in node_ids and (fa, fb) not in calls:
                d.edge(node_ids[fa], node_ids[fb], style="dotted", color="#555555", arrowhead="odiamond")
    _legend(d)
    return Chart("flowchart-overview", d.source(), "sdviz: the repository")


def _qualify(name: str, module: str) -> str:
    """The full name of the class `name` as module `module` sees it (unet.py's MidBlock is not vae.py's)."""
    obj = getattr(importlib.import_module(module), name, None)
    return f"{obj.__module__}.{obj.__name__}" if isinstance(obj, type) else name


def _legend(d: Dot) -> None:
    with d.subgraph("cluster_legend", label=HTML("<B>Legend</B>"), fontsize=12, style="rounded", color="#888888"):
        d.node(
            "legend:class", label="Class  ×N objects", fillcolor=STYLE["header"]["fill"], color=STYLE["header"]["line"]
        )
        d.node(
            "legend:callee", label="a class it calls", fillcolor=STYLE["header"]["fill"], color=STYLE["header"]["line"]
        )
        d.node("legend:base", label="its base class", fillcolor=STYLE["header"]["fill"], color=STYLE["header"]["line"])
        d.node(
            "legend:part", label="a part it builds", fillcolor=STYLE["header"]["fill"], color=STYLE["header"]["line"]
        )
        d.node(
            "legend:unused",
            label="not on the traced path",
            fillcolor=STYLE["note"]["fill"],
            color=STYLE["note"]["line"],
            style="filled,rounded,dashed",
        )
        d.edge(
            "legend:class",
            "legend:callee",
            color=STYLE["call"]["line"],
            penwidth=1.2,
            arrowhead="vee",
            label="calls (traced)",
        )
        d.edge("legend:class", "legend:base", style="dashed", color="#7D3C98", arrowhead="onormal", label="inherits")
        d.edge("legend:class", "legend:part", style="dotted", color="#555555", arrowhead="odiamond", label="builds")
        d.edge("legend:class", "legend:unused", style="invis")

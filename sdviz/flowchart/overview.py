"""The overview sheet: every file of the data path with its classes, and who calls whom.

One box per source file (the samplers' files share one), one row per class or public function in it, with the
number of objects of that class in one model (counted on the meta-device networks) and its base class. Blue arrows
are calls observed in the traced runs (pipeline, the four network passes, the samplers), aggregated from statements
to classes; calls inside a file are left out. Grey rows are not on the traced path. Each box names the sheet that
draws its code statement by statement. Small enough to read at the width of a README.
"""

from __future__ import annotations

import ast
import importlib
from collections import Counter
from pathlib import Path

from sdviz.config import get_config
from sdviz.flowchart import runs
from sdviz.flowchart.graph import CALL_COLOR, STYLE, Chart, chart, esc, font, title_block
from sdviz.flowchart.source import model_modules, sampler_modules
from sdviz.shapes import meta_network

SHEET_OF = {
    "sdviz.pipeline": "pipeline",
    "sdviz.models.clip": "text-encoder",
    "sdviz.models.vae": "vae-encoder, -vae-decoder",
    "sdviz.models.unet": "unet",
    "sdviz.models.common": "blocks",
    "sdviz.models.attention": "blocks",
    "sdviz.samplers": "sampler",
}


def _entries(module: str) -> list[tuple[str, str, list[str]]]:
    """(name, base class or "()", classes it builds) for each class and public function a module defines."""
    tree = ast.parse(Path(importlib.import_module(module).__file__).read_text(encoding="utf-8"))
    out = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            base = next((b.id for b in node.bases if isinstance(b, ast.Name)), "")
            built = [n.func.id for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
            out.append((node.name, base, built))
        elif isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            out.append((node.name, "()", []))  # shown only if it ran
    return out


def overview(config: str = "sd15") -> Chart:
    cfg = get_config(config)
    index = runs.function_index()
    recordings = [runs.pipeline_recording_all(config), runs.networks_recording(config), runs.sampler_recording(config)]

    def owner(key: str) -> str:  # "unet.ResnetBlock.forward" -> "sdviz.models.common.ResnetBlock"
        fn = index.by_key[key]
        return f"{fn.module}.{fn.class_name or fn.name}"

    ran = {owner(k) for rec in recordings for k in rec.functions}
    calls = {(owner(a), owner(b)) for rec in recordings for (a, _, b) in rec.edges}
    groups: dict[str, list[str]] = {"sdviz.pipeline": ["sdviz.pipeline"], "sdviz.tokenizer": ["sdviz.tokenizer"]}
    groups |= {m: [m] for m in model_modules()} | {"sdviz.samplers": sampler_modules()}
    entries = {m: _entries(m) for ms in groups.values() for m in ms}
    changed = True
    while changed:  # a class built by a class on the path is on it too (NoiseSchedule, GenerationResult, ...)
        before = len(ran)
        for m, items in entries.items():
            mod = importlib.import_module(m)
            for name, _, built in items:
                if f"{m}.{name}" in ran:
                    ran |= {f"{c.__module__}.{c.__name__}" for b in built if isinstance(c := getattr(mod, b, 0), type)}
        changed = len(ran) > before
    counts = Counter(
        f"{type(x).__module__}.{type(x).__name__}"
        for c in (cfg.clip, cfg.vae, cfg.unet)
        for x in meta_network(c).modules()
    )

    g = chart("flowchart-overview", rankdir="LR", nodesep="0.15", ranksep="0.6")
    node_of: dict[str, str] = {}  # class -> "file node:port"
    for group, modules in groups.items():
        title = group.replace(".", "/") + ("/" if len(modules) > 1 else ".py")
        rows = [
            f'<TR><TD ALIGN="LEFT" BGCOLOR="{STYLE["module"][0]}"><B>{esc(title)}</B>'
            + (font(f"<BR/>sheet: flowchart-{SHEET_OF[group]}", 9) if group in SHEET_OF else "")
            + "</TD></TR>"
        ]
        for m in modules:
            for name, base, _ in entries[m]:
                full = f"{m}.{name}"
                if base == "()" and full not in ran:
                    continue
                node_of[full] = f"{group}:{name}"
                text = f"<B>{esc(name)}</B>" + font(esc(f"({base})" if base and base != "()" else base), 9)
                if counts.get(full, 0) > 1:
                    text += font(f"  ×{counts[full]}", 9)
                if len(modules) > 1:
                    text += font(f"  {m.rsplit('.', 1)[-1]}.py", 8, "#777777")
                fill, color = (STYLE["header"][0], "black") if full in ran else ("#F2F2F2", "#888888")
                rows.append(f'<TR><TD ALIGN="LEFT" PORT="{name}" BGCOLOR="{fill}">{font(text, color=color)}</TD></TR>')
        table = f'<TABLE BORDER="1" CELLBORDER="0" CELLSPACING="1" CELLPADDING="3" COLOR="#2E7D32">{"".join(rows)}'
        g.node(group, label=f"<{table}</TABLE>>", shape="plaintext", style="", margin="0")
    with g.subgraph() as s:  # the samplers beside the building blocks: a sheet about as wide as it is high
        s.attr(rank="same")
        s.edge("sdviz.models.attention", "sdviz.samplers", style="invis")
    for a, b in sorted(calls):
        if a in node_of and b in node_of and node_of[a].split(":")[0] != node_of[b].split(":")[0]:
            g.edge(node_of[a], node_of[b], color=CALL_COLOR, penwidth="1.1", arrowhead="vee")
    note = (
        "drawn by sdviz from its source (ast) and traced runs; ×N: objects of that class in one "
        f"{cfg.name} model; each file's code is drawn statement by statement on the sheet it names"
    )
    legend = [
        (STYLE["header"][0], "#2E7D32", "Class (Base) ×N", "on the traced path"),
        ("#F2F2F2", "#2E7D32", "Class", "not on the traced path"),
        ("#FFFFFF", CALL_COLOR, "──▶", "calls"),
    ]
    g.attr(
        label=title_block(
            "sdviz: the repository", "every class on the data path, by file, and who calls whom", note, legend
        )
    )
    return g

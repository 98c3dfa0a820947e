"""The shipped SAEs: their files in `sdviz/toy/sae/`, the measured record and the card written from it.

`ship` copies each trained SAE (a run folder of `sdviz sae train`, graded by `sdviz sae grade` and checked by
`sdviz sae causal`) into `sdviz/toy/sae/<hook point>.safetensors` and writes two files from the same numbers:
`sae_record.json` (everything measured) and `SAE_CARD.md` (what a reader wants to see of it). `render_card(record)`
is the card; a test checks that the committed card is what the committed record renders.

    from sdviz.concepts import load_sae
    sae = load_sae()                                          # the SAE of unet.up_blocks.0.attentions.1
    sae = load_sae("unet.up_blocks.1.attentions.1.hook_block_out")
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from sdviz.concepts.sae import SAE

SHIPPED = Path(__file__).resolve().parents[1] / "toy" / "sae"
RECORD = SHIPPED / "sae_record.json"
DEFAULT_POINT = "unet.up_blocks.0.attentions.1.hook_block_out"
REQUIRED = ("file", "settings", "train_seconds", "torch_threads", "train", "held_out", "splice", "grade", "causal")


def shipped_points() -> list[str]:
    return sorted(p.name.removesuffix(".safetensors") for p in SHIPPED.glob("*.safetensors"))


def load_sae(point: str = DEFAULT_POINT) -> SAE:
    """A shipped SAE by the hook point it was trained on (or a path to an SAE file)."""
    path = Path(point)
    if path.suffix == ".safetensors" and path.is_file():
        return SAE.load(path)
    path = SHIPPED / f"{point}.safetensors"
    if not path.is_file():
        raise ValueError(f"point: no shipped SAE for {point!r}; shipped: {', '.join(shipped_points()) or 'none'}")
    return SAE.load(path)


def check_record(record: dict[str, Any]) -> dict[str, Any]:
    """Refuse a damaged record: one line naming what is missing."""
    for key in ("collection", "saes"):
        if key not in record:
            raise ValueError(f"sae_record.json: missing {key!r}")
    for point, entry in record["saes"].items():
        missing = [k for k in REQUIRED if k not in entry]
        if missing:
            raise ValueError(f"sae_record.json: the SAE of {point} misses {', '.join(missing)}")
    return record


def load_record(path: str | Path = RECORD) -> dict[str, Any]:
    return check_record(json.loads(Path(path).read_text()))


def sweep_row(run: str | Path) -> dict[str, Any]:
    """One graded run (not shipped) as a row of the dictionary-size sweep: its settings, held-out reconstruction and
    the median AUROC per concept kind of its best features, beside the raw channels' (the same pixels and steps)."""
    run = Path(run)
    sae, grade = SAE.load(run / "sae.safetensors"), json.loads((run / "grade.json").read_text())
    kinds: dict[str, list[dict[str, Any]]] = {}
    for r in grade["table"]:
        kinds.setdefault(r["kind"], []).append(r)

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    return {
        "point": sae.point, "n": sae.n, "k": sae.k, "steps": sae.info["settings"]["steps"],
        "expansion": sae.info["settings"]["expansion"], "fvu": round(grade["held_out"]["fvu"], 6),
        "share_at_0.95": grade["share_at_0.95"],
        "median_auroc": {k: median([r["auroc"] for r in rows]) for k, rows in kinds.items()},
        "median_channel_auroc": {k: median([r["channel_auroc"] for r in rows]) for k, rows in kinds.items()},
    }


def ship(
    runs: list[str | Path],
    train: str | Path,
    held_out: str | Path,
    out: str | Path = SHIPPED,
    sweep: list[str | Path] = (),
) -> dict:
    """Copy the runs' SAEs to `out` with their measurements, and write `sae_record.json` and `SAE_CARD.md`.
    `sweep`: more graded runs (other dictionary sizes, not shipped) whose rows the card compares."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    collections = {}
    for name, folder in (("train", train), ("held_out", held_out)):
        r = json.loads((Path(folder) / "collection.json").read_text())
        keep = ("settings", "kept_steps", "model", "seconds", "torch_threads", "bytes")
        collections[name] = {"pairs": len(r["pairs"]), **{k: r[k] for k in keep}}
    record: dict[str, Any] = {"collection": collections, "saes": {}}
    for run in map(Path, runs):
        sae = SAE.load(run / "sae.safetensors")
        grade, causal = (json.loads((run / f"{n}.json").read_text()) for n in ("grade", "causal"))
        entry = {
            "file": f"{sae.point}.safetensors",
            "d": sae.d,
            "n": sae.n,
            "k": sae.k,
            **{k: sae.info[k] for k in ("settings", "train_seconds", "torch_threads", "train")},
            "held_out": grade.pop("held_out"),
            "splice": causal.get("splice"),
            "grade": grade,
            "causal": {k: v for k, v in causal.items() if k != "splice"},
        }
        sae.info = {k: v for k, v in entry.items() if k in ("settings", "train_seconds", "torch_threads", "train")}
        sae.save(out / entry["file"])
        record["saes"][sae.point] = entry
    if sweep:
        rows = [sweep_row(r) for r in [*runs, *sweep]]
        record["sweep"] = sorted(rows, key=lambda r: (r["point"], r["n"], r["steps"]))
    check_record(record)
    (out / "sae_record.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "SAE_CARD.md").write_text(render_card(record))
    return record


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def render_card(record: dict[str, Any]) -> str:
    """SAE_CARD.md from the record (nothing else)."""
    check_record(record)
    tr, ho = record["collection"]["train"], record["collection"]["held_out"]
    s = tr["settings"]
    lines = [
        "# sdviz's sparse autoencoders",
        "",
        "TopK SAEs (Gao et al. 2024) on the embedded model's UNet activations, graded against the toy world's truth.",
        "Written by `sdviz.concepts.card.ship` from `sae_record.json`; do not edit.",
        "",
        "## Data",
        "",
        f"- {tr['pairs']} training-split captions of the world, one seed each, generated with {s['steps']} "
        f"{s['sampler']} steps at cfg {s['cfg_scale']:g}; every step kept, the conditional rows only "
        f"({tr['bytes'] / 1e6:.0f} MB, {tr['seconds'] / 60:.1f} min on {tr['torch_threads']} torch thread(s))",
        f"- held out: the evaluation's first {ho['pairs']} pairs (`world.held_out_prompts`: captions and seeds never "
        f"trained on), the same settings ({ho['seconds'] / 60:.1f} min)",
        "- a concept's pixels: the judge's blob of each object in the pictures the judge calls correct; its "
        "negatives: the pixels of the other objects (an object without the concept), never the background, so a "
        "feature must tell a red object from a blue one, not an object from the empty canvas",
        "",
    ]
    for point, e in record["saes"].items():
        st, t, h, g = e["settings"], e["train"], e["held_out"], e["grade"]
        lines += [
            f"## {point}",
            "",
            f"`{e['file']}`: d = {e['d']}, n = {e['n']} features ({st['expansion']}x), k = {e['k']}; "
            f"{st['steps']} Adam steps of {st['batch']} rows, lr {st['lr']:g}, aux loss x{st['aux_coef']:.4g} on "
            f"features silent for {st['dead_after']} rows; {e['train_seconds'] / 60:.1f} min on "
            f"{e['torch_threads']} torch thread(s)",
            "",
            "| | FVU | L0 | dead features |",
            "|---|---|---|---|",
            f"| training rows | {t['fvu']:.3f} | {t['l0']:.1f} | {t['dead']} ({_pct(t['dead_fraction'])}) |",
            f"| held-out rows | {h['fvu']:.3f} | {h['l0']:.1f} | {h['dead']} ({_pct(h['dead_fraction'])}) |",
            "",
        ]
        by_step = g.get("held_out_fvu_by_step")
        if by_step:
            values = ", ".join(f"{v:.2f}" for v in by_step)
            lines += [f"Held-out FVU step by step ({len(by_step)} steps, each against its own variance): {values}", ""]
        if e["splice"]:
            w, wo = e["splice"]["with"], e["splice"]["without"]
            lines += [
                f"Spliced in (the reconstruction replaces the activation, {e['splice']['pairs']} held-out pairs): "
                + ", ".join(f"{k} {_pct(wo[k])} -> {_pct(w[k])}" for k in wo),
                "",
            ]
        lines += [
            f"Best feature per concept (chosen on the training pictures, AUROC on held-out ones over steps "
            f"{g['late_steps'][0]}-{g['late_steps'][-1]}; 'on at': the first step from which its AUROC stays >= 0.9). "
            f"Share of concepts with a feature at AUROC >= 0.95: **{_pct(g['share_at_0.95'])}**; none for: "
            f"{', '.join(g['without_feature_0.95']) or 'every concept has one'}. The baseline: the best single channel "
            "of the activation itself (either sign, chosen and measured the same way).",
            "",
            "| concept | kind | feature | AUROC | on at step | best single channel (AUROC) |",
            "|---|---|---|---|---|---|",
        ]
        for r in g["table"]:
            on = "-" if r["switches_on"] is None else str(r["switches_on"])
            channel = f"{r['channel']} ({r['channel_auroc']:.3f})" if "channel" in r else "-"
            lines.append(f"| {r['concept']} | {r['kind']} | {r['feature']} | {r['auroc']:.3f} | {on} | {channel} |")
        lines.append("")
        ab, steer = e["causal"].get("ablation", {}), e["causal"].get("steering", {})
        if ab:
            lines += [
                "Causal check (target: the concept's rate on prompts naming it; control: the largest move of any "
                "rate on prompts that do not; passes: drop >= 50 points and every control move <= 5):",
                "",
                "| concept | edit | prompts (target, control) | target before | after | control move (points) "
                "| passes |",
                "|---|---|---|---|---|---|---|",
            ]
            for r in ab.values():
                worst = max(r["control_moved_points"].values(), key=abs)
                lines.append(
                    f"| {r['concept']} | {r['edit']} | {r['prompts']['target']}, {r['prompts']['control']} |"
                    f" {_pct(r['target_before'])} | {_pct(r['target_after'])} | "
                    f"{worst:+.1f} | {'yes' if r['passes'] else 'no'} |"
                )
            lines.append("")
        if steer:
            lines += ["Steering a red circle blue (the red feature's place taken by the blue one, gain g):", ""]
            for r in steer.values():
                m = 1 if isinstance(r["red_feature"], int) else len(r["red_feature"])
                group = f", the {m} best red features swapped pairwise for the {m} best blue ones" if m > 1 else ""
                lines.append(
                    f"- gain {r['amount']:g}{group}: blue circle and no red object in {_pct(r['blue_circle_rate'])} of "
                    f"{r['n']} pictures (red gone in {_pct(r['red_gone_rate'])})"
                )
            lines.append("")
    if record.get("sweep"):
        kinds = list(record["sweep"][0]["median_auroc"])
        lines += [
            "## Dictionary size",
            "",
            "The same collection, other TopK SAEs (only the shipped ones above are committed): the median over each "
            "kind's concepts of the best feature's held-out AUROC, and in the last row of each point the raw "
            "channels' (the baseline a feature should beat).",
            "",
            "| point | features (k) | Adam steps | held-out FVU | " + " | ".join(kinds) + " |",
            "|---|---|---|---|" + "---|" * len(kinds),
        ]
        for point in dict.fromkeys(r["point"] for r in record["sweep"]):
            rows = [r for r in record["sweep"] if r["point"] == point]
            short = point.removeprefix("unet.").removesuffix(".hook_block_out")
            for r in rows:
                cells = " | ".join(f"{r['median_auroc'][k]:.2f}" for k in kinds)
                lines.append(f"| {short} | {r['n']} ({r['k']}) | {r['steps']} | {r['fvu']:.3f} | {cells} |")
            cells = " | ".join(f"{rows[0]['median_channel_auroc'][k]:.2f}" for k in kinds)
            lines.append(f"| {short} | the {rows[0]['n'] // rows[0]['expansion']} channels | - | - | {cells} |")
        lines.append("")
    return "\n".join(lines)

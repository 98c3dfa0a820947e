"""`sdviz export`: a saved trace as one self-contained web page (the player and the explorer), and the
documentation site's example runs.

    sdviz export trace.pt --out run.html [--max-mb 25] [--drop decoded,steps] [--image 0]
    python -m sdviz.tracing.export_cli --docs docs/runs      # the course's headline runs, from the embedded model

The page itself is made by `sdviz.tracing.export` (which `Trace.to_html` calls too); this module only loads the trace
(`sdviz.load_trace`, with its one-line errors for a broken or foreign file) and reports, which is why it is a module
of its own: the exporter must not import the Trace's module that imports it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sdviz.tracing.export import DROPS, ExportSizeError, export

# The documentation site's runs: the course's headline prompt and settings (the README figures'), one run with the
# per-step maps and the VAE decodes, one that keeps every layer and head apart (the pickers) over the whole run.
DOCS_RUNS = {
    "headline": {
        "prompt": "a large red circle above a small blue square",
        "trace": {"keep": ["step"], "decode": True},
        "caption": "the headline run: 50 DDIM steps at cfg 5, seed 13, with the per-step maps and the VAE decodes",
    },
    "layers-and-heads": {
        "prompt": "a large red triangle above a small blue circle",
        "trace": {"keep": ["layer", "head"], "decode": True},
        "caption": "another prompt, with every cross-attention layer and head kept apart (the layer and head pickers)",
    },
}
DOCS_SETTINGS = {"seed": 13, "steps": 50, "cfg_scale": 5.0, "sampler": "ddim"}


def docs_runs(out: Path, threads: int | None = None) -> list[str]:
    """Export the documentation site's runs from the embedded model into `out` (one HTML page each)."""
    import torch

    from sdviz.pipeline import load_pipeline
    from sdviz.tracing.tracing import trace

    if threads:
        torch.set_num_threads(threads)
    pipe = load_pipeline()
    lines = []
    for name, run in DOCS_RUNS.items():
        with trace(pipe, **run["trace"]) as tr:
            pipe.generate(run["prompt"], progress=False, **DOCS_SETTINGS)
        result = export(tr, out / f"{name}.html", max_mb=5)
        lines.append(str(result))
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sdviz export", description="a saved trace as one self-contained web page: the player and the explorer"
    )
    p.add_argument("trace", nargs="?", help="a trace file written by tr.save(...)")
    p.add_argument("--out", help="the HTML file to write (default: the trace's name with .html)")
    p.add_argument("--max-mb", type=float, help="refuse, and say what to drop, when the page would be larger")
    p.add_argument("--drop", default="", help=f"parts to leave out or sum, comma-separated: {', '.join(DROPS)}")
    p.add_argument("--image", type=int, default=0, help="which picture of a batch (default 0)")
    p.add_argument("--docs", metavar="DIR", help="instead: export the documentation site's runs into DIR")
    p.add_argument("--threads", type=int, help="torch threads for --docs")
    return p


def main(argv: list[str] | None = None) -> int:
    """The `sdviz export` command: 0 on success, 2 with one line on stderr for bad input."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.docs:
            for line in docs_runs(Path(args.docs), args.threads):
                print(line)
            return 0
        if not args.trace:
            raise ValueError("give a trace file: sdviz export trace.pt --out run.html")
        from sdviz.tracing.tracing import load

        tr = load(args.trace)
        out = Path(args.out) if args.out else Path(args.trace).with_suffix(".html")
        if out.suffix.lower() not in (".html", ".htm"):
            raise ValueError(f"--out {out}: the page is HTML; name it something.html")
        drop = [d.strip() for d in args.drop.split(",") if d.strip()]
        print(export(tr, out, image=args.image, max_mb=args.max_mb, drop=drop))
    except ExportSizeError as e:
        print(f"sdviz export: error: {e}; nothing was written", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, KeyError, IndexError, RuntimeError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"sdviz export: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

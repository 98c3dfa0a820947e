"""Run the course notebooks in a real Jupyter kernel and save them with their outputs (`make notebooks`).

    python notebooks/execute.py                      # every notebook in notebooks/, saved in place
    python notebooks/execute.py notebooks/04_*.ipynb # some of them
    python notebooks/execute.py --check              # run, check, save nothing (what the slow test does)

Each notebook is executed top to bottom by nbclient with a fresh ipykernel (the kernel a JupyterLab user gets), in
the notebooks/ folder, and written back with its outputs, so that GitHub and nbviewer show the figures. The widget
state is saved with the notebook (nbviewer and JupyterLab then draw the widgets as they were; GitHub shows the
animation each widget puts below itself). Timing metadata is left out, so a re-run changes only what the code drew.

`problems(nb)` lists what must not be in a notebook: an error output; a figure that displayed as text
(`<Figure size 640x480 with 1 Axes>`) instead of a picture; a cell tagged "figure" without a picture; a widget view
whose state was not saved ("Error displaying widget: model not found" on GitHub and nbviewer, e.g. a tqdm bar).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import nbformat

HERE = Path(__file__).parent
PICTURES = ("image/png", "image/svg+xml", "image/gif", "image/jpeg")
FIGURE_AS_TEXT = re.compile(r"<(\w+\.)*Figure size [\d.]+x[\d.]+ with \d+ Axes>|<(\w+\.)*Figure at 0x[0-9a-f]+>")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def notebooks(folder: Path = HERE) -> list[Path]:
    """The course notebooks, in reading order (their names start with the number of the lesson; the tour, the
    index, first)."""
    return sorted(folder.glob("*.ipynb"), key=lambda p: (p.stem != "tour", p.name))


def execute(path: Path, timeout: int = 600) -> tuple[nbformat.NotebookNode, float]:
    """Run a notebook in a fresh python3 kernel, in its own folder: (the notebook with outputs, seconds taken).

    The seconds are wall-clock time, kernel start included. (`kernel_cpu_seconds()` before and after tells how much
    CPU time the kernel used, which on a busy machine says more than the wall clock.)"""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        record_timing=False,  # no timestamps in the saved file: a re-run changes only the outputs
        store_widget_state=True,
    )
    start = time.perf_counter()
    client.execute()
    return nb, time.perf_counter() - start


def kernel_cpu_seconds() -> float:
    """CPU time (user + system) used so far by this process's finished children: the kernels run so far."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _has_picture(output: dict) -> bool:
    data = output.get("data", {})
    return any(k in data for k in PICTURES) or "<img " in "".join(data.get("text/html", ""))


def problems(nb: nbformat.NotebookNode, name: str = "notebook") -> list[str]:
    """What is wrong with an executed notebook, one line each (nothing: it is fine)."""
    out = []
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    code = [c for c in nb.cells if c.cell_type == "code"]
    if not code:
        out.append(f"{name}: no code cell")
    for i, cell in enumerate(code):
        where = f"{name}, code cell {i + 1} ({cell.source.strip().splitlines()[0][:60] if cell.source.strip() else ''})"
        if cell.get("execution_count") is None and cell.source.strip():
            out.append(f"{where}: not executed")
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                out.append(f"{where}: {o.get('ename')}: {o.get('evalue')}")
            text = "".join(o.get("data", {}).get("text/plain", "")) if "data" in o else "".join(o.get("text", ""))
            if FIGURE_AS_TEXT.search(text) and not _has_picture(o):
                out.append(f"{where}: a figure displayed as text ({FIGURE_AS_TEXT.search(text).group(0)})")
            view = o.get("data", {}).get(WIDGET_VIEW)
            if view and view.get("model_id") not in state:
                out.append(f"{where}: a widget whose state was not saved (shows 'model not found' when rendered)")
        if "figure" in cell.get("metadata", {}).get("tags", []) and not any(
            _has_picture(o) for o in cell.get("outputs", [])
        ):
            out.append(f"{where}: tagged 'figure' but shows no picture")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python notebooks/execute.py", description=__doc__.split("\n")[0])
    p.add_argument("paths", nargs="*", type=Path, help="notebooks to run (default: all in notebooks/)")
    p.add_argument("--check", action="store_true", help="run and check, but do not save")
    p.add_argument("--timeout", type=int, default=600, help="seconds a cell may take")
    a = p.parse_args(argv)
    failed = False
    for path in a.paths or notebooks():
        cpu = kernel_cpu_seconds()
        try:
            nb, seconds = execute(path, a.timeout)
        except Exception as e:  # a cell that raised or timed out: say which, and go on with the next notebook
            print(f"{path.name}: {type(e).__name__}: {str(e).strip().splitlines()[0]}", flush=True)
            failed = True
            continue
        cpu = kernel_cpu_seconds() - cpu
        found = problems(nb, path.name)
        trouble = f", {len(found)} problem(s)" if found else ""
        print(f"{path.name}: {seconds:.1f} s ({cpu:.1f} s of kernel CPU time){trouble}", flush=True)
        for line in found:
            print("   ", line)
        failed |= bool(found)
        if not a.check and not found:
            nbformat.write(nb, path)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

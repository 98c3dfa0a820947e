"""The notebooks run: their code cells are executed in order in one namespace (no Jupyter needed).

A notebook whose API calls went stale fails here rather than in a classroom.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pytest

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path):
    matplotlib.use("Agg")
    cells = json.loads(path.read_text())["cells"]
    namespace: dict = {}
    ran = 0
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        exec(compile(source, f"{path.name}[{i}]", "exec"), namespace)  # noqa: S102
        ran += 1
    assert ran >= 5
    assert namespace["traced"].latents.equal(namespace["result"].latents)  # the notebook's own claim

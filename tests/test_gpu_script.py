"""benchmarks/gpu.py, the prepared GPU script, runs end to end on the CPU (`--device cpu --small`): every section,
no failure, and the properties it reports hold there (traceable, no graph break, finite float16 and bfloat16,
batch invariance on the CPU)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


def run_script(*args: str, timeout: int) -> str:
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--small", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "FAILED" not in out.stdout, out.stdout
    return out.stdout


@pytest.mark.slow  # 10-30 s on 2 cores: make test-all (CI runs both) keeps make test under 8 minutes
def test_the_quick_sections_run_on_the_cpu():
    out = run_script("--sections", "memory,nan,batch", timeout=600)
    for dtype in ("float16", "bfloat16"):
        for size in (64, 96):
            assert re.search(rf"nan {dtype} {size}x{size}\s+finite latents", out), out
    assert re.search(r"batch invariance \(on\)\s+image by image: .* 0\.00e\+00, at position 2: 0\.00e\+00", out), out
    assert re.search(r"trace records vs estimate\s+([\d.]+) MB held vs \1 MB estimated", out), out
    assert out.splitlines()[-1].startswith("total ")


@pytest.mark.slow
def test_the_whole_script_runs_on_the_cpu():
    out = run_script("--budget-s", "3000", timeout=3000)
    for section in ("eager", "compile", "trace", "memory", "nan", "batch", "embedded", "autotune", "summary"):
        assert f"== {section}\n" in out
    assert "sdviz vs diffusers output" in out or "diffusers not installed: skipped" in out
    assert len(re.findall(r"graph\(s\), 0 graph breaks", out)) == 2, out  # both compile modes
    assert re.search(r"traceable\s+yes", out), out
    autotune = out.split("== autotune")[1].split("== summary")[0]
    assert "skipped:" not in autotune and "did not finish" not in autotune, out

"""The flowcharts: committed files are current, every model class is drawn, output is deterministic, errors are
one line. Only DOT text is generated here (no Graphviz needed), except where a test says it renders."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import sdviz.flowchart as fc
from sdviz.flowchart import cli, dot, runs
from sdviz.flowchart.repository import all_model_classes

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "flowcharts"
REGENERATE = "run `sdviz flowchart` (or `python -m sdviz.flowchart`) and commit flowcharts/"


@pytest.fixture(scope="module")
def charts() -> dict[str, fc.Chart]:
    return {c.name: c for c in fc.all_charts("sd15")}


def test_committed_dot_files_are_current(charts):
    """The .dot files in flowcharts/ are exactly what the code draws today: a chart never goes stale."""
    stale = [name for name, c in charts.items() if _read(COMMITTED / f"{name}.dot") != c.source]
    missing = [name for name in charts if not (COMMITTED / f"{name}.dot").is_file()]
    extra = sorted(p.stem for p in COMMITTED.glob("*.dot") if p.stem not in charts)
    assert not missing, f"missing from flowcharts/: {missing}; {REGENERATE}"
    assert not stale, f"out of date in flowcharts/: {stale}; {REGENERATE}"
    assert not extra, f"flowcharts/ holds charts nothing generates: {extra}; delete them"


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None


def test_every_model_class_is_in_the_repository_flowchart(charts):
    """Every class defined in sdviz/models/ is a node of the overview, and each traced one is drawn on a sheet."""
    overview = charts["flowchart-overview"].source
    sheets = "".join(charts[f"flowchart-{s}"].source for s in fc.SHEETS if s != "overview")
    classes = all_model_classes()
    assert len(classes) >= 20
    for module, cls in classes:
        assert f'"{module}.{cls}"' in overview, f"{module}.{cls} is not on the overview"
        if cls != "HookPoint":  # called at every activation, drawn as a mark on the calling statement
            assert f"{cls}." in sheets, f"{cls} is on no component sheet"


def test_shapes_are_the_traced_sd15_ones(charts):
    unet = charts["flowchart-unet"].source
    assert "(B, 4, 64, 64) → (B, 320, 64, 64)" in unet  # conv_in
    assert "×16 objects" in unet  # 16 transformer blocks, drawn once
    assert "(B, 4096, 320), (B, 77, 768) → (B, 4096, 320)" in unet  # cross-attention
    assert "1280 @ 8×8" in charts["architecture-unet"].source
    assert "(2B, 4, 64, 64)" in charts["architecture-txt2img"].source  # guidance doubles the UNet batch
    assert "(B, 3, 512, 512)" in charts["flowchart-vae-decoder"].source


def test_output_is_deterministic_and_portable(charts):
    """Same bytes from a fresh trace; no memory address, absolute path or timing in the DOT text."""
    before = charts["flowchart-unet"].source
    runs.network_recording.cache_clear()
    runs.networks_recording.cache_clear()
    assert fc.repository_flowchart("unet").source == before
    for name, c in charts.items():
        assert not re.search(r"0x[0-9a-f]{6,}", c.source), name
        assert str(ROOT) not in c.source and "/root/" not in c.source and "site-packages" not in c.source, name


def test_toy_config_and_python_api(tmp_path):
    assert cli.main(["--config", "toy", "--out", str(tmp_path), "--format", "dot"]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert "flowchart-overview.dot" in written and "architecture-unet.dot" in written
    assert all(name.endswith(".dot") for name in written)
    assert "(B, 4, 16, 16)" in (tmp_path / "flowchart-unet.dot").read_text()  # toy: 64x64 images, 16x16 latents


def test_bad_config_and_format_are_one_line_errors(tmp_path, capsys):
    assert cli.main(["--config", "sd99", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "sd99" in err and "sd15" in err and "toy" in err
    assert cli.main(["--format", "dot,gif", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "gif" in err and "svg" in err and "png" in err
    with pytest.raises(ValueError, match="known: .*unet"):
        fc.repository_flowchart("nope")
    with pytest.raises(ValueError, match="known: txt2img"):
        fc.architecture_diagram("nope")
    with pytest.raises(ValueError, match="known: 1"):
        fc.architecture_diagram("unet", depth=4)


def test_missing_graphviz_still_writes_dot(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(dot.shutil, "which", lambda name: None)
    assert cli.main(["--config", "toy", "--out", str(tmp_path), "--format", "dot,svg,png"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "install Graphviz" in err
    assert (tmp_path / "flowchart-overview.dot").is_file()
    assert not list(tmp_path.glob("*.svg"))
    with pytest.raises(fc.GraphvizMissing, match="install Graphviz"):
        fc.architecture_diagram("unet", config="toy")._repr_svg_()


@pytest.mark.skipif(dot.dot_executable() is None, reason="Graphviz's dot is not installed")
def test_charts_render_inline_as_svg():
    svg = fc.architecture_diagram("unet", depth=1, config="toy")._repr_svg_()
    assert "<svg" in svg and "conv_in" in svg

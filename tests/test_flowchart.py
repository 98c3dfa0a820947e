"""The flowcharts: committed files are current on any machine, every model class is drawn, the diagrams follow the
code and the configuration, output is deterministic, errors are one line. The DOT text is generated without
Graphviz; the tests that render need its `dot` (installed by `make test`) and are skipped without it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sdviz.flowchart as fc
from sdviz.config import SD15
from sdviz.flowchart import runs
from sdviz.flowchart.repository import rows_of
from sdviz.flowchart.source import modules_in
from sdviz.shapes import probe

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "flowcharts"
REGENERATE = "run `make flowcharts` (or `python -m sdviz flowchart`) and commit flowcharts/"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")


@pytest.fixture(scope="module")
def charts() -> dict[str, fc.Chart]:
    return {c.name: c for c in fc.all_charts("sd15")}


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None


def test_committed_dot_files_are_current(charts):
    """The .dot files in flowcharts/ are exactly what the code draws today: a chart never goes stale."""
    missing = [name for name in charts if not (COMMITTED / f"{name}.dot").is_file()]
    stale = [name for name, c in charts.items() if _read(COMMITTED / f"{name}.dot") not in (c.source, None)]
    extra = sorted(p.stem for p in COMMITTED.glob("*.dot") if p.stem not in charts)
    assert not missing, f"missing from flowcharts/: {missing}; {REGENERATE}"
    assert not stale, f"out of date in flowcharts/: {stale}; {REGENERATE}"
    assert not extra, f"flowcharts/ holds charts nothing generates: {extra}; delete them"


def test_dot_text_holds_no_computed_float(charts):
    """The .dot files are compared exactly, so they must hold nothing whose last digits could differ between CPUs:
    every decimal number in them is written literally in sdviz's source (a style setting, a literal of the code
    drawn, a configuration value); shapes and counts are integers."""
    source = "".join(p.read_text(encoding="utf-8") for p in (ROOT / "sdviz").rglob("*.py"))
    for name, c in charts.items():
        computed = {x for x in re.findall(r"(?<![\w.])\d+\.\d+(?:e-?\d+)?", c.source) if x not in source}
        assert not computed, f"{name} holds numbers computed at run time: {sorted(computed)[:5]}"


def _texts(svg: str) -> list[str]:
    return sorted(re.findall(r"<text[^>]*>(.*?)</text>", svg, flags=re.S))


def _size_pt(svg: str) -> tuple[float, float]:
    w, h = re.search(r'<svg width="([\d.]+)pt" height="([\d.]+)pt"', svg).groups()
    return float(w), float(h)


@needs_dot
def test_committed_pictures_are_what_the_committed_dot_draws(tmp_path):
    """SVG and PNG are compared with what `dot` draws from the committed .dot, with tolerances, not byte for byte
    (Graphviz's output differs slightly between versions and machines): the SVG holds the same texts and has about
    the same size; the PNG has the SVG's size at the PNG resolution and looks like the .dot drawn (thumbnails)."""
    problems = []
    for path in sorted(COMMITTED.glob("*.dot")):
        svg, png = _read(path.with_suffix(".svg")), path.with_suffix(".png")
        if svg is None or not png.is_file():
            problems.append(f"{path.stem}: .svg or .png missing")
            continue
        fresh = subprocess.run(["dot", "-Tsvg", str(path)], capture_output=True, check=True).stdout.decode("utf-8")
        if _texts(fresh) != _texts(svg):
            problems.append(f"{path.stem}.svg: its texts are not those of the .dot")
        (w, h), (fw, fh) = _size_pt(svg), _size_pt(fresh)
        if abs(w - fw) > 0.03 * fw + 5 or abs(h - fh) > 0.03 * fh + 5:
            problems.append(f"{path.stem}.svg: {w}x{h} pt, the .dot draws {fw}x{fh} pt")
        picture = Image.open(png).convert("L")
        expected = (w * fc.PNG_DPI / 72, h * fc.PNG_DPI / 72)
        if any(abs(a - b) > 0.01 * b + 3 for a, b in zip(picture.size, expected, strict=True)):
            problems.append(f"{path.stem}.png: {picture.size} px, its .svg says {expected[0]:.0f}x{expected[1]:.0f}")
        small = tmp_path / f"{path.stem}.png"  # drawn at half the resolution; both compared at a quarter
        subprocess.run(["dot", "-Tpng", f"-Gdpi={fc.PNG_DPI // 2}", str(path), "-o", str(small)], check=True)
        drawn = Image.open(small).convert("L")
        size = (max(1, drawn.size[0] // 2), max(1, drawn.size[1] // 2))
        thumbs = [np.asarray(im.resize(size, Image.Resampling.BOX), dtype=np.float32) for im in (picture, drawn)]
        diff = np.abs(thumbs[0] - thumbs[1]).mean()  # 0 to 5 when current, 9 to 25 for the previous pictures
        if diff > 12:
            problems.append(f"{path.stem}.png differs from the .dot drawn small by {diff:.1f}/255 on average")
    assert not problems, "; ".join(problems) + f"; {REGENERATE}"


def test_every_model_class_is_in_the_repository_flowchart(charts):
    """Every class defined in sdviz/models/ is a row of the overview, and is drawn on a component sheet."""
    overview = charts["flowchart-overview"].source
    sheets = "".join(charts[f"flowchart-{s}"].source for s in fc.SHEETS if s != "overview")
    classes = [(m, name) for m in modules_in("models") for name, kind in rows_of(m) if kind != "()"]
    assert len(classes) >= 20
    for module, cls in classes:
        assert re.search(rf'"{re.escape(module)}" \[label=<.*PORT="{cls}"', overview), f"{cls} is not on the overview"
        assert f"{cls}." in sheets, f"{module}.{cls} is on no component sheet"


def test_shapes_are_the_traced_sd15_ones(charts):
    unet = charts["flowchart-unet"].source
    assert "(B, 4, 64, 64) → (B, 320, 64, 64)" in unet  # conv_in
    assert "×16 objects" in unet  # 16 transformer blocks, drawn once
    assert "(B, 4096, 320), (B, 77, 768) → (B, 4096, 320)" in unet  # cross-attention
    assert "1280 @ 8×8" in charts["architecture-unet"].source
    assert "(2B, 4, 64, 64)" in charts["architecture-txt2img"].source  # guidance doubles the UNet batch
    assert "(B, 3, 512, 512)" in charts["flowchart-vae-decoder"].source
    assert "all 16 transformers" in charts["architecture-unet"].source
    assert "all 22 ResNet blocks" in charts["architecture-unet"].source


def _node(source: str, text: str) -> str:
    """The id of the node whose label holds `text`."""
    return re.search(rf"^\s*(\S+) \[label=<[^\n]*{re.escape(text)}", source, flags=re.M).group(1)


def _edge(source: str, a: str, b: str) -> str | None:
    """The attributes of the edge a -> b, or None."""
    m = re.search(rf"^\s*{re.escape(a)} -> {re.escape(b)}( \[.*\])?$", source, flags=re.M)
    return None if m is None else m.group(1) or ""


def test_diagrams_follow_the_code(charts):
    """The UNet's side inputs go into the whole UNet (not into one block); the text encoder adds its two
    embeddings; the skip connections are the UNet's, one per up ResNet block."""
    for name in ("architecture-unet-depth1", "architecture-unet", "architecture-unet-depth3"):
        src = charts[name].source
        for text in ("time embedding", "context"):
            edges = re.findall(rf"^\s*{re.escape(_node(src, text))} -> \S+ (\[.*\])$", src, flags=re.M)
            assert edges and all("lhead=cluster_unet" in e for e in edges), (name, text, edges)
        skips = re.findall(r"^.* -> .*color=\"#8E44AD\".*$", src, flags=re.M)
        assert sum(int(re.search(r"label=\"×(\d+)\"", s).group(1)) if "label" in s else 1 for s in skips) == 12
    src = charts["architecture-txt2img-depth2"].source
    plus = _node(src, "<B>+</B>")
    assert _edge(src, _node(src, "token_embedding"), plus) is not None
    assert _edge(src, _node(src, "position_embedding"), plus) is not None
    assert _edge(src, _node(src, "token_embedding"), _node(src, "position_embedding")) is None


def test_output_is_deterministic_and_portable(charts):
    """Same bytes from fresh runs; no memory address, absolute path or timing in the DOT text."""
    for cached in (runs.network_run, runs.pipeline_run, runs.recording):
        cached.cache_clear()
    assert fc.repository_flowchart("unet").source == charts["flowchart-unet"].source
    assert fc.architecture_diagram("txt2img").source == charts["architecture-txt2img"].source
    for name, c in charts.items():
        assert not re.search(r"0x[0-9a-f]{6,}", c.source), name
        assert str(ROOT) not in c.source and "/root/" not in c.source and "site-packages" not in c.source, name


def test_another_config_draws_itself(tmp_path):
    assert fc.main(["--config", "toy", "--out", str(tmp_path), "--format", "dot"]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert "flowchart-overview.dot" in written and "architecture-unet.dot" in written
    assert all(name.endswith(".dot") for name in written)
    assert "(B, 4, 16, 16)" in (tmp_path / "flowchart-unet.dot").read_text()  # toy: 64x64 images, 16x16 latents
    unet = (tmp_path / "architecture-unet.dot").read_text()
    assert "@ 16×16" in unet and "@ 64×64" not in unet and "(B, 4, 16, 16)" in unet
    assert "(1, 1, 64, 64)" in (tmp_path / "architecture-inpaint.dot").read_text()  # the mask, at the image's size


def test_the_shape_probe_reports_whole_attention_and_leaves_nothing_behind():
    x, ctx = torch.empty(1, 4, 64, 64), torch.empty(1, 77, 768)
    p = probe(SD15.unet, x, 999, ctx)
    name = "unet.down_blocks.0.attentions.0.transformer_blocks.0"
    assert p.hooks[f"{name}.attn1.hook_probs"] == (1, 8, 4096, 4096)  # a listener would get it in chunks
    assert p.attention[f"{name}.attn2.hook_probs"].kind == "cross_attention"
    assert p.attention[f"{name}.attn2.hook_probs"].hw == (64, 64)
    assert p.calls["unet.conv_in"][0].output == (1, 320, 64, 64)
    assert p.groupnorm["unet.mid_block.resnets.0.norm1"].hw == (8, 8)
    for m in p.network.modules():  # no hook left, no listener added: the network is as it was
        assert not m._forward_hooks and not m._forward_pre_hooks and not getattr(m, "listeners", [])


def test_bad_config_and_format_are_one_line_errors(tmp_path, capsys):
    assert fc.main(["--config", "sd99", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "sd99" in err and "sd15" in err and "toy" in err
    assert fc.main(["--format", "dot,gif", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "gif" in err and "svg" in err and "png" in err
    with pytest.raises(ValueError, match="known: .*unet"):
        fc.repository_flowchart("nope")
    with pytest.raises(ValueError, match="known: txt2img"):
        fc.architecture_diagram("nope")
    with pytest.raises(ValueError, match="known: 1"):
        fc.architecture_diagram("unet", depth=4)


def test_missing_graphviz_still_writes_dot(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    assert fc.main(["--config", "toy", "--out", str(tmp_path), "--format", "dot,svg,png"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "install Graphviz" in err
    assert (tmp_path / "flowchart-overview.dot").is_file()
    assert not list(tmp_path.glob("*.svg"))
    with pytest.raises(fc.GraphvizMissing, match="install Graphviz"):
        fc.architecture_diagram("unet", config="toy")._repr_mimebundle_()


@needs_dot
def test_charts_render_inline_as_svg_that_fits_the_column():
    svg = fc.architecture_diagram("unet", depth=1, config="toy")._repr_mimebundle_()["image/svg+xml"]
    assert "<svg" in svg and "conv_in" in svg and "max-width:100%" in svg

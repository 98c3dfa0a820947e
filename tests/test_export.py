"""The exported web page (`sdviz.tracing.export`, `sdviz export`): its numbers are the trace's.

The page's maps are computed in the browser from the sums it embeds; here those sums are read back out of the HTML
and reduced with torch (an independent implementation of what `page.js` does), and must give `Trace.word_map` within
1e-5 for every word, step window, layer and head. Its frames are the trace's previews, pixel for pixel. Bad input:
what a trace lacks is one line, a broken or foreign file gives `load_trace`'s one-line error, a size limit refuses
and names what to drop. `tests/test_export_browser.py` runs the same page in Chromium.
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import sdviz
from sdviz.cli import main as cli
from sdviz.tracing.export import ExportSizeError, export, page_data, render

PROMPT = "a large red circle above a small blue square"


@pytest.fixture(scope="session")
def pipe():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return sdviz.load_pipeline()


@pytest.fixture(scope="session")
def full(pipe):
    """12 steps, every axis of the cross-attention kept, VAE decodes: every picker of the page."""
    with sdviz.trace(pipe, keep=["step", "layer", "head"], decode=True) as tr:
        pipe.generate(PROMPT, seed=13, steps=12, sampler="ddim", cfg_scale=5, progress=False)
    return tr


@pytest.fixture(scope="session")
def plain(pipe):
    """The default trace: cross-attention summed over steps, layers of a resolution and heads; no decodes."""
    with sdviz.trace(pipe) as tr:
        pipe.generate(PROMPT, seed=13, steps=8, sampler="ddim", cfg_scale=5, progress=False)
    return tr


def read_page(path) -> dict:
    """The JSON a page embeds."""
    text = path.read_text()
    match = re.search(r'<script type="application/json" id="sdviz-data">(.*?)</script>', text, re.S)
    return json.loads(match.group(1))


def picture(uri: str) -> np.ndarray:
    kind, data = re.match(r"data:image/(\w+);base64,(.*)", uri).groups()
    assert kind == "png"  # the embedded model's pictures are small: lossless
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def page_map(att: dict, columns: list[int], lo: int, hi: int, key: str | None = None, head: int | None = None):
    """What page.js computes, with torch: the chosen sums over the steps lo..hi, each resolution upsampled
    bilinearly to the map grid, over the number of single-head maps."""
    grid = tuple(att["grid"])
    slots = [i for i, s in enumerate(att["steps"]) if lo <= s <= hi] if att["per_step"] else [0]
    total, weight = torch.zeros(grid, dtype=torch.float64), 0.0
    per_grid: dict[tuple, torch.Tensor] = {}
    for k in att["keys"]:
        if key is not None and k["key"] != key:
            continue
        s_count, h_count, g = len(k["counts"]), k["heads"], tuple(k["grid"])
        sums = np.frombuffer(base64.b64decode(k["sums"]), "<f4").reshape(s_count, h_count, -1, g[0] * g[1])
        heads = list(range(h_count)) if head is None else [head]
        x = torch.from_numpy(sums[slots][:, heads][:, :, columns].astype(np.float64)).sum((0, 1)).mean(0)  # (n,)
        per_grid[g] = per_grid.get(g, 0) + x.reshape(g)
        weight += sum(k["counts"][i] for i in slots) * (h_count if head is None and att["heads"] else 1)
    for x in per_grid.values():
        total += F.interpolate(x[None, None].float(), size=grid, mode="bilinear", align_corners=False)[0, 0].double()
    return total / weight


def test_the_pages_maps_are_word_map_for_every_word_window_layer_and_head(full, tmp_path):
    export(full, tmp_path / "run.html")
    att = read_page(tmp_path / "run.html")["attention"]
    assert att["per_step"] and att["layers_kept"] and att["heads"] == 4 and att["grid"] == [64, 64]
    words = {w["name"]: w["columns"] for w in att["words"]}
    assert list(words) == ["a", "large", "red", "circle", "above", "small", "blue", "square"]
    layer = att["keys"][0]["key"]
    checked = 0
    for word in ("circle", "square", "a"):
        for lo, hi in ((0, 11), (3, 7), (9, 9)):
            steps = list(range(lo, hi + 1))
            want = full.word_map(word, steps=steps).double()
            got = page_map(att, words[word], lo, hi)
            assert torch.allclose(got, want, atol=1e-5, rtol=0), (word, lo, hi, (got - want).abs().max())
            want = full.word_map(word, steps=steps, layers=layer, heads=2).double()
            got = page_map(att, words[word], lo, hi, key=layer, head=2)
            assert torch.allclose(got, want, atol=1e-5, rtol=0), (word, lo, hi, layer)
            checked += 2
    assert checked == 18
    # a word map is not flat: the check above could not pass with maps of zeros
    assert float(full.word_map("circle").std()) > 1e-3


def test_the_tokens_and_the_padding_are_entries_too(full, tmp_path):
    data, _, _ = page_data(full)
    att = data["attention"]
    names = [t["name"] for t in att["tokens"]]
    assert names[0] == "0: <start>" and names[4] == "4: circle" and names[10] == "10: <end>"
    assert names[-1] == "padding (11-76)"
    export(full, tmp_path / "run.html")
    att = read_page(tmp_path / "run.html")["attention"]
    maps = full.token_maps(steps=list(range(12))).double()  # (77, 64, 64)
    got = page_map(att, [11], 0, 11)
    assert torch.allclose(got, maps[11:].mean(0), atol=1e-5, rtol=0)


def test_dropping_sums_the_axes_and_keeps_the_numbers(full, tmp_path):
    result = export(full, tmp_path / "small.html", drop=["steps", "layers", "heads", "decoded"])
    data = read_page(tmp_path / "small.html")
    att = data["attention"]
    assert not att["per_step"] and not att["layers_kept"] and att["heads"] == 0
    assert [k["key"] for k in att["keys"]] == ["16x16", "8x8"]
    assert "decoded" not in data["player"]["frames"] and result.parts["decoded"] == 0
    words = {w["name"]: w["columns"] for w in att["words"]}
    got = page_map(att, words["circle"], 0, 11)
    assert torch.allclose(got, full.word_map("circle").double(), atol=1e-5, rtol=0)
    big = export(full, tmp_path / "big.html")
    assert result.nbytes < big.nbytes / 5 and big.nbytes == (tmp_path / "big.html").stat().st_size


def test_the_player_frames_are_the_traces_own(full, tmp_path):
    export(full, tmp_path / "run.html")
    data = read_page(tmp_path / "run.html")
    frames = data["player"]["frames"]
    assert set(frames) == {"x_t", "x0", "decoded", "eps", "guidance"}
    assert all(len(v) == 12 for v in frames.values())
    for step in (0, 5, 11):
        assert np.array_equal(picture(frames["x0"][step]), full.latents.preview("x0", steps=step))
        assert np.array_equal(picture(frames["x_t"][step]), full.latents.preview("x_t", steps=step))
        decoded = full.latents.decoded[step, 0].permute(1, 2, 0).numpy()
        assert np.array_equal(picture(frames["decoded"][step]), decoded)
    assert np.array_equal(picture(data["picture"]), np.asarray(full.images[0]))
    readouts = data["player"]["steps"]
    assert [s["t"] for s in readouts] == list(full.timesteps)
    ab = readouts[0]["alpha_bar"]
    assert readouts[0]["snr"] == pytest.approx(ab / (1 - ab), rel=1e-3)
    assert readouts[0]["sigma"] == pytest.approx(((1 - ab) / ab) ** 0.5, rel=1e-3)
    assert len(data["player"]["curve"]) == 1000 and data["player"]["curve"][0] > data["player"]["curve"][-1]


def test_the_page_is_self_contained(full, tmp_path):
    export(full, tmp_path / "run.html")
    text = (tmp_path / "run.html").read_text()
    assert "http://" not in text and "https://" not in text  # no CDN, no link out
    assert not re.search(r"<(script|link|img|iframe)[^>]*\s(src|href)=", text)  # nothing loaded from a file either
    assert len(base64.b64decode(read_page(tmp_path / "run.html")["lut"])) == 768  # the colour map travels along
    data, _, _ = page_data(full)
    data["prompt"] = "</script><!-- <script>alert(1)</script>"  # a prompt cannot end the data's script element
    (tmp_path / "odd.html").write_text(render(data))
    assert read_page(tmp_path / "odd.html")["prompt"] == data["prompt"]


def test_a_trace_without_per_step_records_exports_what_it_has_and_says_what_would_add_the_rest(plain, tmp_path):
    result = export(plain, tmp_path / "run.html")
    assert result.note == (
        "not in this trace: the VAE decode of every step (trace with decode=True); a window of steps (trace with "
        "keep=['step']); single layers (trace with keep=['layer']); single heads (trace with keep=['head'])"
    )
    data = read_page(tmp_path / "run.html")
    assert data["note"] == result.note and "\n" not in result.note
    att = data["attention"]
    words = {w["name"]: w["columns"] for w in att["words"]}
    got = page_map(att, words["square"], 0, 7)
    assert torch.allclose(got, plain.word_map("square").double(), atol=1e-5, rtol=0)


def test_a_trace_with_one_record_exports_one_half(pipe, tmp_path):
    with sdviz.trace(pipe, record=["latents"]) as tr:
        pipe.generate(PROMPT, seed=1, steps=3, progress=False)
    result = export(tr, tmp_path / "latents.html")
    assert "attention" not in read_page(tmp_path / "latents.html")
    assert result.note == (
        "not in this trace: the VAE decode of every step (trace with decode=True); "
        "the explorer (trace with record=[..., 'cross_attention'])"
    )
    with sdviz.trace(pipe, record=["groupnorm"]) as tr:
        pipe.generate(PROMPT, seed=1, steps=2, progress=False)
    with pytest.raises(ValueError, match=r"record=\['latents', 'cross_attention'\]"):
        export(tr, tmp_path / "nothing.html")
    assert not (tmp_path / "nothing.html").exists()


def test_a_size_limit_says_how_large_and_what_to_drop_and_writes_nothing(full, tmp_path):
    out = tmp_path / "run.html"
    with pytest.raises(ExportSizeError) as e:
        export(full, out, max_mb=0.2)
    message = str(e.value)
    assert "\n" not in message and not out.exists()
    size = float(re.search(r"would be ([\d.]+) MB, over max_mb=0.2", message).group(1))
    assert size == pytest.approx(export(full).nbytes / 1e6, abs=0.05)
    for part in ("VAE decodes", "single heads", "single layers", "per-step attention"):
        assert part in message
    with pytest.raises(ValueError, match="drop: unknown part 'colour'"):
        export(full, out, drop=["colour"])
    with pytest.raises(ValueError, match=r"image=1 is out of range: this trace holds 1 picture"):
        export(full, out, image=1)
    with pytest.raises(ValueError, match="max_mb must be a positive number"):
        export(full, out, max_mb=0)
    assert not out.exists()


def test_the_command_exports_a_saved_trace(full, tmp_path, capsys):
    full.save(tmp_path / "trace.pt")
    assert cli(["export", str(tmp_path / "trace.pt"), "--out", str(tmp_path / "run.html")]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'run.html'} (")
    assert read_page(tmp_path / "run.html")["prompt"] == PROMPT
    assert cli(["export", str(tmp_path / "trace.pt"), "--out", str(tmp_path / "x.html"), "--max-mb", "0.1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdviz export: error: the page would be") and err.count("\n") == 1
    assert "nothing was written" in err and not (tmp_path / "x.html").exists()


def test_a_broken_or_foreign_file_gives_load_traces_one_line_error(tmp_path, capsys):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    for path in (broken, foreign, tmp_path / "missing.pt"):
        with pytest.raises((ValueError, FileNotFoundError)) as e:
            sdviz.load_trace(path)
        assert cli(["export", str(path), "--out", str(tmp_path / "run.html")]) == 2
        err = capsys.readouterr().err
        assert err == f"sdviz export: error: {e.value}\n"
        assert not (tmp_path / "run.html").exists()


def test_the_documentation_pages_carry_todays_script():
    """docs/runs/ holds pages exported earlier: they must embed the page script and style as they are now
    (`python -m sdviz.tracing.export_cli --docs docs/runs` makes them again)."""
    from sdviz.tracing.export import ASSETS

    root = Path(__file__).parents[1] / "docs" / "runs"
    pages = sorted(root.glob("*.html"))
    assert [p.name for p in pages] == ["headline.html", "layers-and-heads.html"]
    for page in pages:
        text = page.read_text()
        for asset in ("page.js", "page.css"):
            assert (ASSETS / asset).read_text() in text, f"{page.name} is stale: export the docs runs again"
        assert read_page(page)["prompt"].startswith("a large red")

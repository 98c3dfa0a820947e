"""The shipped SAEs (sdviz/toy/sae/): files, the measured record, the card and the README chart drawn from it."""

import json
import math
from pathlib import Path

import pytest
import torch

from sdviz.concepts.card import RECORD, SHIPPED, check_record, load_record, load_sae, render_card, ship, shipped_points
from sdviz.concepts.collect import model_fingerprint
from sdviz.concepts.grade import ALL_CONCEPTS
from sdviz.concepts.intervene import intervene
from sdviz.concepts.sae import SAE, SAEMismatch
from sdviz.hooks import hook_names

PIPE = "embedded"
COMMITTED_CHART = Path(__file__).parents[1] / "readme-images" / "sae_concepts.png"


def test_every_shipped_sae_is_in_the_record_and_belongs_to_the_embedded_model(embedded_pipe):
    record = load_record()
    assert sorted(record["saes"]) == shipped_points() and len(shipped_points()) >= 1
    names = hook_names(embedded_pipe)
    for point, entry in record["saes"].items():
        sae = load_sae(point)
        assert sae.point == point in names and (sae.d, sae.n, sae.k) == (entry["d"], entry["n"], entry["k"])
        sae.check_pipe(embedded_pipe)  # trained on this model: no error
        assert sae.model == model_fingerprint(embedded_pipe) == record["collection"]["train"]["model"]
        assert (SHIPPED / entry["file"]).stat().st_size < 8e6  # a few MB each
        assert 0 <= entry["held_out"]["fvu"] < 1 and entry["held_out"]["l0"] <= entry["k"]


def test_the_record_is_complete_and_consistent():
    record = load_record()
    for entry in record["saes"].values():
        table = entry["grade"]["table"]
        assert [r["concept"] for r in table] == list(ALL_CONCEPTS)  # every world concept graded
        good = [r["concept"] for r in table if r["auroc"] >= 0.95]
        assert entry["grade"]["share_at_0.95"] == round(len(good) / len(table), 3)
        assert entry["grade"]["without_feature_0.95"] == [c for c in ALL_CONCEPTS if c not in good]
        assert all(0 <= r["feature"] < entry["n"] and 0 <= r["auroc"] <= 1 for r in table)
        assert all(len(r["per_step"]) == len(record["collection"]["held_out"]["kept_steps"]) for r in table)
        by_step = entry["grade"]["held_out_fvu_by_step"]  # each step's FVU, against that step's own variance
        assert len(by_step) == len(record["collection"]["held_out"]["kept_steps"]) and 0 < min(by_step)
        assert entry["held_out"]["fvu"] <= max(by_step) < 1  # pooled: the steps' errors over a variance >= theirs
        for r in entry["causal"].get("ablation", {}).values():
            moved = max(abs(v) for v in r["control_moved_points"].values())
            assert r["passes"] == (r["target_drop_points"] >= 50 and moved <= 5)
        assert set(entry["splice"]["with"]) == {"colour", "shape", "position", "count", "correct"}
    budget = record["collection"]["train"]["seconds"] + max(e["train_seconds"] for e in record["saes"].values())
    assert record["collection"]["train"]["torch_threads"] == 1 and budget > 0


def test_the_committed_card_is_what_the_record_renders():
    assert (SHIPPED / "SAE_CARD.md").read_text() == render_card(load_record())


def test_a_damaged_record_is_refused_in_one_line():
    record = json.loads(RECORD.read_text())
    del record["saes"][next(iter(record["saes"]))]["grade"]
    with pytest.raises(ValueError, match=r"^sae_record.json: the SAE of unet\.\S+ misses grade$"):
        check_record(record)
    with pytest.raises(ValueError, match="missing 'collection'"):
        check_record({"saes": {}})


def test_an_sae_on_another_hook_point_or_model_is_one_line_naming_both(embedded_pipe, toy_pipe):
    sae = load_sae()
    other = next(p for p in shipped_points() if p != sae.point) if len(shipped_points()) > 1 else "unet.hook_out"
    with pytest.raises(SAEMismatch, match=f"^this SAE was trained on {sae.point} of model {sae.model}, not on {other}"):
        with intervene(embedded_pipe, sae, point=other):
            pass
    with pytest.raises(SAEMismatch, match=f"not on {sae.point} of model {model_fingerprint(toy_pipe)}$"):
        with intervene(toy_pipe, sae):  # the same configuration with random weights
            pass
    with pytest.raises(IndexError, match=f"features 0..{sae.n - 1}"):
        with intervene(embedded_pipe, sae, ablate=[sae.n]):
            pass
    shipped = ", ".join(shipped_points()).replace(".", r"\.")  # every shipped point, in order
    with pytest.raises(ValueError, match=f"^point: no shipped SAE for 'unet.nowhere'; shipped: {shipped}$"):
        load_sae("unet.nowhere")


def test_ship_writes_the_files_the_record_and_the_card(tmp_path):
    runs = []
    for i, point in enumerate(("unet.a.hook_block_out", "unet.b.hook_block_out")):
        run = tmp_path / f"run{i}"
        run.mkdir()
        sae = SAE(8, 32, 2, point=point, model="abc")
        sae.info = {"settings": {"expansion": 4, "steps": 5, "batch": 16, "lr": 1e-3, "aux_coef": 1 / 32,
                                 "dead_after": 100}, "train_seconds": 1.0, "torch_threads": 1,
                    "train": {"fvu": 0.1, "l0": 2.0, "dead": 0, "dead_fraction": 0.0, "rows": 10}}
        sae.save(run / "sae.safetensors")
        table = [{"concept": c, "kind": "colour", "feature": 1, "auroc": 0.96 if c == "red" else 0.7,
                  "per_step": [0.5, 0.9], "switches_on": 1, "channel": 3, "channel_auroc": 0.8 - 0.1 * i}
                 for c in ALL_CONCEPTS]
        grade = {"late_steps": [0, 1], "table": table, "share_at_0.95": round(1 / 22, 3),
                 "without_feature_0.95": [c for c in ALL_CONCEPTS if c != "red"],
                 "held_out": {"fvu": 0.2, "l0": 2.0, "dead": 1, "dead_fraction": 1 / 32, "rows": 10}}
        (run / "grade.json").write_text(json.dumps(grade))
        rates = {"colour": 1.0, "shape": 1.0, "position": 0.5, "count": 1.0, "correct": 0.5}
        (run / "causal.json").write_text(json.dumps({"splice": {"pairs": 2, "without": rates, "with": rates}}))
        runs.append(run)
    for name in ("train", "held_out"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "collection.json").write_text(json.dumps({
            "pairs": [["a red circle", 1]], "settings": {"steps": 2, "cfg_scale": 5.0, "sampler": "ddim", "every": 1},
            "kept_steps": [0, 1], "model": "abc", "seconds": 60.0, "torch_threads": 1, "bytes": 1000}))
    record = ship(runs, tmp_path / "train", tmp_path / "held_out", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "SAE_CARD.md", "sae_record.json", "unet.a.hook_block_out.safetensors", "unet.b.hook_block_out.safetensors"]
    card = (tmp_path / "out" / "SAE_CARD.md").read_text()
    assert card == render_card(record) and "| red | colour | 1 | 0.960 | 1 | 3 (0.800) |" in card and "**4%**" in card
    assert "sweep" not in record and "## Dictionary size" not in card
    swept = ship(runs[:1], tmp_path / "train", tmp_path / "held_out", tmp_path / "out2", sweep=[runs[1]])
    assert [(r["point"], r["n"], r["median_auroc"]["colour"]) for r in swept["sweep"]] == [
        ("unet.a.hook_block_out", 32, 0.7), ("unet.b.hook_block_out", 32, 0.7)]
    assert [r["median_channel_auroc"]["colour"] for r in swept["sweep"]] == [0.8, 0.7]
    card = (tmp_path / "out2" / "SAE_CARD.md").read_text()
    assert "| a | 32 (2) | 5 | 0.200 | 0.70 |" in card and "| b | the 8 channels | - | - | 0.70 |" in card
    assert sorted(p.name for p in (tmp_path / "out2").iterdir())[-1] == "unet.a.hook_block_out.safetensors"
    back = SAE.load(tmp_path / "out" / "unet.a.hook_block_out.safetensors")
    assert back.info["train_seconds"] == 1.0 and torch.equal(back.W_dec, SAE.load(runs[0] / "sae.safetensors").W_dec)


def test_the_committed_readme_chart_is_what_the_record_draws(tmp_path):
    from pictures import assert_same_picture

    from sdviz.viz.sae_figure import concepts_chart
    from sdviz.viz.style import save

    drawn = save(concepts_chart(load_record()), tmp_path / "sae_concepts.png")
    assert_same_picture(COMMITTED_CHART, drawn, "run `sdviz figures` (or draw sae_figure.concepts_chart) and commit")
    assert not math.isnan(load_record()["saes"][load_sae().point]["grade"]["share_at_0.95"])

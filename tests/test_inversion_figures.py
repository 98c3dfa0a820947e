"""The inversion record and its figure: the committed record is complete (its scenes are the evaluation's held-out
pairs, every method and metric is there, the summary is what its rows give), a damaged record is refused, the
committed chart is what the record draws, and the measurement's --quick mode runs end to end."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from pictures import assert_same_picture

from sdviz.inversion import measure
from sdviz.toy import world
from sdviz.tracing import aggregate
from sdviz.viz import inversion_figures as fig
from sdviz.viz.style import save

COMMITTED_CHART = Path(__file__).parents[1] / "readme-images" / "inversion.png"


@pytest.fixture(scope="module")
def record() -> dict:
    return fig.load_record()


def test_the_record_is_complete(record):
    assert record["format"] == fig.FORMAT == measure.FORMAT
    s = record["settings"]
    assert (s["steps"], s["cfg_scale"], s["sampler"]) == (50, 5.0, "ddim")
    pairs = world.held_out_prompts(s["n_asked"], 0)
    assert [(r["prompt"], r["seed"]) for r in record["rows"]] == pairs[: len(record["rows"])]
    for r in record["rows"]:
        assert set(r["psnr_db"]) == {*fig.INVERSIONS, "vae"}
        assert set(r["iou_inverted"]) == set(r["iou_generated"]) == set(aggregate.METHODS)
    assert record["summary"] == measure.summarise(record["rows"])  # the summary is what the rows give
    assert record["measured"]["minutes"] > 0 and record["measured"]["note"]


def test_what_the_record_says(record):
    """Guidance breaks plain DDIM inversion; null-text and negative-prompt inversion repair it; nothing beats the
    VAE's own round trip."""
    p = record["summary"]["psnr_db"]
    assert p["ddim_cfg5"] < p["ddim_cfg1"] - 5
    assert p["null_text"] > p["ddim_cfg5"] + 5 and p["negative_prompt"] > p["ddim_cfg5"] + 5
    assert max(p[k] for k in fig.INVERSIONS) <= p["vae"] + 0.5


def test_the_committed_chart_is_what_the_record_draws(record, tmp_path):
    drawn = save(fig.inversion_chart(record), tmp_path / "inversion.png")
    assert_same_picture(COMMITTED_CHART, drawn, "run `python -m sdviz.inversion.measure` and commit readme-images/")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: d.update(format=0), "format 1"),
        (lambda d: d.pop("summary"), "no 'summary'"),
        (lambda d: d["summary"]["psnr_db"].update(null_text=None), "psnr_db of 'null_text'"),
        (lambda d: d["summary"]["miou"]["sdviz"].update(inverted=1.5), "mIoU of map method 'sdviz'"),
        (lambda d: d["rows"][0].pop("edit"), "row 0 has no 'edit'"),
        (lambda d: d["rows"].pop(), "summary n is not the number of rows"),
    ],
)
def test_a_damaged_record_is_refused(record, damage, message):
    bad = copy.deepcopy(record)
    damage(bad)
    with pytest.raises(ValueError, match=message):
        fig.check_record(bad)


@pytest.mark.slow  # 10-30 s on 2 cores: make test-all (CI runs both) keeps make test under 8 minutes
def test_the_quick_measurement_runs(tmp_path):
    """Two scenes at 10 steps: a record the figure module accepts, with a partial file to resume from."""
    out, partial = tmp_path / "quick.json", tmp_path / "partial.json"
    assert measure.main(["--quick", "--out", str(out), "--partial", str(partial), "--note", "test"]) == 0
    data = json.loads(out.read_text())
    fig.check_record(data)
    assert data["summary"]["n"] == 2 and json.loads(partial.read_text())["summary"]["n"] == 2
    assert measure.main(["--quick", "--out", str(out), "--partial", str(partial), "--note", "resumed"]) == 0
    again = json.loads(out.read_text())
    assert again["rows"] == data["rows"]  # resumed: nothing measured twice


def test_merging_shards_resumed_from_one_record_keeps_each_scene_once(record):
    """Two shards that both resumed from the committed record hold its rows twice; the merge keeps each scene once,
    in the evaluation's order, and its summary is what those rows give."""
    a, b = copy.deepcopy(record), copy.deepcopy(record)
    b["rows"] = b["rows"][1:]  # a shard need not hold every earlier row
    merged = measure.merge([a, b], note="test")
    assert [r["prompt"] for r in merged["rows"]] == [r["prompt"] for r in record["rows"]]
    assert merged["summary"] == measure.summarise(record["rows"])

"""The sampler figures: the committed accuracy record has the expected layout and sane numbers, the committed chart
is what that record draws, the figure functions run (on random TINY weights, a few pictures), and (slow) a few of the
record's numbers are measured again."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from pictures import assert_same_picture

from sdviz.config import TINY
from sdviz.pipeline import StableDiffusion
from sdviz.toy import world
from sdviz.viz import sampler_figures as sf
from sdviz.viz.style import save
from sdviz.weights import build_models

COMMITTED_CHART = Path(__file__).parents[1] / "readme-images" / "sampler_quality.png"


@pytest.fixture(scope="module")
def record() -> dict:
    return sf.load_quality()


def test_the_record_holds_every_sampler_at_every_step_count(record):
    assert record["format"] == sf.FORMAT
    settings = {k: v for k, v in record["settings"].items() if k != "pairs"}
    assert settings == {"n_prompts": sf.N_PROMPTS, "prompt_seed": 0, "cfg_scale": 5.0, "steps": [5, 10, 20, 50]}
    assert [tuple(p) for p in record["settings"]["pairs"]] == world.held_out_prompts(sf.N_PROMPTS, 0)
    assert [(r["label"], r["sampler"], r["options"]) for r in record["runs"]] == list(sf.RUNS)
    for run in record["runs"]:
        extra = 1 if run["sampler"] == "pndm" else 0  # PLMS visits its second timestep twice
        assert run["unet_calls"] == {str(s): s + extra for s in sf.STEP_COUNTS}
        for s in sf.STEP_COUNTS:
            assert set(run["rates"][str(s)]) == set(sf.KEPT)
            assert all(0 <= v <= 1 for v in run["rates"][str(s)].values())
    assert record["measured"]["minutes"] > 0


def test_ddim_at_50_steps_is_the_model_cards_quality(record):
    """The reference setting draws what the model card says (on all 100 pairs: colour 0.98, shape 0.98, position
    0.65), within the noise of 40 pictures; and 5 steps of DDPM, which needs hundreds, are far worse."""
    runs = {r["label"]: r["rates"] for r in record["runs"]}
    ddim = runs["ddim"]["50"]
    assert ddim["colour"] >= 0.9 and ddim["shape"] >= 0.9 and ddim["position"] >= 0.5
    assert runs["ddpm"]["5"]["shape"] < ddim["shape"] - 0.2


def test_the_committed_chart_is_what_the_record_draws(record, tmp_path):
    drawn = save(sf.quality_chart(record), tmp_path / "sampler_quality.png")
    assert_same_picture(COMMITTED_CHART, drawn, "run `python -m sdviz.viz.sampler_figures` and commit readme-images/")


def test_the_table_has_a_row_per_sampler(record):
    lines = sf.quality_table(record).splitlines()
    assert lines[0] == "| sampler | 5 steps | 10 steps | 20 steps | 50 steps |"
    assert [line.split(" | ")[0].lstrip("| ") for line in lines[2:]] == [r[0] for r in sf.RUNS]
    ddim = record["runs"][1]["rates"]["50"]
    assert f"{100 * ddim['colour']:.0f} / {100 * ddim['shape']:.0f} / {100 * ddim['position']:.0f} |" in lines[3]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: d.update(format=0), "format 1"),
        (lambda d: d["runs"][0]["rates"].pop("10"), "at 10 steps lacks rates"),
        (lambda d: d["runs"][2]["rates"]["5"].update(colour=1.5), "at 5 steps lacks rates in \\[0, 1\\]"),
        (lambda d: d["runs"][3].pop("unet_calls"), "has no 'unet_calls'"),
        (lambda d: d["settings"].update(steps=[10, 5]), "increasing order"),
    ],
)
def test_a_damaged_record_is_refused(record, damage, message):
    bad = copy.deepcopy(record)
    damage(bad)
    with pytest.raises(ValueError, match=message):
        sf.check_quality_data(bad)


@pytest.fixture(scope="module")
def tiny() -> StableDiffusion:
    torch.manual_seed(0)
    return StableDiffusion(build_models(TINY))


def test_predictions_figure_has_a_row_per_sampler_and_a_column_per_call(tiny):
    runs = [("ddim", "ddim", {}), ("pndm", "pndm", {}), ("dpmpp_2m karras", "dpmpp_2m", {"use_karras_sigmas": True})]
    fig = sf.predictions_figure(tiny, steps=3, runs=runs)
    axes = np.array(fig.axes).reshape(len(runs), -1)
    assert axes.shape == (3, 3 + 1 + 1)  # PNDM: 4 calls; then the picture
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["ddim", "pndm", "dpmpp_2m karras"]
    assert [len(ax.images) for ax in axes[0]] == [1, 1, 1, 0, 1]  # DDIM: 3 calls, a gap, the picture
    assert [ax.get_title() for ax in axes[1]] == ["t=667", "t=334", "t=334", "t=1", "picture"]


def test_measure_quality_gives_a_record_the_chart_draws():
    """On the embedded model (the judge reads TINY's noise pictures slowly: thousands of specks)."""
    data = sf.measure_quality(None, runs=[("unipc", "unipc", {}), ("pndm", "pndm", {})], step_counts=[2], n=2,
                              progress=False)  # fmt: skip
    sf.check_quality_data(data)
    assert data["settings"]["steps"] == [2] and data["settings"]["n_prompts"] == 2
    assert [r["unet_calls"] for r in data["runs"]] == [{"2": 2}, {"2": 3}]
    assert len(sf.quality_chart(data).axes) == len(sf.METRICS)


@pytest.mark.slow  # 80 pictures of the embedded model at 5 steps: half a minute on 2 busy cores
def test_the_record_is_what_the_code_measures_now(record):
    """Two of the record's entries measured again: the same rates, up to a verdict or two that CPU rounding may flip."""
    runs = [r for r in sf.RUNS if r[0] in ("ddim", "dpmpp_2m karras")]
    measured = sf.measure_quality(runs=runs, step_counts=[5], progress=False)
    again = {r["label"]: r["rates"]["5"] for r in measured["runs"]}
    committed = {r["label"]: r["rates"]["5"] for r in record["runs"] if r["label"] in again}
    for label, rates in again.items():
        for k in sf.KEPT:
            assert rates[k] == pytest.approx(committed[label][k], abs=0.05), (label, k)

"""The shipped model: it loads, it is small, it follows a few prompts, and its card states what the evaluation
measures on it.

The full evaluation (100 held-out prompt/seed pairs, 50 DDIM steps, cfg 5) takes about two minutes on 2 CPU cores;
it is the project's honest measure of whether the model follows its prompts, so it runs against the shipped file,
as a slow test (`make test-all`). Another CPU may compute slightly different pictures (other vector units, other
summation orders), so it compares the re-measured metrics with the card within CARD_TOLERANCE, not to the card's
last digit.
"""

from __future__ import annotations

import json

import pytest

from sdviz.config import TOY
from sdviz.pipeline import EMBEDDED_MODEL
from sdviz.toy import judge, world
from sdviz.toy.evaluate import CARD_DIGITS, card_metrics, evaluate
from sdviz.weights import WeightsError, load_models

PIPE = "embedded"  # the session pipeline the `pipe` fixture gives (tests/conftest.py)

# How far a re-measured metric may be from the card: 3 of the 100 pictures (or ~3 objects of ~150) judged
# differently, and 0.5 dB of reconstruction PSNR.
CARD_TOLERANCE = {"colour": 0.03, "shape": 0.03, "position": 0.03, "size": 0.03, "count": 0.03, "correct": 0.03}
CARD_TOLERANCE["vae_psnr"] = 0.5


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads((EMBEDDED_MODEL / "sdviz.json").read_text())["card"]


def test_shipped_weights_load_and_are_small(pipe):
    size = sum(p.stat().st_size for p in EMBEDDED_MODEL.iterdir())
    assert size <= 25 * 2**20, f"{size / 2**20:.1f} MiB"
    assert pipe.config.unet == TOY.unet and pipe.config.clip == TOY.clip
    assert pipe.config.vae.channel_mult == TOY.vae.channel_mult
    assert pipe.config.vae.scaling_factor != 1.0  # measured after training, not the placeholder
    result = pipe.generate("a red circle", steps=5, seed=0, progress=False)
    assert result.images[0].size == (64, 64)


@pytest.mark.slow  # 10-30 s on 2 cores: make test-all (CI runs both) keeps make test under 8 minutes
def test_a_handful_of_held_out_prompts_are_drawn_right(pipe, card):
    """Four of the evaluation's own pictures, with its settings, that it judges right in full: three one-object
    prompts (colour, shape, position, drawn once) and one two-object prompt (each drawn once, in relation)."""
    settings = {k: v for k, v in card["evaluation"]["settings"].items() if k not in ("n", "seed")}
    pairs = world.held_out_prompts(card["evaluation"]["settings"]["n"], card["evaluation"]["settings"]["seed"])
    for i in (0, 2, 6, 11):
        prompt, seed = pairs[i]
        image = pipe.generate(prompt, seed=seed, progress=False, **settings).image
        v = judge.judge(image, prompt)
        assert v.correct, (i, prompt, v)


def test_the_judge_counts_the_headline_examples_two_blue_squares(pipe):
    """The README's example (issue 12): asked for one small blue square, the model draws two; the judge sees both
    objects of the colour, and does not call the picture correct."""
    image = pipe.generate(
        "a large red circle above a small blue square", seed=1, steps=50, cfg_scale=5.0, sampler="ddim", progress=False
    ).image
    v = judge.judge(image, "a large red circle above a small blue square")
    assert v.objects[1].colour_ok and v.objects[1].shape_ok and v.objects[1].count == 2
    assert not v.count_ok and not v.correct


@pytest.mark.slow
def test_model_card_metrics_are_what_the_evaluation_measures(pipe, card):
    stated = card["evaluation"]["metrics"]
    settings = card["evaluation"]["settings"]
    report = evaluate(pipe, progress=False, **settings)
    measured = card_metrics(report)
    assert set(stated) == set(measured) == set(CARD_DIGITS) == set(CARD_TOLERANCE)
    off = {k: (stated[k], measured[k]) for k in stated if abs(measured[k] - stated[k]) > CARD_TOLERANCE[k] + 1e-9}
    assert not off, f"card vs re-measured, beyond {CARD_TOLERANCE}: {off}"


def test_a_corrupted_copy_fails_with_the_weights_error(tmp_path):
    copy = tmp_path / "model"
    copy.mkdir()
    (copy / "sdviz.json").write_bytes((EMBEDDED_MODEL / "sdviz.json").read_bytes())
    data = (EMBEDDED_MODEL / "model.safetensors").read_bytes()
    (copy / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_models(copy)
    with pytest.raises(WeightsError):
        evaluate(str(copy), n=1, steps=1, progress=False)

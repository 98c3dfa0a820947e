"""The shipped model: it loads, it is small, and its card states what the evaluation measures on it.

The evaluation (100 held-out prompt/seed pairs, 50 DDIM steps, cfg 5) takes about two minutes on 2 CPU cores; it is
the project's honest measure of whether the model follows its prompts, so it runs here against the shipped file.
"""

from __future__ import annotations

import json

import pytest

from sdviz.config import TOY
from sdviz.pipeline import EMBEDDED_MODEL, load_pipeline
from sdviz.toy.evaluate import CARD_DIGITS, card_metrics, evaluate
from sdviz.weights import WeightsError, load_models


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads((EMBEDDED_MODEL / "sdviz.json").read_text())["card"]


def test_shipped_weights_load_and_are_small():
    size = sum(p.stat().st_size for p in EMBEDDED_MODEL.iterdir())
    assert size <= 25 * 2**20, f"{size / 2**20:.1f} MiB"
    pipe = load_pipeline()
    assert pipe.config.unet == TOY.unet and pipe.config.clip == TOY.clip
    assert pipe.config.vae.channel_mult == TOY.vae.channel_mult
    assert pipe.config.vae.scaling_factor != 1.0  # measured after training, not the placeholder
    result = pipe.generate("a red circle", steps=5, seed=0, progress=False)
    assert result.images[0].size == (64, 64)


def test_model_card_metrics_are_what_the_evaluation_measures(card):
    stated = card["evaluation"]["metrics"]
    settings = card["evaluation"]["settings"]
    report = evaluate(
        None, n=settings["n"], seed=settings["seed"], steps=settings["steps"], cfg_scale=settings["cfg_scale"],
        sampler=settings["sampler"], progress=False,
    )  # fmt: skip
    measured = card_metrics(report)
    assert set(stated) == set(measured)
    for key, digits in CARD_DIGITS.items():
        assert measured[key] == pytest.approx(stated[key], abs=0.5 * 10**-digits + 1e-9), key


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

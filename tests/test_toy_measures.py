"""What the toy's measurements share: one IoU (the judge's), one set of generation settings (`evaluate.EVAL`), and
the world's vocabulary, which the shipped model folder carries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sdviz.toy import world
from sdviz.toy.evaluate import EVAL, EvalSettings
from sdviz.toy.judge import iou

MODEL = Path(__file__).resolve().parents[1] / "sdviz" / "toy" / "model"


def test_iou_of_identical_disjoint_and_partly_overlapping_masks() -> None:
    a = np.zeros((4, 4), dtype=bool)
    a[:2] = True  # 8 pixels
    b = np.zeros((4, 4), dtype=bool)
    b[1:3] = True  # 8 pixels, 4 of them shared with a
    assert iou(a, a) == 1.0
    assert iou(a, ~a) == 0.0
    assert iou(a, b) == pytest.approx(4 / 12) and iou(b, a) == iou(a, b)


def test_iou_of_empty_and_missing_masks_is_zero() -> None:
    empty, full = np.zeros((4, 4), dtype=bool), np.ones((4, 4), dtype=bool)
    assert iou(empty, empty) == 0.0  # nothing found in either: no agreement to reward (see its docstring)
    assert iou(empty, full) == 0.0 and iou(full, empty) == 0.0
    assert iou(None, full) == 0.0 and iou(full, None) == 0.0 and iou(None, None) == 0.0


def test_the_evaluation_settings_are_the_ones_the_committed_records_were_measured_with() -> None:
    assert EVAL == EvalSettings() and EVAL.generate_kwargs() == {"steps": 50, "cfg_scale": 5.0, "sampler": "ddim"}
    with pytest.raises(AttributeError):
        EVAL.steps = 25  # type: ignore[misc]  frozen: one object that nobody changes under the others' feet
    card = json.loads((MODEL / "sdviz.json").read_text())["card"]["evaluation"]["settings"]
    assert {k: card[k] for k in ("steps", "cfg_scale", "sampler")} == EVAL.generate_kwargs()
    first = (MODEL.parent / "attention_ladder.md").read_text().splitlines()[0]
    assert f"{EVAL.steps} {EVAL.sampler} steps, cfg {EVAL.cfg_scale:g}," in first


def test_the_shipped_model_folder_carries_the_worlds_vocabulary() -> None:
    meta = json.loads((MODEL / "sdviz.json").read_text())
    assert meta["vocabulary"] == {kind: list(words) for kind, words in world.vocabulary().items()}

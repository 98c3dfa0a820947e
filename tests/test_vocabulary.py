"""The embedded model says what it knows: `pipe.vocabulary`, and one warning for a prompt with none of its words."""

from __future__ import annotations

import warnings

import pytest
import torch

from sdviz.config import TINY
from sdviz.pipeline import StableDiffusion, unknown_prompts
from sdviz.toy import world
from sdviz.weights import build_models

PIPE = "embedded"  # the session pipeline the `pipe` fixture gives (tests/conftest.py)


def test_the_vocabulary_is_the_worlds(pipe):
    v = pipe.vocabulary  # read from the model folder's sdviz.json, which the toy's export writes
    assert v == world.vocabulary()
    assert v["colours"] == world.COLOURS and v["shapes"] == world.SHAPES and v["sizes"] == world.SIZES
    assert "on the left" in v["positions"] and "to the right of" in v["relations"]


def _warnings(pipe, prompt) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe.generate(prompt, steps=1, cfg_scale=1.0, progress=False, seed=0)
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_a_prompt_without_a_known_word_warns_once_listing_the_vocabulary(pipe):
    found = _warnings(pipe, ["a photo of a cat", "an astronaut riding a horse"])
    assert len(found) == 1  # one warning per call, naming every such prompt
    message = found[0]
    assert "'a photo of a cat'" in message and "'an astronaut riding a horse'" in message
    assert all(word in message for word in ("red", "cyan", "triangle", "small", "in the centre", "above"))


@pytest.mark.parametrize("prompt", ["a red circle", "a cat in the middle", "A BLUE cat", "", "something below"])
def test_a_prompt_with_one_known_word_or_none_at_all_does_not_warn(pipe, prompt):
    assert _warnings(pipe, prompt) == []


def test_the_warning_points_at_the_caller(pipe):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe.generate("a photo of a cat", steps=1, cfg_scale=1.0, progress=False, seed=0)
    assert caught and caught[0].filename == __file__


def test_other_weights_have_no_vocabulary_and_never_warn():
    torch.manual_seed(0)
    other = StableDiffusion(build_models(TINY))
    assert other.vocabulary is None
    assert _warnings(other, "a photo of a cat") == []


def test_unknown_prompts_reads_any_vocabulary():
    vocabulary = {"animals": ("cat", "dog"), "places": ("on the mat",)}
    assert unknown_prompts(["a cat", "a red car", "", "the mat"], vocabulary) == ["a red car"]

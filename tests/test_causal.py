"""sdviz.causal: interventions on hook points and activation patching, on the embedded model (4 DDIM steps).

What is proved here:

- an intervention that changes nothing (a patch from a run of the same prompt, a patch of the time embedding, the
  cross-attention swapped for a negative prompt equal to the prompt) gives the same latents bit for bit;
- patching every UNet hook point at every step from the clean run gives the clean run's latents bit for bit, and
  patching nothing gives the corrupted run's;
- each ablation changes the picture, only inside its step window, and composes with a trace (which records the
  ablated probabilities) and with an edit;
- bad input is a one-line error that names what is wrong, and nothing stays attached: the next plain generation is
  bit-identical to one before.
"""

from __future__ import annotations

import pytest
import torch

from sdviz.causal import (
    AblateBlock,
    AblateCrossAttention,
    AblateHead,
    AblateWord,
    Patch,
    PatchText,
    intervene,
    record,
)
from sdviz.editing import Reweight, edit
from sdviz.hooks import HookNameError, hook_points
from sdviz.pipeline import load_pipeline
from sdviz.tracing import trace

CLEAN, CORRUPT = "a red circle on the left", "a blue circle on the left"
KW = dict(seed=3, steps=4, sampler="ddim", cfg_scale=5.0, progress=False)


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(2)
    return load_pipeline()


@pytest.fixture(scope="module")
def runs(pipe):
    """The plain clean and corrupted latents, and the clean run recorded at every UNet hook point."""
    plain = pipe.generate(CLEAN, **KW).latents
    corrupted = pipe.generate(CORRUPT, **KW).latents
    return plain, corrupted, record(pipe, CLEAN, **KW)


def _nothing_attached(pipe) -> bool:
    return not pipe.observers and not any(p.listeners for p in hook_points(pipe).values())


def test_recording_changes_nothing_and_keeps_every_call(pipe, runs):
    plain, _, clean = runs
    assert torch.equal(clean.latents, plain)
    steps = {k[1] for k in clean.activations}
    assert steps == {0, 1, 2, 3}
    assert ("unet.hook_out", 2, 0, 0) in clean.activations
    assert clean.activations[("unet.hook_out", 2, 0, 0)].shape == (2, 4, 16, 16)  # [uncond; cond] of one image
    assert _nothing_attached(pipe)


def test_patching_everything_gives_the_clean_run_and_nothing_the_corrupted(pipe, runs):
    plain, corrupted, clean = runs
    assert not torch.equal(plain, corrupted)
    with intervene(pipe, Patch(clean)):
        assert torch.equal(pipe.generate(CORRUPT, **KW).latents, plain)
    with intervene(pipe):
        assert torch.equal(pipe.generate(CORRUPT, **KW).latents, corrupted)
    with intervene(pipe, Patch(clean, hooks="unet.hook_time_embedding")):  # the same in both runs: no change
        assert torch.equal(pipe.generate(CORRUPT, **KW).latents, corrupted)
    same = record(pipe, CORRUPT, hooks="unet.*.hook_block_out", **KW)
    with intervene(pipe, Patch(same)):  # restoring what the run computes anyway
        assert torch.equal(pipe.generate(CORRUPT, **KW).latents, corrupted)
    assert _nothing_attached(pipe)


def test_a_patch_in_a_window_moves_towards_the_clean_run(pipe, runs):
    plain, corrupted, clean = runs
    with intervene(pipe, Patch(clean, hooks="unet.hook_out", window=(0.5, 1.0))):
        late = pipe.generate(CORRUPT, **KW).latents
    with intervene(pipe, Patch(clean, hooks="unet.hook_out", window=(0.0, 0.5))):
        early = pipe.generate(CORRUPT, **KW).latents
    assert not torch.equal(late, corrupted) and not torch.equal(early, corrupted)
    assert (early - plain).abs().mean() < (corrupted - plain).abs().mean()


def test_text_encoder_patch_at_the_colour_token(pipe, runs):
    plain, corrupted, _ = runs
    with intervene(pipe, PatchText(CLEAN, CORRUPT, layer=0, positions=[2])):  # position 2: "red" / "blue"
        out = pipe.generate(CORRUPT, **KW).latents
    assert (out - plain).abs().mean() < 0.2 * (corrupted - plain).abs().mean()
    with intervene(pipe, PatchText(CORRUPT, CORRUPT, layer=3, positions=[2, 3])):
        assert torch.equal(pipe.generate(CORRUPT, **KW).latents, corrupted)


@pytest.mark.parametrize(
    "intervention",
    [
        AblateWord("red"),
        AblateWord("red", mode="renorm", layers="unet.up_blocks"),
        AblateWord("red", mode="padding", layers="unet.mid_block"),
        AblateHead("unet.mid_block", head=1),
        AblateHead("unet.down_blocks.0", head=0, kind="self"),
        AblateCrossAttention("unet.down_blocks"),
        AblateBlock("unet.mid_block"),
    ],
    ids=repr,
)
def test_each_ablation_changes_the_picture_and_only_in_its_window(pipe, runs, intervention):
    plain = runs[0]
    with intervene(pipe, intervention):
        out = pipe.generate(CLEAN, **KW).latents
    assert (out - plain).abs().max() > 1e-3
    # the same ablation in the last step only: the first three steps are untouched, so x_1 is the plain run's
    intervention.window = (0.75, 1.0)
    seen = []
    with intervene(pipe, intervention):
        pipe.generate(CLEAN, **KW, on_step=lambda s: seen.append(s.latents.clone()))
    plain_steps = []
    pipe.generate(CLEAN, **KW, on_step=lambda s: plain_steps.append(s.latents.clone()))
    assert all(torch.equal(a, b) for a, b in zip(seen, plain_steps, strict=True))  # x_t before each step
    assert _nothing_attached(pipe)


def test_changes_nothing_when_the_unconditional_context_is_the_prompt(pipe):
    kw = {**KW, "negative_prompt": CLEAN}
    plain = pipe.generate(CLEAN, **kw).latents
    with intervene(pipe, AblateCrossAttention()):
        assert torch.equal(pipe.generate(CLEAN, **kw).latents, plain)


def test_composes_with_a_trace_and_an_edit(pipe, runs):
    plain = runs[0]
    with intervene(pipe, AblateWord("red", mode="zero")), trace(pipe) as tr:
        out = pipe.generate(CLEAN, **KW).latents
    red = tr.word_map("red")
    assert float(red.max()) < 1e-6  # the trace records the ablated probabilities: nothing went to "red"
    with edit(pipe, Reweight({"circle": 1.0})), intervene(pipe, AblateWord("red", mode="zero")):
        assert torch.equal(pipe.generate(CLEAN, **KW).latents, out)  # a reweight by 1 changes nothing beside it
    assert not torch.equal(out, plain)
    assert _nothing_attached(pipe)


@pytest.mark.parametrize(
    "make, generate_kwargs, error, words",
    [
        (lambda c: AblateWord("green"), {}, ValueError, ["'green'", "its words", "red"]),
        (lambda c: AblateWord("red", layers="unet.up_blockz"), {}, HookNameError, ["close valid names", "up_blocks"]),
        (lambda c: AblateHead("unet.mid_block", head=9), {}, ValueError, ["head=9", "4 heads"]),
        (lambda c: Patch(c, hooks="unet.mid_blok"), {}, HookNameError, ["close valid names"]),
        (lambda c: Patch(c), {"seed": 4}, ValueError, ["seeds [3]", "[4]"]),
        (lambda c: Patch(c), {"height": 32, "width": 32}, ValueError, ["64x64", "32x32"]),
        (lambda c: Patch(c), {"steps": 5}, ValueError, ["steps"]),
        (lambda c: PatchText("a red circle", CLEAN, 0, [1]), {}, ValueError, ["5 tokens", "cannot be matched"]),
        (lambda c: PatchText(CLEAN, CORRUPT, 7, [1]), {}, ValueError, ["layer=7", "4 layers"]),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing_attached(pipe, runs, make, generate_kwargs, error, words):
    plain, _, clean = runs
    with pytest.raises(error) as info:
        with intervene(pipe, make(clean)):
            pipe.generate(CLEAN, **{**KW, **generate_kwargs})
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message
    assert _nothing_attached(pipe)
    assert torch.equal(pipe.generate(CLEAN, **KW).latents, plain)


@pytest.mark.parametrize("window", [(0.5, 0.5), 1.5, (-0.1, 0.5), (0.8, 0.2), "half"])
def test_a_step_window_outside_0_1_or_empty_is_refused(window):
    with pytest.raises((ValueError, TypeError)) as info:
        AblateWord("red", window=window)
    assert "window" in str(info.value) and "\n" not in str(info.value)


def test_a_window_is_named_window_not_steps(runs):
    """`steps` is a count in `generate`; an intervention's window of fractions of them has its own name."""
    with pytest.raises(TypeError, match=r"Patch\(steps=\.\.\.\) is now window="):
        Patch(runs[2], steps=0.5)
    with pytest.raises(TypeError, match=r"AblateWord\(steps=\.\.\.\) is now window="):
        AblateWord("red", steps=(0.0, 0.5))


def test_a_window_too_narrow_for_the_steps_is_refused(pipe, runs):
    with pytest.raises(ValueError, match="selects none of the 4 steps"):
        with intervene(pipe, AblateWord("red", window=(0.1, 0.2))):
            pipe.generate(CLEAN, **KW)
    assert _nothing_attached(pipe)

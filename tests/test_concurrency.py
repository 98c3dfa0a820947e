"""One pipeline, many callers: the concurrency contract (README, "Threads").

- A generation on a busy pipeline waits for the one running (a lock per pipeline).
- A trace, an edit or `hooks(...)` only ever sees the generations started inside its own `with` block, in its own
  thread or task (`sdviz.events.Scope`, a context variable): another thread's generation is never mixed in.
- Process-wide state is always restored: torch.compile's stance is counted in and out by every generation that runs
  eagerly, so the last one out restores what was there before, whichever thread finishes last.
"""

from __future__ import annotations

import threading

import pytest
import torch

import sdviz
from sdviz.editing import Reweight
from sdviz.hooks import hook_points, hooks
from sdviz.pipeline import load_pipeline

PIPE = "embedded"  # the session pipeline the `pipe` fixture gives (tests/conftest.py)

SETTINGS = {"steps": 3, "sampler": "ddim", "cfg_scale": 5.0, "progress": False}
A = ("a large red circle above a small blue square", 13)
B = ("a small green triangle on the left", 2)


def _stance() -> str:
    return torch._dynamo.eval_frame._stance.stance  # the process-wide setting `torch.compiler.set_stance` changes


def _traced(pipe, prompt, seed):
    with sdviz.trace(pipe, record=["latents", "cross_attention"]) as tr:
        result = pipe.generate(prompt, seed=seed, **SETTINGS)
    return tr, result


def _nothing_attached(pipe) -> bool:
    return not pipe.observers and not pipe.latent_editors and not any(p.listeners for p in hook_points(pipe).values())


@pytest.fixture(scope="module")
def solo(pipe):
    """Each run alone: the references."""
    tr_a, res_a = _traced(pipe, *A)
    res_b = pipe.generate(B[0], seed=B[1], **SETTINGS)
    with sdviz.edit(pipe, Reweight({"green": 2.0})):
        edited_b = pipe.generate(B[0], seed=B[1], **SETTINGS)
    return {"trace": tr_a, "a": res_a, "b": res_b, "b_edited": edited_b}


def _run_pair(pipe, mode: str) -> dict:
    """Thread 1 traces A while thread 2 generates B (traced, untraced or edited), started together."""
    out: dict = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def one():
        try:
            start.wait()
            out["trace"], out["a"] = _traced(pipe, *A)
        except BaseException as e:  # noqa: BLE001  (handed to the test)
            errors.append(e)

    def two():
        try:
            start.wait()
            if mode == "traced":
                out["trace_b"], out["b"] = _traced(pipe, *B)
            elif mode == "edited":
                with sdviz.edit(pipe, Reweight({"green": 2.0})):
                    out["b"] = pipe.generate(B[0], seed=B[1], **SETTINGS)
            else:
                out["b"] = pipe.generate(B[0], seed=B[1], **SETTINGS)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=one), threading.Thread(target=two)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


@pytest.mark.parametrize("mode", ["traced", "untraced", "edited"])
def test_two_threads_never_mix_their_traces(pipe, solo, mode):
    before = _stance()
    for _ in range(20):
        out = _run_pair(pipe, mode)
        tr = out["trace"]
        assert tr.prompts == [A[0]]  # its own prompt, never the other thread's
        assert torch.equal(tr.latents.x0, solo["trace"].latents.x0)  # its own x0 at every step
        assert torch.equal(tr.latents.final, solo["a"].latents)
        assert torch.equal(out["a"].latents, solo["a"].latents)
        assert torch.equal(tr.cross_attention.sums["16x16"], solo["trace"].cross_attention.sums["16x16"])
        expected_b = solo["b_edited"] if mode == "edited" else solo["b"]
        assert torch.equal(out["b"].latents, expected_b.latents)  # the edit changed thread 2's picture only
        if mode == "traced":
            assert out["trace_b"].prompts == [B[0]]
            assert torch.equal(out["trace_b"].latents.final, solo["b"].latents)
        assert _stance() == before
        assert _nothing_attached(pipe)
    assert not torch.equal(solo["b_edited"].latents, solo["b"].latents)  # the edit does change B when it applies


def test_a_trace_in_one_thread_does_not_hear_a_generation_of_another(pipe, solo):
    """The trace's `with` block is open in the main thread while another thread generates: nothing is recorded."""
    with sdviz.trace(pipe, record=["latents"]) as tr:
        t = threading.Thread(target=lambda: pipe.generate(B[0], seed=B[1], **SETTINGS))
        t.start()
        t.join()
        assert tr.info is None  # no generation of its own yet
        pipe.generate(A[0], seed=A[1], **SETTINGS)
    assert tr.prompts == [A[0]] and torch.equal(tr.latents.final, solo["a"].latents)


def test_hooks_hear_only_their_own_thread(pipe):
    heard: list[str] = []
    with hooks(pipe, "unet.hook_out", lambda name, x: heard.append(threading.current_thread().name)):
        t = threading.Thread(target=lambda: pipe.generate(B[0], seed=B[1], **SETTINGS), name="other")
        t.start()
        t.join()
        assert heard == []
        pipe.generate(A[0], seed=A[1], **SETTINGS)
    assert set(heard) == {threading.current_thread().name} and len(heard) == SETTINGS["steps"]
    assert _nothing_attached(pipe)


def test_two_pipelines_overlapping_restore_the_compile_stance():
    """Two pipelines run at the same time (no shared lock), both listened to: each runs eagerly, and the stance the
    process had before comes back whichever finishes last."""
    one, two = load_pipeline(), load_pipeline()
    before = _stance()
    seen: list[str] = []

    def run(p, prompt, seed):
        with sdviz.trace(p, record=["time_embedding", "latents"]) as tr:  # listens at hook points: runs eagerly
            p.generate(prompt, seed=seed, on_step=lambda s: seen.append(_stance()), **SETTINGS)
        assert tr.prompts == [prompt]

    for _ in range(5):
        threads = [threading.Thread(target=run, args=(one, *A)), threading.Thread(target=run, args=(two, *B))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert _stance() == before
    assert set(seen) == {"force_eager"}


def test_a_busy_pipeline_makes_the_second_caller_wait(pipe):
    """Generations on one pipeline do not overlap: the steps of one are never interleaved with the other's."""
    events: list[str] = []

    def run(tag, prompt, seed):
        pipe.generate(prompt, seed=seed, on_step=lambda s: events.append(tag), **SETTINGS)

    threads = [threading.Thread(target=run, args=("a", *A)), threading.Thread(target=run, args=("b", *B))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    n = SETTINGS["steps"]
    assert events in (["a"] * n + ["b"] * n, ["b"] * n + ["a"] * n)

"""torch.compile and the hook points: tracing a compiled UNet works, and never silently records nothing.

- Hook names are the same whether a network is compiled in place (`unet.compile()`), wrapped
  (`pipe.unet = torch.compile(pipe.unet)`, which puts the module under `_orig_mod`) or not compiled.
- While anything listens, `generate` runs the compiled UNet eagerly ("force_eager" stance): the trace's records are
  those of an uncompiled run, nothing is recompiled, and the compiled graph runs again as soon as the trace is over.
  The same whether the UNet was compiled before the trace (and already ran) or inside it, after the listeners.
- Called directly (outside `generate`), a compiled UNet still tells its listeners: dynamo guards on each hook
  point's listener list, recompiles once with the listeners outside the graph, and finds the listener-free graph
  again when they are removed.
- The UNet compiles with zero graph breaks when nobody listens.

CPU, random weights of a two-level TINY, the `aot_eager` backend (no C++ compiler needed), wrapped in a backend
that counts the graphs it compiles and the times they run; inductor where a C++ compiler is present (slow).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections import Counter

import pytest
import torch
from torch._dynamo.backends.registry import lookup_backend

import sdviz
from sdviz.config import TINY
from sdviz.hooks import hook_names, hooks
from sdviz.pipeline import StableDiffusion
from sdviz.weights import build_models

# TINY with a two-level UNet (cross-attention, GroupNorms, time embedding, down and up paths): dynamo traces it in a
# fraction of TINY's time, which is what these tests spend most of theirs on.
MICRO = dataclasses.replace(
    TINY, name="micro", unet=dataclasses.replace(TINY.unet, channel_mult=(1, 2), attention_levels=(True, False))
)
KW = {"steps": 2, "seed": 1, "cfg_scale": 5.0, "sampler": "ddim", "progress": False}
PROMPT = "a red circle"


def make_pipe() -> StableDiffusion:
    torch.manual_seed(0)
    return StableDiffusion(build_models(MICRO))


def counting(backend: str = "aot_eager"):
    """A torch.compile backend that compiles with `backend` and counts graphs compiled and graph runs."""
    seen = Counter()
    inner = lookup_backend(backend)

    def compile_graph(gm, example_inputs):
        seen["compiled"] += 1
        compiled = inner(gm, example_inputs)

        def run(*args):
            seen["runs"] += 1
            return compiled(*args)

        return run

    return compile_graph, seen


def tensors(tr) -> dict[str, torch.Tensor]:
    """Every tensor a trace holds, by a dotted path into its state dict."""
    out: dict[str, torch.Tensor] = {}

    def walk(prefix: str, x) -> None:
        if isinstance(x, torch.Tensor):
            out[prefix] = x
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(f"{prefix}.{k}", v)

    walk("", tr.state_dict()["records"])
    return out


def assert_same_records(tr, ref, atol: float = 0.0) -> None:
    got, want = tensors(tr), tensors(ref)
    assert got.keys() == want.keys()
    for name, x in want.items():
        torch.testing.assert_close(got[name], x, atol=atol, rtol=atol, equal_nan=True, msg=name)
    assert any(x.abs().sum() > 0 for name, x in got.items() if "attention" in name)  # not an empty trace


@pytest.fixture(scope="module")
def eager():
    """An uncompiled run and its trace of everything: what the compiled runs must match."""
    pipe = make_pipe()
    plain = pipe.generate(PROMPT, **KW)
    with sdviz.trace(pipe, record="all") as tr:
        pipe.generate(PROMPT, **KW)
    return plain, tr, hook_names(pipe), {k: list(v) for k, v in tr.layers.items()}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_hook_names_do_not_depend_on_compilation(eager):
    _, _, names, layers = eager
    pipe = make_pipe()
    pipe.unet.compile(backend="eager")  # in place: compiles at the first call, names untouched
    assert hook_names(pipe) == names
    pipe = make_pipe()
    pipe.unet = torch.compile(pipe.unet, backend="eager")  # wrapped: the UNet is now pipe.unet._orig_mod
    assert any(path.startswith("_orig_mod.") for path, _ in pipe.unet.named_modules())
    assert hook_names(pipe) == names
    assert hook_names(pipe, "unet.hook_time_sinusoid") == ["unet.hook_time_sinusoid"]
    assert sdviz.trace(pipe, record="all").layers == layers


@pytest.mark.parametrize("how", ["in_place", "wrapped"])
def test_a_compiled_unet_is_traced_eagerly_then_runs_compiled_again(eager, how):
    plain, ref, _, _ = eager
    pipe = make_pipe()
    backend, seen = counting()
    if how == "in_place":
        pipe.unet.compile(backend=backend)
    else:
        pipe.unet = torch.compile(pipe.unet, backend=backend)

    first = pipe.generate(PROMPT, **KW)  # compiles: one graph, zero graph breaks, run once per step
    assert seen == {"compiled": 1, "runs": 2}
    torch.testing.assert_close(first.latents, plain.latents, atol=1e-5, rtol=1e-5)

    with sdviz.trace(pipe, record="all") as tr:
        traced = pipe.generate(PROMPT, **KW)
    assert seen == {"compiled": 1, "runs": 2}  # eager while traced: no recompilation, the graph did not run
    assert_same_records(tr, ref)  # eager: the very numbers of an uncompiled trace
    assert torch.equal(traced.latents, plain.latents)

    again = pipe.generate(PROMPT, **KW)
    assert seen == {"compiled": 1, "runs": 4}  # the compiled graph again, not recompiled
    assert torch.equal(again.latents, first.latents)


def test_a_unet_compiled_after_the_listeners_were_attached_is_traced(eager):
    plain, ref, _, _ = eager
    pipe = make_pipe()
    backend, seen = counting()
    with sdviz.trace(pipe, record="all") as tr:
        pipe.unet.compile(backend=backend)
        pipe.generate(PROMPT, **KW)
    assert_same_records(tr, ref)
    assert seen["compiled"] == 0
    after = pipe.generate(PROMPT, **KW)  # the first untraced run compiles
    assert seen == {"compiled": 1, "runs": 2}
    torch.testing.assert_close(after.latents, plain.latents, atol=1e-5, rtol=1e-5)


def test_listeners_of_a_compiled_unet_called_directly_fire():
    """Outside `generate` nothing switches to eager: dynamo itself must see the listeners (it guards on the list)."""
    pipe = make_pipe()
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.full((2,), 10), torch.randn(2, 77, MICRO.unet.context_dim)
    with torch.no_grad():
        want = pipe.unet(x, t, ctx)
        backend, seen = counting()
        pipe.unet.compile(backend=backend)
        torch.testing.assert_close(pipe.unet(x, t, ctx), want, atol=1e-5, rtol=1e-5)
        assert seen == {"compiled": 1, "runs": 1}
        got = []
        with hooks(pipe, ["unet.hook_time_embedding", "unet.hook_out"], lambda name, v: got.append((name, v))):
            out = pipe.unet(x, t, ctx)
        assert [name for name, _ in got] == ["unet.hook_time_embedding", "unet.hook_out"]
        torch.testing.assert_close(got[1][1], want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
        compiled = seen["compiled"]
        assert compiled > 1  # recompiled around the listening hook points
        pipe.unet(x, t, ctx)  # the listeners are gone: the first graph, guarded on empty lists, runs again
        assert seen["compiled"] == compiled


def test_the_unet_compiles_with_zero_graph_breaks():
    pipe = make_pipe()
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.full((2,), 10), torch.randn(2, 77, MICRO.unet.context_dim)
    with torch.no_grad():
        explained = torch._dynamo.explain(pipe.unet)(x, t, ctx)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor needs a C++ compiler")
def test_a_unet_compiled_by_inductor_is_traced(eager):
    plain, ref, _, _ = eager
    pipe = make_pipe()
    backend, seen = counting("inductor")
    pipe.unet.compile(backend=backend)
    first = pipe.generate(PROMPT, **KW)
    torch.testing.assert_close(first.latents, plain.latents, atol=1e-4, rtol=1e-4)
    with sdviz.trace(pipe, record="all") as tr:
        pipe.generate(PROMPT, **KW)
    assert_same_records(tr, ref, atol=1e-5)
    again = pipe.generate(PROMPT, **KW)
    assert seen == {"compiled": 1, "runs": 4}
    assert torch.equal(again.latents, first.latents)

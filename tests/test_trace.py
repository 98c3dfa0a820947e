"""sdviz.tracing: hook names and filters, the records, and the guarantees (no number changes, nothing left behind,
traces independent, nothing computed when nobody listens, memory known in advance). Random TOY weights."""

from __future__ import annotations

import inspect
import sys
import types

import numpy as np
import pytest
import torch

import sdviz
import sdviz.models.attention as attention_module
from sdviz.config import SD15, TOY
from sdviz.hooks import HookPoint
from sdviz.models.common import GroupNorm
from sdviz.models.unet import timestep_embedding
from sdviz.samplers import get_sampler
from sdviz.tracing import (
    HookNameError,
    Trace,
    TraceBudgetError,
    estimate,
    hook_names,
    hooks,
    load,
    time_embeddings,
    trace,
)
from sdviz.tracing.preview import latent_rgb_map

PIPE = "toy"  # the session pipeline the `pipe` fixture gives (tests/conftest.py)
PROMPT = "a red circle above a cyan square"
STEPS = 3


def gen(pipe, prompt=PROMPT, **kw):
    kw = {"steps": STEPS, "seed": 1, "cfg_scale": 5.0, "sampler": "ddim", "progress": False, **kw}
    return pipe.generate(prompt, **kw)


def assert_clean(pipe) -> None:
    """No listener anywhere, no observer, no state left on a module."""
    for root, module in pipe.modules().items():
        for name, m in module.named_modules():
            if isinstance(m, HookPoint):
                assert not m.listeners and not m._forward_hooks, f"listener left on {root}.{name}"
                assert not m.active
    assert pipe.observers == []


# -- hook points and filters -------------------------------------------------------------------------------------


def test_hook_names_cover_every_activation_by_module_path(pipe):
    names = hook_names(pipe)
    n_points = sum(isinstance(m, HookPoint) for mod in pipe.modules().values() for m in mod.modules())
    assert len(names) == len(set(names)) == n_points
    assert {n.split(".")[0] for n in names} == {"text_encoder", "vae", "unet"}
    for expected in (
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.hook_probs",
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.hook_probs",
        "unet.mid_block.attentions.0.transformer_blocks.0.attn2.hook_probs",
        "unet.down_blocks.0.resnets.0.norm1.hook_in",
        "unet.down_blocks.0.resnets.0.norm1.hook_out",
        "unet.conv_norm_out.hook_out",
        "unet.hook_time_sinusoid",
        "unet.hook_time_embedding",
        "unet.hook_out",
        "text_encoder.hook_out",
    ):
        assert expected in names
    n_norms = sum(isinstance(m, GroupNorm) for mod in pipe.modules().values() for m in mod.modules())
    norm_hooks = [n for n in names if n.endswith((".hook_in", ".hook_out")) and n.count(".") > 1]
    assert len(norm_hooks) == 2 * n_norms
    # every name leads to its module
    unet = pipe.unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn2.hook_probs")
    assert isinstance(unet, HookPoint)


def test_filters_select_by_name_glob_module_path_list_and_predicate(pipe):
    assert hook_names(pipe, "unet.hook_out") == ["unet.hook_out"]
    cross = hook_names(pipe, "unet.*.attn2.hook_probs")
    assert len(cross) == 7 and all(n.endswith("attn2.hook_probs") for n in cross)
    mid = hook_names(pipe, "unet.mid_block")  # a module path selects everything below it
    assert mid and all(n.startswith("unet.mid_block.") for n in mid)
    assert hook_names(pipe, ["unet.hook_out", "text_encoder.hook_out"]) == ["text_encoder.hook_out", "unet.hook_out"]
    assert hook_names(pipe, lambda n: n.endswith("hook_time_sinusoid")) == ["unet.hook_time_sinusoid"]


@pytest.mark.parametrize(
    "bad, close",
    [
        ("unet.down_blocks.0.attention.0.transformer_blocks.0.attn2.hook_probs", "attentions.0"),  # a typo
        ("unet.*.attn3.hook_probs", "attn"),  # a glob that matches nothing
        (["unet.hook_out", "unet.hook_outt"], "unet.hook_out"),  # one bad pattern in a list is enough
    ],
)
def test_a_filter_that_matches_nothing_raises_and_lists_close_names(pipe, bad, close):
    with pytest.raises(HookNameError, match="matches no hook point") as e:
        hook_names(pipe, bad)
    assert close in str(e.value).split("close valid names:")[1]
    with pytest.raises(HookNameError):
        trace(pipe, layers=bad)
    with pytest.raises(HookNameError, match="predicate"):
        hook_names(pipe, lambda n: False)
    assert_clean(pipe)


def test_layers_that_select_no_layer_of_a_record_raise(pipe):
    with pytest.raises(HookNameError, match="selects no groupnorm layer"):
        trace(pipe, record=["cross_attention", "groupnorm"], layers="unet.*.attn2.hook_probs")
    tr = trace(pipe, record=["cross_attention", "groupnorm"], layers={"cross_attention": "unet.mid_block"})
    assert tr.layers["cross_attention"] == ["unet.mid_block.attentions.0.transformer_blocks.0.attn2.hook_probs"]
    assert len(tr.layers["groupnorm"]) == 24
    with pytest.raises(ValueError, match="unknown record"):
        trace(pipe, record=["cross_attn"])
    with pytest.raises(ValueError, match="keep"):
        trace(pipe, keep=["steps"])


def test_sdviz_trace_is_a_plain_function(pipe):
    assert isinstance(sdviz.trace(pipe), Trace)
    assert sdviz.hook_names is hook_names and sdviz.load_trace is load
    assert inspect.isfunction(sdviz.trace) and type(sys.modules["sdviz.tracing"]) is types.ModuleType


# -- guarantees --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"sampler": "ddim"},
        {"sampler": "euler_a", "prompt": ["a red circle", "a blue square on the left"], "seed": 5},
        {"sampler": "ddpm", "cfg_scale": 1.0},
    ],
    ids=["ddim", "euler_a-batch", "ddpm-unguided"],
)
def test_a_trace_changes_no_number(pipe, kw):
    kw = dict(kw)
    prompt = kw.pop("prompt", PROMPT)
    plain = gen(pipe, prompt, **kw)
    with trace(pipe, record="all", keep=["step", "layer", "head"], decode=True) as tr:
        traced = gen(pipe, prompt, **kw)
    assert torch.equal(plain.latents, traced.latents)
    for a, b in zip(plain.images, traced.images, strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert torch.equal(tr.latents.final, plain.latents)
    assert_clean(pipe)


def test_hooks_are_removed_when_the_generation_raises(pipe):
    # bad input once the hooks are on
    with pytest.raises(ValueError, match="latents must have shape"):
        with trace(pipe, record="all"):
            assert pipe.observers and any(m.listeners for m in pipe.unet.modules() if isinstance(m, HookPoint))
            gen(pipe, latents=torch.zeros(1, 4, 3, 3))
    assert_clean(pipe)

    # a hook that raises in the middle of a UNet call, at the third step
    calls = []

    def boom(name, x):
        calls.append(name)
        if len(calls) == 3:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with trace(pipe, record="all", keep=["step"]), hooks(pipe, "unet.hook_out", boom):
            gen(pipe)
    assert_clean(pipe)

    # a step filter that selects a step the generation does not have: refused when the generation starts
    with pytest.raises(ValueError, match="does not exist"):
        with trace(pipe, steps=[10]):
            gen(pipe, steps=3)
    assert_clean(pipe)


def test_two_traces_in_a_row_do_not_see_each_other(pipe):
    with trace(pipe, record="all") as a:
        gen(pipe, "a red circle", seed=1)
    snapshot = a.state_dict()
    saved = {k: {n: v.clone() for n, v in r.sums.items()} for k, r in a.records.items() if hasattr(r, "sums")}
    with trace(pipe, record="all") as b:
        gen(pipe, "a blue square on the left", seed=2)
    with trace(pipe, record="all") as c:  # b's generation again, in a trace of its own
        gen(pipe, "a blue square on the left", seed=2)
    for kind, sums in saved.items():
        for key, v in sums.items():
            assert torch.equal(a.records[kind].sums[key], v)  # a unchanged by b
            assert torch.equal(b.records[kind].sums[key], c.records[kind].sums[key])  # b holds only its own run
    assert torch.equal(b.groupnorm.stats, c.groupnorm.stats)
    assert torch.equal(b.latents.x0, c.latents.x0)
    assert a.prompts == ["a red circle"] and b.prompts == ["a blue square on the left"]
    assert snapshot["info"] == a.state_dict()["info"]
    assert_clean(pipe)


def test_nested_traces_each_record_what_they_asked_for(pipe):
    with trace(pipe, record=["cross_attention"], keep=["step"]) as alone:
        gen(pipe)
    for outer_steps, inner_steps in ((None, [1]), ([1], None)):
        with trace(pipe, record=["cross_attention"], keep=["step"], steps=outer_steps) as outer:
            with trace(pipe, record=["cross_attention", "groupnorm"], keep=["step"], steps=inner_steps) as inner:
                gen(pipe)
        assert_clean(pipe)
        for key, s in alone.cross_attention.sums.items():
            for tr, steps in ((outer, outer_steps), (inner, inner_steps)):
                assert torch.equal(tr.cross_attention.sums[key], s if steps is None else s[steps])


def test_no_probability_is_computed_when_nobody_listens(pipe, monkeypatch):
    shapes = []
    original = attention_module.attention_probs

    def counting(q, k, causal=False, offset=0):
        shapes.append(tuple(q.shape))
        return original(q, k, causal, offset)

    monkeypatch.setattr(attention_module, "attention_probs", counting)
    gen(pipe)
    assert shapes == []  # untraced: the fused kernel only
    with trace(pipe, record=["cross_attention"], steps=[0, 2]):
        gen(pipe, steps=3)
    # only the 7 cross-attention layers, the conditional row only, on the 2 recorded steps only
    assert len(shapes) == 2 * 7
    assert {s[0] for s in shapes} == {1}
    assert all(s[2] in (16 * 16, 8 * 8) for s in shapes)
    shapes.clear()
    with trace(pipe, record=["groupnorm", "latents", "time_embedding"]):
        gen(pipe)
    gen(pipe)
    assert shapes == []  # no attention record, or after the trace: nothing computed


# -- records -----------------------------------------------------------------------------------------------------


def test_cross_attention_is_the_conditional_probabilities_summed_as_asked(pipe):
    """The reduction sums exactly the conditional half of each layer's heads, steps and layers."""
    raw: dict[str, list[torch.Tensor]] = {}
    with hooks(pipe, "unet.*.attn2.hook_probs", lambda n, p: raw.setdefault(n, []).append(p.clone())):
        gen(pipe)  # untraced: hook_probs sees the whole [uncond; cond] batch
    with trace(pipe, record=["cross_attention"], keep=["step", "layer", "head"]) as full:
        gen(pipe)
    with trace(pipe, record=["cross_attention"]) as summed:
        gen(pipe)
    rec = full.cross_attention
    for name, per_step in raw.items():
        for step, p in enumerate(per_step):  # p: (2, heads, n, 77), row 1 = conditional
            torch.testing.assert_close(rec.sums[name][step, 0], p[1], rtol=0, atol=1e-6)
            assert not torch.allclose(rec.sums[name][step, 0], p[0])  # not the unconditional row
    assert torch.equal(rec.counts[name], torch.ones(STEPS, 1))
    # the default record is the same numbers summed over steps, heads and the layers of each resolution
    by_res = summed.cross_attention
    for key, s in by_res.sums.items():
        layers = [n for n, a in rec.layers.items() if a.resolution == key]
        expected = sum(rec.sums[n].sum((0, 2)) for n in layers)  # (B, n, 77)
        torch.testing.assert_close(s[0, :, 0], expected, rtol=1e-5, atol=1e-5)
        assert by_res.counts[key].item() == STEPS * 4 * len(layers)  # steps x heads x layers
    # means are distributions over the 77 tokens
    for m in by_res.maps().values():
        torch.testing.assert_close(m.sum(0), torch.ones(m.shape[1:]), rtol=0, atol=1e-5)


def test_word_maps_average_sub_tokens_and_are_upsampled(pipe):
    with trace(pipe, record=["cross_attention"], keep=["step"]) as tr:
        gen(pipe, "a cyan zxqvbk circle", steps=3)
    assert tr.tokens == ["<|startoftext|>", "a", "cy", "an", "z", "x", "q", "v", "bk", "circle", "<|endoftext|>"]
    assert tr.words == ["a", "cyan", "zxqvbk", "circle"]
    maps = tr.token_maps()
    assert maps.shape == (77, 64, 64)
    torch.testing.assert_close(tr.word_map("cyan"), maps[[2, 3]].mean(0))
    torch.testing.assert_close(tr.word_map("zxqvbk"), maps[4:9].mean(0))
    torch.testing.assert_close(tr.word_map(3), maps[9])
    torch.testing.assert_close(tr.word_map("Circle"), tr.word_maps(["circle"])["circle"])
    # per step: the steps average to the whole
    per_step = torch.stack([tr.word_map("circle", steps=[s]) for s in range(3)])
    torch.testing.assert_close(per_step.mean(0), tr.word_map("circle"), rtol=1e-5, atol=1e-7)
    at16 = tr.word_map("circle", steps=1, resolution=16)
    assert at16.shape == (64, 64) and not torch.allclose(at16, tr.word_map("circle", steps=1, resolution=8))
    with pytest.raises(KeyError, match="not a word of the prompt"):
        tr.word_map("square")
    with pytest.raises(KeyError, match="resolution"):
        tr.word_map("circle", resolution=32)


def test_a_word_repeated_in_the_prompt_has_a_map_per_occurrence(pipe):
    with trace(pipe, record=["cross_attention"]) as tr:
        gen(pipe, "a red circle and a red square", steps=2)
    maps = tr.token_maps()
    torch.testing.assert_close(tr.word_map("red"), maps[[2, 6]].mean(0))
    torch.testing.assert_close(tr.word_map(5), maps[6])  # the second "red", by its word index
    with pytest.raises(KeyError, match="keep=\\['step'\\]"):
        tr.word_map("red", steps=0)  # summed over steps during the run
    with pytest.raises(KeyError, match="keep=\\['layer'\\]"):
        tr.word_map("red", layers="unet.mid_block")


def test_self_attention_budget_is_checked_before_the_run(pipe):
    with pytest.raises(TraceBudgetError, match="self_attention") as e:
        with trace(pipe, record=["self_attention"], keep=["step", "head"], max_bytes=1e6):
            gen(pipe)
    assert "MB" in str(e.value) and "max_bytes" in str(e.value)
    assert_clean(pipe)
    with trace(pipe, record=["self_attention"], layers="unet.mid_block", keep=["step", "head"], max_bytes=1e6) as tr:
        gen(pipe)
    rec = tr.self_attention
    assert list(rec.sums) == ["unet.mid_block.attentions.0.transformer_blocks.0.attn1.hook_probs"]
    m = rec.map("unet.mid_block")
    assert m.shape == (64, 64)
    torch.testing.assert_close(m.sum(1), torch.ones(64))
    assert rec.pixel_map("unet.mid_block", 2, 5, steps=2, heads=[0]).shape == (8, 8)


def test_the_estimate_is_exactly_what_the_trace_holds(pipe):
    for options in (
        {},
        {"record": "all", "keep": ["step", "head"], "decode": True, "steps": slice(1, None)},
        {"record": ["cross_attention", "groupnorm"], "keep": ["layer"], "layers": {"groupnorm": "unet.up_blocks"}},
    ):
        with trace(pipe, **options) as tr:
            gen(pipe, ["a red circle", "a blue square"], height=64, width=32, steps=2)
        assert tr.nbytes() == tr.estimate.records, options


def test_estimate_of_sd15_at_512_needs_no_weights_and_is_under_200_mb():
    est = estimate(SD15, height=512, width=512, num_steps=50)
    assert set(est.parts) == {"cross_attention", "groupnorm", "time_embedding", "latents", "images"}
    assert est.total < 200e6
    # cross-attention at 64, 32, 16 and 8 pixels: 77 tokens each, float32
    assert est.parts["cross_attention"] == 4 * (77 * (64**2 + 32**2 + 16**2 + 8**2) + 4)
    assert est.parts["latents"] == 4 * (50 * 5 + 1) * 4 * 64 * 64
    assert "MB" in str(est)


def test_group_norm_statistics_are_those_of_the_conditional_input_and_output(pipe):
    seen = {"in": [], "out": []}
    with hooks(pipe, "unet.conv_norm_out", lambda n, x: seen[n.split("_")[-1]].append(x.clone())):
        gen(pipe)
    with trace(pipe, record=["groupnorm"], steps=[0, 2]) as tr:  # of 3
        gen(pipe)
    rec = tr.groupnorm
    assert rec.steps == [0, 2] and rec.timesteps == [tr.timesteps[0], tr.timesteps[2]]
    layer = rec.layers.index("unet.conv_norm_out")
    g = rec.groups[layer]
    for slot, step in enumerate([0, 2]):
        for which, x in ((0, seen["in"][step][1]), (1, seen["out"][step][1])):
            v = x.reshape(g, -1)
            torch.testing.assert_close(rec.stats[slot, 0, layer, :g, 2 * which], v.mean(1))
            torch.testing.assert_close(rec.stats[slot, 0, layer, :g, 2 * which + 1], v.std(1, correction=0))
    frame = rec.frame()
    assert len(frame["in_std"]) == 2 * sum(rec.groups)
    assert set(frame) >= {"layer", "step", "t", "group", "in_mean", "in_std", "out_mean", "out_std"}
    assert rec.along_unet("out_std", step=2).shape == (len(rec.layers),)


def test_time_embedding_record(pipe):
    with trace(pipe, record=["time_embedding"]) as tr:
        gen(pipe, ["a red circle", "a blue square"])
    rec = tr.time_embedding
    t = torch.tensor(tr.timesteps)
    cfg = pipe.unet.config
    sin = timestep_embedding(t, cfg.model_channels, cfg.flip_sin_to_cos, cfg.freq_shift)
    torch.testing.assert_close(rec.sinusoid, sin)
    torch.testing.assert_close(rec.mlp, pipe.unet.time_embedding(sin), rtol=1e-5, atol=1e-6)
    t_all, sin_all, mlp_all = time_embeddings(pipe.unet)
    assert sin_all.shape == (1000, cfg.model_channels) and mlp_all.shape == (1000, cfg.time_embed_dim)
    torch.testing.assert_close(sin_all[t], rec.sinusoid)


def test_latents_record_every_step(pipe):
    sampler = get_sampler("ddim", TOY.schedule)
    with trace(pipe, record=["latents"]) as tr:
        result = gen(pipe, steps=5)
    rec = tr.latents
    gen_ = torch.Generator().manual_seed(1)
    torch.testing.assert_close(rec.x_t[0], torch.randn((1, 4, 16, 16), generator=gen_), rtol=0, atol=0)
    assert torch.equal(rec.x_t[1:], torch.stack([rec.x_t[i + 1] for i in range(4)]))
    assert torch.equal(rec.final, result.latents)
    torch.testing.assert_close(rec.eps, rec.eps_uncond + 5.0 * (rec.eps_cond - rec.eps_uncond))
    sampler.set_timesteps(5)
    for i, t in enumerate(tr.timesteps):
        torch.testing.assert_close(rec.x0[i], sampler.predict_x0(rec.eps[i], t, rec.x_t[i]))
    previews = rec.preview("x0")
    assert previews.shape == (5, 16, 16, 3) and previews.dtype == np.uint8
    assert rec.preview("x_t", steps=-1).shape == (16, 16, 3)
    with pytest.raises(AttributeError, match="without guidance"):
        with trace(pipe, record=["latents"]) as unguided:
            gen(pipe, cfg_scale=1.0)
        unguided.latents.eps_uncond  # noqa: B018


def test_the_latent_rgb_map_recovers_a_linear_vae():
    """Fitted on a VAE whose latents are a known linear function of the colours, the map inverts it."""

    class LinearVAE(torch.nn.Module):
        a = torch.tensor([[0.5, -0.2, 0.1], [0.3, 0.8, -0.4], [-0.6, 0.1, 0.9], [0.2, 0.2, 0.2]])  # (4, 3)

        def encode(self, x):
            rgb = torch.nn.functional.avg_pool2d(x, 4)  # (N, 3, 16, 16)
            z = torch.einsum("cr,nrhw->nchw", self.a, rgb) + 0.1
            return z, torch.zeros_like(z)

    class Fake:
        vae, device, dtype = LinearVAE(), torch.device("cpu"), torch.float32
        config = TOY

    weight, bias = latent_rgb_map(Fake())
    rgb = torch.rand(3, 10) * 2 - 1
    z = LinearVAE.a @ rgb + 0.1  # (4, 10)
    torch.testing.assert_close(weight @ z + bias[:, None], rgb, rtol=0, atol=1e-4)


def test_save_and_load_give_the_same_answers(pipe, tmp_path):
    with trace(pipe, record="all", keep=["step"], decode=True) as tr:
        gen(pipe)
    path = tr.save(tmp_path / "trace.pt")
    loaded = load(path)
    assert loaded.pipe is None and loaded.prompts == tr.prompts and loaded.tokens == tr.tokens
    torch.testing.assert_close(loaded.word_map("circle", steps=2), tr.word_map("circle", steps=2), rtol=0, atol=0)
    assert torch.equal(loaded.groupnorm.stats, tr.groupnorm.stats)
    assert torch.equal(loaded.time_embedding.mlp, tr.time_embedding.mlp)
    assert np.array_equal(loaded.latents.preview("x0"), tr.latents.preview("x0"))
    assert torch.equal(loaded.latents.decoded, tr.latents.decoded)
    assert np.array_equal(np.asarray(loaded.images[0]), np.asarray(tr.images[0]))
    assert torch.equal(loaded.self_attention.map("unet.mid_block"), tr.self_attention.map("unet.mid_block"))
    assert loaded.nbytes() == tr.nbytes()
    with pytest.raises(ValueError, match="not an sdviz trace"):
        torch.save({"a": 1}, tmp_path / "other.pt")
        load(tmp_path / "other.pt")


def test_a_trace_before_its_generation_says_so(pipe):
    tr = trace(pipe)
    with pytest.raises(RuntimeError, match="no generation yet"):
        tr.word_map("circle")
    with trace(pipe, record=["latents"]) as tr:
        gen(pipe, steps=2)
    with pytest.raises(KeyError, match="did not record 'cross_attention'"):
        tr.word_map("circle")


def test_the_attention_validation_runs_and_counts_every_object(pipe):
    from sdviz.toy import validate_attention as validate
    from sdviz.toy import world
    from sdviz.toy.attention_scores import object_words

    spec = world.parse_caption("a large red circle above a small blue circle")
    words = "a large red circle above a small blue circle".split()
    assert object_words(words, spec) == [("red", 2, 3), ("blue", 7, 8)]
    report = validate.validate(pipe, n=4, steps=2, progress=False)  # random weights: the numbers mean nothing
    n_objects = sum(len(world.parse_caption(p).objects) for p, _ in world.held_out_prompts(4))
    assert report["objects"] + report["skipped_not_drawn"] == n_objects
    assert 0.0 <= report["miou"]["noun"] <= 1.0 and set(report["baseline"]) == {"whole_image", "centre_disc"}


# -- bad input and memory ------------------------------------------------------------------------------------------


def test_loading_what_is_not_a_trace_says_so_in_one_line(pipe, tmp_path):
    with trace(pipe, record=["cross_attention", "latents"]) as tr:
        gen(pipe, steps=2)
    data = tr.save(tmp_path / "good.pt").read_bytes()
    cases = {
        "truncated.pt": data[: len(data) // 2],
        "empty.pt": b"",
        "notes.txt": b"this is a text file, not a trace\n",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match="not \\(or no longer\\) an sdviz trace") as e:
            load(tmp_path / name)
        assert str(tmp_path / name) in str(e.value) and "\n" not in str(e.value), name
    torch.save({"a": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not an sdviz trace"):
        load(tmp_path / "other.pt")
    damaged = torch.load(tmp_path / "good.pt", weights_only=True)
    del damaged["records"]
    torch.save(damaged, tmp_path / "damaged.pt")
    with pytest.raises(ValueError, match="an sdviz trace, but damaged: KeyError"):
        load(tmp_path / "damaged.pt")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load(tmp_path / "missing.pt")


PEAK_SCRIPT = """
import json, resource, sys
import torch
import sdviz
torch.set_num_threads(2)
pipe = sdviz.load_pipeline()
settings = dict(height=256, width=256, steps=1, cfg_scale=5.0, sampler="ddim", seed=0, progress=False)
pipe.generate("a red circle above a blue square", **settings)  # the untraced run sets the baseline peak
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
with sdviz.trace(pipe, record="all", max_bytes=2**31) as tr:
    pipe.generate("a red circle above a blue square", **settings)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"growth": after - before, "records": tr.estimate.records, "total": tr.estimate.total}))
"""


def test_a_traces_peak_memory_stays_within_its_estimate():
    """The embedded model at 256x256 (64x64 latents: 4096 x 4096 self-attention), every record: the process's peak
    grows by no more than 1.25x the estimate, which counts the records and one chunk of observed probabilities."""
    import json
    import subprocess

    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT], capture_output=True, text=True, check=True, timeout=600)
    m = json.loads(out.stdout.strip().splitlines()[-1])
    assert m["records"] > 100e6  # big enough for the measurement to mean something
    assert m["growth"] <= 1.25 * m["total"], m


def test_a_trace_writes_its_own_web_page(pipe, tmp_path):
    from sdviz.tracing.export import export

    with trace(pipe) as tr:
        gen(pipe)
    path = tr.to_html(tmp_path / "run.html")
    text = path.read_text()
    assert PROMPT in text and "<script" in text and 'src="http' not in text and 'href="http' not in text
    assert path.stat().st_size == export(tr).nbytes  # the same page as sdviz.tracing.export builds

"""Word-map aggregators (`sdviz.tracing.aggregate`): DAAM 0.2.0's computation against an independent re-implementation
written here from DAAM's documented steps, on probabilities captured at the hook points beside the trace; the other
knobs against direct computations; what each needs from a trace; and the ladder's use of its two splits.
Random TOY weights: the numbers mean nothing, the arithmetic is what is checked."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sdviz.config import TOY
from sdviz.pipeline import StableDiffusion
from sdviz.tracing import aggregate, estimate, hooks, load, trace
from sdviz.tracing.aggregate import DAAM, SDVIZ, Aggregator

PIPE = "toy"  # the session pipeline the `pipe` fixture gives (tests/conftest.py)

PROMPT = "a small cyan triangle above a purple circle"
STEPS = 3
ALL = ["step", "layer", "head"]


def gen(pipe, prompt=PROMPT, **kw):
    kw = {"steps": STEPS, "seed": 1, "cfg_scale": 5.0, "sampler": "ddim", "progress": False, **kw}
    return pipe.generate(prompt, **kw)


@pytest.fixture(scope="module")
def captured(pipe):
    """A generation traced with every axis kept and self-attention, with the raw conditional probabilities, values
    and attention outputs of every cross-attention layer captured beside the trace, step by step."""
    cond = lambda b: slice(b // 2, b)  # noqa: E731  the conditional half of the guided batch
    probs: dict[str, list[torch.Tensor]] = {}
    values: dict[str, torch.Tensor] = {}
    outputs: dict[str, list[torch.Tensor]] = {}
    handles = []
    for name, m in pipe.unet.named_modules():  # what to_out is given: the attention output, heads concatenated
        if name.endswith("attn2.to_out"):
            layer = f"unet.{name.removesuffix('.to_out')}.hook_probs"
            hook = lambda _m, args, layer=layer: outputs.setdefault(layer, []).append(args[0][1:].clone())  # noqa: E731
            handles.append(m.register_forward_pre_hook(hook))
    try:
        with (
            trace(
                pipe,
                record=["cross_attention", "self_attention"],
                keep={"cross_attention": ALL, "self_attention": ["step"]},
            ) as tr,
            hooks(pipe, "unet.*.attn2.hook_probs", lambda n, p: probs.setdefault(n, []).append(p.clone()), rows=cond),
            hooks(pipe, "unet.*.attn2.hook_values", lambda n, v: values.__setitem__(n, v.clone()), rows=cond),
        ):
            gen(pipe)
    finally:
        for h in handles:
            h.remove()
    return tr, probs, values, outputs


def daam_reference(probs: dict[str, list[torch.Tensor]], tokens: list[str], word: str, latent: int, size: int):
    """DAAM 0.2.0, step by step as its code does it (written here independently of sdviz.tracing.aggregate):

    - trace.py, UNetCrossAttentionLocator: the cross-attention layers of the up and down blocks, not the mid block;
      UNetCrossAttentionHooker: skip a layer whose factor sqrt(latent_hw // pixels) is 8; per head, the
      conditional probabilities as (77, h, w) maps, added up over the steps (RawHeatMapCollection.update);
    - compute_global_heat_map: each (layer, head) sum bicubically to the latent grid, clamped at 0, the mean of all;
    - utils.compute_token_merge_indices: every occurrence of the word's tokens in the prompt, +1 for the start token;
      GlobalHeatMap.compute_word_heat_map: their mean; WordHeatMap.expand_as(absolute=True): bicubic to the picture.
    """
    per_head = []
    for name, steps in probs.items():
        if ".mid_block." in name:
            continue
        summed = torch.stack(steps).sum(0)[0]  # (steps, 1, heads, n, 77) -> (heads, n, 77)
        side = int(summed.shape[1] ** 0.5)
        if int((latent * latent // summed.shape[1]) ** 0.5) == 8:
            continue
        for head in summed:
            maps = head.T.reshape(77, 1, side, side)
            per_head.append(F.interpolate(maps, size=(latent, latent), mode="bicubic").clamp_(min=0))
    global_maps = torch.stack(per_head).mean(0)[:, 0]  # (77, latent, latent)
    search = {"cyan": ["cy", "an"]}.get(word, [word])
    body = tokens[1:]
    idx = [s + i + 1 for s in range(len(body)) if body[s : s + len(search)] == search for i in range(len(search))]
    heat = global_maps[idx].mean(0)
    return F.interpolate(heat[None, None], size=(size, size), mode="bicubic")[0, 0]


def test_daam_method_is_daam_0_2_0s_computation(captured):
    tr, probs, _, _ = captured
    for word in ("triangle", "cyan", "an", "circle", "above"):
        ours = tr.word_map(word, method="daam")
        theirs = daam_reference(probs, tr.tokens, word, latent=16, size=64)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6 * float(theirs.abs().max()))
    # DAAM finds "an" inside "cyan" (cy|an), sdviz's own word lookup does not know "an" in this prompt
    assert aggregate.daam_positions(tr.tokens, "an") == [4] and tr.word_positions("cyan") == [3, 4]
    with pytest.raises(KeyError, match="not a word of the prompt"):
        tr.word_map("an")
    # the same numbers from a trace that kept only what DAAM needs (layers and heads, summed over steps)
    with trace(tr.pipe, record=["cross_attention"], keep=DAAM.needs()["keep"]) as lean:
        gen(tr.pipe)
    torch.testing.assert_close(lean.word_map("circle", method="daam"), tr.word_map("circle", method="daam"))


def _original_reduction(rec, size: tuple[int, int]) -> torch.Tensor:
    """sdviz's original reduction, written out here: per recorded resolution, the sum over steps and heads upsampled
    bilinearly to `size`, all of them averaged with the number of single-head maps each holds as its weight."""
    total, weight = 0.0, 0.0
    for key, sums in rec.sums.items():
        s = sums[:, 0].sum((0, 1)).float()  # (S, H, n, m) -> (n, m)
        heads = sums.shape[2] if "head" in rec.keep else 1
        up = F.interpolate(s.T.reshape(1, -1, *rec.grid[key]), size=size, mode="bilinear", align_corners=False)[0]
        total, weight = total + up, weight + float(rec.counts[key][:, 0].sum()) * heads
    return total / weight


def test_the_generic_path_gives_sdvizs_original_maps(captured):
    tr = captured[0]
    original = _original_reduction(tr.cross_attention, (64, 64))
    torch.testing.assert_close(tr.token_maps(method=SDVIZ.with_()), original, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(tr.token_maps(method="sdviz"), original, rtol=1e-5, atol=1e-7)
    # a word's map is the mean of its tokens' maps, whether all 77 are computed or only the word's
    positions = tr.word_positions("circle")
    torch.testing.assert_close(tr.word_map("circle"), original[positions].mean(0), rtol=1e-5, atol=1e-7)
    window = SDVIZ.with_(layers=(16,), window=(0.0, 0.5))  # 3 steps: 0 <= s < 1.5 -> steps 0 and 1
    torch.testing.assert_close(
        tr.word_map("circle", method=window),
        tr.word_map("circle", method="sdviz", steps=[0, 1], resolution=16),
        rtol=1e-5,
        atol=1e-7,
    )


def test_renormalised_word_tokens_share_each_pixel(captured):
    tr = captured[0]
    words = aggregate.word_token_positions(tr.encoding(0))
    for method in (SDVIZ.with_(renormalise=True), DAAM.with_(renormalise=True)):
        total = tr.token_maps(method=method)[words].sum(0)
        torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-4)


def test_head_selection_reads_only_the_chosen_heads(captured):
    tr, probs, _, _ = captured
    layer = "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2.hook_probs"
    one = DAAM.with_(heads=((layer, 2),))
    summed = torch.stack(probs[layer]).sum(0)[0, 2]  # (n, 77): head 2 over the steps
    expected = F.interpolate(summed.T.reshape(77, 1, 16, 16), size=(16, 16), mode="bicubic").clamp(min=0)[:, 0]
    expected = F.interpolate(expected[None], size=(64, 64), mode="bicubic")[0]
    torch.testing.assert_close(tr.token_maps(method=one), expected, rtol=1e-5, atol=1e-7)


def test_the_output_projection_is_the_attention_output_against_the_token_values(captured):
    tr, probs, values, outputs = captured
    words = aggregate.word_token_positions(tr.encoding(0))
    per_map = []
    for name, steps in probs.items():
        v = values[name.replace("hook_probs", "hook_values")][0]  # (heads, 77, d)
        for step, p in enumerate(steps):
            o = p[0] @ v  # (heads, n, 77) @ (heads, 77, d): the attention output of each head
            heads, n, d = o.shape
            # what `to_out` was given: the same output (the fused kernel's), heads side by side
            fused = outputs[name][step][0]
            torch.testing.assert_close(o.transpose(0, 1).reshape(n, heads * d), fused, atol=1e-5, rtol=1e-4)
            score = torch.einsum("hnd,hsd->sn", o, v)  # o . v_s over all channels (ConceptAttention: dim = heads x d)
            z = torch.zeros_like(score)
            z[words] = score[words].softmax(0)
            side = int(n**0.5)
            per_map.append(F.interpolate(z.reshape(1, 77, side, side), size=(64, 64), mode="bilinear")[0])
    expected = torch.stack(per_map).mean(0)
    got = tr.token_maps(method=SDVIZ.with_(source="output"))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got[words].sum(0), torch.ones(64, 64), rtol=0, atol=1e-5)


def test_propagation_multiplies_by_the_self_attention(captured):
    tr = captured[0]
    rec = tr.self_attention
    layers = [k for k in rec.sums if rec.grid[k] == (16, 16)]  # the finest grid's self-attention layers
    a = sum(rec.map(k) for k in layers) / len(layers)  # (256, 256), rows sum to 1
    seed = tr.token_maps(size=(16, 16), method=SDVIZ.with_())  # the maps on the 16x16 grid
    flat = seed.reshape(77, -1) @ a.T @ a.T
    expected = F.interpolate(flat.reshape(1, 77, 16, 16), size=(64, 64), mode="bilinear")[0]
    torch.testing.assert_close(tr.token_maps(method=SDVIZ.with_(propagate=2)), expected, rtol=1e-4, atol=1e-7)


def test_gating_and_the_self_attention_layers_and_steps_it_reads(captured):
    tr = captured[0]
    rec = tr.self_attention
    layer = "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1.hook_probs"
    a = rec.map(layer, steps=[2])  # of 3 steps, the window (0.5, 1) holds step 2 only
    method = SDVIZ.with_(propagate=1, self_layers=("unet.up_blocks.1.attentions.0",), self_window=(0.5, 1.0), gate=0.5)
    seed = tr.token_maps(size=(16, 16), method=SDVIZ.with_()).reshape(77, -1)
    flat = (seed @ a.T) * seed.clamp(min=0) ** 0.5  # propagated, then gated by the seed's square root
    expected = F.interpolate(flat.reshape(1, 77, 16, 16), size=(64, 64), mode="bilinear")[0]
    torch.testing.assert_close(tr.token_maps(method=method), expected, rtol=1e-4, atol=1e-7)
    assert method.needs()["keep"]["self_attention"] == ["step"]
    with pytest.raises(KeyError, match="chooses no recorded self-attention layer"):
        tr.word_map("circle", method=method.with_(self_layers=("unet.nowhere",)))


def test_the_default_is_sdvizs_reduction_and_best_names_the_toy_models_heads(pipe, captured):
    tr = captured[0]
    # the default stays "sdviz" even on a trace that holds everything "best" needs
    torch.testing.assert_close(tr.word_map("circle"), tr.word_map("circle", method="sdviz"))
    assert not torch.allclose(tr.word_map("circle", method="best"), tr.word_map("circle", method="sdviz"))
    # an explicit steps= replaces a method's window: one step's map whatever the window
    one = tr.word_map("circle", method=DAAM.with_(window=(0.5, 1.0)), steps=[0])
    torch.testing.assert_close(one, tr.word_map("circle", method=DAAM, steps=[0]))
    tr.info["config"]["name"] = "sd15"  # a trace of other weights: the names chosen on the toy model do not apply
    try:
        with pytest.raises(KeyError, match="use 'daam'"):
            tr.word_map("circle", method="best")
    finally:
        tr.info["config"]["name"] = "toy"


def test_each_method_says_what_it_needs_and_a_trace_without_it_says_so(pipe):
    assert DAAM.needs() == {"record": ["cross_attention"], "keep": {"cross_attention": ["head", "layer"]}}
    assert SDVIZ.needs() == {"record": ["cross_attention"], "keep": {"cross_attention": []}}
    assert SDVIZ.with_(propagate=1).needs()["record"] == ["cross_attention", "self_attention"]
    assert SDVIZ.with_(window=(0.0, 0.5)).needs()["keep"]["cross_attention"] == ["step"]
    with trace(pipe, record=["cross_attention"]) as tr:
        gen(pipe)
    for method, missing in (("daam", "head, layer"), (SDVIZ.with_(window=(0.5, 1.0)), "keep=\\['step'\\]")):
        with pytest.raises(KeyError, match=missing) as e:
            tr.word_map("circle", method=method)
        assert "\n" not in str(e.value)
    with pytest.raises(KeyError, match="did not record 'self_attention'"):
        tr.word_map("circle", method=SDVIZ.with_(propagate=1))
    with pytest.raises(ValueError, match="unknown word-map method 'dam'; known: sdviz, daam, best"):
        tr.word_map("circle", method="dam")
    with pytest.raises(ValueError, match="window"):
        Aggregator(window=(0.5, 0.2))
    with pytest.raises(TypeError, match=r"Aggregator\(steps=...\) is now window="):
        Aggregator(steps=(0.5, 1.0))  # the old name of the window


def test_values_are_kept_with_layers_and_heads_saved_and_estimated(pipe, tmp_path):
    with trace(pipe, record=["cross_attention"], keep=["layer", "head"]) as tr:
        gen(pipe, ["a red circle", "a blue square"], steps=2)
    rec = tr.cross_attention
    assert rec.keeps_values and set(rec.values) == set(rec.sums)
    v = rec.values["unet.mid_block.attentions.0.transformer_blocks.0.attn2.hook_probs"]
    assert v.shape == (2, 4, 77, 24) and not torch.equal(v[0], v[1])  # per image: two prompts, two contexts
    assert tr.nbytes() == tr.estimate.records
    est = estimate(TOY, record=["cross_attention"], keep=["layer", "head"], images=2, num_steps=2)
    assert est.records == tr.nbytes()
    method = SDVIZ.with_(source="output")
    back = load(tr.save(tmp_path / "t.pt"))
    torch.testing.assert_close(back.word_map("circle", method=method), tr.word_map("circle", method=method))
    with trace(pipe, record=["cross_attention"], keep=["layer"]) as no_values:
        gen(pipe, steps=2)
    assert not no_values.cross_attention.values


def test_the_ladder_chooses_on_training_scenes_and_evaluates_each_held_out_picture_once(pipe, monkeypatch):
    from sdviz.toy import attention_ladder as va
    from sdviz.toy import world

    generated: list[str] = []
    real = StableDiffusion.generate

    def counting(self, prompt, **kw):
        generated.append(prompt)
        return real(self, prompt, **kw)

    monkeypatch.setattr(StableDiffusion, "generate", counting)
    monkeypatch.setattr(va, "LAYER_CHOICES", ("daam", "all"))
    monkeypatch.setattr(va, "STEP_CHOICES", ((0.0, 1.0), (0.0, 0.5)))
    monkeypatch.setattr(va, "HEAD_FRACTIONS", (1.0, 0.5))
    monkeypatch.setattr(va, "PASSES", (0, 1))
    r = va.ladder(pipe, n=2, n_train=2, steps=2, timing=0, progress=False)
    train = [p for p, _ in va.training_prompts(2)]
    held_out = [p for p, _ in world.held_out_prompts(2)]
    assert not set(train) & set(held_out)
    assert generated == train + held_out  # each picture generated once; the held-out ones after every choice
    tricks = [g["trick"] for g in r["rungs"]]
    assert tricks[:2] == ["sdviz's original reduction", "DAAM 0.2.0 (the base)"] and len(tricks) == 9
    for g in r["rungs"]:
        assert 0.0 <= g["miou"] <= 1.0 and g["map_seconds"] >= 0.0
    assert set(r["best"]["metrics"]) >= {"single_miou", "pair_iou", "two_class_miou", "leakage"}
    text = va.format_ladder(r)  # what --ladder prints and --out writes: one row per rung, then 2 x 3 metric rows
    assert sum(line.startswith("| ") and "trick" not in line for line in text.splitlines()) == 9 + 1 + 6

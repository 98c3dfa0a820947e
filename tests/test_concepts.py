"""sdviz.concepts: activation collection, the TopK SAE, its training, interventions and grading (fast parts)."""

import json

import numpy as np
import pytest
import torch

from sdviz.concepts import Activations, CollectSettings, collect, estimate_bytes
from sdviz.concepts.cli import POINTS, main, world_pairs
from sdviz.concepts.grade import ALL_CONCEPTS, auroc, auroc_all, cell_labels, picture_objects
from sdviz.concepts.intervene import edit_rows, intervene
from sdviz.concepts.sae import SAE, SAEMismatch, fvu, measure
from sdviz.concepts.train import TrainSettings, train
from sdviz.hooks import hooks

PIPE = "embedded"
SETTINGS = CollectSettings(steps=3, cfg_scale=5.0, sampler="ddim")
PAIRS = [("a red circle on the left", 1), ("a blue square above a yellow triangle", 2)]


@pytest.fixture(scope="module")
def collection(embedded_pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("acts") / "c"
    collect(embedded_pipe, list(POINTS), PAIRS, out, SETTINGS, budget_mb=5, progress=False)
    return Activations(out)


def test_collection_rows_are_the_conditional_activations_with_where_they_come_from(embedded_pipe, collection):
    point = POINTS[0]
    c, h, w = collection.points[point]
    assert (c, h, w) == (96, 8, 8)
    rows = collection.load(point)
    assert rows["x"].shape == (2 * 3 * h * w, c) and rows["x"].dtype == torch.float16
    assert sorted(set(rows["pair"].tolist())) == [0, 1] and sorted(set(rows["step"].tolist())) == [0, 1, 2]
    seen = {}

    def grab(name, x):  # the same generation, observed: the guided batch is [uncond; cond]
        seen.setdefault(len(seen), x[1].detach().clone())  # (C, H, W), the conditional row

    with hooks(embedded_pipe, point, grab):
        image = embedded_pipe.generate(PAIRS[1][0], seed=2, steps=3, cfg_scale=5.0, sampler="ddim", progress=False)
    want = seen[1].permute(1, 2, 0).reshape(-1, c)  # step 1: (C, H, W) -> (H*W, C)
    at = (rows["pair"] == 1) & (rows["step"] == 1)
    got = rows["x"][at][rows["pos"][at].long().argsort()].float()
    torch.testing.assert_close(got, want.to(torch.float16).float())
    assert torch.equal(collection.pictures()[1], torch.from_numpy(np.array(image.image)))
    record = json.loads((collection.folder / "collection.json").read_text())
    assert record["pairs"] == [list(p) for p in PAIRS] and len(record["timesteps"]) == 3


def test_collection_over_budget_refuses_before_it_starts_with_the_estimate(embedded_pipe, tmp_path):
    need = estimate_bytes(embedded_pipe, list(POINTS), 240, CollectSettings())
    assert 150e6 < need < 250e6  # 240 pictures x 20 steps x (64 x 96 + 256 x 48) float16 values, and the rest
    with pytest.raises(ValueError, match=r"budget_mb=10: .* needs about \d+ MB"):
        collect(embedded_pipe, list(POINTS), world_pairs(240), tmp_path / "big", budget_mb=10, progress=False)
    assert not (tmp_path / "big").exists()
    assert main(["collect", str(tmp_path / "big"), "--pairs", "240", "--budget-mb", "10"]) == 2


def _sparse_data(n=4000, d=16, atoms=48, active=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(atoms, d, generator=g), dim=1)
    codes = torch.zeros(n, atoms)
    which = torch.stack([torch.randperm(atoms, generator=g)[:active] for _ in range(n)])
    codes.scatter_(1, which, torch.rand(n, active, generator=g) * 3 + 0.5)
    return codes @ directions + 0.2


def test_topk_sae_is_sparse_nonnegative_and_checks_its_point_model_and_features(tmp_path):
    sae = SAE(16, 64, 4, point="unet.a.hook_block_out", model="abc123", scale=2.0)
    x = torch.randn(50, 16)
    x_hat, z = sae(x)
    assert x_hat.shape == (50, 16) and ((z > 0).sum(1) <= 4).all() and (z >= 0).all()
    sae.save(tmp_path / "s.safetensors")
    back = SAE.load(tmp_path / "s.safetensors")
    torch.testing.assert_close(back(x)[0], x_hat, rtol=0, atol=0)
    assert (back.point, back.model, back.scale) == ("unet.a.hook_block_out", "abc123", 2.0)
    with pytest.raises(SAEMismatch, match=r"^this SAE was trained on unet.a.hook_block_out of model abc123, not on "
                       r"unet.b.hook_block_out of model fff$"):
        back.check("unet.b.hook_block_out", "fff")
    with pytest.raises(IndexError, match=r"feature 64 is out of range: this SAE has features 0..63"):
        back.direction(64)


def test_training_learns_sparse_data_and_resumes_exactly(tmp_path, monkeypatch):
    rows = _sparse_data()
    settings = TrainSettings(expansion=4, k=3, steps=80, batch=256, lr=3e-3, dead_after=5000, checkpoint_every=20)
    sae = train(rows, tmp_path / "a", settings, "unet.p", "m", progress=False)
    m = measure(sae, rows)
    assert m["fvu"] < 0.25 and m["l0"] <= 3
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(sae.n), atol=1e-5)  # unit-norm feature directions
    import sdviz.concepts.train as train_module

    calls, real = {"n": 0}, train_module._losses

    def crash_at_50(*args):
        calls["n"] += 1
        if calls["n"] == 51:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(train_module, "_losses", crash_at_50)
    with pytest.raises(KeyboardInterrupt):
        train(rows, tmp_path / "b", settings, "unet.p", "m", progress=False)
    monkeypatch.setattr(train_module, "_losses", real)
    resumed = train(rows, tmp_path / "b", settings, "unet.p", "m", progress=False)  # from the step-40 checkpoint
    for k, v in sae.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=0)
    with pytest.raises(ValueError, match="other settings"):
        train(rows, tmp_path / "b", TrainSettings.quick(), "unet.p", "m", progress=False)


def test_quick_training_from_the_command_line(collection, tmp_path):
    assert main(["train", str(collection.folder), str(tmp_path / "run"), "--quick"]) == 0
    sae = SAE.load(tmp_path / "run" / "sae.safetensors")
    assert sae.point == POINTS[0] and sae.model == collection.record["model"] and sae.n == 4 * 96
    assert 0 < fvu(collection.load(POINTS[0])["x"].float(), sae(collection.load(POINTS[0])["x"].float())[0]) < 1


def test_edits_remove_clamp_and_add_exactly_one_feature():
    sae = SAE(16, 64, 4, scale=1.5)
    x = torch.randn(10, 16)
    x_hat, z = sae(x)
    i = int(z[0].argmax())
    torch.testing.assert_close(edit_rows(sae, x, ablate=[i]), x - z[:, i : i + 1] * sae.W_dec[i] * 1.5)
    torch.testing.assert_close(edit_rows(sae, x, clamp={i: -2.0}), x + (-2.0 - z[:, i : i + 1]) * sae.direction(i))
    torch.testing.assert_close(edit_rows(sae, x, add={3: 0.5}), x + 0.5 * sae.direction(3))
    torch.testing.assert_close(edit_rows(sae, x, splice=True), x_hat)


def test_intervene_changes_only_the_conditional_rows_at_the_saes_point(embedded_pipe):
    from sdviz.concepts.collect import model_fingerprint

    sae = SAE(96, 192, 8, point=POINTS[0], model=model_fingerprint(embedded_pipe))
    got = []
    steer = intervene(embedded_pipe, sae, add={5: 3.0}, window=(0.5, 1.0))  # step 1 of 2
    with steer, hooks(embedded_pipe, POINTS[0], lambda _, x: got.append(x)):
        embedded_pipe.generate("a red circle", seed=0, steps=2, cfg_scale=5.0, sampler="ddim", progress=False)
    plain = []
    with hooks(embedded_pipe, POINTS[0], lambda n, x: plain.append(x)):
        embedded_pipe.generate("a red circle", seed=0, steps=2, cfg_scale=5.0, sampler="ddim", progress=False)
    torch.testing.assert_close(got[0], plain[0])  # step 0 untouched
    delta = got[1][1] - plain[1][1]  # the conditional row at step 1: (C, H, W)
    torch.testing.assert_close(delta, 3.0 * sae.direction(5)[:, None, None].expand_as(delta), atol=1e-5, rtol=0)
    with pytest.raises(SAEMismatch, match="not on unet.up_blocks.1"):
        with intervene(embedded_pipe, sae, point=POINTS[1]):
            pass
    with pytest.raises(IndexError, match="0..191"):
        with intervene(embedded_pipe, sae, ablate=[192]):
            pass


def test_auroc_counts_ties_half_and_the_sparse_version_agrees_with_the_dense_one():
    assert auroc(np.array([3.0, 2.0, 1.0, 0.0]), np.array([True, True, False, False])) == 1.0
    assert auroc(np.array([1.0, 1.0]), np.array([True, False])) == 0.5
    rng = np.random.default_rng(0)
    n, m, k = 20, 500, 3
    idx = np.stack([rng.permutation(n)[:k] for _ in range(m)])
    val = rng.random((m, k)) * (rng.random((m, k)) > 0.3)
    labels = rng.integers(-1, 2, m).astype(np.int8)
    fast = auroc_all(idx, val, labels, n)
    for f in range(n):
        dense = np.where(idx == f, val, 0).sum(1)
        keep = labels >= 0
        assert fast[f] == pytest.approx(auroc(dense[keep], labels[keep] == 1))


def test_pixels_are_labelled_by_the_concepts_of_the_objects_that_cover_them():
    from sdviz.toy import world

    scene = world.scene_from_spec("a large red circle above a small blue square", seed=3)
    objects = picture_objects(scene.image, scene.caption)
    assert objects is not None and [sorted(c) for _, c in objects] == [
        ["above", "circle", "large", "red", "two objects"], ["below", "blue", "small", "square", "two objects"]]
    labels = cell_labels(objects, (8, 8))
    red, blue = labels[ALL_CONCEPTS.index("red")], labels[ALL_CONCEPTS.index("blue")]
    assert (red == 1).sum() >= 2 and (blue == 1).sum() >= 1 and not ((red == 1) & (blue == 1)).any()
    covered = objects[0][0].reshape(8, 8, 8, 8).mean(axis=(1, 3)).reshape(-1)
    other = objects[1][0].reshape(8, 8, 8, 8).mean(axis=(1, 3)).reshape(-1)
    assert ((red == 1) == (covered >= 0.5)).all()
    assert ((red == 0) == ((other >= 0.5) & (covered == 0))).all() and (red == 0).sum() >= 1  # the blue square
    assert ((red == -1) >= ((covered == 0) & (other == 0))).all()  # the background is never a negative
    green = labels[ALL_CONCEPTS.index("green")]  # no green object: both objects are negatives, the rest ignored
    assert ((green == 0) == ((covered >= 0.5) | (other >= 0.5))).all() and not (green == 1).any()
    two = labels[ALL_CONCEPTS.index("two objects")]
    assert not (two == 0).any() and ((two == 1) == ((covered >= 0.5) | (other >= 0.5))).all()
    assert picture_objects(scene.image, "a green triangle") is None  # not what the picture holds: not graded


def test_concept_prompts_name_the_concept_or_not_and_the_judge_reads_the_target():
    from sdviz.concepts.measure import concept_prompts, object_concepts, target_ok
    from sdviz.toy import judge, world

    for concept in ("red", "circle", "large", "left", "above", "two objects"):
        named = concept_prompts(concept, 5)
        assert len(set(named)) == 5
        assert all(any(concept in c for c in object_concepts(world.parse_caption(p))) for p, _ in named)
        assert not any(any(concept in c for c in object_concepts(world.parse_caption(p)))
                       for p, _ in concept_prompts(concept, 5, name_it=False))
    scene = world.scene_from_spec("a large red circle above a small blue square", seed=3)
    verdict = judge.judge(scene.image, scene.caption)
    assert target_ok(verdict, "red") == [True] and target_ok(verdict, "square") == [True]
    assert target_ok(verdict, "below") == [True] and target_ok(verdict, "green") == []
    swapped = judge.judge(scene.image, "a large blue circle above a small red square")
    assert target_ok(swapped, "red") == [True] and target_ok(swapped, "square") == [False]  # red found, not square
    with pytest.raises(ValueError, match="concept: 'pink' is not a world concept"):
        concept_prompts("pink", 2)


def test_ablation_and_steering_report_what_they_measured(embedded_pipe):
    from sdviz.concepts.collect import model_fingerprint
    from sdviz.concepts.measure import ablation_effect, steering_rate

    sae = SAE(96, 192, 8, point=POINTS[0], model=model_fingerprint(embedded_pipe))
    quick = CollectSettings(steps=2)
    r = ablation_effect(embedded_pipe, sae, "red", 3, quick, n=1, control=[("a blue square", 1)])
    assert r["prompts"] == {"target": 1, "control": 1} and r["edit"] == "ablate"
    assert set(r["control_moved_points"]) == {"colour", "shape", "position", "count", "correct"}
    assert r["passes"] == (r["target_drop_points"] >= 50 and max(map(abs, r["control_moved_points"].values())) <= 5)
    s = steering_rate(embedded_pipe, sae, 3, 4, quick, amount=2.0, n=2)
    assert s["n"] == 2 and 0 <= s["blue_circle_rate"] <= s["red_gone_rate"] <= 1
    g = ablation_effect(embedded_pipe, sae, "red", [3, 5], quick, n=1, control=[("a blue square", 1)])
    assert g["feature"] == [3, 5] and g["edit"] == "ablate 2 best"
    s = steering_rate(embedded_pipe, sae, [3, 5], [4, 6], quick, n=1)
    assert s["red_feature"] == [3, 5] and s["blue_feature"] == [4, 6]
    with pytest.raises(ValueError, match="zip"):  # a group is swapped pairwise: the two must be as long
        steering_rate(embedded_pipe, sae, [3, 5], [4], quick, n=1)


def test_a_concepts_group_is_its_best_features_in_order():
    from sdviz.concepts.grade import Graded

    g = Graded.__new__(Graded)
    rng = np.random.default_rng(0)
    labels = np.where(rng.random(400) < 0.3, 1, 0).astype(np.int8)
    strength = {7: 3.0, 2: 2.0, 9: 1.0}  # feature -> how strongly it follows the label
    g.idx = np.array([[7, 2, 9]] * 400)
    g.val = np.stack([np.clip(rng.normal(labels * w, 1.0), 0, None) for w in strength.values()], axis=1)
    g.labels = np.stack([labels] * len(ALL_CONCEPTS))
    g.sae = SAE(4, 12, 3)
    best = g.best_features(top=4)["red"]
    assert [f for f, _ in best[:3]] == [7, 2, 9] and best[0][1] > best[1][1] > best[2][1] > best[3][1] == 0.5

"""The captioned-shapes world and its judge: determinism, masks, captions, held-out splits, judging."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdviz.toy import judge as J
from sdviz.toy import world as W


def test_same_seed_same_scene() -> None:
    a, b, c = W.sample_scene(7), W.sample_scene(7), W.sample_scene(8)
    assert a.caption == b.caption and np.array_equal(a.image, b.image)
    assert a.caption != c.caption or not np.array_equal(a.image, c.image)
    x1, c1 = W.batch(16, np.random.default_rng(3))
    x2, c2 = W.batch(16, 3)
    assert c1 == c2 and torch.equal(x1, x2)
    s1, s2 = (
        W.scene_from_spec("a red circle above a blue square", 5),
        W.scene_from_spec("a red circle above a blue square", 5),
    )
    assert np.array_equal(s1.image, s2.image)


def test_batch_format() -> None:
    x, captions = W.batch(32, 0)
    assert x.shape == (32, 3, 64, 64) and x.dtype == torch.float32
    assert -1.0 <= x.min() and x.max() <= 1.0
    assert len(captions) == 32 and all(isinstance(c, str) for c in captions)
    item, caption = W.ShapesDataset(4, seed=1)[2]
    assert item.shape == (3, 64, 64) and caption


def test_masks_match_drawn_pixels() -> None:
    bg = np.array(W.BACKGROUND, dtype=np.float32)
    for scene in W.sample_scenes(0, 100, split="all"):
        img = scene.image.astype(np.float32)
        anywhere = np.zeros(img.shape[:2], dtype=bool)
        for o in scene.objects:
            colour = np.array(W.PALETTE[o.colour], dtype=np.float32)
            m = o.mask
            assert m.sum() > 80
            # Inside the mask (coverage >= 1/2) a pixel is nearer the object's colour than the background.
            d_obj = np.linalg.norm(img[m] - colour, axis=-1)
            d_bg = np.linalg.norm(img[m] - bg, axis=-1)
            assert (d_obj <= d_bg + 2).all()
            # One pixel in from the edge it is exactly the object's colour.
            inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
            assert (np.abs(img[1:-1, 1:-1][inner] - colour) <= 1).all()
            # The mask's centroid is where the object was placed, and the caption words name it.
            ys, xs = np.nonzero(m)
            assert abs(xs.mean() + 0.5 - o.centre[0]) < 1.0 and abs(ys.mean() + 0.5 - o.centre[1]) < 1.0
            words = scene.caption.split()
            assert words[o.words["colour"]] == o.colour and words[o.words["shape"]] == o.shape
            if "size" in o.words:
                assert words[o.words["size"]] == o.size
            assert not (anywhere & m).any(), "objects overlap"
            anywhere |= m
        # Outside every mask (coverage < 1/2): near an object, nearer the background than the object's colour;
        # further away, exactly the background.
        near = np.zeros_like(anywhere)
        for o in scene.objects:
            grown = o.mask.copy()
            for dy in range(-2, 3):
                for dx in range(-2, 3):
                    grown |= np.roll(o.mask, (dy, dx), (0, 1))
            edge = grown & ~anywhere
            colour = np.array(W.PALETTE[o.colour], dtype=np.float32)
            assert (np.linalg.norm(img[edge] - bg, axis=-1) <= np.linalg.norm(img[edge] - colour, axis=-1) + 2).all()
            near |= grown
        assert (img[~near] == bg).all()


def test_captions_parse_back_to_their_spec() -> None:
    for scene in W.sample_scenes(1, 300, split="all"):
        assert W.parse_caption(scene.caption) == scene.spec
        assert scene.spec.caption() == scene.caption
    spec = W.parse_caption("A blue square, above an yellow triangle.")
    assert [(o.colour, o.shape, o.size) for o in spec.objects] == [
        ("blue", "square", None),
        ("yellow", "triangle", None),
    ]
    assert spec.relation == "above"
    assert W.parse_caption("a large green circle in the center").position == "centre"
    assert W.parse_caption("a cyan circle to the right of a red square").relation == "right of"
    with pytest.raises(ValueError):
        W.parse_caption("a circle")
    with pytest.raises(ValueError):
        W.SceneSpec((W.ObjectSpec("red", "circle"), W.ObjectSpec("red", "square")), relation="above")


def test_scene_from_spec_draws_what_was_asked() -> None:
    for spec in W.all_specs()[::37]:
        scene = W.scene_from_spec(spec, seed=0)
        assert scene.spec == spec
        assert [(o.colour, o.shape, o.size) for o in scene.objects] == [
            (o.colour, o.shape, o.size) for o in spec.objects
        ]
        assert J.judge(scene.image, spec).correct


def test_held_out_never_in_training() -> None:
    assert len(W.train_specs()) == 3606 and len(W.held_out_specs()) == 894
    assert all(not W.is_held_out(s) for s in W.train_specs())
    rng = np.random.default_rng(0)
    captions = [c for _ in range(8) for c in W.batch(500, rng)[1]]
    assert not any(W.is_held_out(c) for c in captions)
    specs = [W.parse_caption(c) for c in captions]
    singles = {(s.objects[0].colour, s.objects[0].shape) for s in specs if len(s.objects) == 1}
    in_pairs = {(o.colour, o.shape) for s in specs if len(s.objects) == 2 for o in s.objects}
    assert singles.isdisjoint(W.HELD_OUT_SINGLE) and W.HELD_OUT_SINGLE <= in_pairs  # seen only beside another
    held = W.sample_scenes(0, 200, split="held_out")
    assert all(W.is_held_out(s.spec) for s in held)
    assert W.is_held_out("a small purple triangle at the top")
    assert W.is_held_out("a blue circle below a red square")
    assert not W.is_held_out("a purple triangle above a red square")


def test_held_out_prompts_are_fixed() -> None:
    prompts = W.held_out_prompts(100, seed=0)
    assert prompts == W.held_out_prompts(100, seed=0)
    assert len(prompts) == 100 and len({p for p in prompts}) > 90
    assert all(W.is_held_out(p) for p, _ in prompts)
    assert sum(len(W.parse_caption(p).objects) == 1 for p, _ in prompts) == 50


def test_judge_scores_ground_truth_correct() -> None:
    scenes = W.sample_scenes(2, 300, split="all")
    rates = J.summarise(J.judge(s.image, s.caption) for s in scenes)
    for key in ("colour", "shape", "position", "size"):
        assert rates[key] >= 0.98, rates
    assert rates["count"] == 1.0 and rates["correct"] >= 0.98, rates


def test_judge_survives_blur_and_noise() -> None:
    """Generated images are never crisp: a blurred, noisy version of a scene must still be judged right."""
    rng = np.random.default_rng(0)
    verdicts = []
    for s in W.sample_scenes(3, 100, split="all"):
        x = s.image.astype(np.float32)
        x = (x + np.roll(x, 1, 0) + np.roll(x, -1, 0) + np.roll(x, 1, 1) + np.roll(x, -1, 1)) / 5  # box-ish blur
        x = np.clip(x + rng.normal(0, 12, x.shape), 0, 255).astype(np.uint8)
        verdicts.append(J.judge(x, s.caption))
    rates = J.summarise(verdicts)
    assert rates["colour"] >= 0.98 and rates["shape"] >= 0.9 and rates["position"] >= 0.98, rates
    assert rates["count"] >= 0.98, rates


def test_judge_rejects_wrong_prompts() -> None:
    image = W.scene_from_spec("a large red circle on the left", seed=0).image
    v = J.judge(image, "a blue square on the left")
    assert not v.objects[0].colour_ok and not v.objects[0].shape_ok and not v.correct
    v = J.judge(image, "a red square on the left")
    assert v.objects[0].colour_ok and not v.objects[0].shape_ok
    v = J.judge(image, "a large red circle on the right")
    assert v.objects[0].colour_ok and v.objects[0].shape_ok and v.objects[0].position_ok is False
    v = J.judge(image, "a small red circle on the left")
    assert v.objects[0].size_ok is False and v.correct
    pair = W.scene_from_spec("a green triangle above a yellow circle", seed=1).image
    assert J.judge(pair, "a green triangle above a yellow circle").correct
    v = J.judge(pair, "a green triangle below a yellow circle")
    assert not v.correct and v.objects[0].position_ok is False and v.objects[1].position_ok is False
    assert J.judge(pair, "a yellow circle above a green triangle").objects[0].position_ok is False
    # A blank image has nothing in it.
    blank = np.full((64, 64, 3), W.BACKGROUND, dtype=np.uint8)
    assert J.summarise([J.judge(blank, "a red circle on the left")])["colour"] == 0.0


def test_judge_counts_objects() -> None:
    """Extra objects fail a prompt: a second object of a named colour, or an object of a colour not named."""
    two_triangles, _ = W.draw([("purple", "triangle", "large", (18, 32)), ("purple", "triangle", "large", (46, 32))])
    v = J.judge(two_triangles, "a purple triangle")
    o = v.objects[0]
    assert o.colour_ok and o.shape_ok and o.count == 2 and not o.count_ok and not o.ok
    assert v.counts == {"purple": 2} and v.n_drawn == 2 and not v.count_ok and not v.correct
    stray, _ = W.draw([("purple", "triangle", "large", (18, 32)), ("green", "circle", "small", (46, 32))])
    v = J.judge(stray, "a purple triangle")
    assert v.objects[0].ok and v.extra_colours == ["green"] and not v.count_ok and not v.correct
    assert J.judge(stray, "a purple triangle to the left of a green circle").correct
    # Stray specks (fewer than MIN_AREA pixels) are noise, not objects.
    speck = stray.copy()
    speck[2:5, 2:5] = W.PALETTE["purple"]
    v = J.judge(speck, "a purple triangle to the left of a green circle")
    assert v.counts == {"purple": 1, "green": 1} and v.correct
    rates = J.summarise([J.judge(two_triangles, "a purple triangle"), J.judge(stray, "a purple triangle")])
    assert rates["colour"] == rates["shape"] == 1.0 and rates["count"] == rates["correct"] == 0.0


def test_segment_and_input_formats() -> None:
    scene = W.scene_from_spec("a large purple square to the left of a small cyan triangle", seed=2)
    mask = J.segment(scene.image, "purple")
    truth = scene.objects[0].mask
    assert (mask & truth).sum() / (mask | truth).sum() > 0.9
    assert not J.segment(scene.image, "red").any()
    x = torch.from_numpy(scene.image).permute(2, 0, 1).float() / 127.5 - 1  # (3, H, W) in [-1, 1]
    assert np.array_equal(J.to_uint8(x), scene.image)
    assert np.array_equal(J.to_uint8(scene.pil()), scene.image)
    # A 128x128 version is judged like the 64x64 one.
    big = np.asarray(scene.pil().resize((128, 128)))
    assert J.judge(big, scene.caption).correct


def test_random_captions_follow_the_stated_distribution() -> None:
    """One or two objects half the time each, sizes left out 20% of the time, every word used, and the two objects
    of a scene always of different colours (`SceneSpec` checks that)."""
    specs = [W.random_spec(rng, "all") for rng in [np.random.default_rng(4)] for _ in range(4000)]
    two = np.mean([len(s.objects) == 2 for s in specs])
    unsaid = np.mean([s.objects[0].size is None for s in specs])
    assert abs(two - W.P_TWO_OBJECTS) < 0.03 and abs(unsaid - W.P_OMIT_SIZE) < 0.03, (two, unsaid)
    assert {o.colour for s in specs for o in s.objects} == set(W.COLOURS)
    assert {o.shape for s in specs for o in s.objects} == set(W.SHAPES)
    assert {s.position for s in specs if s.position} == set(W.POSITIONS)
    assert {s.relation for s in specs if s.relation} == set(W.RELATIONS)
    assert all(all(o.size is None for o in s.objects) or all(o.size for o in s.objects) for s in specs)
    with pytest.raises(ValueError, match="split"):
        W.random_spec(0, "test")
    # The relations stage of training asks for more two-object scenes; the default mix draws the same as before.
    more = np.mean(
        [
            len(W.random_spec(rng, "train", p_two=0.8).objects) == 2
            for rng in [np.random.default_rng(4)]
            for _ in range(2000)
        ]
    )
    assert abs(more - 0.8) < 0.03, more
    assert W.batch(8, 3)[1] == W.batch(8, 3, p_two=W.P_TWO_OBJECTS)[1]


def test_two_objects_are_placed_along_their_relation() -> None:
    """The relation's axis dominates the offset between the centroids, and the shapes stay inside the picture."""
    rng = np.random.default_rng(5)
    for shapes in [("circle", "triangle"), ("square", "square"), ("triangle", "circle")]:
        for sizes in [("large", "large"), ("small", "large")]:
            for relation in W.RELATIONS:
                for _ in range(20):
                    a, b = W.place(shapes, sizes, relation, rng)
                    assert J.relation_holds(a, b, relation), (shapes, sizes, relation, a, b)
                    for (x, y), shape, size in zip((a, b), shapes, sizes, strict=True):
                        half_w, up, down = (e * W.RADIUS[size] for e in W.EXTENTS[shape])
                        assert 1 <= x - half_w and x + half_w <= 63 and 1 <= y - up and y + down <= 63


def test_word_indices_find_each_object_in_other_word_lists() -> None:
    spec = W.parse_caption("a large red circle above a small blue circle")
    assert W.word_indices(spec) == [{"size": 1, "colour": 2, "shape": 3}, {"size": 6, "colour": 7, "shape": 8}]
    words = ["<start>", "a", "large", "red", "circle", "above", "a", "small", "blue", "circle", "<end>"]
    assert [(d["colour"], d["shape"]) for d in W.word_indices(spec, words)] == [(3, 4), (8, 9)]


def test_the_vocabulary_names_every_word_the_captions_use() -> None:
    v = W.vocabulary()
    assert list(v) == ["colours", "shapes", "sizes", "positions", "relations", "synonyms"]
    assert v["colours"] == W.COLOURS and v["shapes"] == W.SHAPES and v["sizes"] == W.SIZES
    assert "in the centre" in v["positions"] and "to the left of" in v["relations"]
    assert set(v["synonyms"]) == {"center", "middle", "under", "beneath", "over"}
    words = {w for kind in v.values() for phrase in kind for w in phrase.split()}
    for s in W.all_specs():
        assert set(s.caption().split()) - {"a", "an", "the", "on", "at", "in", "to", "of"} <= words
    for word in ("center", "middle"):  # each synonym is read as the word it stands for
        assert W.parse_caption(f"a red circle in the {word}").position == "centre"
    for word, relation in (("under", "below"), ("beneath", "below"), ("over", "above")):
        assert W.parse_caption(f"a red circle {word} a blue square").relation == relation

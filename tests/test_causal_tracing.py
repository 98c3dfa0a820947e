"""Causal tracing and the faithfulness of the word maps, graded by the toy world's judge.

- the pairs come from the held-out split, change exactly one attribute, and keep the token count;
- `--quick` runs the whole sweep on a few pairs and cells, and its record is what `load` accepts;
- the committed records are complete (every attribute with >= 40 pairs, every cell with its `pairs`; every map
  method's faithfulness over >= 40 pictures), a damaged one is refused, and the committed chart is what the record
  draws; the ladder's table carries the faithfulness column.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from pictures import assert_same_picture

from sdviz.tokenizer import Tokenizer
from sdviz.toy import causal_tracing as ct
from sdviz.toy import faithfulness, world
from sdviz.viz import causal_figures
from sdviz.viz.style import save

ROOT = Path(__file__).parents[1]
COMMITTED_MAP = ROOT / "readme-images" / "causal_map.png"


@pytest.mark.parametrize("attribute", ct.ATTRIBUTES)
def test_pairs_change_one_attribute_of_a_held_out_prompt(attribute):
    tok = Tokenizer()
    triples = ct.pairs_for(attribute, 12, tok)
    held_out = {s.caption() for s in world.held_out_specs()}
    for clean, dirty, seed in triples:
        assert clean in held_out and clean != dirty and isinstance(seed, int)
        assert tok.encode(clean).length == tok.encode(dirty).length
        a, b = world.parse_caption(clean), world.parse_caption(dirty)
        if attribute == "relation":
            assert a.objects == b.objects and ct.OPPOSITE[a.relation] == b.relation
        elif attribute == "position":
            assert a.objects == b.objects and a.position != b.position
        else:
            key = {"colour": "colour", "shape": "shape", "size": "size"}[attribute]
            assert getattr(a.objects[0], key) != getattr(b.objects[0], key) and a.position == b.position
        pos = ct.token_positions(tok, clean, dirty)
        assert pos["attribute"] and all(tok.encode(clean).ids[i] != tok.encode(dirty).ids[i] for i in pos["attribute"])
    assert triples == ct.pairs_for(attribute, 12, tok)  # the same pairs on every run


@pytest.mark.slow  # 10-30 s on 2 cores: make test-all (CI runs both) keeps make test under 8 minutes
def test_quick_sweep_writes_a_record_that_load_accepts(tmp_path):
    data = ct.run(None, ("colour",), ct.Settings(steps=4, pairs=3), quick=True, threads=2)
    entry = data["attributes"]["colour"]
    assert len(entry["pairs"]) == 3 and len(entry["cells"]) == 2
    for cell in entry["cells"]:
        assert 0.0 <= cell["restored"] <= 1.0 and cell["pairs"] == len(entry["valid"])
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    assert ct.load(path)["attributes"]["colour"]["cells"] == entry["cells"]

    # --resume keeps the cells an earlier record holds and measures only the missing ones
    earlier = copy.deepcopy(data)
    kept = earlier["attributes"]["colour"]["cells"][:1]
    kept[0]["restored"] = 0.123  # a value no measurement of 3 pairs can give: proof it was kept, not measured again
    earlier["attributes"]["colour"]["cells"] = kept
    again = ct.run(None, ("colour",), ct.Settings(steps=4, pairs=3), quick=True, threads=2, resume=earlier)
    cells = again["attributes"]["colour"]["cells"]
    assert cells[0]["restored"] == 0.123 and cells[1] == entry["cells"][1]
    with pytest.raises(ValueError, match="same settings"):
        ct.run(None, ("colour",), ct.Settings(steps=5, pairs=3), quick=True, threads=2, resume=earlier)


@pytest.fixture(scope="module")
def record():
    return ct.load()


def test_the_committed_causal_record_is_complete(record):
    """Every attribute measured holds its candidate pairs and >= 40 valid ones, and every cell of the sweep in order,
    each with its `pairs` (relation: too few valid pairs to measure more than its first cell)."""
    from sdviz.pipeline import load_pipeline

    pipe = load_pipeline()
    assert set(record["attributes"]) <= set(ct.ATTRIBUTES) and not record["quick"]
    assert record["settings"]["steps"] == 10 and record["threads"] == 1 and record["seconds"] > 0
    for attribute, entry in record["attributes"].items():
        if attribute == "relation":  # "above" <-> "below" from the same seed seldom moves the objects: few to restore
            right = round(entry["clean_rate"] * len(entry["pairs"]))
            assert right >= 20 and len(entry["valid"]) < 0.2 * right
        else:
            assert len(entry["valid"]) >= 40, attribute
        assert len(entry["pairs"]) == ct.CANDIDATES[attribute]
        planned = ct.cells(pipe, attribute, quick=False)
        measured = [{k: v for k, v in c.items() if k not in ("restored", "pairs")} for c in entry["cells"]]
        assert measured == (planned[:1] if attribute == "relation" else planned), attribute
        assert all(c["pairs"] == len(entry["valid"]) for c in entry["cells"])


def test_a_damaged_causal_record_is_refused(record, tmp_path):
    bad = copy.deepcopy(record)
    bad["attributes"]["colour"]["cells"][0]["restored"] = 1.5
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="damaged"):
        ct.load(path)
    del bad["settings"]
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="settings"):
        ct.load(path)


def test_the_committed_causal_map_is_what_the_record_draws(record, tmp_path):
    drawn = save(causal_figures.causal_map(record), tmp_path / "causal_map.png")
    assert_same_picture(COMMITTED_MAP, drawn, "python -c 'from sdviz.viz.figures import main; main()' redraws it")


def test_the_committed_deletion_chart_is_what_the_faithfulness_record_draws(tmp_path):
    drawn = save(causal_figures.deletion_chart(), tmp_path / "faithfulness.png")
    assert_same_picture(COMMITTED_MAP.with_name("faithfulness.png"), drawn, "sdviz figures redraws it")


def test_the_faithfulness_record_and_the_ladder_column():
    data = faithfulness.load()
    assert len(data["pictures"]) >= 40
    for method in faithfulness.METHODS:
        entry = data["summary"][method]["all"]
        assert entry["pictures"] == len(data["pictures"]) and entry["ratio"] > 0
        assert entry["deletion"][-1] == pytest.approx(1.0)
    assert 0.6 < data["summary"]["random"]["all"]["ratio"] < 1.5  # noise knows nothing of causes
    table = (ROOT / "sdviz" / "toy" / "attention_ladder.md").read_text()
    assert "| faithfulness |" in table
    assert f"| {data['summary']['best']['single']['ratio']:.2f} |" in table

"""The relations figure: a failed and a right picture of one relation prompt, with the maps of its words."""

from __future__ import annotations

import pytest

from sdviz.pipeline import load_pipeline
from sdviz.viz.relations_figure import SEEDS, relation_words, relations_figure


def test_relation_words_are_the_objects_and_the_relation() -> None:
    words = relation_words("a large red circle above a small blue square")
    assert words == ["red", "circle", "above", "blue", "square"]
    assert relation_words("a cyan triangle to the left of a purple square")[2] == "left"
    with pytest.raises(ValueError, match="no relation"):
        relation_words("a red circle on the left")


@pytest.mark.slow  # two traced 50-step generations: some 30 s on 2 busy cores
def test_the_figure_shows_a_wrong_and_a_right_relation() -> None:
    """The embedded model at the chosen seeds: the first picture has the objects the prompt names, in the wrong
    order (what the README says), the second is right; one row of picture + 5 maps each, one colour bar."""
    fig = relations_figure(load_pipeline())
    drawn = [ax for ax in fig.axes if ax.images]
    assert len(drawn) == len(SEEDS) * 6
    wrong, right = drawn[0].get_ylabel(), drawn[6].get_ylabel()
    assert "red circle below the blue square" in wrong and "relation WRONG)" in wrong, wrong
    assert "red circle above the blue square" in right and "relation right)" in right, right
    maps = [ax.images[-1] for ax in drawn[1:6] + drawn[7:]]  # each map panel: the map, drawn beside the picture
    assert all(im.get_cmap().name == "magma" for im in maps)
    assert len({im.get_clim() for im in maps}) == 1  # one shared scale
    top = max(float(im.get_array().max()) for im in maps)
    assert maps[0].get_clim()[1] == pytest.approx(top)  # the scale ends at the largest map's peak

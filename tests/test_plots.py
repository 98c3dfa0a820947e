"""sdviz.viz: every figure renders, for the embedded model and for a random-weights SD 1.5 at a small size, from a
live trace and from a saved one; the README figures are byte-for-byte reproducible."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from pictures import assert_same_picture

from sdviz.config import SD15
from sdviz.pipeline import StableDiffusion, load_pipeline
from sdviz.tracing import load, trace
from sdviz.viz import figures, plots
from sdviz.weights import build_models


def _sd15_small() -> StableDiffusion:
    torch.manual_seed(0)
    return StableDiffusion(build_models(SD15))


CASES = {
    # name: (pipeline factory, generation settings)
    "embedded": (load_pipeline, {"steps": 4, "height": 64, "width": 64}),
    "sd15-random-64px": (_sd15_small, {"steps": 2, "height": 64, "width": 64}),
}


@pytest.fixture(
    scope="module",
    params=["embedded", pytest.param("sd15-random-64px", marks=pytest.mark.slow)],
)
def traced(request):
    factory, settings = CASES[request.param]
    pipe = factory()
    with trace(pipe, record="all", keep=["step"], decode=True) as tr:
        pipe.generate(figures.PROMPT, seed=1, cfg_scale=5.0, sampler="ddim", progress=False, **settings)
    yield pipe, tr
    del pipe


def png(fig: Figure) -> bytes:
    assert isinstance(fig, Figure)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=50)
    data = buf.getvalue()
    assert data.startswith(b"\x89PNG") and len(data) > 2000
    return data


def all_figures(pipe, tr) -> dict[str, Figure]:
    attn1 = next(iter(tr.self_attention.sums))
    return {
        "overlay": plots.attention_overlay(tr),
        "grid": plots.attention_grid(tr),
        "groupnorm": plots.groupnorm_figure(tr),
        "time (trace)": plots.time_embedding_figure(tr),
        "strip": plots.denoising_strip(tr),
        "schedule": plots.noise_schedule_figure(tr),
        "self-attention": plots.self_attention_figure(tr, attn1),
        **(
            {"time (model)": plots.time_embedding_figure(pipe), "schedule (model)": plots.noise_schedule_figure(pipe)}
            if pipe is not None
            else {}
        ),
    }


def test_every_figure_renders(traced):
    pipe, tr = traced
    for name, fig in all_figures(pipe, tr).items():
        assert png(fig), name


def test_every_figure_renders_from_a_saved_trace_without_the_model(traced, tmp_path):
    _, tr = traced
    loaded = load(tr.save(tmp_path / "trace.pt"))
    for name, fig in all_figures(None, loaded).items():
        assert png(fig), name


def test_the_overlay_shows_each_word_map(traced):
    _, tr = traced
    words = plots.default_words(tr)
    assert words == ["large", "red", "circle", "above", "small", "blue", "square"]
    fig = plots.attention_overlay(tr)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == len(words) + 1
    for ax, w in zip(panels[1:], words, strict=True):
        shown = np.asarray(ax.images[1].get_array())
        np.testing.assert_allclose(shown, plots._normalise(tr.word_map(w)))
        assert ax.get_title() == f'"{w}"'


def test_the_grid_has_one_row_per_step_and_needs_per_step_maps(traced):
    pipe, tr = traced
    fig = plots.attention_grid(tr, words=["circle", "square"])
    assert len([ax for ax in fig.axes if ax.images]) == 2 * len(tr.timesteps)
    with trace(pipe, record=["cross_attention"]) as summed:
        pipe.generate("a red circle", seed=1, steps=1, cfg_scale=1.0, height=64, width=64, progress=False)
    with pytest.raises(ValueError, match="keep=\\['step'\\]"):
        plots.attention_grid(summed)


def test_readme_figures_are_what_the_code_draws(tmp_path):
    """The committed readme-images/ are what `sdviz figures` draws now, up to CPU rounding (regenerate if not)."""
    written = figures.write_readme_figures(tmp_path)
    committed = Path(__file__).parents[1] / "readme-images"
    assert len(written) >= 9
    for path in written:
        assert_same_picture(committed / path.name, path, "run `sdviz figures` and commit readme-images/")

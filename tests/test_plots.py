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
from sdviz.viz import figures, lessons, plots, style
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
        pipe.generate(style.PROMPT, seed=1, cfg_scale=5.0, sampler="ddim", progress=False, **settings)
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
    figures_ = {
        "overlay": plots.attention_overlay(tr),
        "overlay (per panel)": plots.attention_overlay(tr, scale="panel"),
        "grid": plots.attention_grid(tr),
        "groupnorm": plots.groupnorm_figure(tr),
        "time (trace)": plots.time_embedding_figure(tr),
        "strip": plots.denoising_strip(tr),
        "schedule": plots.noise_schedule_figure(tr),
        "self-attention": plots.self_attention_figure(tr, attn1),
        "guidance internals": plots.guidance_internals(tr, pipe),
    }
    if pipe is not None:
        figures_ |= {
            "time (model)": plots.time_embedding_figure(pipe),
            "schedule (model)": plots.noise_schedule_figure(pipe),
            "forward process": lessons.forward_process_figure(pipe),
            "norm axes": lessons.norm_axes_figure(pipe),
            "clip": lessons.clip_figure(pipe, style.PROMPT),
        }
    return figures_


def test_every_figure_renders(traced):
    pipe, tr = traced
    for name, fig in all_figures(pipe, tr).items():
        assert png(fig), name


def test_every_figure_renders_from_a_saved_trace_without_the_model(traced, tmp_path):
    _, tr = traced
    loaded = load(tr.save(tmp_path / "trace.pt"))
    for name, fig in all_figures(None, loaded).items():
        assert png(fig), name


def test_the_overlay_shows_each_word_map_on_one_scale_or_each_on_its_own(traced):
    _, tr = traced
    words = plots.default_words(tr)
    assert words == ["large", "red", "circle", "above", "small", "blue", "square"]
    for scale in ("shared", "panel"):
        fig = plots.attention_overlay(tr, scale=scale)
        panels = [ax for ax in fig.axes if ax.images]
        assert len(panels) == len(words) + 1
        tops = []
        for ax, w in zip(panels[1:], words, strict=True):
            (heat,) = ax.images  # the map alone, beside the picture: not blended over it
            assert heat.get_cmap().name == style.HEAT == "magma" and heat.get_alpha() is None
            assert ax.collections  # the outlines of the picture's objects (a contour of its object mask)
            expected = tr.word_map(w).numpy() if scale == "shared" else style.normalise(tr.word_map(w))
            np.testing.assert_allclose(np.asarray(heat.get_array()), expected, rtol=1e-6)
            assert ax.get_title() == f'"{w}"\nmax {float(tr.word_map(w).max()):.3f}'
            tops.append(heat.get_clim())
        top = max(float(tr.word_map(w).max()) for w in words) if scale == "shared" else 1.0
        assert tops == [(0.0, pytest.approx(top))] * len(words)
        label = fig.axes[-1].get_ylabel()
        assert ("one scale" in label) == (scale == "shared") and ("per panel" in label) == (scale == "panel")
    with pytest.raises(ValueError, match="scale"):
        plots.attention_overlay(tr, scale="log")


def test_the_overlay_draws_the_word_maps_of_the_method_it_is_given(traced):
    from sdviz.tracing.aggregate import SDVIZ

    _, tr = traced
    method = SDVIZ.with_(renormalise=True, window=(0.5, 1.0))  # what this trace (keep=["step"]) can give
    fig = plots.attention_overlay(tr, words=["red", "circle"], method=method, scale="panel")
    for ax, w in zip([ax for ax in fig.axes if ax.images][1:], ["red", "circle"], strict=True):
        expected = style.normalise(tr.word_map(w, method=method))
        assert not np.allclose(expected, style.normalise(tr.word_map(w)))  # a different map from the default's
        np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), expected, rtol=1e-6)
    with pytest.raises(KeyError, match="layer"):  # DAAM reads every (layer, head): this trace summed them
        plots.attention_overlay(tr, method="daam")


def test_the_time_embedding_shows_no_pattern_that_is_not_there():
    """Rows too fast for the panel's width are greyed (they would alias into moire), and the similarity panel is the
    cosine similarity of every pair of timesteps' embeddings."""
    pipe = load_pipeline()
    fig = plots.time_embedding_figure(pipe, compare=(999, 20))
    full = next(ax for ax in fig.axes if ax.images and "sinusoidal" in ax.get_title())
    mask = np.ma.getmaskarray(full.images[0].get_array())
    half = pipe.unet.config.model_channels // 2
    assert mask[0].all() and mask[half].all() and not mask[half - 1].any()  # the fastest of each half is greyed
    from sdviz.tracing.preview import time_embeddings

    t, sin, _ = (x.numpy() for x in time_embeddings(pipe.unet, None))
    similarity = next(ax for ax in fig.axes if ax.get_title().startswith("cosine similarity, sinusoidal"))
    sim = np.asarray(similarity.images[0].get_array())  # (T, T): every pair of timesteps
    u = sin / np.linalg.norm(sin, axis=1, keepdims=True)
    assert sim.shape == (len(t), len(t)) and np.allclose(np.diag(sim), 1, atol=1e-5)
    assert np.isclose(sim[999, 20], float(u[999] @ u[20]), atol=1e-5)
    assert f"cos(t=999, t=20) = {sim[999, 20]:.2f}" in similarity.get_title()
    assert np.allclose(sim[100, 130], sim[500, 530], atol=1e-4)  # the sinusoids' similarity depends on t - t' only


def _write_log(folder: Path, stage: str, columns: dict[str, list[float]]) -> None:
    lines = [",".join(["step", *columns])]
    n = len(next(iter(columns.values())))
    lines += [",".join([str(10 * (i + 1)), *(str(v[i]) for v in columns.values())]) for i in range(n)]
    (folder / f"log_{stage}.csv").write_text("\n".join(lines) + "\n")


def test_the_training_figure_draws_a_run_folders_logs(tmp_path):
    """One panel per curve (VAE loss, VAE PSNR, UNet loss), a fourth for a relations fine-tune, and a panel without
    its log says so; the shipped model's logs mark the crop switch and the loss spike."""
    _write_log(tmp_path, "vae", {"loss": [1.0, 0.5, 0.4, 2.0, 0.3, 0.2], "psnr": [10, 14, 15, 9, 16, 18]})
    fig = plots.training_losses_figure(tmp_path, window=3)
    vae_loss, psnr, unet = fig.axes
    assert [ax.get_title() for ax in fig.axes] == [
        "stage 1, VAE: L1 + KL loss",
        "stage 1, VAE: reconstruction PSNR (dB, training batches)",
        "stage 2, UNet + text encoder: Min-SNR noise loss",
    ]
    raw, smooth = vae_loss.lines[:2]
    np.testing.assert_allclose(raw.get_ydata(), [1.0, 0.5, 0.4, 2.0, 0.3, 0.2])
    np.testing.assert_allclose(smooth.get_ydata()[1], (1.0 + 0.5 + 0.4) / 3)  # centred over 3 rows
    assert vae_loss.get_lines()[2].get_xdata()[0] == 40  # the spike (2.0 after a running min of 0.4) is marked
    assert not unet.lines and unet.texts[0].get_text() == f"no log in {tmp_path}"
    _write_log(tmp_path, "unet", {"loss": [0.9, 0.8, 0.7], "mse": [1.0, 0.9, 0.8]})
    _write_log(tmp_path, "relations", {"loss": [0.5, 0.45], "mse": [0.6, 0.5]})
    fig = plots.training_losses_figure(tmp_path)
    assert len(fig.axes) == 4 and fig.axes[3].get_title().startswith("stage 3, relations")
    assert len(fig.axes[2].lines) == len(fig.axes[3].lines) == 3  # logged, moving average, unweighted mse
    shipped = plots.training_losses_figure()  # the embedded model: 1500 VAE steps, switch at 1350
    assert any(list(line.get_xdata()) == [1350, 1350] for line in shipped.axes[0].lines)


def test_the_objects_outlines_follow_the_pictures_shapes():
    picture = np.full((16, 16, 3), 25, np.uint8)  # the toy world's dark ground
    picture[4:9, 5:11] = (230, 40, 40)  # a red rectangle
    mask = style.object_mask(picture)
    assert mask.sum() == 5 * 6 and mask[4:9, 5:11].all()
    line = style.outline(mask)
    assert line.sum() == 2 * 5 + 2 * 6 - 4 and not line[5:8, 6:10].any()  # the rectangle's border, not its inside


def test_readable_layer_names():
    assert plots.readable_layer("unet.down_blocks.1.resnets.0.norm2") == "down 1 · ResNet 0 · norm2"
    assert plots.readable_layer("unet.up_blocks.0.attentions.1.norm") == "up 0 · attention 1 · norm"
    assert plots.readable_layer("unet.mid_block.resnets.1.norm1") == "mid · ResNet 1 · norm1"
    assert plots.readable_layer("unet.conv_norm_out") == "output norm"


def test_the_normalisations_are_what_torch_computes():
    x = torch.randn(3, 12, 4, 4, generator=torch.Generator().manual_seed(0)) * 3 + 1
    f = torch.nn.functional
    close = dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lessons.normalise(x, "group norm", 4), f.group_norm(x, 4), **close)
    torch.testing.assert_close(lessons.normalise(x, "layer norm", 4), f.layer_norm(x, x.shape[1:]), **close)
    torch.testing.assert_close(lessons.normalise(x, "instance norm", 4), f.instance_norm(x), **close)
    batch = f.batch_norm(x, None, None, training=True)
    torch.testing.assert_close(lessons.normalise(x, "batch norm", 4), batch, **close)
    torch.testing.assert_close(lessons.normalise(x, "group norm", 1), lessons.normalise(x, "layer norm", 1), **close)


def test_the_colour_classifier_prefers_the_colour_it_is_asked_about_and_has_a_gradient_everywhere():
    from sdviz.toy import world

    pictures = {c: torch.tensor(world.PALETTE[c]).float().view(1, 3, 1, 1).expand(1, 3, 8, 8) / 127.5 - 1
                for c in ("red", "cyan")}  # fmt: skip
    assert lessons.colour_log_prob(pictures["red"], "red") > lessons.colour_log_prob(pictures["cyan"], "red") + 3
    cyan = pictures["cyan"].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(lessons.colour_log_prob(cyan, "red").sum(), cyan)
    assert grad[0, 0].mean() > 0 > grad[0, 1].mean()  # towards red: more R, less G, even from the far side


def test_the_grid_has_one_row_per_step_and_needs_per_step_maps(traced):
    pipe, tr = traced
    fig = plots.attention_grid(tr, words=["circle", "square"])
    assert len([ax for ax in fig.axes if ax.images]) == (1 + 2) * len(tr.timesteps)  # the predicted picture + 2 words
    with trace(pipe, record=["cross_attention"]) as summed:
        pipe.generate("a red circle", seed=1, steps=1, cfg_scale=1.0, height=64, width=64, progress=False)
    with pytest.raises(ValueError, match="keep=\\['step'\\]"):
        plots.attention_grid(summed)


@pytest.mark.slow  # some 30 generations (a minute or more on 2 cores): `make test-all`, which CI runs too
def test_readme_figures_are_what_the_code_draws(tmp_path):
    """The committed readme-images/ are what `sdviz figures` draws now, up to CPU rounding (regenerate if not)."""
    written = figures.write_readme_figures(tmp_path)
    committed = Path(__file__).parents[1] / "readme-images"
    assert len(written) >= 9
    for path in written:
        assert_same_picture(committed / path.name, path, "run `sdviz figures` and commit readme-images/")

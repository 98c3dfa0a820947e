"""The notebook side of sdviz: figures that display themselves, the player, the explorer, the studio, animations.

The widgets are driven from Python here (no browser): a slider value must give the frame the trace holds for that
step, another word the heat map of that word's `word_map`, a pixel click the words ranked by the trace's own numbers.
`tests/test_browser.py` checks the same things in a real JupyterLab.
"""

from __future__ import annotations

import html
import io

import numpy as np
import pytest
from IPython.core.interactiveshell import InteractiveShell
from PIL import Image

from sdviz.tracing import trace
from sdviz.viz import animate
from sdviz.viz.display import Figure
from sdviz.viz.widgets import explorer, player, studio
from sdviz.viz.widgets import frames as F

PIPE = "embedded"  # the session pipeline the `pipe` fixture gives (tests/conftest.py)

# --------------------------------------------------------------------------------------------------------------------
# 1. Figures display as pictures
# --------------------------------------------------------------------------------------------------------------------


def _small_figure() -> Figure:
    fig = Figure(figsize=(2, 1.5))
    fig.subplots().plot([0, 1], [1, 0])
    return fig


def test_figure_displays_as_png_without_pyplot():
    shell = InteractiveShell.instance()
    data, _ = shell.display_formatter.format(_small_figure())
    assert data["image/png"][:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(data["image/png"])).size[0] > 50


def test_figure_uses_inline_backend_when_active_and_is_not_shown_twice():
    import matplotlib.pyplot as plt
    from matplotlib_inline.backend_inline import select_figure_formats

    shell = InteractiveShell.instance()
    png = shell.display_formatter.formatters["image/png"]
    saved = dict(png.type_printers)
    try:
        select_figure_formats(shell, {"png"})  # what `%matplotlib inline` registers
        fig = _small_figure()
        assert png.lookup(fig) is not None  # inline's printer wins over _repr_png_: one PNG, drawn its way
        data, _ = shell.display_formatter.format(fig)
        assert set(data) == {"image/png", "text/plain"}
        assert not plt.get_fignums()  # never registered with pyplot: not re-shown at the end of the cell
    finally:
        png.type_printers.clear()
        png.type_printers.update(saved)


def test_plots_return_displayable_figures():
    from sdviz.viz import plots

    fig = plots.noise_schedule_figure()
    assert isinstance(fig, Figure)
    assert np.asarray(Image.open(io.BytesIO(fig._repr_png_()))).ndim == 3


# --------------------------------------------------------------------------------------------------------------------
# Traces of the embedded model (few steps: the widgets do not care how many)
# --------------------------------------------------------------------------------------------------------------------

PROMPT = "a large red circle above a small blue square"
STEPS = 5


@pytest.fixture(scope="module")
def tr(embedded_pipe):
    """Everything kept apart: per step, per layer, per head; and every step's x0 decoded."""
    pipe = embedded_pipe  # (a module fixture: the function-scoped `pipe` cannot serve it)
    with trace(pipe, record=["cross_attention", "latents"], keep=["step", "layer", "head"], decode=True) as t:
        pipe.generate(PROMPT, seed=1, steps=STEPS, cfg_scale=5.0, sampler="ddim", progress=False)
    return t


@pytest.fixture(scope="module")
def summed(embedded_pipe):
    """The default reduction: cross-attention summed over steps, layers of a resolution and heads; no latents."""
    pipe = embedded_pipe
    with trace(pipe, record=["cross_attention"]) as t:
        pipe.generate(PROMPT, seed=1, steps=2, cfg_scale=5.0, sampler="ddim", progress=False)
    return t


def pixels(png_bytes: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png_bytes)).convert("RGB"))


# --------------------------------------------------------------------------------------------------------------------
# 2. The player
# --------------------------------------------------------------------------------------------------------------------


def test_a_slider_value_shows_the_frames_the_trace_holds_for_that_step(tr):
    p = player(tr, animation=False)
    for step in (3, 0, STEPS - 1):
        p.slider.value = step
        x0 = tr.latents.preview("x0", steps=step)  # (h, w, 3): the trace's own preview of x0 at that step
        assert np.array_equal(pixels(p.images["x0"].value), F.enlarge(x0, p.size))
        x_t = tr.latents.preview("x_t", steps=step)
        assert np.array_equal(pixels(p.images["x_t"].value), F.enlarge(x_t, p.size))
        decoded = tr.latents.decoded[step, 0].permute(1, 2, 0).numpy()
        assert np.array_equal(pixels(p.images["decoded"].value), F.enlarge(decoded, p.size))
        assert f"t = <b>{tr.timesteps[step]}</b>" in p.readout.value
        assert p.step == step
    assert {"eps", "guidance", "channels", "attention", "schedule"} <= set(p.images)


def test_the_readout_gives_the_schedules_numbers(tr):
    from sdviz.samplers.schedule import NoiseSchedule

    p = player(tr, animation=False)
    t = tr.timesteps[2]
    s = NoiseSchedule()
    p.slider.value = 2
    assert f"ᾱ_t = {float(s.alphas_cumprod[t]):.4g}" in p.readout.value
    assert f"σ_t = {float(s.sigmas[t]):.4g}" in p.readout.value
    assert f"SNR = {float(s.snr[t]):.4g}" in p.readout.value
    assert not np.array_equal(pixels(p.frames[0]["schedule"]), pixels(p.frames[2]["schedule"]))  # the marker moved


def test_the_player_says_what_a_trace_lacks(summed, tr):
    with pytest.raises(ValueError, match=r"record=\[\.\.\., 'latents'\]"):
        player(summed)
    with pytest.raises(ValueError, match="its words"):
        player(tr, word="hexagon")


def test_the_players_attention_panel_needs_per_step_maps(pipe):
    with trace(pipe, record=["cross_attention", "latents"]) as t:
        pipe.generate(PROMPT, seed=1, steps=2, cfg_scale=5.0, sampler="ddim", progress=False)
    assert "attention" not in player(t, animation=False).images  # "auto": no per-step maps, no panel
    with pytest.raises(ValueError, match=r"keep=\['step'\]"):
        player(t, word="circle")


def test_the_players_word_picker_starts_on_a_noun_and_moves_the_attention_panel(tr):
    p = player(tr, animation=False)
    assert p.word == "circle" and p.word_picker.value == "circle"
    assert "square" in p.word_picker.options and "a" not in p.word_picker.options
    p.slider.value = 3
    before = p.images["attention"].value
    p.word_picker.value = "square"
    assert p.word == "square" and p.images["attention"].value != before
    assert p.images["attention"].value == p.attention_frames("square")[3] == p.frame(3)["attention"]
    m = tr.word_map("square", steps=[3], size=tr.image_size).numpy()
    picture = tr.images_u8[0].permute(1, 2, 0).numpy()
    lines = F.outlines(picture, F.enlarge(picture, p.size).shape[:2])
    np.testing.assert_allclose(pixels(p.images["attention"].value), F.attention(m, m.min(), m.max(), lines), atol=2)


def test_the_player_shows_a_static_animation_after_the_widget(tr):
    from IPython.core.formatters import format_display_data

    anim = player(tr).static_animation()
    data, _ = format_display_data(anim)
    assert "data:image/gif;base64," in data["text/html"]
    gif = Image.open(io.BytesIO(anim.gif))
    assert gif.n_frames == STEPS + 1  # every step, then the result


# --------------------------------------------------------------------------------------------------------------------
# 3. The explorer
# --------------------------------------------------------------------------------------------------------------------


def _overlay(ex, m: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The map as the explorer draws it: magma at lo..hi, at the picture's shown size, the objects' outlines on it."""
    return F.attention(m, lo, hi, ex.lines)


def test_the_explorer_draws_the_map_beside_the_picture_in_magma_with_the_objects_outlines(tr):
    ex = explorer(tr, word="square", animation=False)
    assert np.array_equal(pixels(ex.picture_widget.value), ex.picture)  # the picture itself, not blended
    shown = pixels(ex.image_widget.value)
    assert shown.shape == ex.picture.shape and ex.lines.any() and not ex.lines.all()
    assert (shown[ex.lines] == F.OUTLINE_RGB).all()  # the outlines, in cyan
    magma = F.colormap("magma").astype(int)
    off = np.abs(shown[~ex.lines][:, None, :].astype(int) - magma[None]).sum(-1).min(1)  # distance to magma's colours
    assert np.median(off) <= 3 and np.percentile(off, 99) <= 20  # magma (bilinearly resized), not the picture


def test_another_word_shows_that_words_map(tr):
    ex = explorer(tr, animation=False)
    size = ex.maps.size
    for word in ("circle", "square", "blue"):
        ex.entry.value = word
        expected = tr.word_map(word, size=size).numpy()
        np.testing.assert_allclose(ex.current_map(), expected, rtol=1e-5, atol=1e-7)
        shown = pixels(ex.image_widget.value)
        assert np.array_equal(shown, _overlay(ex, ex.current_map(), expected.min(), expected.max()))


def test_the_pickers_choose_what_word_map_aggregates(tr):
    ex = explorer(tr, word="circle", animation=False)
    size = ex.maps.size
    ex.window.value = (1, 3)
    ex.where.value = (8, 8)
    expected = tr.word_map("circle", size=size, steps=[1, 2, 3], resolution=8).numpy()
    np.testing.assert_allclose(ex.current_map(), expected, rtol=1e-5, atol=1e-7)
    layer = next(k for k in tr.cross_attention.sums if "up_blocks.1" in k)
    ex.where.value = layer
    ex.head.value = 1
    expected = tr.word_map("circle", size=size, steps=[1, 2, 3], layers=layer, heads=1).numpy()
    np.testing.assert_allclose(ex.current_map(), expected, rtol=1e-5, atol=1e-7)


def test_the_method_picker_draws_the_aggregators_the_trace_holds_enough_for(tr, summed):
    ex = explorer(tr, word="circle", animation=False)
    assert ex.methods == ["sdviz", "daam"]  # "best" also needs self-attention, which this trace did not record
    ex.method.value = "daam"
    assert ex.where.disabled and ex.head.disabled  # DAAM chooses its own layers and heads
    expected = tr.word_map("circle", size=ex.maps.size, method="daam").numpy()
    np.testing.assert_allclose(ex.current_map(), expected, rtol=1e-5, atol=1e-7)
    assert not np.allclose(expected, tr.word_map("circle", size=ex.maps.size).numpy(), rtol=0.05)  # another map
    ex.window.value = (1, 3)
    expected = tr.word_map("circle", size=ex.maps.size, method="daam", steps=[1, 2, 3]).numpy()
    np.testing.assert_allclose(ex.current_map(), expected, rtol=1e-5, atol=1e-7)
    assert "method &#x27;daam&#x27;" in ex.caption.value  # (escaped in the HTML)
    ex.method.value = "sdviz"
    assert not ex.where.disabled and not ex.head.disabled
    lean = explorer(summed, animation=False)  # the default trace sums layers and heads: sdviz's method only
    assert lean.methods == ["sdviz"] and lean.method.disabled and "keep=['layer', 'head']" in lean.hints.value


def test_a_shared_colour_scale_spans_every_word_and_says_so(tr):
    ex = explorer(tr, word="circle", animation=False)
    ex.scale.value = "shared"
    maps = tr.word_maps(list(ex.words), size=ex.maps.size)
    lo = min(float(m.min()) for m in maps.values())
    hi = max(float(m.max()) for m in maps.values())
    assert "shared by all" in ex.caption.value
    assert np.array_equal(pixels(ex.image_widget.value), _overlay(ex, ex.current_map(), lo, hi))


def test_tokens_list_the_bpe_pieces_the_start_token_and_the_padding(tr):
    ex = explorer(tr, word="circle", animation=False)
    ex.show_tokens.value = True
    assert ex.entry.options[0] == "0: <start>" and ex.entry.options[-1].startswith("padding")
    assert ex.entry.value == f"{tr.word_positions('circle')[0]}: circle"  # the same choice, as a token
    pad = tr.token_maps(size=ex.maps.size)[tr.encodings[0]["length"] :].mean(0).numpy()
    ex.entry.value = ex.entry.options[-1]
    np.testing.assert_allclose(ex.current_map(), pad, rtol=1e-5, atol=1e-7)


def test_a_pixel_click_ranks_the_words_by_the_traces_numbers(tr):
    ex = explorer(tr, animation=False)
    shown_h, shown_w = ex.shown_hw
    ranked = ex.click(x=0.3 * shown_w, y=0.2 * shown_h)
    y, x = ex.pixel
    assert (y, x) == (int(0.2 * ex.maps.size[0]), int(0.3 * ex.maps.size[1]))
    maps = tr.word_maps(size=ex.maps.size)
    expected = sorted(((w, float(m[y, x])) for w, m in maps.items()), key=lambda kv: -kv[1])
    assert [w for w, _ in ranked] == [w for w, _ in expected]
    np.testing.assert_allclose([v for _, v in ranked], [v for _, v in expected], rtol=1e-5)
    assert f"pixel (y={y}, x={x})" in ex.ranking.value and expected[0][0] in ex.ranking.value


def test_the_explorer_lists_the_prompts_words_for_a_word_not_in_it(summed):
    with pytest.raises(ValueError, match=r"'hexagon' is not a word of the prompt .* its words: \['a', 'large'"):
        explorer(summed, word="hexagon")


def test_without_per_step_maps_the_window_is_off_and_says_why(summed):
    ex = explorer(summed, animation=False)
    assert ex.window.disabled and ex.head.disabled
    assert "keep=['step']" in ex.hints.value
    np.testing.assert_allclose(ex.current_map(), summed.word_map(ex.entry.value, size=ex.maps.size).numpy(), rtol=1e-5)
    assert ex.static_animation() is None


# --------------------------------------------------------------------------------------------------------------------
# 4. The studio
# --------------------------------------------------------------------------------------------------------------------


def test_the_studio_generates_live_and_opens_the_player_and_the_explorer(pipe):
    s = studio(pipe, steps=3)
    seen = []
    s.live.observe(lambda change: seen.append(change["new"]), names="value")
    tr = s.generate()
    assert tr is not None and len(seen) == 3  # one live picture per step
    assert s.progress.value == s.progress.max == 3
    assert s.tabs.children[0] is s.player.widget and s.tabs.children[1] is s.explorer.widget
    assert np.array_equal(pixels(s.picture.value), F.enlarge(np.asarray(s.result.image), s.panel_size))
    assert "error" not in s.status.value and "done" in s.status.value


def test_the_studio_shows_placeholders_before_the_first_generate_and_a_static_picture_after(pipe):
    from IPython.core.formatters import format_display_data

    s = studio(pipe, steps=2)
    for image in (s.live, s.picture):  # a grey picture, not an empty image (a broken-image icon in the browser)
        assert (pixels(image.value) == 238).all() and pixels(image.value).shape == (s.panel_size, s.panel_size, 3)
    before = s.static.png
    tr = s.generate()
    summary = pixels(s.static.png)
    assert s.static.png != before and summary.shape[1] == 3 * s.panel_size + 2 * 4  # x0 at both steps, the picture
    picture = F.enlarge(tr.images_u8[0].permute(1, 2, 0).numpy(), s.panel_size)
    assert np.array_equal(summary[-s.panel_size :, -s.panel_size :], picture)
    data, _ = format_display_data(s.static)
    assert "data:image/png;base64," in data["text/html"] and "image/png" in data


def test_a_prompt_outside_the_vocabulary_is_a_warning_in_the_panel_not_only_in_the_log(pipe):
    s = studio(pipe, steps=2)
    s.prompt.value = "an elephant on the moon"
    with pytest.warns(UserWarning, match="no word this model was trained on"):  # the log still has it
        assert s.generate() is not None
    said = html.unescape(s.status.value)
    assert "done: seed 1" in said and "warning: 'an elephant on the moon': no word this model was trained on" in said
    s.prompt.value = PROMPT
    s.generate()
    assert "warning" not in s.status.value


def test_the_reweight_slider_shows_its_picture_at_a_whole_factor_beside_the_slider(pipe):
    from sdviz.viz.style import SETTINGS
    from sdviz.viz.widgets import reweight_widget
    from sdviz.viz.widgets.reweight import HELP

    rw = reweight_widget(pipe, PROMPT, "red", steps=2)
    a = pixels(rw.picture.value)
    assert rw.picture.layout.width == f"{a.shape[1]}px"  # shown at its natural size: the browser does not resample
    plain = np.asarray(pipe.generate(PROMPT, seed=1, progress=False, **{**SETTINGS, "steps": 2}).image)  # weight 1
    assert plain.shape[0] * 4 == 256 and np.array_equal(a[-256:, :256], F.enlarge(plain, 256))  # 4x, in blocks
    side = rw.widget.children[-1]
    assert rw.slider in side.children and "green" in HELP
    assert any(HELP in c.value for c in side.children if isinstance(c.value, str))  # the help sentence beside it
    first = rw.picture.value
    rw.slider.value = 3.0  # what a move of the slider does
    assert rw.picture.value != first and rw.static.png == rw.picture.value and "x 3" in rw.static.caption


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("size", "65x64", "width must be a positive multiple of 8"),
        ("size", "big", "size must look like 64x64"),
        ("steps", 0, "steps must be an integer >= 1"),
    ],
)
def test_an_invalid_setting_shows_the_pipelines_one_line_error(pipe, field, value, message):
    s = studio(pipe, steps=2)
    getattr(s, field).value = value
    assert s.generate() is None
    assert message in html.unescape(s.status.value) and "Traceback" not in s.status.value
    assert not s.button.disabled


def test_the_studios_guidance_and_seed_tabs(pipe):
    s = studio(pipe, steps=2)
    assert len(s.guidance_sweep([1, 5])) == 2 and len(s.guidance_row.children) == 2
    s.seed_values.value = "3-5"
    assert len(s.seed_grid()) == 3 and len(s.seed_grid_box.children) == 3
    s.cfg_values.value = "one"
    assert s.guidance_sweep() == [] and "not a number" in html.unescape(s.status.value)


# --------------------------------------------------------------------------------------------------------------------
# 5. Animations
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".gif", ".webp"])
def test_animations_are_written_by_suffix(tr, tmp_path, suffix):
    out = animate.animate_denoising(tr, tmp_path / f"denoise{suffix}", size=64)
    with Image.open(out) as im:
        assert im.n_frames == STEPS + 1 and getattr(im, "is_animated", False)
    out = animate.animate_attention(tr, "circle", tmp_path / f"circle{suffix}", size=64)
    with Image.open(out) as im:
        assert im.n_frames == STEPS


def test_mp4_without_ffmpeg_is_one_line_and_writes_nothing(tr, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(animate.shutil, "which", lambda name: None)
    with pytest.raises(animate.AnimationError, match="MP4 needs ffmpeg on the PATH"):
        animate.animate_denoising(tr, tmp_path / "d.mp4")
    assert not list(tmp_path.iterdir())
    path = tmp_path / "trace.pt"
    tr.save(path)
    assert animate.main(["--trace", str(path), "--out", str(tmp_path / "d.mp4")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ffmpeg" in err


def test_sdviz_animate_from_a_saved_trace(tr, tmp_path, capsys):
    path = tmp_path / "trace.pt"
    tr.save(path)
    assert animate.main(["--trace", str(path), "--word", "square", "--out", str(tmp_path / "sq.gif")]) == 0
    assert (tmp_path / "sq.gif").is_file() and "wrote" in capsys.readouterr().out
    assert animate.main(["--trace", str(path), "--word", "hexagon", "--out", str(tmp_path / "x.gif")]) == 2
    assert "its words" in capsys.readouterr().err
    assert animate.main(["--trace", str(path), "--out", str(tmp_path / "x.avi")]) == 2
    assert not (tmp_path / "x.gif").exists() and not (tmp_path / "x.avi").exists()


def test_sdviz_animate_is_a_subcommand():
    from sdviz.cli import DELEGATED

    assert DELEGATED["animate"][0] == "sdviz.viz.animate"

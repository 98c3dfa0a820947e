"""The studio's "Your picture" tab (sdviz.viz.widgets.upload) without a browser: an uploaded PNG (the FileUpload's
ipywidgets-8 value, made from a scene the toy world drew, never the model) is inverted and redrawn with a PSNR that
is recomputed here; RGBA, grayscale and palette pictures are converted and a resize is said in one line; an empty or
unreadable file, a missing caption and a long caption are one-line messages in the panel; Explain opens the explorer
on the redraw and Edit replaces a colour word. Nothing is left attached to the pipeline."""

from __future__ import annotations

import datetime
import html
import io

import numpy as np
import pytest
import torch

from sdviz.hooks import hook_points
from sdviz.inversion import psnr
from sdviz.toy import world
from sdviz.viz.widgets.front_panel import Studio
from sdviz.viz.widgets.upload import UploadPanel, read_upload, replaced_words, suggest_edit

SCENE = world.scene_from_spec("a large red circle above a small blue square", 3)  # drawn by the world
STEPS = 10  # few, fast; the record measures at 50 (negative-prompt: 37.8 dB on 14 scenes)


def upload_value(picture, name: str = "scene.png", fmt: str = "PNG") -> tuple[dict, ...]:
    """What ipywidgets 8's FileUpload holds after the browser sent one file."""
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt)
    data = buffer.getvalue()
    return ({"name": name, "type": f"image/{fmt.lower()}", "size": len(data), "content": memoryview(data),
             "last_modified": datetime.datetime.now(datetime.timezone.utc)},)  # fmt: skip


def said(widget) -> str:
    """An HTML widget's text as the learner reads it (quotes unescaped)."""
    return html.unescape(widget.value)


def _clean(pipe) -> None:
    assert pipe.observers == [] and pipe.latent_editors == []
    assert not any(p.listeners for p in hook_points(pipe).values())


@pytest.fixture(scope="module")
def studio(embedded_pipe):
    torch.set_num_threads(1)
    return Studio(embedded_pipe)


@pytest.fixture(scope="module")
def inverted(studio):
    """The scene uploaded as a PNG through the FileUpload's value, captioned and inverted (negative prompt)."""
    panel = studio.upload
    panel.file.value = upload_value(SCENE.pil())
    panel.caption.value = SCENE.caption
    panel.steps.value = STEPS
    assert panel.method.value == "negative_prompt"  # the default: as good as null-text, the cost of the walk alone
    assert panel.invert() is not None
    return panel


def test_the_studio_has_a_your_picture_tab(studio):
    titles = [studio.tabs.get_title(i) for i in range(len(studio.tabs.children))]
    assert titles[-1] == "Your picture" and studio.tabs.children[-1] is studio.upload.widget
    assert isinstance(studio.upload, UploadPanel) and "sdviz-upload" in studio.upload.widget._dom_classes


def test_an_upload_is_inverted_and_its_redraw_has_a_real_psnr(inverted):
    panel = inverted
    assert panel.picture.size == (64, 64) and np.array_equal(np.asarray(panel.picture), SCENE.image)
    redraw = np.asarray(panel.redraw)
    assert redraw.shape == (64, 64, 3) and not np.array_equal(redraw, SCENE.image)  # drawn by the model
    db = psnr(SCENE.pil(), panel.redraw)  # recomputed against the world's own picture
    assert db == pytest.approx(panel.psnr_db) and db > 33, db  # measured 37.9 dB at 10 steps (DDIM at cfg 5: 28.8)
    assert f"PSNR {db:.1f} dB" in panel.psnr.value and f"PSNR {db:.1f} dB" in panel.redraw_caption.value
    assert f"round trip (every redraw is decoded from latents): {panel.vae_db:.1f} dB" in said(panel.psnr)
    assert db < panel.vae_db + 0.5  # the VAE is the ceiling
    assert panel.redraw_image.value[:4] == b"\x89PNG" and panel.progress.value == panel.progress.max == 2 * STEPS
    assert "done: inverted" in said(panel.status) and not panel.explain_button.disabled
    assert panel.target.value == "a large green circle above a small blue square"  # a colour the scene lacks
    _clean(panel.pipe)


def test_the_picture_is_shown_at_a_whole_factor(inverted):
    from PIL import Image

    shown = Image.open(io.BytesIO(inverted.picture_image.value))
    assert shown.size == (192, 192)  # 64 x 3, nearest: the pixels stay visible
    assert np.array_equal(np.asarray(shown)[::3, ::3], SCENE.image)


def test_explain_opens_the_explorer_on_the_redraw(inverted):
    tr = inverted.explain()
    assert tr is not None and inverted.explain_box.children == (inverted.explorer.widget,)
    circle, square = SCENE.objects[0].mask, SCENE.objects[1].mask
    m = tr.word_map("circle").numpy()  # (64, 64)
    assert m[circle].mean() > 2 * m[square].mean()
    assert "done: where each word" in said(inverted.status)
    _clean(inverted.pipe)


def test_edit_replaces_a_colour_word_with_a_local_blend(studio):
    """Prompt-to-prompt needs more steps than the reconstruction (6 are too few): 20 here."""
    from sdviz.toy.judge import judge

    panel = UploadPanel(studio.pipe, steps=20)
    panel.receive(upload_value(SCENE.pil()))
    panel.caption.value = SCENE.caption
    panel.invert()
    result = panel.edit("a large green circle above a small blue square")
    verdict = judge(result.images[1], "a large green circle above a small blue square")
    assert verdict.objects[0].colour_ok and verdict.objects[1].colour_ok
    assert "replace 'red' by 'green', local blend" in said(panel.status) and "the judge reads" in said(panel.status)
    assert panel.edit_image.value[:4] == b"\x89PNG"
    _clean(panel.pipe)


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "LA"])
def test_other_modes_are_converted_and_a_resize_is_said_in_one_line(embedded_pipe, mode):
    panel = UploadPanel(embedded_pipe)
    picture = SCENE.pil().resize((128, 96)).convert(mode)
    with pytest.warns(UserWarning, match="resized from 128x96 to 64x64"):  # still in the log, as outside the studio
        got = panel.receive(upload_value(picture, "drawing.png"))
    assert got.mode == "RGB" and got.size == (64, 64)
    status = said(panel.status)
    assert f"converted from {mode} to RGB" in status and "resized to 64x64" in status and "not cropped" in status
    assert "<br>" not in status and "Traceback" not in status
    assert "from 128x96" in panel.picture_caption.value
    if mode == "L":
        assert (np.asarray(got)[..., 0] == np.asarray(got)[..., 2]).all()  # grey stays grey


def test_a_jpeg_upload(embedded_pipe):
    panel = UploadPanel(embedded_pipe)
    got = panel.receive(upload_value(SCENE.pil(), "scene.jpg", "JPEG"))
    assert got.size == (64, 64) and psnr(SCENE.pil(), got) > 25  # JPEG is lossy
    assert "scene.jpg: 64x64 RGB" in said(panel.status)


def test_bad_files_and_captions_are_one_line_messages(embedded_pipe):
    panel = UploadPanel(embedded_pipe)
    assert panel.invert() is None and "no picture uploaded yet" in said(panel.status)
    empty = ({"name": "empty.png", "type": "image/png", "size": 0, "content": memoryview(b"")},)
    assert panel.receive(empty) is None and "picture: 'empty.png' is empty" in said(panel.status)
    junk = ({"name": "junk.png", "type": "image/png", "size": 15, "content": b"\x89PNG not really"},)
    assert panel.receive(junk) is None and "'junk.png' is not a readable image" in said(panel.status)
    assert "b00020" in panel.status.value  # shown as an error
    panel.receive(upload_value(SCENE.pil()))
    assert panel.invert() is None and "type the picture's caption first" in said(panel.status)
    panel.caption.value = SCENE.caption
    panel.steps.value = 0
    assert panel.invert() is None and "steps must be" in said(panel.status)
    assert panel.invert_button.description == "Invert" and not panel.invert_button.disabled
    assert panel.edit() is None and "press Invert first" in said(panel.status)
    _clean(embedded_pipe)


def test_a_long_caption_is_warned_in_the_panel(embedded_pipe):
    panel = UploadPanel(embedded_pipe, steps=2)
    panel.receive(upload_value(SCENE.pil()))
    panel.caption.value = " ".join(["a red circle"] * 40)
    with pytest.warns(UserWarning, match="tokens were dropped"):
        assert panel.invert() is not None
    assert "warning:" in said(panel.status) and "tokens were dropped" in said(panel.status)


def test_null_text_reports_its_steps_in_the_panel(embedded_pipe):
    panel = UploadPanel(embedded_pipe, steps=4, method="null_text")
    panel.receive(upload_value(SCENE.pil()))
    panel.caption.value = SCENE.caption
    seen = []
    panel.status.observe(lambda change: seen.append(html.unescape(change["new"])), names="value")
    inv = panel.invert()
    assert inv.method == "null_text" and inv.null_embeddings.shape[0] == 4
    assert any("the DDIM walk up to noise, step 4/4" in s for s in seen)
    assert any("optimising step 4/4" in s for s in seen) and any("redrawing" in s for s in seen)
    assert panel.progress.value == panel.progress.max == 3 * 4
    _clean(embedded_pipe)


def test_the_helpers():
    colours = ("red", "green", "blue")
    assert suggest_edit("A Red circle", colours) == "A green circle"
    assert suggest_edit("a star", colours) == "a star"
    assert replaced_words("a red circle", "a blue circle") == ("red", "blue")
    assert replaced_words("a red circle", "a large blue circle") is None
    assert read_upload({"x": {"name": "x.png", "content": upload_value(SCENE.pil())[0]["content"]}})[0] == "x.png"
    with pytest.raises(ValueError, match="no picture uploaded"):
        read_upload(())

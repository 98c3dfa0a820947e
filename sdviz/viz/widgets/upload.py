"""The studio's "Your picture" tab: upload a PNG or JPEG, invert it, then explain it and edit it (`sdviz.inversion`).

    s = studio(); s.upload          # the tab's panel; or, on its own: UploadPanel(pipe)
    panel.receive(value)            # what the FileUpload hands over (ipywidgets 8: a tuple of dicts with 'content')
    panel.invert(); panel.explain(); panel.edit()      # what the three buttons do

Upload a picture and type its caption (in the model's words); it is converted to RGB (transparency onto black) and
resized to the model's size, never cropped, and the panel says so in one line. Invert finds the start noise that
redraws it (`invert`, progress in the panel), and shows the redraw beside the picture with its PSNR. Explain redraws
it inside a trace and opens the attention explorer on it (`explain`); Edit changes a word by prompt-to-prompt
(`edit_inverted`), confined by a local blend when one word is replaced.

Which inversion (measured, readme-images/inversion.json, 14 of the toy world's own scenes at 50 steps): the cfg-1
DDIM walk redrawn at cfg 5 drifts (25.6 dB); null-text (37.8 dB) and negative-prompt inversion (37.8 dB) both repair
it, and negative-prompt costs only the walk (null-text adds an optimisation at every step), so it is the default.
The three share the walk and its start noise; Edit always edits that noise as a plain DDIM inversion, where the new
colour lands in 11 of 12 scenes (6 of 14 on null-text, whose guidance pushes away from the source caption, colour and
all; negative-prompt inversion, whose negative prompt is the source caption, landed 2 of the first 8 scenes at 20
steps where DDIM landed 7, `measure.edit_scene` on each).
Bad input (an empty or unreadable file, no caption, a setting the pipeline refuses) is one line in the panel.
"""

from __future__ import annotations

import dataclasses
import html
import io
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ipywidgets as W
import numpy as np
from PIL import Image, UnidentifiedImageError

from sdviz.viz.widgets import frames as F
from sdviz.viz.widgets.common import error, panel, placeholder

if TYPE_CHECKING:
    from sdviz.inversion import Inversion
    from sdviz.pipeline import StableDiffusion
    from sdviz.viz.widgets.attention import Explorer

METHODS = (
    ("negative prompt: fast, as good as null-text", "negative_prompt"),
    ("null-text: optimised at every step, slower", "null_text"),
    ("DDIM: the walk alone, drifts at cfg > 1", "ddim"),
)
CSS = "<style>.sdviz-upload-pictures img {image-rendering: pixelated}</style>"
ERRORS = (ValueError, TypeError, KeyError, FloatingPointError)


def read_upload(value: Any) -> tuple[str, Image.Image]:
    """The first file of a FileUpload's value (ipywidgets 8: a tuple of dicts with 'name' and 'content', memoryview
    or bytes; ipywidgets 7: a dict of such dicts) as (name, PIL image); an empty or unreadable file is a one-line
    ValueError."""
    files = list(value.values()) if isinstance(value, dict) else list(value or ())
    if not files:
        raise ValueError("no picture uploaded yet: choose a PNG or JPEG file")
    item = files[0]
    name = str(item.get("name") or "the picture")
    content = bytes(item.get("content") or b"")
    if not content:
        raise ValueError(f"picture: {name!r} is empty")
    try:
        with Image.open(io.BytesIO(content)) as im:
            im.load()
            return name, im.copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"picture: {name!r} is not a readable image ({type(e).__name__})") from None


def one_line(e: BaseException) -> str:
    message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return str(message).splitlines()[0] if str(message) else type(e).__name__


def suggest_edit(caption: str, colours: tuple[str, ...]) -> str:
    """The caption with its first colour word replaced by a colour it lacks (the caption itself when it has none)."""
    words = caption.split()
    lower = [w.strip(".,;:!?").lower() for w in words]
    for i, w in enumerate(lower):
        if w in colours:
            other = next((c for c in colours if c not in lower), None)
            if other is not None:
                words[i] = words[i].lower().replace(w, other)
                return " ".join(words)
    return caption


def replaced_words(source: str, target: str) -> tuple[str, str] | None:
    """(old, new) when the target replaces exactly one word of the source (a local blend then confines the edit)."""
    a, b = source.lower().split(), target.lower().split()
    if len(a) != len(b):
        return None
    changed = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
    return changed[0] if len(changed) == 1 else None


class UploadPanel:
    """The tab (`.widget`). `picture` is the uploaded picture at the model's size, `inversion` the last inversion,
    `redraw` its redraw, `psnr_db` the redraw's PSNR against the picture (`vae_db`: the VAE round trip's, the
    ceiling), `trace` the explained redraw, `edited` the last edit's result (images[0] the redraw, images[1] the
    edit)."""

    def __init__(self, pipe: StableDiffusion, panel_size: int = 192, steps: int = 50, cfg_scale: float = 5.0,
                 method: str = "negative_prompt"):  # fmt: skip
        self.pipe, self.panel_size = pipe, panel_size
        side, tile = pipe.config.image_size, panel_size * 2 // 3  # an edit tile: a whole factor of small pictures
        self._tile = tile // side * side if side <= tile else tile
        self.picture: Image.Image | None = None
        self.inversion: Inversion | None = None
        self.redraw: Image.Image | None = None
        self.psnr_db: float | None = None
        self.vae_db: float | None = None  # the VAE's round trip: the redraw's ceiling
        self.trace: Any = None
        self.explorer: Explorer | None = None
        self.edited: Any = None
        self.note = ""  # what the upload said (converted, resized)
        style = {"description_width": "100px"}
        self.file = W.FileUpload(accept=".png,.jpg,.jpeg,image/png,image/jpeg", multiple=False,
                                 description="Upload PNG/JPEG", layout=W.Layout(width="200px"))  # fmt: skip
        self.caption = W.Text(description="its caption", placeholder="what it shows, in the model's words",
                              style=style, layout=W.Layout(width="520px"))  # fmt: skip
        self.method = W.Dropdown(options=METHODS, value=method, description="inversion", style=style,
                                 layout=W.Layout(width="420px"))  # fmt: skip
        self.steps = W.IntText(value=steps, description="steps", style=style, layout=W.Layout(width="180px"))
        self.cfg = W.FloatText(value=cfg_scale, description="guidance", style=style, layout=W.Layout(width="180px"))
        self.invert_button = W.Button(description="Invert", button_style="primary", icon="undo")
        self.progress = W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="300px"))
        self.status = W.HTML()
        blank = placeholder(panel_size)
        self.picture_box, self.picture_image, self.picture_caption = panel("your picture", panel_size, blank)
        self.redraw_box, self.redraw_image, self.redraw_caption = panel("the redraw", panel_size, blank)
        self.psnr = W.HTML()
        self.explain_button = W.Button(description="Explain", icon="search", disabled=True)
        self.explain_box = W.VBox()
        self.target = W.Text(description="edit to", style={"description_width": "60px"},
                             layout=W.Layout(width="440px"))  # fmt: skip
        self.edit_button = W.Button(description="Edit", icon="pencil", disabled=True)
        pair = 2 * self._tile + 4  # the redraw and the edit side by side, 4 pixels apart (frames.hstack)
        self.edit_box, self.edit_image, self.edit_caption = panel("the edit (press Edit)", pair,
                                                                  placeholder(pair, self._tile))  # fmt: skip
        self.file.observe(lambda change: self.receive(change["new"]), names="value")
        self.invert_button.on_click(lambda _: self.invert())
        self.explain_button.on_click(lambda _: self.explain())
        self.edit_button.on_click(lambda _: self.edit())
        info = W.HTML("<div style='font-size:12px;color:#666'>a picture from elsewhere: inversion finds the noise "
                      "that redraws it, then the word maps and prompt-to-prompt work on it as on a generated one "
                      "(<code>sdviz.inversion</code>)</div>")  # fmt: skip
        self.pictures = W.HBox(
            [self.picture_box, self.redraw_box, self.edit_box], layout=W.Layout(align_items="flex-end")
        )
        self.widget = W.VBox([
            W.HTML(CSS), info, W.HBox([self.file, self.caption]), W.HBox([self.method, self.steps, self.cfg]),
            W.HBox([self.invert_button, self.progress]), self.status, self.pictures, self.psnr,
            W.HBox([self.explain_button, self.target, self.edit_button]), self.explain_box,
        ])  # fmt: skip
        named = {"": self.widget, "-file": self.file, "-caption": self.caption, "-method": self.method,
                 "-invert": self.invert_button, "-status": self.status, "-pictures": self.pictures,
                 "-picture": self.picture_image, "-redraw": self.redraw_image, "-psnr": self.psnr,
                 "-explain": self.explain_button, "-explorer": self.explain_box, "-target": self.target,
                 "-edit": self.edit_button, "-edited": self.edit_image}  # fmt: skip
        for name, widget in named.items():
            widget.add_class(f"sdviz-upload{name}")  # for the browser test

    # -- the panel's lines -------------------------------------------------------------------------------------------

    def _say(self, text: str = "", failed: bool = False, warning: str = "") -> None:
        self.status.value = error(text) if failed else f"<span style='color:#444'>{html.escape(text)}</span>"
        if warning:
            self.status.value += f"<br><span style='color:#9a5b00'>warning: {html.escape(warning)}</span>"

    def _busy(self, busy: bool, button: W.Button | None = None, label: str = "") -> None:
        for b in (self.invert_button, self.explain_button, self.edit_button):
            b.disabled = busy or (b is not self.invert_button and self.inversion is None)
        if button is not None:
            button.description = label

    def _show(self, image: W.Image, picture: Image.Image) -> None:
        image.value = F.png(F.enlarge(np.asarray(picture.convert("RGB")), self.panel_size))

    def _caption(self, widget: W.HTML, text: str) -> None:
        widget.value = f"<div style='font-size:12px;line-height:1.25;font-weight:bold'>{html.escape(text)}</div>"

    def _run(self, fn: Callable[[], Any]) -> tuple[Any, str]:
        """fn() with its warnings caught (shown in the panel, still in the log): (its result, the warnings' text)."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = fn()
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return out, "; ".join(dict.fromkeys(str(w.message) for w in caught))

    # -- upload ------------------------------------------------------------------------------------------------------

    def receive(self, value: Any) -> Image.Image | None:
        """Read an uploaded file (the FileUpload's value), convert it to RGB at the model's size and show it; the
        picture, or None after a one-line message."""
        from sdviz.inversion import load_picture

        size = self.pipe.config.image_size
        try:
            name, image = read_upload(value)
            original = f"{image.size[0]}x{image.size[1]} {image.mode}"
            picture, said = self._run(lambda: load_picture(image, size, size))
        except ERRORS as e:
            self._say(one_line(e), failed=True)
            return None
        changes = []
        if image.mode != "RGB":
            changes.append(f"converted from {image.mode} to RGB" + (" (transparency onto black)"
                           if "A" in image.mode or "transparency" in image.info else ""))  # fmt: skip
        if image.size != (size, size):
            stretched = ", so stretched" if image.size[0] != image.size[1] else ""
            changes.append(f"resized to {size}x{size}, the model's size (not cropped{stretched})")
        self.picture, self.inversion, self.note = picture, None, "; ".join(changes)
        self._busy(False)
        self._show(self.picture_image, picture)
        resized = f" (from {image.size[0]}x{image.size[1]})" if image.size != (size, size) else ""
        self._caption(self.picture_caption, f"your picture, {size}x{size}{resized}")
        self.redraw_image.value, self.psnr.value = placeholder(self.panel_size), ""
        self._say(f"{name}: {original}" + (f"; {self.note}" if self.note else "") + ". Now type its caption and "
                  "press Invert.", warning="" if self.note else said)  # fmt: skip
        return picture

    # -- invert ------------------------------------------------------------------------------------------------------

    def _progress(self, method: str, steps: int) -> Callable[[str, int, int], None]:
        """`invert`'s on_progress: the phase and the step in the status line, and the bar (the walk, null-text's
        optimisation when it runs, then the redraw)."""
        self.progress.value, self.progress.max = 0, steps * (2 if method == "null_text" else 1) + steps

        def hear(phase: str, done: int, n: int) -> None:
            if phase == "walk":
                self._say(f"inverting: the DDIM walk up to noise, step {done}/{n}")
                self.progress.value = done
            else:
                self._say(f"null-text: optimising step {done}/{n}'s null embedding")
                self.progress.value = n + done

        return hear

    def invert(self) -> Inversion | None:
        """Invert the uploaded picture with the panel's caption, method, steps and guidance; show the redraw and its
        PSNR. The inversion, or None after a one-line message."""
        from sdviz.inversion import invert, psnr

        if self.picture is None:
            self._say("no picture uploaded yet: choose a PNG or JPEG file", failed=True)
            return None
        if not self.caption.value.strip():
            self._say("type the picture's caption first (what it shows, in the model's words)", failed=True)
            return None
        method, steps, caption = self.method.value, int(self.steps.value), self.caption.value.strip()
        self._busy(True, self.invert_button, "Inverting...")
        try:
            hear = self._progress(method, steps)
            inv, said = self._run(lambda: invert(self.pipe, self.picture, caption, method, steps,
                                                 float(self.cfg.value), progress=False, on_progress=hear))  # fmt: skip
            self._say(f"redrawing: {steps} DDIM steps at cfg {inv.cfg_scale:g}")
            done = self.progress.value
            redraw = inv.redraw(self.pipe, on_step=lambda s: setattr(self.progress, "value", done + s.index + 1))
        except ERRORS as e:
            self._say(one_line(e), failed=True)
            return None
        finally:
            self._busy(False, self.invert_button, "Invert")
        self.inversion, self.redraw, self.trace, self.edited = inv, redraw.image, None, None
        self.psnr_db = psnr(self.picture, self.redraw)
        self.progress.value = self.progress.max
        self._busy(False)
        self._show(self.redraw_image, self.redraw)
        self._caption(self.redraw_caption, f"the redraw, PSNR {self.psnr_db:.1f} dB")
        self.vae_db = psnr(self.picture, self._vae_round_trip(self.picture))
        self.psnr.value = (f"<div style='font-size:12px'>reconstruction: <b>PSNR {self.psnr_db:.1f} dB</b> against "
                           f"your picture ({method}, {steps} steps, cfg {inv.cfg_scale:g}, {inv.seconds:.1f} s); "
                           f"the ceiling, the VAE's own round trip (every redraw is decoded from latents): "
                           f"{self.vae_db:.1f} dB</div>")  # fmt: skip
        if not self.target.value.strip() or self.target.value == self.caption.value:
            self.target.value = suggest_edit(caption, tuple((self.pipe.vocabulary or {}).get("colours", ())))
        self._say(f"done: inverted in {inv.seconds:.1f} s. Explain shows the word maps, Edit changes a word.",
                  warning=said)  # fmt: skip
        self.explain_box.children, self.edit_image.value = [], placeholder(2 * self._tile + 4, self._tile)
        self._caption(self.edit_caption, "the edit (press Edit)")
        return inv

    def _vae_round_trip(self, picture: Image.Image) -> Image.Image:
        """The picture encoded by the VAE and decoded again: what any redraw can reach at best."""
        import torch

        from sdviz.pipeline import image_to_tensor, tensor_to_images

        with torch.no_grad():
            z = self.pipe.encode_images(image_to_tensor(picture, picture.size[1], picture.size[0]))  # (1, 4, h, w)
            return tensor_to_images(self.pipe.decode_latents(z))[0]

    # -- explain and edit --------------------------------------------------------------------------------------------

    def explain(self) -> Any:
        """Redraw the inverted picture inside a trace (`sdviz.inversion.explain`) and open the explorer on it."""
        from sdviz.inversion import explain
        from sdviz.viz.widgets.attention import Explorer

        if self.inversion is None:
            self._say("press Invert first", failed=True)
            return None
        self._busy(True, self.explain_button, "Explaining...")
        self._say("explaining: the redraw, traced...")
        try:
            self.trace, said = self._run(lambda: explain(self.pipe, self.inversion, keep=["step"]))
            self.explorer = Explorer(self.trace, size=256, animation=False)
        except ERRORS as e:
            self._say(one_line(e), failed=True)
            return None
        finally:
            self._busy(False, self.explain_button, "Explain")
        self.explain_box.children = [self.explorer.widget]
        self._say("done: where each word of the caption looked in the redraw of your picture (pick a word, click a "
                  "pixel)", warning=said)  # fmt: skip
        return self.trace

    def edit(self, target: str | None = None) -> Any:
        """Prompt-to-prompt on the inverted picture (`edit_inverted`, on the walk's start noise as a DDIM inversion,
        see the module docstring): the target caption replaces or adds words; a local blend confines a one-word
        replacement. Shows the redraw and the edit side by side."""
        from sdviz.inversion import edit_inverted

        if self.inversion is None:
            self._say("press Invert first", failed=True)
            return None
        target = (self.target.value if target is None else target).strip()
        if not target or target == self.inversion.prompt:
            self._say("type an edited caption (e.g. another colour word) in 'edit to'", failed=True)
            return None
        pair = replaced_words(self.inversion.prompt, target)
        ddim = dataclasses.replace(self.inversion, method="ddim", null_embeddings=None, losses=[])
        self._busy(True, self.edit_button, "Editing...")
        self._say("editing: prompt-to-prompt on the picture's start noise...")
        try:
            blend = list(pair) if pair else None
            self.edited, said = self._run(lambda: edit_inverted(self.pipe, ddim, target, blend=blend))
        except ERRORS as e:
            self._say(one_line(e), failed=True)
            return None
        finally:
            self._busy(False, self.edit_button, "Edit")
        tiles = [F.enlarge(np.asarray(image), self._tile) for image in self.edited.images[:2]]
        self.edit_image.value = F.png(F.hstack(tiles))  # (tile, 2 tile + 4, 3): the panel's width
        self._caption(self.edit_caption, f"DDIM redraw | edited: {target}")
        how = f"replace {pair[0]!r} by {pair[1]!r}, local blend" if pair else "prompt-to-prompt"
        self._say(f"done: {target!r} ({how}){self._judge(target)}", warning=said)
        return self.edited

    def _judge(self, target: str) -> str:
        """What the toy world's judge reads in the edit (the embedded model only; '' for other captions)."""
        if not self.pipe.vocabulary:
            return ""
        from sdviz.toy.judge import judge

        try:
            v = judge(self.edited.images[1], target)
        except ValueError:
            return ""
        said = {True: "ok", False: "wrong", None: "-"}
        return "; the judge reads " + ", ".join(f"{o.colour} {o.shape}: colour {said[o.colour_ok]}" for o in v.objects)

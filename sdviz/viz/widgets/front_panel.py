"""The studio: a front panel for generating and watching, on the embedded model or any loaded pipeline.

    from sdviz.viz.widgets import studio
    studio()                          # the embedded model (64x64 pictures of shapes, about a second a picture)
    studio(load_pipeline("v1-5-pruned-emaonly.safetensors", device="cuda"))

Prompt, negative prompt, seed, steps, guidance, sampler and size; Generate shows a progress bar and the predicted
clean picture x0 at every step (the VAE's decode of it for small pictures, the linear latent preview for large
ones). When the picture is done, the player and the attention explorer of the new trace open in tabs, beside a
guidance tab (the same seed at several cfg values) and a seed grid. The "Your picture" tab takes an upload (a PNG or
JPEG and its caption): it inverts it, shows the redraw with its PSNR, then explains it with the explorer and edits
it by prompt-to-prompt (`upload.py`, `sdviz.inversion`). A setting the pipeline refuses (a size that is
not a multiple of 8, steps < 1, an unknown sampler...) shows the pipeline's one-line error in the panel, and a
warning the pipeline gives (a prompt with no word the embedded model was trained on) shows there too, beside
"done". Under the panel, a static picture of the last run (x₀ at a few steps and the picture) stays in the saved
notebook, where widgets cannot run.
"""

from __future__ import annotations

import html
import warnings
from typing import TYPE_CHECKING, Any

import ipywidgets as W
import numpy as np
import torch
from IPython.display import display

from sdviz.viz.widgets import frames as F
from sdviz.viz.widgets.common import StaticPicture, error, panel, placeholder
from sdviz.viz.widgets.upload import UploadPanel

if TYPE_CHECKING:
    from sdviz.pipeline import GenerationResult, StableDiffusion, StepInfo
    from sdviz.tracing import Trace
    from sdviz.viz.widgets.attention import Explorer
    from sdviz.viz.widgets.denoising import Player

PROMPT = "a large red circle above a small blue square"
DECODE_PIXELS = 256 * 256  # decode every step's x0 with the VAE up to this picture size (cheap for small pictures)


def parse_size(text: str) -> tuple[int | None, int | None]:
    """'64x64' -> (width, height); '' -> (None, None), the model's own size."""
    text = text.strip().lower()
    if not text:
        return None, None
    try:
        w, h = (int(v) for v in text.replace(" ", "").split("x"))
    except ValueError:
        raise ValueError(f"size must look like 64x64 (width x height), got {text!r}") from None
    return w, h


def parse_numbers(text: str, kind: type = float) -> list:
    """'1, 3, 5' -> [1.0, 3.0, 5.0]; '0-3' (integers) -> [0, 1, 2, 3]."""
    out: list = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if kind is int and "-" in part[1:]:
                a, b = part.split("-", 1)
                out += list(range(int(a), int(b) + 1))
            else:
                out.append(kind(part))
        except ValueError:
            raise ValueError(f"{part!r} is not a number; write a list such as 1, 3, 5") from None
    if not out:
        raise ValueError("give at least one value, e.g. 1, 3, 5")
    return out


class Studio:
    """The front panel (see the module docstring). `pipe` defaults to the embedded model.

    The settings are the widgets' values (`prompt`, `negative`, `seed`, `steps`, `cfg`, `sampler`, `size`);
    `generate()` does what the Generate button does and returns the trace (None after an error, which the panel
    shows). `trace`, `result`, `player` and `explorer` hold the last run; `upload` is the "Your picture" tab's
    `UploadPanel`.
    """

    def __init__(
        self,
        pipe: StableDiffusion | None = None,
        prompt: str = PROMPT,
        negative: str = "",
        seed: int = 1,
        steps: int = 30,
        cfg_scale: float = 5.0,
        sampler: str = "ddim",
        size: str = "",
        panel_size: int = 192,
    ):
        from sdviz.pipeline import load_pipeline
        from sdviz.samplers import SAMPLERS

        self.pipe = load_pipeline() if pipe is None else pipe
        self.panel_size = panel_size
        self.trace: Trace | None = None
        self.result: GenerationResult | None = None
        self.player: Player | None = None
        self.explorer: Explorer | None = None
        wide = W.Layout(width="640px")
        style = {"description_width": "100px"}
        self.prompt = W.Text(value=prompt, description="prompt", layout=wide, style=style)
        self.prompt.add_class("sdviz-prompt")
        self.negative = W.Text(value=negative, description="negative", layout=wide, style=style)
        self.seed = W.IntText(value=seed, description="seed", style=style, layout=W.Layout(width="200px"))
        self.steps = W.IntText(value=steps, description="steps", style=style, layout=W.Layout(width="200px"))
        self.cfg = W.FloatText(value=cfg_scale, description="guidance", style=style, layout=W.Layout(width="200px"))
        names = list(SAMPLERS)
        self.sampler = W.Dropdown(options=names, value=sampler if sampler in names else names[0], style=style,
                                  description="sampler", layout=W.Layout(width="240px"))  # fmt: skip
        default = self.pipe.config.image_size
        self.size = W.Text(value=size, placeholder=f"{default}x{default}", description="size (WxH)", style=style,
                           layout=W.Layout(width="240px"))  # fmt: skip
        self.button = W.Button(description="Generate", button_style="primary", icon="play")
        self.button.add_class("sdviz-generate")
        self.progress = W.IntProgress(value=0, min=0, max=1, description="", layout=W.Layout(width="300px"))
        self.status = W.HTML()
        self.status.add_class("sdviz-status")
        blank = placeholder(panel_size)  # until the first Generate (an empty image shows a broken-image icon)
        live_box, self.live, self.live_caption = panel("predicted picture x₀, live", panel_size, blank)
        self.live.add_class("sdviz-live")
        self.picture = W.Image(value=blank, format="png", layout=W.Layout(width=f"{panel_size}px"))
        self.picture.add_class("sdviz-picture")
        self.upload = UploadPanel(self.pipe, panel_size)  # your own picture: invert, explain, edit
        self.tabs = W.Tab(children=[self._waiting("the player"), self._waiting("the explorer"),
                                    self._guidance_tab(), self._seeds_tab(), self.upload.widget])  # fmt: skip
        for i, title in enumerate(("Player", "Explorer", "Guidance", "Seeds", "Your picture")):
            self.tabs.set_title(i, title)
        self.button.on_click(lambda _: self.generate())
        self.widget = W.VBox(
            [
                W.HTML("<b>sdviz studio</b>"),
                self.prompt,
                self.negative,
                W.HBox([self.seed, self.steps, self.cfg]),
                W.HBox([self.sampler, self.size]),
                W.HBox([self.button, self.progress]),
                self.status,
                W.HBox([live_box, W.VBox([W.HTML("<b style='font-size:12px'>the picture</b>"), self.picture])]),
                self.tabs,
            ]
        )
        self.widget.add_class("sdviz-studio")
        self.static = StaticPicture(placeholder(panel_size, 24), "the studio's last picture: none yet (press Generate)")

    @staticmethod
    def _waiting(what: str) -> W.HTML:
        return W.HTML(f"<div style='color:#666;padding:8px'>press Generate to see {what} of the new picture</div>")

    # -- generating ----------------------------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """The widgets' values as `pipe.generate` arguments."""
        width, height = parse_size(self.size.value)
        return {
            "prompt": self.prompt.value,
            "negative_prompt": self.negative.value,
            "seed": self.seed.value,
            "steps": self.steps.value,
            "cfg_scale": self.cfg.value,
            "sampler": self.sampler.value,
            "height": height,
            "width": width,
        }

    def _say(self, text: str = "", failed: bool = False, warning: str = "") -> None:
        self.status.value = error(text) if failed else f"<span style='color:#444'>{html.escape(text)}</span>"
        if warning:  # what the pipeline warned about, in the panel (not only in the log console)
            self.status.value += f"<br><span style='color:#9a5b00'>warning: {html.escape(warning)}</span>"

    def _busy(self, busy: bool) -> None:
        self.button.disabled = busy
        self.button.description = "Generating..." if busy else "Generate"

    def generate(self) -> Any:
        """Generate with the panel's settings inside a trace, showing x0 live; then the player and the explorer."""
        from sdviz.tracing import TraceBudgetError, trace

        self._busy(True)
        self._say("generating...")
        try:
            settings = self.settings()
            self.progress.value, self.progress.max = 0, max(1, int(self.steps.value))
            height = settings["height"] or self.pipe.config.image_size
            width = settings["width"] or self.pipe.config.image_size
            decode = height * width <= DECODE_PIXELS
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    tr = self._run(trace(self.pipe, record=["cross_attention", "latents"], keep=["step"],
                                         decode=decode), settings)  # fmt: skip
                    note = ""
                except TraceBudgetError:  # per-step attention of a large picture: keep the sum over the steps
                    tr = self._run(trace(self.pipe, record=["cross_attention", "latents"], decode=decode), settings)
                    note = " (attention summed over the steps: per step it would exceed the trace's memory budget)"
            said = "; ".join(dict.fromkeys(str(w.message) for w in caught))
        except (ValueError, TypeError, KeyError) as e:
            message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            self._say(str(message).splitlines()[0] if str(message) else type(e).__name__, failed=True)
            return None
        finally:
            self._busy(False)
        for w in caught:  # still in the log too, as outside the studio
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        self.trace = tr
        self.picture.value = F.png(F.enlarge(tr.images_u8[0].permute(1, 2, 0).numpy(), self.panel_size))
        done = f"done: seed {tr.info['seeds'][0]}, {len(tr.timesteps)} steps"
        self._say(f"{done}{note}; preparing the player...", warning=said)
        self._show_trace(tr)
        self.static.update(F.png(self._summary(tr)), f"the studio's last run: {tr.prompts[0]!r}, {done[6:]}")
        self._say(f"{done}, {tr.info['sampler']}{note}", warning=said)
        return tr

    def _summary(self, tr: Trace, n: int = 6) -> np.ndarray:
        """The run as one static picture: the predicted x₀ at n steps (decoded when the trace holds it), then the
        picture, each at the panel's size, captioned."""
        from sdviz.viz.style import pick_evenly

        rec, size = tr.records["latents"], self.panel_size
        tiles = []
        for i in pick_evenly(list(range(len(tr.timesteps))), n):
            pic = rec.decoded[i, 0].permute(1, 2, 0).numpy() if rec.decoded is not None else rec.preview("x0", i)
            tiles.append(F.label(F.enlarge(pic, size), f"x₀ at step {i}, t = {tr.timesteps[i]}"))
        tiles.append(F.label(F.enlarge(tr.images_u8[0].permute(1, 2, 0).numpy(), size), "the picture"))
        return F.hstack(tiles)

    def _run(self, tr: Trace, settings: dict[str, Any]) -> Any:
        with tr:
            self.result = self.pipe.generate(progress=False, on_step=lambda step: self._on_step(tr, step), **settings)
        return tr

    def _on_step(self, tr: Trace, step: StepInfo) -> None:
        """After each step: the progress bar, and the predicted clean picture (decoded, or the linear preview)."""
        n = len(tr.timesteps)
        self.progress.max, self.progress.value = n, step.index + 1
        rec = tr.records["latents"]
        if rec.decoded is not None:
            pic = rec.decoded[step.index, 0].permute(1, 2, 0).numpy()
        else:
            pic = ((rec.to_rgb(step.x0[0].float().cpu()) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
        self.live.value = F.png(F.enlarge(pic, self.panel_size))
        self.live_caption.value = (
            f"<div style='font-size:12px;line-height:1.25;font-weight:bold'>predicted picture x₀<br>"
            f"step {step.index} / {n - 1}, t = {step.t}</div>"
        )

    def _show_trace(self, tr: Trace) -> None:
        from sdviz.viz.widgets.attention import Explorer
        from sdviz.viz.widgets.denoising import Player

        self.player = Player(tr, size=144, animation=False)
        self.explorer = Explorer(tr, size=256, animation=False)
        children = list(self.tabs.children)
        children[0], children[1] = self.player.widget, self.explorer.widget
        self.tabs.children = children

    # -- sweeps --------------------------------------------------------------------------------------------------

    def _guidance_tab(self) -> W.VBox:
        self.cfg_values = W.Text(value="1, 2, 5, 9", description="cfg values", layout=W.Layout(width="300px"))
        draw = W.Button(description="Draw the guidance sweep", layout=W.Layout(width="auto"))
        self.guidance_row = W.HBox(layout=W.Layout(flex_flow="row wrap"))
        draw.on_click(lambda _: self.guidance_sweep())
        info = W.HTML("<div style='font-size:12px;color:#666'>the same seed and settings at several guidance "
                      "scales (1 = the conditional prediction alone)</div>")  # fmt: skip
        return W.VBox([info, W.HBox([self.cfg_values, draw]), self.guidance_row])

    def _seeds_tab(self) -> W.VBox:
        self.seed_values = W.Text(value="0-7", description="seeds", layout=W.Layout(width="300px"))
        draw = W.Button(description="Draw the seed grid", layout=W.Layout(width="auto"))
        self.seed_grid_box = W.HBox(layout=W.Layout(flex_flow="row wrap", width="900px"))
        draw.on_click(lambda _: self.seed_grid())
        info = W.HTML("<div style='font-size:12px;color:#666'>the same prompt and settings with other seeds "
                      "(a list such as 0-7 or 3, 9, 27)</div>")  # fmt: skip
        return W.VBox([info, W.HBox([self.seed_values, draw]), self.seed_grid_box])

    def _sweep(self, box: W.Box, values: list, what: str, change: Any) -> list[Any]:
        """Generate one picture per value (`change(settings, value)` sets it) into `box`; errors go to the status."""
        self._busy(True)
        pictures = []
        try:
            settings = self.settings()
            self.progress.value, self.progress.max = 0, len(values)
            box.children = []
            for i, v in enumerate(values):
                self._say(f"{what} {i + 1}/{len(values)}...")
                image = self.pipe.generate(progress=False, **change(dict(settings), v)).image
                pictures.append(image)
                size = min(self.panel_size, 160)
                tile, _, _ = panel(f"{what} {v:g}", size, F.png(F.enlarge(np.asarray(image), size)))
                box.children = [*box.children, tile]
                self.progress.value = i + 1
            self._say(f"done: {len(values)} pictures")
        except (ValueError, TypeError, KeyError) as e:
            self._say(str(e.args[0] if isinstance(e, KeyError) and e.args else e).splitlines()[0], failed=True)
        finally:
            self._busy(False)
        return pictures

    def guidance_sweep(self, scales: list[float] | None = None) -> list[Any]:
        """The panel's seed and settings at several guidance scales (default: the tab's list), side by side."""
        try:
            scales = parse_numbers(self.cfg_values.value) if scales is None else list(scales)
        except ValueError as e:
            self._say(str(e), failed=True)
            return []
        return self._sweep(self.guidance_row, scales, "cfg", lambda s, v: {**s, "cfg_scale": v})

    def seed_grid(self, seeds: list[int] | None = None) -> list[Any]:
        """The panel's prompt and settings with several seeds (default: the tab's list), in a grid."""
        try:
            seeds = parse_numbers(self.seed_values.value, int) if seeds is None else list(seeds)
        except ValueError as e:
            self._say(str(e), failed=True)
            return []
        return self._sweep(self.seed_grid_box, seeds, "seed", lambda s, v: {**s, "seed": v})

    def _ipython_display_(self) -> None:
        display(self.widget)
        self.static.show()  # the last run's picture, for renders where widgets cannot run


def studio(pipe: StableDiffusion | None = None, **kw: Any) -> Studio:
    """A `Studio` front panel on `pipe` (default: the embedded model). See `Studio`."""
    return Studio(pipe, **kw)

"""The denoising player: a traced generation, step by step.

    from sdviz.viz.widgets import player
    with sdviz.trace(pipe, keep=["step"], decode=True) as tr:
        pipe.generate("a red circle above a blue square", seed=1, sampler="ddim")
    player(tr)

Play / pause / loop and a step slider drive, side by side: the noisy latent x_t and the predicted clean picture x₀
(the fitted linear latent -> RGB preview), x₀ decoded by the VAE (when the trace holds it, or given `pipe=`), the
guided noise prediction ε and the guidance direction ε_cond − ε_uncond (grey = 0), x_t's latent channels, the
cross-attention at the step of the word the word picker names (with keep=["step"]; a noun by default), and the
noise schedule with a marker at the current t; the readout gives t, σ_t, ᾱ_t and the SNR.

Every frame is made once, when the player is built (PNG bytes per panel and step); moving the slider then only
assigns bytes to the image widgets (`benchmarks/widget_frames.py`: well under the 100 ms goal per frame).
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import ipywidgets as W
import numpy as np
import torch
from IPython.display import display

from sdviz.viz.widgets import frames as F
from sdviz.viz.widgets.checks import need_cross_attention, need_latents
from sdviz.viz.widgets.common import StaticAnimation, note, panel

if TYPE_CHECKING:
    from sdviz.pipeline import StableDiffusion
    from sdviz.tracing import Trace

CAPTIONS = {
    "x_t": "x_t, the noisy latent (preview)",
    "x0": "predicted x₀ (preview)",
    "decoded": "predicted x₀, VAE decode",
    "eps": "predicted noise ε (guided)",
    "guidance": "guidance: ε_cond − ε_uncond",
    "channels": "x_t's latent channels (blue < 0 < red)",
    "attention": "the word's attention at this step",
    "schedule": "the noise schedule, t in red",
}


def noun(words: list[str]) -> str:
    """A noun among a prompt's content words, for the attention panel to start on: the first shape of the toy world
    ("a large red circle above..." -> "circle"), else the first content word."""
    from sdviz.toy.world import SHAPES

    for w in words:
        if w.strip(".,;:!?") in SHAPES:
            return w
    return words[0] if words else ""


def _schedule(tr: Trace) -> Any:
    from sdviz.config import SDConfig
    from sdviz.samplers.schedule import NoiseSchedule

    return NoiseSchedule(SDConfig.from_dict(tr.info["config"]).schedule)


def _robust_max(x: np.ndarray) -> float:
    """The 99.5th percentile of |x| (a colour scale that one outlier does not flatten), never 0."""
    v = float(np.percentile(np.abs(x), 99.5)) if x.size else 0.0
    return v if v > 0 else 1.0


class Player:
    """A step-by-step player of a traced generation (see the module docstring).

    Args:
        trace: a trace with latents (the default record); `keep=["step"]` adds the attention panel,
            `decode=True` the VAE's decode of every step's x0.
        image: which picture of a batch.
        pipe: a pipeline to decode x0 with, when the trace did not (one VAE decode per step, done once here).
        word: the word the attention panel starts on (a picker beside it lists the prompt's content words);
            "auto" (a noun, `noun`, when the trace has per-step attention, else no panel), None (no panel), or a
            word (then the trace needs keep=["step"]).
        size: pixels per panel.
        fps: frames per second when playing.
        animation: show an animated GIF of the run under the widget (for static renders of the notebook).
    """

    def __init__(
        self,
        trace: Trace,
        image: int = 0,
        pipe: StableDiffusion | None = None,
        word: str | None = "auto",
        size: int = 160,
        fps: float = 8,
        animation: bool = True,
    ):
        self.trace, self.image, self.size, self.animation = trace, image, size, animation
        self.latents = need_latents(trace, "the player")
        self.timesteps = list(trace.timesteps)
        self.n = len(self.timesteps)
        self.word = self._choose_word(word)
        self.decoded = self._decoded(pipe)
        self.schedule = _schedule(trace)
        self.frames: list[dict[str, bytes]] = []  # per step: panel name -> PNG bytes
        self.readouts: list[str] = []  # per step: the readout's HTML
        self._prepare()
        self._build(fps)
        self.show(0)

    # -- what the trace holds ----------------------------------------------------------------------------------------

    def _choose_word(self, word: str | None) -> str | None:
        rec = self.trace.records.get("cross_attention")
        if word == "auto":
            if rec is None or "step" not in rec.keep:
                return None
            from sdviz.viz.style import default_words

            return noun(default_words(self.trace, self.image))
        if word is None:
            return None
        need_cross_attention(self.trace, f"the player's attention panel (word={word!r})", per_step=True)
        self.trace.word_positions(word, self.image)  # not in the prompt: one line listing the prompt's words
        return word

    def _decoded(self, pipe: StableDiffusion) -> np.ndarray | None:
        """Every step's x0 decoded by the VAE: (S, H, W, 3) uint8, from the trace or decoded here with `pipe`."""
        if self.latents.decoded is not None:
            return self.latents.decoded[:, self.image].permute(0, 2, 3, 1).numpy()
        if pipe is None:
            return None
        x = pipe.decode_latents(self.latents.x0[:, self.image]).float().clamp(-1, 1)  # (S, 4, h, w) -> (S, 3, H, W)
        return ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    # -- frames, made once ---------------------------------------------------------------------------------------------

    def _prepare(self) -> None:
        rec, b, size = self.latents, self.image, self.size
        x_t, x0 = rec.preview("x_t", image=b), rec.preview("x0", image=b)  # (S, h, w, 3)
        weight = rec.rgb_weight.numpy()
        eps = rec.eps[:, b].numpy()  # (S, C, h, w)
        eps_scale = _robust_max(np.einsum("oc,schw->shwo", weight, eps))
        guided = "eps_uncond" in rec.tensors
        if guided:
            direction = (rec.eps_cond[:, b] - rec.eps_uncond[:, b]).numpy()  # (S, C, h, w)
            dir_scale = _robust_max(np.einsum("oc,schw->shwo", weight, direction))
        z = rec.x_t[:, b].numpy()  # (S, C, h, w)
        chart = F.ScheduleChart(self.schedule, self.timesteps)
        self._attention: dict[str, list[bytes]] = {}  # word -> its attention panel's PNG per step, made when asked
        attention = self.attention_frames(self.word) if self.word else None
        cfg, sampler = self.trace.info.get("cfg_scale"), self.trace.info.get("sampler")
        for i, t in enumerate(self.timesteps):
            frame = {
                "x_t": F.png(F.enlarge(x_t[i], size)),
                "x0": F.png(F.enlarge(x0[i], size)),
                "eps": F.png(F.enlarge(F.signed_rgb(eps[i], weight, eps_scale), size)),
            }
            if self.decoded is not None:
                frame["decoded"] = F.png(F.enlarge(self.decoded[i], size))
            if guided:
                frame["guidance"] = F.png(F.enlarge(F.signed_rgb(direction[i], weight, dir_scale), size))
            ch_scale = float(np.abs(z[i]).max()) or 1.0
            strip = F.channel_strip(z[i], ch_scale)
            frame["channels"] = F.png(F.enlarge(strip, 2 * size))
            if attention is not None:
                frame["attention"] = attention[i]
            frame["schedule"] = F.png(chart.frame(t))
            self.frames.append(frame)
            s = F.schedule_numbers(self.schedule, t)
            self.readouts.append(
                "<div style='font-family:monospace;font-size:13px'>"
                f"step <b>{i}</b> / {self.n - 1} &nbsp; t = <b>{t}</b> &nbsp; "
                f"σ_t = {s['sigma']:.4g} &nbsp; ᾱ_t = {s['alpha_bar']:.4g} &nbsp; "
                f"SNR = {s['snr']:.4g}<br><span style='color:#666'>{html.escape(str(sampler))}, cfg {cfg:g}; "
                f"ε and guidance: grey = 0, full colour at ±{eps_scale:.3g}"
                + (f" / ±{dir_scale:.3g}" if guided else "")
                + f"; channels at ±{ch_scale:.3g}</span></div>"
            )
        self.guided = guided

    def attention_frames(self, word: str) -> list[bytes]:
        """A word's attention at every step (normalised per step, in `style.HEAT`, with the outlines of the final
        picture's objects), PNG per step, made once per word; steps the trace did not record attention for show
        the outlines alone."""
        if word in self._attention:
            return self._attention[word]
        from sdviz.viz.widgets.maps import AttentionMaps, map_size

        tr, b = self.trace, self.image
        picture = tr.images_u8[b].permute(1, 2, 0).numpy()
        hw = F.enlarge(picture, self.size).shape[:2]
        lines = F.outlines(picture, hw)
        maps = AttentionMaps(tr, b, map_size(tr.image_size)).per_step(tr.word_positions(word, b))
        blank = np.full((*hw, 3), 235, np.uint8)
        blank[lines] = F.OUTLINE_RGB
        out = [F.png(F.attention(maps[i], float(maps[i].min()), float(maps[i].max()), lines) if i in maps else blank)
               for i in range(self.n)]  # fmt: skip
        self._attention[word] = out
        return out

    def choose(self, word: str) -> None:
        """Show another word's attention (what the word picker does)."""
        for i, frame in enumerate(self.attention_frames(word)):
            self.frames[i]["attention"] = frame
        self.word = word
        if "attention" in self.images:
            self.images["attention"].value = self.frames[self.step]["attention"]

    # -- the widget ----------------------------------------------------------------------------------------------------

    def _build(self, fps: float) -> None:
        size = self.size
        self.play = W.Play(
            value=0, min=0, max=self.n - 1, interval=max(20, int(1000 / fps)), repeat=True, show_repeat=True
        )
        self.play.add_class("sdviz-play")
        self.slider = W.IntSlider(
            value=0, min=0, max=self.n - 1, description="step", continuous_update=True, layout=W.Layout(width="420px")
        )
        self.slider.add_class("sdviz-step")
        W.jslink((self.play, "value"), (self.slider, "value"))
        self.readout = W.HTML()
        self.readout.add_class("sdviz-readout")
        self.images: dict[str, W.Image] = {}
        boxes: dict[str, Any] = {}
        for key in ("x_t", "x0", "decoded", "eps", "guidance", "channels", "attention", "schedule"):
            width = 2 * size if key == "channels" else 300 if key == "schedule" else size
            if key in self.frames[0]:
                boxes[key], self.images[key], _ = panel(CAPTIONS[key], width)
                self.images[key].add_class(f"sdviz-player-{key}")
            elif key == "decoded":
                boxes[key] = note("no VAE decode: trace with decode=True, or pass pipe= to the player", size)
            elif key == "guidance":
                boxes[key] = note("no guidance direction: this generation ran without guidance (cfg <= 1)", size)
        if "attention" in boxes:  # a word picker above the attention panel
            from sdviz.viz.style import default_words

            words = list(dict.fromkeys([*default_words(self.trace, self.image), self.word]))
            self.word_picker = W.Dropdown(options=words, value=self.word, layout=W.Layout(width=f"{size}px"))
            self.word_picker.add_class("sdviz-player-word")
            self.word_picker.observe(lambda change: self.choose(change["new"]), names="value")
            boxes["attention"].children = (boxes["attention"].children[0], self.word_picker,
                                           *boxes["attention"].children[1:])  # fmt: skip
        row1 = [boxes[k] for k in ("x_t", "x0", "decoded", "attention") if k in boxes]
        row2 = [boxes[k] for k in ("eps", "guidance", "channels", "schedule") if k in boxes]
        title = W.HTML(
            f"<b>denoising</b>: {html.escape(repr(self.trace.prompts[self.image]))}, "
            f"seed {self.trace.info['seeds'][self.image]}"
        )
        self.widget = W.VBox(
            [title, W.HBox([self.play, self.slider]), self.readout, W.HBox(row1, layout=W.Layout(flex_flow="row wrap")),
             W.HBox(row2, layout=W.Layout(flex_flow="row wrap"))]  # fmt: skip
        )
        self.widget.add_class("sdviz-player")
        self.slider.observe(self._on_slider, names="value")

    def _on_slider(self, change: dict) -> None:
        self.show(change["new"])

    def show(self, step: int) -> None:
        """Show the frames of a step (what moving the slider does): assign the prepared bytes."""
        frame = self.frames[step]
        for key, image in self.images.items():
            image.value = frame[key]
        self.readout.value = self.readouts[step]
        self.step = step

    def frame(self, step: int) -> dict[str, bytes]:
        """The PNG bytes of every panel at a step."""
        return self.frames[step]

    # -- display -------------------------------------------------------------------------------------------------------

    def static_animation(self, size: int = 256, max_frames: int = 26) -> StaticAnimation:
        """The run as an animated GIF (x_t, predicted x₀, its decode), for renders where widgets cannot run."""
        from sdviz.viz import animate

        frames = animate.denoising_frames(self.trace, self.image, size)
        keep = np.unique(np.linspace(0, len(frames) - 2, max_frames - 1).round().astype(int)).tolist()
        frames = [frames[i] for i in keep] + [frames[-1]]
        return StaticAnimation(animate.gif(frames, fps=6), "the denoising, animated (a static copy of the player)")

    def _ipython_display_(self) -> None:
        display(self.widget)
        if self.animation:
            display(self.static_animation())


def player(trace: Trace, **kw: Any) -> Player:
    """A `Player` of a trace: `player(tr)` as the last expression of a cell shows it. See `Player`."""
    return Player(trace, **kw)

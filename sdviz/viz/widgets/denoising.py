"""The denoising player: a traced generation, step by step.

    from sdviz.viz.widgets import player
    with sdviz.trace(pipe, keep=["step"], decode=True) as tr:
        pipe.generate("a red circle above a blue square", seed=1, sampler="ddim")
    player(tr)

Play / pause / loop and a step slider drive, side by side: the noisy latent x_t and the predicted clean picture x0
(the fitted linear latent -> RGB preview), x0 decoded by the VAE (when the trace holds it, or given `pipe=`), the
guided noise prediction eps and the guidance direction eps_cond - eps_uncond (grey = 0), x_t's latent channels, a
word's cross-attention at the step (with keep=["step"]), and the noise schedule with a marker at the current t;
the readout gives t, sigma_t, alpha_bar_t and the SNR.

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
    "x0": "predicted x0 (preview)",
    "decoded": "predicted x0, VAE decode",
    "eps": "predicted noise eps (guided)",
    "guidance": "guidance: eps_cond - eps_uncond",
    "channels": "x_t's latent channels (blue < 0 < red)",
    "attention": "attention of {word!r} at this step",
    "schedule": "the noise schedule, t in red",
}


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
        word: the word whose per-step attention is shown; "auto" (the first content word when the trace has
            per-step attention, else no panel), None (no panel), or a word (then the trace needs keep=["step"]).
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

            return default_words(self.trace, self.image)[0]
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
        attention = self._attention_layers() if self.word else None
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
                f"sigma_t = {s['sigma']:.4g} &nbsp; alpha_bar_t = {s['alpha_bar']:.4g} &nbsp; "
                f"SNR = {s['snr']:.4g}<br><span style='color:#666'>{html.escape(str(sampler))}, cfg {cfg:g}; "
                f"eps and guidance: grey = 0, full colour at +-{eps_scale:.3g}"
                + (f" / +-{dir_scale:.3g}" if guided else "")
                + f"; channels at +-{ch_scale:.3g}</span></div>"
            )
        self.guided = guided

    def _attention_layers(self) -> list[bytes]:
        """The word's attention at every step over the final picture (normalised per step), PNG per step; steps the
        trace did not record attention for show the picture alone."""
        from sdviz.viz.widgets.maps import AttentionMaps, map_size

        tr, b = self.trace, self.image
        picture = F.enlarge(tr.images_u8[b].permute(1, 2, 0).numpy(), self.size)
        hw = picture.shape[:2]
        maps = AttentionMaps(tr, b, map_size(tr.image_size)).per_step(tr.word_positions(self.word, b))
        out = []
        for i in range(self.n):
            if i in maps:
                m = maps[i]
                layer = F.resize(F.heat(m, float(m.min()), float(m.max())), hw)
                out.append(F.png(F.blend(picture, layer, 0.55)))
            else:
                out.append(F.png((picture * 0.35 + 160).astype(np.uint8)))  # not recorded at this step: faded
        return out

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
                caption = CAPTIONS[key].format(word=self.word)
                boxes[key], self.images[key], _ = panel(caption, width)
                self.images[key].add_class(f"sdviz-player-{key}")
            elif key == "decoded":
                boxes[key] = note("no VAE decode: trace with decode=True, or pass pipe= to the player", size)
            elif key == "guidance":
                boxes[key] = note("no guidance direction: this generation ran without guidance (cfg <= 1)", size)
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

    def static_animation(self, size: int = 96, max_frames: int = 26) -> StaticAnimation:
        """The run as an animated GIF (x_t, predicted x0, its decode), for renders where widgets cannot run."""
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

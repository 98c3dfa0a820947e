"""The cross-attention explorer: where each word of the prompt looked, and which word each pixel listened to.

    from sdviz.viz.widgets import explorer
    with sdviz.trace(pipe, keep=["step"]) as tr:          # keep=["step", "layer", "head"] unlocks every picker
        pipe.generate("a red circle above a blue square", seed=1, sampler="ddim")
    explorer(tr)

Pick a word (or, with "tokens", a BPE token, the start token or the padding), a window of steps to aggregate, a
resolution or a single layer, the mean of the heads or one head; choose the colour scale (each map to its own
min..max, or one scale shared by all the entries, so that their strengths compare). The map is drawn beside the
picture in `style.HEAT` (dark = little attention, light = much) with the outlines of the picture's objects on it.
Click a pixel of either to see every word ranked by its attention there. The numbers are the trace's own: with the
method "sdviz" (`Trace.word_map`'s default, average attention probabilities) the maps are computed for the shown
entries only and cached per choice (`maps.AttentionMaps`), so a new word costs a look-up and a new window one small
reduction. The method picker also offers the other aggregators of `sdviz.tracing.aggregate` that the trace holds
enough for ("daam" with keep=["layer", "head"]; "best", the toy model's own, with `aggregate.BEST.needs()`): those
choose their own layers and heads, so the layer and head pickers rest while they are shown.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import ipywidgets as W
import numpy as np
from IPython.display import display

from sdviz.tracing import aggregate
from sdviz.viz.widgets import frames as F
from sdviz.viz.widgets.checks import need_cross_attention
from sdviz.viz.widgets.common import StaticAnimation, colour_bar
from sdviz.viz.widgets.maps import AttentionMaps, map_size

if TYPE_CHECKING:
    from sdviz.tracing import Trace

START, END = "<|startoftext|>", "<|endoftext|>"
METHODS = {"sdviz": "sdviz (every layer, bilinear)", "daam": "DAAM 0.2.0", "best": "best on the toy world"}


def _short_layer(name: str) -> str:
    from sdviz.viz.style import short_layer as _short

    return _short(name.removesuffix(".transformer_blocks.0.attn2.hook_probs").removesuffix(".attn2.hook_probs"))


class Explorer:
    """A cross-attention explorer of a trace (see the module docstring).

    Args:
        trace: a trace with cross-attention (the default record). keep=["step"] enables the step window,
            keep=["layer"] the single layers, keep=["head"] the head picker.
        image: which picture of a batch.
        word: the entry shown first (default: the first content word).
        tokens: list the BPE tokens, the start token and the padding instead of the words.
        size: pixels of the shown picture (longer side).
        animation: show an animated GIF of the word's attention over the steps under the widget (static renders).
    """

    def __init__(
        self,
        trace: Trace,
        image: int = 0,
        word: str | None = None,
        tokens: bool = False,
        size: int = 320,
        animation: bool = True,
    ):
        self.trace, self.image, self.animation = trace, image, animation
        self.rec = need_cross_attention(trace, "the explorer")
        enc = trace.encodings[image]
        self.length = int(enc["length"])
        # the entries: name -> token positions (a word's sub-tokens and occurrences are averaged, as in word_map)
        self.words = {w: trace.word_positions(w, image) for w in dict.fromkeys(enc["words"])}
        self.tokens = {f"{p}: {self._token_name(t)}": [p] for p, t in enumerate(enc["tokens"][: self.length])}
        if self.length < len(enc["tokens"]):
            last = len(enc["tokens"]) - 1
            self.tokens[f"padding ({self.length}-{last})"] = list(range(self.length, last + 1))
        if word is not None and word not in self.words:
            trace.word_positions(word, image)  # not in the prompt: one line listing the prompt's words
            word = next(w for w in self.words if w == word.lower().strip() or w.strip(".,;:!?\"'()") == word.lower())
        from sdviz.viz.style import default_words

        self.maps = AttentionMaps(trace, image, map_size(trace.image_size))
        picture = trace.images_u8[image].permute(1, 2, 0).numpy()
        self.picture = F.enlarge(picture, size)
        self.shown_hw = self.picture.shape[:2]
        self.pixel: tuple[int, int] | None = None  # (y, x) on the map grid, after a click
        self._quiet = False
        self.ranked: list[tuple[str, float]] = []
        self.methods = ["sdviz"] + [m for m in METHODS if m != "sdviz" and self._holds(m)]
        self.lines = F.outlines(picture, self.shown_hw)  # the objects' outlines, drawn on every map
        self._build(word or default_words(trace, image)[0], tokens)
        self.redraw()

    def _holds(self, method: str) -> bool:
        """Whether the trace holds what `method` needs (tried once, on the whole run; the result is kept)."""
        try:
            self.maps.compute([self.trace.word_positions(0, self.image)], method=method)
        except (KeyError, ValueError):  # e.g. per-head maps or self-attention not recorded, or another model's heads
            return False
        return True

    @staticmethod
    def _token_name(token: str) -> str:
        return {START: "<start>", END: "<end>"}.get(token, token.replace("</w>", ""))

    # -- the controls ----------------------------------------------------------------------------------------------

    def _build(self, word: str, tokens: bool) -> None:
        rec, maps = self.rec, self.maps
        style = {"description_width": "110px"}
        self.entry = W.ToggleButtons(options=list(self.words), value=word, description="word", style=style)
        self.entry.add_class("sdviz-words")
        self.method = W.Dropdown(
            options=[(METHODS[m], m) for m in self.methods], value="sdviz", description="method", style=style,
            disabled=len(self.methods) == 1, layout=W.Layout(width="400px"),
        )  # fmt: skip
        self.show_tokens = W.Checkbox(value=False, description="tokens (BPE pieces, start, padding)", indent=False)
        steps = maps.steps
        self.window = W.IntRangeSlider(
            value=(steps[0], steps[-1]),
            min=steps[0],
            max=steps[-1],
            description="steps",
            disabled=not maps.per_step_kept,
            continuous_update=True,
            style=style,
            layout=W.Layout(width="480px"),
        )
        self.window.add_class("sdviz-window")
        where = [("all layers", "all")] + [(f"{h}x{w} layers", (h, w)) for h, w in rec.resolutions]
        if maps.layers_kept:
            where += [(f"layer {_short_layer(k)} ({rec.grid[k][0]}x{rec.grid[k][1]})", k) for k in rec.sums]
        self.where = W.Dropdown(options=where, value="all", description="layers", style=style,
                                layout=W.Layout(width="400px"))  # fmt: skip
        heads = [("mean of the heads", "mean")] + [(f"head {h}", h) for h in range(maps.heads)]
        self.head = W.Dropdown(options=heads, value="mean", description="heads", style=style, disabled=not maps.heads,
                               layout=W.Layout(width="300px"))  # fmt: skip
        self.scale = W.ToggleButtons(
            options=[("per map", "per map"), ("shared", "shared")], value="per map", description="colour scale",
            style=style, tooltips=["each map from its own min to its max", "one scale for all the entries listed"],
        )  # fmt: skip
        width = self.shown_hw[1]
        self.picture_widget = W.Image(value=F.png(self.picture), format="png", layout=W.Layout(width=f"{width}px"))
        self.picture_widget.add_class("sdviz-explorer-picture")
        self.image_widget = W.Image(format="png", layout=W.Layout(width=f"{width}px", margin="0 0 0 8px"))
        self.image_widget.add_class("sdviz-explorer-map")
        self.caption = W.HTML(layout=W.Layout(width=f"{2 * width + 8}px"))  # fixed: the ranking beside stays put
        self.ranking = W.HTML(
            "<div style='font-size:12px;color:#666'>click a pixel of the picture or the map to rank the words there"
            "</div>",
            layout=W.Layout(margin="0 0 0 16px", width="300px", min_width="300px"),
        )
        hints = []
        if not maps.per_step_kept:
            hints.append("steps: summed during the run; trace with keep=['step'] to choose a window")
        if not maps.layers_kept:
            hints.append("single layers: trace with keep=['layer']")
        if not maps.heads:
            hints.append("single heads: trace with keep=['head']")
        if len(self.methods) == 1:
            hints.append("DAAM's method: trace with keep=['layer', 'head']")
        hint = html.escape("; ".join(hints), quote=False)
        self.hints = W.HTML(f"<div style='font-size:11px;color:#666'>{hint}</div>")
        if tokens:
            self.show_tokens.value = True
            self._on_tokens({"new": True})
        for control in (self.entry, self.method, self.window, self.where, self.head, self.scale):
            control.observe(self._on_change, names="value")
        self.show_tokens.observe(self._on_tokens, names="value")
        try:  # clicks on the picture: ipyevents reports them in the picture's own pixel coordinates
            from ipyevents import Event

            self._events = [Event(source=source, watched_events=["click"], prevent_default_action=True)
                            for source in (self.picture_widget, self.image_widget)]  # fmt: skip
            for events in self._events:
                events.on_dom_event(self._on_click)
        except ImportError:  # pragma: no cover - ipyevents is a dependency; without it, no pixel inspection
            self._events = []
        title = W.HTML(f"<b>cross-attention</b>: {html.escape(repr(self.trace.prompts[self.image]))}")
        controls = W.VBox([self.entry, self.show_tokens, self.method, self.window, W.HBox([self.where, self.head]),
                           self.scale, self.hints])  # fmt: skip
        views = W.VBox([W.HBox([self.picture_widget, self.image_widget]), self.caption],
                       layout=W.Layout(width=f"{2 * width + 8}px", min_width=f"{2 * width + 8}px"))  # fmt: skip
        self.widget = W.VBox([title, controls, W.HBox([views, self.ranking])])
        self.widget.add_class("sdviz-explorer")

    def _entries(self) -> dict[str, list[int]]:
        return self.tokens if self.show_tokens.value else self.words

    def _on_tokens(self, change: dict) -> None:
        """Switch the picker between words and tokens, keeping the choice where it has a counterpart."""
        entries = self.tokens if change["new"] else self.words
        current = self.entry.value
        if change["new"]:
            pos = self.words.get(current, [None])[0]
            value = next((k for k, v in entries.items() if v == [pos]), next(iter(entries)))
        else:
            value = next((w for w, v in self.words.items() if self.tokens.get(current, [None])[0] in v), None)
            value = value or next(iter(entries))
        self._quiet = True  # changing the options moves the value: draw once, at the end
        try:
            self.entry.options = list(entries)
            self.entry.value = value
            self.entry.description = "token" if change["new"] else "word"
        finally:
            self._quiet = False
        if hasattr(self, "caption"):
            self.redraw()

    def _on_change(self, change: dict) -> None:
        own = self.method.value == "sdviz"  # the other methods choose their own layers and heads
        self.where.disabled = not own
        self.head.disabled = not own or not self.maps.heads
        if not self._quiet:
            self.redraw()

    def _on_click(self, event: dict) -> None:
        if "dataX" in event and "dataY" in event:
            self.click(float(event["dataX"]), float(event["dataY"]))

    # -- the numbers -----------------------------------------------------------------------------------------------

    def selection(self) -> dict[str, Any]:
        """The current choice as `AttentionMaps.compute` arguments: steps (first, last), where, head."""
        steps = tuple(self.window.value) if self.maps.per_step_kept else None
        if steps is not None and steps == (self.maps.steps[0], self.maps.steps[-1]):
            steps = None  # the whole run
        where, head = self.where.value, self.head.value
        return {"steps": steps, "where": None if where == "all" else where, "head": None if head == "mean" else head}

    def entry_maps(self, entries: dict[str, list[int]] | None = None) -> dict[str, np.ndarray]:
        """{entry: (H, W) map} of the listed entries (default: those of the picker) for the current choice."""
        entries = self._entries() if entries is None else entries
        method, choice = self.method.value, self.selection()
        groups = list(entries.values())
        if method != "sdviz":  # the method chooses its own layers and heads; the window still applies
            agg, encoding = aggregate.get(method), self.trace.encoding(self.image)
            choice = {"steps": choice["steps"]}
            if entries is self.words:  # a word's positions as the method finds them (DAAM: token matching)
                groups = [aggregate.positions(encoding, k, agg) for k in entries]
        stack = self.maps.compute(groups, method=method, **choice)
        return dict(zip(entries, stack, strict=True))

    def current_map(self) -> np.ndarray:
        """The shown entry's map (H, W): the trace's `word_map` for a word, with the current choice."""
        return self.entry_maps()[self.entry.value]

    def rank(self, y: int, x: int) -> list[tuple[str, float]]:
        """Every word (or token) ranked by its attention at map pixel (y, x), highest first."""
        maps = self.entry_maps()
        return sorted(((k, float(m[y, x])) for k, m in maps.items()), key=lambda kv: -kv[1])

    def click(self, x: float, y: float) -> list[tuple[str, float]]:
        """A click at (x, y) in the shown picture's pixels: rank the entries at that place (and mark it)."""
        h, w = self.maps.size
        sy, sx = self.shown_hw
        self.pixel = (min(h - 1, max(0, int(y * h / sy))), min(w - 1, max(0, int(x * w / sx))))
        self.redraw()
        return self.ranked

    # -- drawing -----------------------------------------------------------------------------------------------------

    def redraw(self) -> None:
        """Draw the shown entry's map, with the objects' outlines, for the current choice (and the ranking, after a
        click, marked on both the picture and the map)."""
        try:
            maps = self.entry_maps()
        except KeyError as e:  # e.g. a step window with no recorded step
            self.caption.value = f"<span style='color:#b00020'>{html.escape(str(e.args[0]))}</span>"
            return
        m = maps[self.entry.value]
        if self.scale.value == "shared":
            lo = float(min(v.min() for v in maps.values()))
            hi = float(max(v.max() for v in maps.values()))
            what = f"colour scale: shared by all {len(maps)} {'tokens' if self.show_tokens.value else 'words'}"
        else:
            lo, hi = float(m.min()), float(m.max())
            what = "colour scale: per map (this map's min to max)"
        if self.method.value != "sdviz":
            what += f"; method {self.method.value!r}"
        shown = F.attention(m, lo, hi, self.lines)
        if self.pixel is not None:
            shown = self._mark(shown)
            self.picture_widget.value = F.png(self._mark(self.picture))
        self.image_widget.value = F.png(shown)
        unit = "mean attention probability" if self.method.value == "sdviz" else "the method's score"
        self.caption.value = colour_bar(lo, hi, f"{what}; {unit}; cyan: the objects' outlines", width=240)
        if self.pixel is not None:
            self.ranked = self.rank(*self.pixel)
            self.ranking.value = self._ranking_html()

    def _mark(self, a: np.ndarray) -> np.ndarray:
        """A white cross with a black outline at the inspected pixel."""
        a = a.copy()
        h, w = self.maps.size
        sy, sx = self.shown_hw
        cy, cx = int((self.pixel[0] + 0.5) * sy / h), int((self.pixel[1] + 0.5) * sx / w)
        for colour, r, t in (((0, 0, 0), 9, 2), ((255, 255, 255), 8, 1)):
            a[max(cy - t, 0) : cy + t + 1, max(cx - r, 0) : cx + r + 1] = colour
            a[max(cy - r, 0) : cy + r + 1, max(cx - t, 0) : cx + t + 1] = colour
        return a

    def _ranking_html(self) -> str:
        y, x = self.pixel
        h, w = self.maps.size
        top = self.ranked[0][1] if self.ranked and self.ranked[0][1] > 0 else 1.0
        rows = "".join(
            f"<tr><td>{i + 1}</td><td>{html.escape(k)}</td><td style='text-align:right'>{v:.4f}</td>"
            f"<td><div style='background:#d62728;height:9px;width:{max(1, int(90 * v / top))}px'></div></td></tr>"
            for i, (k, v) in enumerate(self.ranked)
        )
        return (
            f"<div style='font-size:12px'><b>pixel (y={y}, x={x})</b> of the {h}x{w} map: "
            f"{'tokens' if self.show_tokens.value else 'words'} by attention there"
            f"<table class='sdviz-ranking' style='font-size:12px'>{rows}</table></div>"
        )

    # -- display -------------------------------------------------------------------------------------------------------

    def static_animation(self, size: int = 256, max_frames: int = 26) -> StaticAnimation | None:
        """The shown word's attention over the steps as an animated GIF, on one colour scale for every step (None
        when steps were summed)."""
        if not self.maps.per_step_kept or self.show_tokens.value:
            return None
        from sdviz.viz import animate

        frames = animate.attention_frames(self.trace, self.entry.value, self.image, size)
        keep = np.unique(np.linspace(0, len(frames) - 1, max_frames).round().astype(int)).tolist()
        return StaticAnimation(
            animate.gif([frames[i] for i in keep], fps=6),
            f'the attention of "{self.entry.value}" over the steps, one colour scale (a static copy of the explorer)',
        )

    def _ipython_display_(self) -> None:
        display(self.widget)
        if self.animation and (anim := self.static_animation()) is not None:
            display(anim)


def explorer(trace: Trace, **kw: Any) -> Explorer:
    """An `Explorer` of a trace's cross-attention: `explorer(tr)` as the last expression of a cell shows it."""
    return Explorer(trace, **kw)

"""The feature browser: what one feature of a sparse autoencoder (SAE) fires on, where and when, and what the picture
loses when it is switched off.

    from sdviz.viz.widgets import feature_browser
    feature_browser(pipe)          # the shipped SAE of up_blocks.0.attentions.1 over 8 held-out pictures, 10 steps

When the panel opens it generates a few pictures (default: 8 held-out captions of the toy world, 10 DDIM steps, half
a second each) and encodes the SAE's hook point with the SAE at every pixel and step (the conditional rows, the ones
it was trained on). The panel reads everything from those codes, so picking a feature or a pixel generates nothing:

- **a feature** (typed, or among those the grading found best for a world concept, with its held-out AUROC from
  `sae_record.json`): the pictures where it fires most, each with its map beside it (`style.HEAT`, one scale for the
  panel, the objects' outlines in cyan): its activation averaged over the late steps (the last quarter), as graded;
- **over the steps**: its largest and mean activation at each step of the chosen picture, and its map at each step;
- **a pixel** (click a picture or a map): the features active there, strongest first, with their concepts;
- **switch it off**: the chosen picture generated again with the feature ablated (`sdviz.concepts.intervene(pipe,
  sae, ablate=[i])`, a `FeatureEdit` of `sdviz.causal`): before, after, their difference and the judge's verdicts.

A bad feature index is the SAE's own one-line error (it lists the valid range), in the panel.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ipywidgets as W
import numpy as np
import torch
from ipyevents import Event
from IPython.display import display

from sdviz.viz.style import HEAT
from sdviz.viz.widgets import frames as F
from sdviz.viz.widgets.common import StaticPicture, colour_bar, error, placeholder

if TYPE_CHECKING:
    from sdviz.concepts import SAE
    from sdviz.pipeline import StableDiffusion

SIZE = 128  # pixels of each shown picture and map: a whole multiple of 64 (the picture) and of 8 or 16 (the maps)
TOP = 4  # pictures shown for a feature, strongest first
STRIP = 64  # pixels of each map in the strip of steps
CSS = ("<style>.sdviz-features img {image-rendering: pixelated} .sdviz-features .widget-html-content {line-height: "
       "1.4} .sdviz-features-ranking td, .sdviz-features-ranking th {padding: 0 6px}</style>")  # blocky, compact


@dataclass
class Run:
    """One generation seen through the SAE: the picture, and the k strongest features at every pixel and step."""

    prompt: str
    seed: int
    picture: np.ndarray  # (H, W, 3) uint8
    index: torch.Tensor  # (steps, h*w, k) which features; a pixel's row holds every feature that fired there
    value: torch.Tensor  # (steps, h*w, k) their activations (0: did not fire)
    hw: tuple[int, int]  # the feature map's (h, w)

    def activation(self, feature: int) -> np.ndarray:
        """The feature's activation at every step and pixel: (steps, h, w)."""
        return (self.value * (self.index == feature)).sum(-1).reshape(-1, *self.hw).numpy()  # (steps, h*w) summed k

    def at(self, pixel: int, steps: Sequence[int], n: int) -> np.ndarray:
        """Every feature's activation at one pixel (row-major index), averaged over `steps`: (n,)."""
        dense = torch.zeros(len(steps), n)
        dense.scatter_(1, self.index[steps, pixel], self.value[steps, pixel])  # (steps, n)
        return dense.mean(0).numpy()


def encode_run(pipe: StableDiffusion, sae: SAE, prompt: str, seed: int, generate: dict[str, Any]) -> Run:
    """Generate one picture and encode the SAE's hook point at every step (the conditional rows)."""
    from sdviz.events import Scope, current_call
    from sdviz.hooks import hook_points

    codes: dict[int, torch.Tensor] = {}  # step -> (h*w, n)
    hw = [0, 0]

    def listen(x: torch.Tensor, _hook: Any) -> None:
        call = current_call()
        x = x[call.cond_rows][:1]  # (1, C, h, w): the row that sees the prompt
        hw[:] = x.shape[2:]
        with torch.no_grad():
            codes[call.step] = sae.encode(x[0].flatten(1).T.float())  # (C, h, w) -> (h*w, C) -> (h*w, n)

    scope = Scope()
    scope.open()
    handle = hook_points(pipe)[sae.point].listen(listen, scope=scope)
    try:
        picture = np.asarray(pipe.generate(prompt, seed=seed, **generate).image.convert("RGB"))
    finally:
        scope.close()
        handle.remove()
    top = torch.stack([codes[s] for s in sorted(codes)]).topk(sae.k, dim=-1)  # (steps, h*w, k) each
    return Run(prompt, seed, picture, top.indices, top.values, (hw[0], hw[1]))


def concept_labels(sae: SAE) -> dict[int, list[tuple[str, float]]]:
    """{feature: [(concept, held-out AUROC), ...]} for the features the shipped SAE's grading found best for a world
    concept, best first (empty for an SAE that was not shipped)."""
    from sdviz.concepts.card import load_record

    entry = load_record()["saes"].get(sae.point)
    if entry is None or (entry["n"], entry["k"]) != (sae.n, sae.k):
        return {}
    labels: dict[int, list[tuple[str, float]]] = {}
    for row in entry["grade"]["table"]:
        labels.setdefault(int(row["feature"]), []).append((row["concept"], float(row["auroc"])))
    return {f: sorted(found, key=lambda c: -c[1]) for f, found in labels.items()}


def describe(labels: dict[int, list[tuple[str, float]]], feature: int, many: int = 2) -> str:
    """'green (AUROC 0.98)': the concepts a feature was graded best for ('' when none)."""
    found = labels.get(feature, [])
    text = ", ".join(f"{c} (AUROC {a:.2f})" for c, a in found[:many])
    return text + (f" +{len(found) - many} more" if len(found) > many else "")


def put(image: W.Image, png: bytes) -> None:
    """Show PNG bytes at their natural width (read from the PNG header): the browser never resamples them."""
    image.value, image.layout.width = png, f"{int.from_bytes(png[16:20], 'big')}px"
    image.layout.min_width = image.layout.width  # a narrow notebook scrolls instead of squeezing it


def mark(a: np.ndarray, y: int, x: int, hw: tuple[int, int]) -> np.ndarray:
    """A white square with a black border around map pixel (y, x) of a picture shown at a whole multiple of `hw`."""
    a, f = a.copy(), a.shape[0] // hw[0]
    for colour, grow in (((0, 0, 0), 1), ((255, 255, 255), 0)):
        y0, y1 = max(0, y * f - grow), min(a.shape[0], (y + 1) * f + grow)
        x0, x1 = max(0, x * f - grow), min(a.shape[1], (x + 1) * f + grow)
        a[y0:y1, x0 : x0 + 1 + grow], a[y0:y1, x1 - 1 - grow : x1] = colour, colour
        a[y0 : y0 + 1 + grow, x0:x1], a[y1 - 1 - grow : y1, x0:x1] = colour, colour
    return a


class FeatureBrowser:
    """The panel (`.widget`, see the module docstring). `show(feature)`, `pick(run, y, x)` and `switch_off()` do what
    the controls do (for scripts and tests); `runs` are the encoded generations."""

    def __init__(self, pipe: StableDiffusion, sae: SAE, pairs: Sequence[tuple[str, int]], feature: int | None,
                 generate: dict[str, Any]):  # fmt: skip
        sae.check_pipe(pipe)  # trained on this model and hook point, or a one-line error
        self.pipe, self.sae, self.generate = pipe, sae, generate
        self.runs = [encode_run(pipe, sae, p, s, generate) for p, s in pairs]
        steps = len(self.runs[0].index)
        self.late = list(range(steps - max(1, steps // 4), steps))  # the last quarter of the steps
        self.labels = concept_labels(sae)
        self.feature, self.chosen, self.pixel, self.after, self.order = -1, 0, None, None, []  # order: strongest first
        if feature is None:  # the best-graded feature, else the strongest feature of the first picture
            best = max(self.labels.items(), key=lambda kv: kv[1][0][1], default=None)
            feature = best[0] if best else int(self.runs[0].at(0, self.late, sae.n).argmax())
        self._build(feature)
        self.show(feature)  # draws, or shows the SAE's error

    # -- the controls ----------------------------------------------------------------------------------------------

    def _build(self, feature: int) -> None:
        sae, self._events = self.sae, []
        graded = sorted(self.labels, key=lambda f: -self.labels[f][0][1])
        self.graded = W.Dropdown(options=[(f"{f}: {describe(self.labels, f, 1)}", f) for f in graded], value=None,
                                 description="graded", layout=W.Layout(width="380px"))  # fmt: skip
        self.number = W.IntText(value=feature, description="feature", layout=W.Layout(width="180px"))
        self.about, self.status, self.scale = W.HTML(), W.HTML(), W.HTML()
        self.tiles = [self._tile(i) for i in range(min(TOP, len(self.runs)))]
        self.chart, self.strip, self.compare = (W.Image(format="png") for _ in range(3))
        self.strip_caption = W.HTML("<div style='font-size:11px'>its map at each step of the chosen picture (0 = "
                                    "the noisiest; the same colour scale)</div>")  # fmt: skip
        self.at_pixel = W.HTML(
            "<div style='font-size:12px;color:#666'>click a picture or a map to list the features active there</div>",
            layout=W.Layout(width="360px", min_width="360px", margin="0 0 0 8px"),
        )
        self.off = W.Button(button_style="warning", layout=W.Layout(width="420px", margin="8px 0"))
        self.verdict = W.HTML(layout=W.Layout(width="420px"))
        self.switch = W.VBox([self.off, self.compare, self.verdict], layout=W.Layout(margin="0 0 0 16px"))
        self.graded.observe(self._on_graded, "value")
        self.number.observe(lambda c: self.show(c["new"]), "value")
        self.off.on_click(lambda _: self.switch_off())
        title = W.HTML(f"<b>SAE features</b> of <code>{html.escape(sae.point)}</code>: {sae.n} features, {sae.k} "
                       f"active per pixel; {len(self.runs)} pictures of {len(self.runs[0].index)} steps")  # fmt: skip
        self.widget = W.VBox([
            W.HTML(CSS), title, W.HBox([self.graded, self.number]), self.about, self.status,
            W.HBox([W.HBox([t[0] for t in self.tiles]), self.at_pixel], layout=W.Layout(align_items="flex-start")),
            self.scale, W.HBox([self.chart, self.switch], layout=W.Layout(align_items="flex-start")),
            self.strip_caption, self.strip,
        ])  # fmt: skip
        named = {"": self.widget, "-graded": self.graded, "-number": self.number, "-about": self.about}
        named |= {"-status": self.status, "-pixel": self.at_pixel, "-off": self.off, "-compare": self.compare}
        named |= {"-verdict": self.verdict, "-chart": self.chart}
        for name, widget in named.items():
            widget.add_class(f"sdviz-features{name}")  # for the browser test
        self.static = StaticPicture(placeholder(SIZE, 24), "the feature browser's pictures")

    def _tile(self, i: int) -> tuple[W.VBox, W.Image, W.Image, W.HTML]:
        """One shown picture, its map under it and a caption; a click on either picks a pixel (ipyevents)."""
        picture, heat = (W.Image(format="png", layout=W.Layout(width=f"{SIZE}px", min_width=f"{SIZE}px", margin=m))
                         for m in ("0", "4px 0 0 0"))  # fmt: skip
        picture.add_class("sdviz-features-picture")
        heat.add_class("sdviz-features-map")
        caption = W.HTML(layout=W.Layout(width=f"{SIZE}px"))
        for source in (picture, heat):  # ipyevents: a click in the picture's own pixels (shown at its natural size)
            events = Event(source=source, watched_events=["click"], prevent_default_action=True)
            events.on_dom_event(lambda e, i=i: self.click(i, e.get("dataX", 0), e.get("dataY", 0)))
            self._events.append(events)
        box = W.VBox([picture, heat, caption], layout=W.Layout(margin="0 8px 8px 0"))  # captions last: pictures align
        return box, picture, heat, caption

    def _on_graded(self, change: dict) -> None:
        if change["new"] is not None:  # None: the typed feature is not among the graded ones
            self.number.value = change["new"]

    # -- what the controls do --------------------------------------------------------------------------------------

    def show(self, feature: int) -> None:
        """Show a feature: its strongest pictures, when it fires, and the button to switch it off."""
        try:
            self.sae.check_feature(feature)
        except IndexError as e:
            self.status.value = error(str(e))
            return
        self.feature, self.pixel, self.after = feature, None, None
        self.graded.value = feature if feature in self.labels else None  # (setting the same value does nothing)
        strength = [float(r.activation(feature)[self.late].mean(0).max()) for r in self.runs]
        self.order = sorted(range(len(self.runs)), key=lambda i: -strength[i])
        self.chosen = self.order[0]
        self.hi = max(1e-6, max(float(r.activation(feature).max()) for r in self.runs))  # one scale for the panel
        about = describe(self.labels, feature, many=4)
        about = html.escape(about) if about else "not the best feature of any graded concept"
        self.about.value = f"<div style='font-size:12px'><b>feature {feature}</b>: {about}</div>"
        self.status.value = (f"<span style='font-size:12px'>fires in the late steps of {sum(s > 0 for s in strength)} "
                             f"of {len(self.runs)} pictures; the strongest first</span>")  # fmt: skip
        self.scale.value = colour_bar(0.0, self.hi, f"feature {feature}'s activation (late steps' mean)", HEAT, 240)
        self.off.description = f"switch feature {feature} off and regenerate the chosen picture"
        put(self.compare, placeholder(3 * SIZE + 8, 24))
        self.verdict.value = ""
        self._draw()
        self.static.update(F.png(self.overview()), f"feature {feature}: the pictures where it fires most, and its map")

    def _map(self, run: Run, steps: Sequence[int], size: int) -> np.ndarray:
        """The feature's map averaged over `steps`, blocky at `size` pixels, with the objects' outlines."""
        a = F.enlarge(F.heat(run.activation(self.feature)[steps].mean(0), 0.0, self.hi), size).copy()
        a[F.outlines(run.picture, a.shape[:2])] = F.OUTLINE_RGB
        return a

    def _draw(self) -> None:
        """The tiles (the chosen one with its pixel marked), the chart, the strip of steps and the pixel list."""
        for rank, (_, picture, heat, caption) in enumerate(self.tiles):
            run = self.runs[self.order[rank]]
            big, view = F.enlarge(run.picture, SIZE), self._map(run, self.late, SIZE)
            if self.pixel is not None and self.order[rank] == self.chosen:
                big, view = mark(big, *self.pixel, run.hw), mark(view, *self.pixel, run.hw)
            picture.value, heat.value = F.png(big), F.png(view)
            peak = float(run.activation(self.feature)[self.late].mean(0).max())
            chosen = " <b>(chosen)</b>" if self.order[rank] == self.chosen else ""
            caption.value = (f"<div style='font-size:11px;line-height:1.3'>#{rank + 1}{chosen}: "
                             f"{html.escape(run.prompt)}, seed {run.seed}; max {peak:.3g}</div>")  # fmt: skip
        put(self.chart, self._chart())
        run = self.runs[self.chosen]
        maps = [F.label(self._map(run, [s], STRIP), str(s), height=14) for s in range(len(run.index))]
        put(self.strip, F.png(F.hstack(maps, gap=2)))
        if self.pixel is not None:
            self.at_pixel.value = self._pixel_html()

    def _chart(self) -> bytes:
        """The feature's largest and mean activation over the pixels at each step (matplotlib, as PNG bytes)."""
        from sdviz.viz.display import Figure, png_bytes

        fig = Figure(figsize=(4.6, 2.4), dpi=100, layout="constrained")
        ax = fig.add_subplot()
        for i, run in enumerate(self.runs):
            if i != self.chosen:
                ax.plot(run.activation(self.feature).max((1, 2)), color="#bbbbbb", linewidth=0.8)
        a = self.runs[self.chosen].activation(self.feature)
        ax.plot(a.max((1, 2)), color="#b5367a", label="max, chosen picture")
        ax.plot(a.mean((1, 2)), color="#b5367a", linestyle="--", label="mean, chosen picture")
        ax.axvspan(self.late[0] - 0.5, self.late[-1] + 0.5, color="#fde2a7", alpha=0.5, label="late steps")
        ax.set_xlabel("step (0 = the noisiest)", fontsize=8)
        ax.set_ylabel(f"feature {self.feature}", fontsize=8)
        ax.tick_params(labelsize=7)
        fig.legend(fontsize=7, loc="outside upper center", ncols=3, frameon=False)
        return png_bytes(fig)

    def click(self, tile: int, x: float, y: float) -> list[tuple[int, float]]:
        """A click at (x, y) in a shown picture's (or map's) pixels: pick that picture and its map pixel."""
        run, (h, w) = self.order[tile], self.runs[self.order[tile]].hw
        return self.pick(run, min(h - 1, max(0, int(y * h / SIZE))), min(w - 1, max(0, int(x * w / SIZE))))

    def pick(self, run: int, y: int, x: int) -> list[tuple[int, float]]:
        """Choose picture `run` and map pixel (y, x): the features active there in the late steps, strongest first,
        as (feature, mean activation); they are listed in the panel with their concepts."""
        self.chosen, self.pixel = run, (y, x)
        self.ranked = self.features_at(run, y, x)
        self._draw()
        return self.ranked

    def features_at(self, run: int, y: int, x: int) -> list[tuple[int, float]]:
        """Every feature active at map pixel (y, x) of a run, averaged over the late steps, strongest first."""
        z = self.runs[run].at(y * self.runs[run].hw[1] + x, self.late, self.sae.n)  # (n,)
        return [(int(f), float(z[f])) for f in np.argsort(-z, kind="stable") if z[f] > 0]

    def _pixel_html(self) -> str:
        (y, x), (h, w), top = self.pixel, self.runs[self.chosen].hw, max(v for _, v in self.ranked[:1] or [(0, 1)])
        rows = "".join(
            f"<tr><td>{f}</td><td style='text-align:right'>{v:.3f}</td><td><div style='background:#b5367a;height:9px;"
            f"width:{max(1, int(60 * v / top))}px'></div></td><td>{html.escape(describe(self.labels, f, 1))}</td></tr>"
            for f, v in self.ranked[:10]
        )
        return (f"<div style='font-size:12px'><b>pixel (y={y}, x={x})</b> of the {h}x{w} map of #"
                f"{self.order.index(self.chosen) + 1}: {len(self.ranked)} features active (late steps' mean)"
                f"<table class='sdviz-features-ranking' style='font-size:12px'><tr><th>feature</th><th>activation"
                f"</th><th></th><th>graded best for</th></tr>{rows}</table></div>")  # fmt: skip

    def switch_off(self) -> np.ndarray | None:
        """Generate the chosen picture again with the feature ablated; show before, after, the difference and the
        judge's verdict. Returns the new picture (None after an error, shown in the panel)."""
        from sdviz.concepts import intervene

        run = self.runs[self.chosen]
        self.verdict.value = "<i>generating ...</i>"
        try:
            with intervene(self.pipe, self.sae, ablate=[self.feature]):
                result = self.pipe.generate(run.prompt, seed=run.seed, **self.generate)
        except (ValueError, IndexError, KeyError) as e:
            self.verdict.value = error(str(e))
            return None
        after = self.after = np.asarray(result.image.convert("RGB"))
        diff = np.abs(after.astype(np.int16) - run.picture.astype(np.int16)).max(-1).astype(np.float32)
        shown = ((run.picture, "before"), (after, f"feature {self.feature} off"),
                 (F.heat(diff, 0.0, max(1.0, float(diff.max()))), "|after - before|"))  # fmt: skip
        put(self.compare, F.png(F.hstack([F.label(F.enlarge(a, SIZE), t) for a, t in shown])))
        self.verdict.value = self._verdict(run, after)
        return after

    def _verdict(self, run: Run, after: np.ndarray) -> str:
        """What the toy judge reads in both pictures (the embedded model's world only)."""
        if not self.pipe.vocabulary:
            return ""
        from sdviz.toy.judge import judge

        def read(picture: np.ndarray) -> str:
            try:
                v = judge(picture, run.prompt)
            except ValueError:
                return "(not a caption of the world)"
            drawn = ", ".join(f"{n} {c}" for c, n in v.counts.items()) or "nothing"
            return f"{'correct' if v.correct else 'wrong'} (drawn: {drawn})"

        lines = [f"prompt: {run.prompt}", f"before: {read(run.picture)}", f"after: {read(after)}"]
        return "<div style='font-size:12px'><b>the judge</b><br>" + "<br>".join(map(html.escape, lines)) + "</div>"

    # -- display -----------------------------------------------------------------------------------------------------

    def overview(self) -> np.ndarray:
        """The shown pictures and their maps as one picture (the static copy under the widget)."""
        tiles = [F.hstack([F.enlarge(self.runs[i].picture, SIZE), self._map(self.runs[i], self.late, SIZE)])
                 for i in self.order[: len(self.tiles)]]  # fmt: skip
        return F.label(F.hstack(tiles, gap=12), f"feature {self.feature}: {describe(self.labels, self.feature)}")

    def _ipython_display_(self) -> None:
        display(self.widget)
        self.static.show()


def feature_browser(
    pipe: StableDiffusion | None = None,
    sae: SAE | str | None = None,
    prompts: Sequence[str] | None = None,
    seeds: Sequence[int] | int | None = None,
    steps: int = 10,
    feature: int | None = None,
    **generate: Any,
) -> FeatureBrowser:
    """A `FeatureBrowser` (see the module docstring); as the last expression of a cell it shows the panel.

    Args:
        pipe: the pipeline (default: the embedded model).
        sae: an SAE, or the hook point of a shipped one (default: `sdviz.concepts.load_sae()`).
        prompts: the pictures to browse (default: the first 8 held-out captions of the toy world, with their seeds).
        seeds: one per prompt, or one for all (default: the held-out seeds, else 0, 1, 2, ...).
        steps: DDIM steps per picture; other keyword arguments go to `pipe.generate` (default cfg 5).
        feature: the feature shown first (default: the one the SAE's grading found best for a concept).
    """
    from sdviz.concepts import load_sae
    from sdviz.pipeline import load_pipeline

    pipe = load_pipeline() if pipe is None else pipe
    sae = load_sae() if sae is None else load_sae(sae) if isinstance(sae, str) else sae
    if prompts is None:
        from sdviz.toy.world import held_out_prompts

        pairs = held_out_prompts(8)
        prompts = [p for p, _ in pairs]
        seeds = [s for _, s in pairs] if seeds is None else seeds
    seeds = list(range(len(prompts))) if seeds is None else seeds
    seeds = [seeds] * len(prompts) if isinstance(seeds, int) else list(seeds)
    if not prompts or len(seeds) != len(prompts):
        raise ValueError(f"prompts and seeds: give one seed per prompt ({len(prompts)} prompts, {len(seeds)} seeds)")
    settings = {"cfg_scale": 5.0, "sampler": "ddim", **generate, "steps": steps, "progress": False}
    return FeatureBrowser(pipe, sae, list(zip(prompts, seeds, strict=True)), feature, settings)

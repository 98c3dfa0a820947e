"""The what-if panel: tick a word, a head or a layer to ablate, or a window of steps to patch from another prompt;
regenerate, and see the picture before and after, their difference, and (on the embedded model) the judge's verdict.

    from sdviz.viz.widgets import what_if
    what_if(pipe, "a large red circle above a small blue square")

Every run is `sdviz.causal` underneath (`AblateWord`, `AblateHead`, `AblateCrossAttention`, `Patch`), so what the
panel shows is what a script would measure. The "before" run is also watched at every cross-attention layer, for
both halves of each guided step: the panel shows the maps of the start token and of the negative prompt's words
(the unconditional half, which no word map of the prompt shows), and how much of the attention mass the start
token took in each half.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import ipywidgets as W
import numpy as np
import torch
import torch.nn.functional as F_

from sdviz.viz.style import SETTINGS
from sdviz.viz.widgets import frames as F

if TYPE_CHECKING:
    from sdviz.pipeline import StableDiffusion

KINDS = ("ablate a word", "ablate a head", "ablate a layer's cross-attention", "patch from another prompt")
SIZE = 192  # pixels of each picture panel


class StartToken:
    """Watches every cross-attention layer of a generation (both halves of the batch): the attention mass each token
    took, per half, and each token's map of the unconditional half, summed over heads, layers and steps."""

    def __init__(self, pipe: StableDiffusion):
        self.pipe = pipe
        self.mass = {"cond": torch.zeros(77), "uncond": torch.zeros(77)}  # summed probability per token
        self.count = {"cond": 0, "uncond": 0}  # query rows summed
        self.sums: dict[str, torch.Tensor] = {}  # layer -> (77, n) the unconditional half's probabilities, summed
        self.latent_hw = (0, 0)

    def listener(self, name: str) -> Any:
        return lambda probs, hook: self.hear(name, probs, hook)

    def hear(self, name: str, probs: torch.Tensor, hook: Any) -> None:
        from sdviz.events import current_call

        call = current_call()
        if call is None:
            return
        self.latent_hw = call.info.latent_hw
        for r in range(hook.rows.start, hook.rows.stop):
            half = "cond" if call.is_cond(r) else "uncond"
            p = probs[r - hook.rows.start].float()  # (heads, queries, 77)
            self.mass[half] += p.sum((0, 1))
            self.count[half] += p.shape[0] * p.shape[1]
            if half == "uncond":
                n = hook.queries.stop if hook.queries is not None else p.shape[1]
                total = self.sums.setdefault(name, torch.zeros(77, 0))
                if total.shape[1] < n:
                    total = torch.cat([total, torch.zeros(77, n - total.shape[1])], 1)
                queries = hook.queries or slice(0, p.shape[1])
                total[:, queries] += p.mean(0).T  # (queries, 77) -> (77, queries)
                self.sums[name] = total

    @property
    def maps(self) -> torch.Tensor | None:
        """(77, h, w): each token's map in the unconditional half, layers brought to the latent grid and summed."""
        if not self.sums:
            return None
        h, w = self.latent_hw
        out = torch.zeros(77, h, w)
        for total in self.sums.values():
            f = int(round((h * w / total.shape[1]) ** 0.5))  # the layer's downsampling
            m = total.reshape(77, 1, h // f, w // f)  # (77, n) -> (77, 1, h', w')
            out += F_.interpolate(m, size=(h, w), mode="nearest")[:, 0]
        return out

    def share(self, half: str, position: int = 0) -> float:
        """The share of the attention mass that token `position` took in one half (0..1)."""
        return float(self.mass[half][position] / max(1, self.count[half]))


class WhatIf:
    """The panel (`.widget`); `regenerate()` runs what the controls say and returns the intervention it used."""

    def __init__(self, pipe: StableDiffusion, prompt: str, seed: int = 1, negative_prompt: str = "", **generate: Any):
        from sdviz.hooks import hook_names

        self.pipe, self.prompt, self.seed, self.negative = pipe, prompt, seed, negative_prompt
        self.generate_kwargs = {**SETTINGS, **generate, "progress": False}
        words = list(dict.fromkeys(pipe.tokenizer.encode(prompt).words))
        layers = [n.rsplit(".", 1)[0] for n in hook_names(pipe, "unet.*.hook_context")]
        self.kind = W.Dropdown(options=KINDS, description="what")
        self.word = W.Dropdown(options=words, value=words[min(1, len(words) - 1)], description="word")
        self.mode = W.Dropdown(options=("zero", "renorm", "padding"), description="how")
        self.layer = W.Dropdown(options=["every layer", *layers], description="layer")
        self.head = W.Dropdown(options=list(range(pipe.unet.config.num_heads)), description="head")
        self.window = W.FloatRangeSlider(value=(0.0, 1.0), min=0.0, max=1.0, step=0.05, description="steps")
        self.source = W.Text(value=prompt, description="patch from")
        self.button = W.Button(description="Regenerate", button_style="primary")
        self.pictures = W.Image(format="png")
        self.verdict = W.HTML()
        self.attention = W.HTML()
        self.maps = W.Image(format="png")
        self.status = W.HTML()
        self.button.on_click(lambda _: self.regenerate())
        controls = W.VBox([self.kind, self.word, self.mode, self.layer, self.head, self.window, self.source])
        self.widget = W.VBox(
            [
                W.HBox([controls, W.VBox([self.button, self.status])]),
                self.pictures,
                self.verdict,
                self.attention,
                self.maps,
            ]
        )
        named = {"": self.widget, "-run": self.button, "-pictures": self.pictures, "-kind": self.kind}
        named |= {"-verdict": self.verdict, "-status": self.status, "-attention": self.attention}
        for name, widget in named.items():
            widget.add_class(f"sdviz-what-if{name}")  # for the browser test
        self.before = self._before()

    def _generate(self, prompt: str) -> Any:
        kw = {**self.generate_kwargs, "negative_prompt": self.negative}
        return self.pipe.generate(prompt, seed=self.seed, **kw)

    def _before(self) -> np.ndarray:
        """The plain run, watched at every cross-attention layer: the start token's share and the negative maps."""
        from sdviz.events import Scope
        from sdviz.hooks import hook_points

        watch = StartToken(self.pipe)
        scope, handles = Scope(), []
        scope.open()
        try:
            for name, point in hook_points(self.pipe).items():
                if name.endswith("attn2.hook_probs"):
                    handles.append(point.listen(watch.listener(name), scope=scope))
            picture = np.asarray(self._generate(self.prompt).image.convert("RGB"))
        finally:
            scope.close()
            for h in handles:
                h.remove()
        self.watch = watch
        self._show_attention()
        return picture

    def intervention(self) -> Any:
        """The sdviz.causal intervention the controls describe."""
        from sdviz.causal import AblateCrossAttention, AblateHead, AblateWord, Patch, record

        layers = None if self.layer.value == "every layer" else self.layer.value
        window = tuple(self.window.value)
        kind = self.kind.value
        if kind == KINDS[0]:
            return AblateWord(self.word.value, layers=layers, window=window, mode=self.mode.value)
        if kind == KINDS[1]:
            return AblateHead(layers, int(self.head.value), window=window)
        if kind == KINDS[2]:
            return AblateCrossAttention(layers, window=window)
        kw = {**self.generate_kwargs, "negative_prompt": self.negative}
        hooks = "unet.*.hook_block_out" if layers is None else f"{layers.rsplit('.', 2)[0]}.hook_block_out"
        source = record(self.pipe, self.source.value, hooks=hooks, seed=self.seed, **kw)
        return Patch(source, hooks=hooks, window=window)

    def regenerate(self) -> Any:
        """Run the intervention the controls describe, and show before, after, their difference and the verdict."""
        from sdviz.causal import intervene

        self.status.value = "<i>generating ...</i>"
        try:
            iv = self.intervention()
            with intervene(self.pipe, iv):
                after = np.asarray(self._generate(self.prompt).image.convert("RGB"))
        except (ValueError, KeyError, TypeError) as e:
            self.status.value = f"<span style='color:#b00020'>{html.escape(str(e))}</span>"
            return None
        diff = np.abs(after.astype(np.int16) - self.before.astype(np.int16)).max(-1).astype(np.float32)
        heat = F.heat(diff, 0.0, max(1.0, float(diff.max())), "magma")
        shown = ((self.before, "before"), (after, "after"), (heat, "|after - before|"))
        row = [F.label(F.enlarge(a, SIZE), t) for a, t in shown]
        self.pictures.value = F.png(F.hstack(row))
        self.after = after
        self.verdict.value = self._verdict(after)
        self.status.value = f"<code>{html.escape(repr(iv))}</code>"
        return iv

    def _verdict(self, after: np.ndarray) -> str:
        """What the judge reads in each picture (the embedded model's world only)."""
        if not self.pipe.vocabulary:
            return ""
        from sdviz.toy.judge import judge

        def read(picture: np.ndarray, prompt: str) -> str:
            try:
                v = judge(picture, prompt)
            except ValueError:
                return "(not a caption of the world)"
            said = {True: "ok", False: "wrong", None: "-"}
            marks = [
                f"{o.colour} {o.shape}: colour {said[o.colour_ok]}, shape {said[o.shape_ok]}, "
                f"position {said[o.position_ok]}"
                for o in v.objects
            ]
            return "; ".join(marks) + f" (correct: {v.correct})"

        lines = [f"before: {read(self.before, self.prompt)}", f"after: {read(after, self.prompt)}"]
        if self.kind.value == KINDS[3] and self.source.value != self.prompt:
            lines.append(f"after, read as {self.source.value!r}: {read(after, self.source.value)}")
        return "<div style='font-size:12px'><b>the judge</b><br>" + "<br>".join(map(html.escape, lines)) + "</div>"

    def _show_attention(self) -> None:
        w = self.watch
        cond, uncond = w.share("cond"), w.share("uncond")
        self.attention.value = (
            f"<div style='font-size:12px'>the start token took <b>{100 * cond:.0f} %</b> of the attention mass in the "
            f"conditional half and <b>{100 * uncond:.0f} %</b> in the unconditional half (negative prompt "
            f"{self.negative!r})</div>"
        )
        maps = w.maps
        if maps is None:
            return
        enc = self.pipe.tokenizer.encode(self.negative)
        panels = [(0, "start token (uncond)")]
        panels += [(p, f"'{word}' (negative)") for word in dict.fromkeys(enc.words) for p in enc.positions(word)[:1]]
        panels += [(enc.length - 1, "end token (uncond)")]
        tiles = []
        for pos, text in panels:
            m = maps[pos].numpy()
            tiles.append(F.label(F.enlarge(F.heat(m, float(m.min()), float(m.max()) + 1e-12), 128), text))
        self.maps.value = F.png(F.hstack(tiles))


def what_if(pipe: StableDiffusion, prompt: str, seed: int = 1, negative_prompt: str = "", **generate: Any) -> W.VBox:
    """The what-if panel (an ipywidgets box); `box.panel` is its `WhatIf` (call `box.panel.regenerate()`)."""
    panel = WhatIf(pipe, prompt, seed, negative_prompt, **generate)
    box = panel.widget
    box.panel = panel
    return box

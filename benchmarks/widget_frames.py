"""How long a frame of the player and of the attention explorer takes: from a control's new value to the new image
bytes assigned to the image widget (in-process; the widgets' state is extracted for sending as in a kernel, the
send itself is a no-op outside one). Goal: <= 100 ms per frame on 2 CPU cores.

One traced generation of the embedded model per size, 50 DDIM steps, cfg 5, every x0 decoded: at 64x64 (its own
size) with every step, layer and head kept; at 256x256 (a 64x64 latent: the latent and attention grid of SD 1.5 at
512x512) with every step kept. Then, timed one by one:

    player     the step slider moved to every step, in a shuffled order (what scrubbing does)
    play       the steps in order (what Play does)
    word       the explorer's word picker moved to another word
    window     the explorer's step window moved (a new reduction over the steps: the costly explorer frame)
    layer      the layer / head pickers changed
    click      a click on the picture (ranks every word there, redraws with the marker)

    .venv/bin/python benchmarks/widget_frames.py [--sizes 64,256] [--steps 50] [--threads 2]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable, Iterable

import torch

from sdviz.pipeline import load_pipeline
from sdviz.tracing import trace
from sdviz.viz.widgets import explorer, player

PROMPT = "a large red circle above a small blue square"
GOAL_MS = 100.0


def timed(actions: Iterable[Callable[[], object]]) -> list[float]:
    """Milliseconds each action took."""
    out = []
    for act in actions:
        start = time.perf_counter()
        act()
        out.append((time.perf_counter() - start) * 1000)
    return out


def report(name: str, ms: list[float]) -> float:
    ms = sorted(ms)
    p95 = ms[min(len(ms) - 1, int(0.95 * len(ms)))]
    median = statistics.median(ms)
    print(f"  {name:<8} median {median:6.2f} ms   p95 {p95:6.2f} ms   max {ms[-1]:6.2f} ms   ({len(ms)} frames)")
    return ms[-1]


def setter(widget, value) -> Callable[[], None]:
    def act() -> None:
        widget.value = value

    return act


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="64,256", help="picture sizes to trace, comma-separated")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = random.Random(0)
    pipe = load_pipeline()
    worst = 0.0
    for size in (int(s) for s in args.sizes.split(",")):
        keep = ["step", "layer", "head"] if size <= 64 else ["step"]
        with trace(pipe, record=["cross_attention", "latents"], keep=keep, decode=True) as tr:
            pipe.generate(PROMPT, seed=1, steps=args.steps, cfg_scale=5.0, sampler="ddim", height=size, width=size,
                          progress=False)  # fmt: skip
        latent = size // pipe.config.vae.downsampling_factor
        print(f"embedded model, {size}x{size} pictures ({latent}x{latent} latents), {args.steps} steps, "
              f"{args.threads} threads; trace keeps {', '.join(keep)}: {tr.nbytes() / 1e6:.1f} MB")  # fmt: skip

        start = time.perf_counter()
        p = player(tr, animation=False)
        print(f"  player built (every frame prepared) in {time.perf_counter() - start:.2f} s")
        order = list(range(args.steps))
        rng.shuffle(order)
        worst = max(worst, report("player", timed(setter(p.slider, i) for i in order)))
        worst = max(worst, report("play", timed(setter(p.slider, i) for i in range(args.steps))))

        start = time.perf_counter()
        ex = explorer(tr, animation=False)
        print(f"  explorer built in {time.perf_counter() - start:.2f} s")
        words = list(ex.words)
        worst = max(worst, report("word", timed(setter(ex.entry, words[i % len(words)]) for i in range(1, 41))))
        windows = [(a, min(args.steps - 1, a + w)) for a in range(0, args.steps, 3) for w in (5, 20)]
        worst = max(worst, report("window", timed(setter(ex.window, w) for w in windows)))
        picks = [setter(ex.where, v) for _, v in ex.where.options[1:]]
        picks += [setter(ex.head, h) for _, h in ex.head.options]
        worst = max(worst, report("layer", timed(picks)))
        h, w = ex.shown_hw
        points = [(rng.random() * w, rng.random() * h) for _ in range(20)]
        worst = max(worst, report("click", timed(lambda e=ex, x=x, y=y: e.click(x, y) for x, y in points)))
    print(f"goal: <= {GOAL_MS:.0f} ms per frame -> {'met' if worst <= GOAL_MS else 'NOT met'} (worst {worst:.1f} ms)")


if __name__ == "__main__":
    main()

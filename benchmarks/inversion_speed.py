"""How long inverting a picture takes on the embedded model, beside one generation, in one run.

    .venv/bin/python benchmarks/inversion_speed.py [--threads 2] [--scenes 3] [--steps 50]

For a few of the toy world's own held-out scenes it times, at 50 DDIM steps and cfg 5:

- one generation of the scene's caption (the unit: 50 guided steps, 100 UNet rows);
- negative-prompt inversion (Miyake et al. 2023): the cfg-1 DDIM walk, 50 conditional UNet rows, and nothing else;
- null-text inversion (Mokady et al. 2023): the walk, then per step up to 10 Adam iterations (each a forward and a
  backward pass of the UNet) and the guided step; the goal is under 30 s per picture on 2 threads.

It prints the medians (wall clock, and the process's CPU time summed over its threads) and the ratios to the
generation, and the CPU's load while it ran: the seconds are only as quiet as the machine (on a shared machine,
compare the ratios and the CPU seconds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from functools import partial

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--scenes", type=int, default=3)
    p.add_argument("--steps", type=int, default=50)
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    from sdviz.inversion import invert
    from sdviz.pipeline import load_pipeline
    from sdviz.toy import world

    pipe = load_pipeline()
    times: dict[str, list[float]] = {"generation": [], "negative_prompt": [], "null_text": []}
    cpu: dict[str, list[float]] = {k: [] for k in times}
    load = os.getloadavg()[0]
    pipe.generate("a red circle", steps=2, progress=False)  # warm-up

    def timed(name: str, fn) -> None:
        w, c = time.perf_counter(), time.process_time()
        fn()
        times[name].append(time.perf_counter() - w)
        cpu[name].append(time.process_time() - c)

    for prompt, seed in world.held_out_prompts(a.scenes):
        picture = world.scene_from_spec(prompt, seed).pil()
        timed("generation", partial(pipe.generate, prompt, seed=seed, steps=a.steps, cfg_scale=5.0, sampler="ddim",
                                    progress=False))  # fmt: skip
        timed("negative_prompt", partial(invert, pipe, picture, prompt, "negative_prompt", a.steps, progress=False))
        timed("null_text", partial(invert, pipe, picture, prompt, "null_text", a.steps, progress=False))
    load = (load + os.getloadavg()[0]) / 2
    gen = statistics.median(times["generation"])
    print(f"embedded model, {a.scenes} scenes, {a.steps} DDIM steps, cfg 5, {a.threads} torch threads, "
          f"load average ~{load:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
    for name, ts in times.items():
        m, c = statistics.median(ts), statistics.median(cpu[name])
        print(f"  {name:16s} {m:7.2f} s per picture (CPU {c:7.2f} s, all threads)   x{m / gen:5.2f} of one generation")
    verdict = "meets" if statistics.median(times["null_text"]) < 30 else "misses"
    print(f"null-text inversion {verdict} the goal of < 30 s per picture (on this machine, at this load)")


if __name__ == "__main__":
    main()

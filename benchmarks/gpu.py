"""sdviz on a CUDA GPU: speed against diffusers, torch.compile, what a trace costs, memory, float16 and bfloat16.

One prepared script, for the SD 1.5 configuration with random weights at 512x512, one guided image (a UNet batch of
2) in float16. Each measurement is one labelled line; a section that fails prints its error in one line and the
others go on; a summary against the goals comes last. Under 8 minutes on an H100.

    python benchmarks/gpu.py                          # CUDA: SD 1.5, 512 and 768 px
    python benchmarks/gpu.py --device cpu --small     # the same code on the CPU: TINY, float32, 64 and 96 px (a test)

Sections (`--sections` runs some of them):

    eager      sdviz's UNet vs diffusers' UNet2DConditionModel on the same weights, in one process, interleaved:
               ms per denoising step (one UNet call on the guided batch), NCHW and channels_last; and the
               pipeline's ms per step (generate with n2 and n1 steps: the difference / (n2 - n1))
    compile    torch.compile mode "reduce-overhead": ms per step, whether CUDA graphs were used, graph breaks
    trace      tracing the compiled pipeline: records equal an uncompiled trace's, no recompilation, a traced
               step's cost (generate runs the UNet eagerly while anyone listens, so a trace costs eager speed)
    memory     peak GPU memory of a record="all" trace over the untraced run's, against the trace's estimate
    nan        float16 and bfloat16 at 512 and 768: finite latents and pixels, VAE float32 fallback used or not
    batch      batch invariance on the device: a seed alone vs the same seed at batch positions 0 and 2
    embedded   the embedded model's picture time (64x64, 50 DDIM steps, cfg 5)
    autotune   torch.compile mode "max-autotune-no-cudagraphs", in a child process stopped at the time budget

Goals on the GPU: sdviz eager <= diffusers eager; compiled <= 7.8 ms per step (diffusers' best measured on an H100,
with torch.compile and CUDA graphs); a compiled pipeline can be traced.

Timing: CUDA events on a GPU (perf_counter on the CPU), medians of interleaved repetitions after warm-up. Whether
CUDA graphs were used is read from inductor's cudagraph trees (graphs recorded) and its `cudagraph_skips` counter.
diffusers is optional (`diffusers not installed: skipped`); the rest needs only sdviz's own dependencies.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # reference.py: diffusers' UNet built from an sdviz config

import sdviz  # noqa: E402
from sdviz.config import SD15, TINY, SDConfig  # noqa: E402
from sdviz.models.clip import CLIPTextEncoder  # noqa: E402
from sdviz.models.unet import UNet  # noqa: E402
from sdviz.models.vae import VAE  # noqa: E402
from sdviz.pipeline import StableDiffusion, load_pipeline  # noqa: E402
from sdviz.weights import Models, from_diffusers  # noqa: E402

PROMPT = "a photograph of an astronaut riding a horse"
GOAL_COMPILED_MS = 7.8  # diffusers' best on an H100 (torch.compile and CUDA graphs), SD 1.5, 512x512, batch 2, fp16
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
SECTIONS = ("eager", "compile", "trace", "memory", "nan", "batch", "embedded", "autotune")


@dataclass
class Bench:
    """What every section needs: the device, the sizes, a timer, and what earlier sections built."""

    device: torch.device
    small: bool
    backend: str
    budget_s: float
    start: float = field(default_factory=time.perf_counter)
    dtype: torch.dtype = torch.float16
    channels_last: bool = False  # the layout the compiled sections use: the faster one in eager
    unet: Any = None  # sdviz's UNet in `dtype` (random weights: diffusers' when diffusers is installed)
    compiled: Any = None  # torch.compile(unet, mode="reduce-overhead")
    pipe: StableDiffusion | None = None  # the pipeline around `unet`
    summary: dict[str, str] = field(default_factory=dict)

    @property
    def cfg(self) -> SDConfig:
        return TINY if self.small else SD15

    @property
    def sizes(self) -> tuple[int, int]:
        return (64, 96) if self.small else (512, 768)

    @property
    def steps(self) -> tuple[int, int]:
        """Two step counts: the per-step time of a pipeline is the difference of their run times / their difference."""
        return (2, 6) if self.small else (5, 25)

    @property
    def reps(self) -> int:
        return 3 if self.small else 20

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def time_ms(self, fn: Callable[[], Any]) -> float:
        """Milliseconds one call of `fn` takes (CUDA events on a GPU)."""
        if self.cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            return begin.elapsed_time(end)
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3

    def unet_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One guided step's UNet input: latents (2, 4, h, w), timesteps (2,) int64 as the pipeline passes them,
        context (2, 77, C). NCHW, as the pipeline passes them (a channels_last model converts at its first conv)."""
        g = torch.Generator().manual_seed(0)
        h = self.sizes[0] // self.cfg.vae.downsampling_factor
        x = torch.randn(2, self.cfg.unet.in_channels, h, h, generator=g)
        ctx = torch.randn(2, self.cfg.clip.max_length, self.cfg.unet.context_dim, generator=g)
        t = torch.full((2,), 500, device=self.device)
        return x.to(self.device, self.dtype), t, ctx.to(self.device, self.dtype)


def say(label: str, text: str) -> None:
    print(f"  {label:<34} {text}", flush=True)


def one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:300]}" if lines else type(e).__name__


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def interleaved_ms(b: Bench, fns: dict[str, Callable[[], Any]], warmup: int = 3) -> dict[str, float]:
    """Median ms per call of each function, timed in turn, rep by rep (so that a busy machine slows all alike)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    b.sync()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(b.reps):
        for k, fn in fns.items():
            times[k].append(b.time_ms(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def generate(pipe: StableDiffusion, steps: int, prompt: str | list[str] = PROMPT, **kw: Any):
    kw = {"seed": 1, "cfg_scale": 7.5, "sampler": "ddim", "progress": False, **kw}
    return pipe.generate(prompt, steps=steps, **kw)


def record_tensors(tr: Any) -> dict[str, torch.Tensor]:
    """Every tensor of a trace's records, by a dotted path into its state dict."""
    out: dict[str, torch.Tensor] = {}

    def walk(prefix: str, x: Any) -> None:
        if isinstance(x, torch.Tensor):
            out[prefix] = x
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(f"{prefix}.{k}", v)

    walk("", tr.state_dict()["records"])
    return out


def step_ms(b: Bench, pipe: StableDiffusion, trace: dict | None = None, **kw: Any) -> float:
    """The pipeline's ms per denoising step: (time of n2 steps - time of n1 steps) / (n2 - n1), medians of 2."""

    def run(n: int) -> float:
        if trace is None:
            return b.time_ms(lambda: generate(pipe, n, **kw))
        with sdviz.trace(pipe, **trace):
            return b.time_ms(lambda: generate(pipe, n, **kw))

    n1, n2 = b.steps
    run(n1)  # warm-up (and, for a compiled UNet, its first call)
    t1 = statistics.median(run(n1) for _ in range(2))
    t2 = statistics.median(run(n2) for _ in range(2))
    return (t2 - t1) / (n2 - n1)


def sdviz_pipeline(b: Bench, unet: Any = None, dtype: torch.dtype | None = None) -> StableDiffusion:
    """A pipeline of the run's configuration with random weights built on the device (seed 0), around `unet` if
    given (its own random UNet otherwise)."""
    torch.manual_seed(0)
    with torch.device(b.device):
        te, vae = CLIPTextEncoder(b.cfg.clip), VAE(b.cfg.vae)
        unet = UNet(b.cfg.unet) if unet is None else unet
    return StableDiffusion(Models(b.cfg, te, vae, unet), device=b.device, dtype=dtype or b.dtype)


def random_unet(b: Bench, dtype: torch.dtype | None = None) -> UNet:
    torch.manual_seed(0)
    with torch.device(b.device):
        return UNet(b.cfg.unet).to(dtype or b.dtype).eval().requires_grad_(False)


def diffusers_and_sdviz_unets(b: Bench) -> tuple[Any, UNet]:
    """diffusers' UNet with random weights and sdviz's UNet holding the very same tensors; (None, random sdviz UNet)
    when diffusers is not installed."""
    if importlib.util.find_spec("diffusers") is None:
        say("diffusers eager", "diffusers not installed: skipped (sdviz alone, random weights)")
        return None, random_unet(b)
    try:
        import diffusers  # noqa: F401
        from reference import diffusers_unet
    except Exception as e:  # installed but not importable (a missing dependency of its own)
        say("diffusers eager", f"diffusers not importable ({one_line(e)}): skipped (sdviz alone)")
        return None, random_unet(b)

    torch.manual_seed(0)
    with torch.device(b.device):
        ref = diffusers_unet(b.cfg).to(b.dtype).eval().requires_grad_(False)
    with torch.device("meta"):
        ours = UNet(b.cfg.unet)
    ours.load_state_dict(from_diffusers("unet", ref.state_dict()), assign=True)
    return ref, ours.eval().requires_grad_(False)


def compile_counters() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {
        "graphs": int(counters["stats"]["unique_graphs"]),
        "graph_breaks": int(sum(counters["graph_break"].values())),
        "cudagraph_skips": int(counters["inductor"]["cudagraph_skips"]),
    }


def cudagraphs_recorded(b: Bench) -> int | None:
    """How many CUDA graphs inductor's cudagraph trees hold for this device: 0 when there is no tree manager, None
    when this torch's private cudagraph-trees API could not be read."""
    if not b.cuda:
        return 0
    try:
        from torch._inductor import cudagraph_trees

        index = b.device.index if b.device.index is not None else torch.cuda.current_device()
        manager = cudagraph_trees.get_manager(index, create_if_none_exists=False)
        if manager is None or not manager.roots:
            return 0
        count, nodes = 0, [n for ns in manager.roots.values() for n in ns]
        while nodes:
            node = nodes.pop()
            count += 1
            nodes += [c for cs in node.children.values() for c in cs]
        return count
    except Exception:
        return None


def cudagraphs_line(graphs: int | None, skips: int) -> tuple[str, str]:
    """("yes" / "no" / "unknown", the line that says why)."""
    if graphs is None:
        return "unknown", f"unknown (cudagraph trees unreadable in this torch; {skips} cudagraph skips counted)"
    used = "yes" if graphs and not skips else "no"
    return used, f"{used} ({graphs} recorded by inductor's cudagraph trees, {skips} skipped)"


def compile_unet(b: Bench, unet: Any, mode: str) -> Any:
    """torch.compile with inductor's `mode`; other backends (aot_eager on the CPU) have no modes."""
    if b.backend == "inductor":
        return torch.compile(unet, mode=mode)
    return torch.compile(unet, backend=b.backend)


# --------------------------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------------------------


def section_eager(b: Bench) -> None:
    ref, ours = diffusers_and_sdviz_unets(b)
    x, t, ctx = b.unet_inputs()
    results: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        if ref is not None:
            diff = (ours(x, t, ctx).float() - ref(x, t, ctx).sample.float()).abs().max().item()
            say("sdviz vs diffusers output", f"max abs difference {diff:.2e} ({str(b.dtype)[6:]}, same weights)")
        for layout in ("nchw", "channels_last"):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            fns = {"sdviz": lambda: ours(x, t, ctx)}
            ours.to(memory_format=fmt)
            if ref is not None:
                ref.to(memory_format=fmt)
                fns["diffusers"] = lambda: ref(x, t, ctx).sample
            results[layout] = interleaved_ms(b, fns)
            line = f"sdviz {results[layout]['sdviz']:.2f}"
            if ref is not None:
                d = results[layout]["diffusers"]
                line += f" vs diffusers {d:.2f}: ratio {results[layout]['sdviz'] / d:.3f}"
            say(f"UNet eager ms/step ({layout})", line + f"  ({b.reps} interleaved reps, median)")
    best = min(results, key=lambda k: results[k]["sdviz"])
    b.channels_last = best == "channels_last"
    ours.to(memory_format=torch.channels_last if b.channels_last else torch.contiguous_format)
    b.unet = ours
    s = results[best]["sdviz"]
    if ref is not None:
        d = min(r["diffusers"] for r in results.values())
        verdict = "met" if s <= d else "NOT met"
        b.summary["eager"] = f"sdviz {s:.2f} ms vs diffusers {d:.2f} ms per step (best layouts): {verdict}"
    else:
        b.summary["eager"] = f"sdviz {s:.2f} ms per step; no diffusers to compare with"
    ref = None  # free diffusers' copy of the module objects (the weights stay with sdviz's UNet)
    free()
    b.pipe = sdviz_pipeline(b, unet=b.unet)
    say("layout used from here on", "channels_last" if b.channels_last else "NCHW")
    say("pipeline eager ms/step", f"{step_ms(b, b.pipe):.2f}  (guided, DDIM, {b.sizes[0]}px; steps {b.steps})")


def section_compile(b: Bench) -> None:
    from torch._dynamo.utils import counters

    unet = b.unet if b.unet is not None else random_unet(b)
    torch._dynamo.reset()
    counters.clear()
    mode = "reduce-overhead"
    compiled = compile_unet(b, unet, mode)
    x, t, ctx = b.unet_inputs()
    with torch.no_grad():
        first = b.time_ms(lambda: compiled(x, t, ctx)) / 1e3
        ms = interleaved_ms(b, {"compiled": lambda: compiled(x, t, ctx)})["compiled"]
    c = compile_counters()
    what = f"mode {mode!r}" if b.backend == "inductor" else f"backend {b.backend!r} (modes are inductor's)"
    say("compile", f"{what}: first call {first:.1f} s; {c['graphs']} graph(s), {c['graph_breaks']} graph breaks")
    say("UNet compiled ms/step", f"{ms:.2f}  ({mode})")
    used, line = cudagraphs_line(cudagraphs_recorded(b), c["cudagraph_skips"])
    say("CUDA graphs used", line)
    b.compiled = compiled
    b.summary[mode] = f"{ms:.2f} ms per step, CUDA graphs {used}, {c['graph_breaks']} graph breaks"
    if b.pipe is None:
        b.pipe = sdviz_pipeline(b, unet=unet)
    b.pipe.unet = compiled
    try:
        say("pipeline compiled ms/step", f"{step_ms(b, b.pipe):.2f}  ({mode})")
    finally:
        b.pipe.unet = unet


def section_trace(b: Bench) -> None:
    from torch._dynamo.utils import counters

    if b.compiled is None:
        raise RuntimeError("needs the compile section")
    pipe, eager_unet = b.pipe, b.unet
    n1 = b.steps[0]
    with sdviz.trace(pipe, record="all", max_bytes=2**34) as ref:
        generate(pipe, n1)
    names = sdviz.hook_names(pipe)
    pipe.unet = b.compiled  # wrapped: hook names must not change
    try:
        same_names = sdviz.hook_names(pipe) == names
        generate(pipe, n1)  # compiled, untraced
        before = int(counters["stats"]["unique_graphs"])
        with sdviz.trace(pipe, record="all", max_bytes=2**34) as tr:
            generate(pipe, n1)
        generate(pipe, n1)  # compiled again, untraced
        recompiled = int(counters["stats"]["unique_graphs"]) - before
        got, want = record_tensors(tr), record_tensors(ref)
        diff = max((got[k].float() - v.float()).abs().nan_to_num(0).max().item() for k, v in want.items())
        empty = all(v.abs().sum() == 0 for v in tr.cross_attention.sums.values())
        scale = max(1.0, max(v.float().abs().nan_to_num(0).max().item() for v in want.values()))
        ok = same_names and got.keys() == want.keys() and not empty and diff <= 1e-3 * scale and recompiled == 0
        say("hook names compiled (wrapped)", "same as uncompiled" if same_names else "DIFFERENT")
        say(
            "trace of the compiled pipeline",
            f"records vs uncompiled trace: max abs diff {diff:.2e}"
            f"{', EMPTY' if empty else ''}; graphs compiled by the trace and the run after it: {recompiled}",
        )
        b.summary["traceable"] = ("yes" if ok else "NO") + f" (records max diff {diff:.1e}, {recompiled} recompiles)"
        untraced = step_ms(b, pipe)
        traced = step_ms(b, pipe, trace={})
        say("pipeline ms/step, compiled", f"{untraced:.2f} untraced")
        say("pipeline ms/step, traced", f"{traced:.2f} ({traced / untraced:.2f}x; default records, the UNet eager)")
        b.summary["traced step"] = f"{traced:.2f} ms vs {untraced:.2f} ms compiled untraced"
    finally:
        pipe.unet = eager_unet


def section_memory(b: Bench) -> None:
    pipe = b.pipe if b.pipe is not None else sdviz_pipeline(b)
    n1 = b.steps[0]
    if b.cuda:
        torch.cuda.reset_peak_memory_stats(b.device)
        base = torch.cuda.memory_allocated(b.device)
    generate(pipe, n1)
    if b.cuda:
        untraced = torch.cuda.max_memory_allocated(b.device) - base
        torch.cuda.reset_peak_memory_stats(b.device)
    with sdviz.trace(pipe, record="all", max_bytes=2**34) as tr:
        generate(pipe, n1)
    est = tr.estimate
    if b.cuda:
        traced = torch.cuda.max_memory_allocated(b.device) - base
        growth = traced - untraced
        say("peak GPU memory, untraced", f"{untraced / 1e6:,.1f} MB above the weights")
        say("peak GPU memory, record='all'", f"{traced / 1e6:,.1f} MB: +{growth / 1e6:,.1f} MB")
        say(
            "trace estimate",
            f"{est.total / 1e6:,.1f} MB (records {est.records / 1e6:,.1f} + transient "
            f"{est.transient / 1e6:,.1f}); growth / estimate = {growth / est.total:.2f}",
        )
        b.summary["trace memory"] = f"+{growth / 1e6:,.0f} MB measured vs {est.total / 1e6:,.0f} MB estimated"
    else:
        say("peak GPU memory", "n/a on the CPU")
        say("trace records vs estimate", f"{tr.nbytes() / 1e6:,.2f} MB held vs {est.records / 1e6:,.2f} MB estimated")
    say("estimate breakdown", " | ".join(f"{k} {v / 1e6:,.1f} MB" for k, v in est.parts.items()))


def section_nan(b: Bench) -> None:
    for dtype in (torch.float16, torch.bfloat16):
        pipe = sdviz_pipeline(b, dtype=dtype)
        for size in b.sizes:
            label = f"{str(dtype)[6:]} {size}x{size}"
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                start = time.perf_counter()
                try:
                    result = generate(pipe, b.steps[0], height=size, width=size)
                except FloatingPointError as e:
                    say(f"nan {label}", f"NON-FINITE: {one_line(e)}")
                    b.summary[f"nan {label}"] = "non-finite"
                    continue
            took = time.perf_counter() - start
            fallback = any("decoded again in float32" in str(w.message) for w in caught)
            big = result.latents.abs().max().item()
            say(
                f"nan {label}",
                f"finite latents (max |x| {big:.2f}) and pixels; VAE float32 fallback "
                f"{'USED' if fallback else 'not needed'}; {b.steps[0]} steps in {took:.2f} s",
            )
            b.summary[f"nan {label}"] = "finite" + (" (VAE fell back to float32)" if fallback else "")
        del pipe
        free()


def section_batch(b: Bench) -> None:
    pipe = b.pipe if b.pipe is not None else sdviz_pipeline(b)
    n1 = b.steps[0]
    default = pipe.batch_invariant
    try:
        for invariant in dict.fromkeys((default, True)):
            pipe.batch_invariant = invariant
            alone = generate(pipe, n1, seed=7)
            batch2 = generate(pipe, n1, prompt=[PROMPT] * 3, seed=[5, 6, 7])  # seed 7 at position 2
            batch0 = generate(pipe, n1, prompt=[PROMPT] * 3, seed=[7, 8, 9])  # seed 7 at position 0
            d2 = (batch2.latents[2] - alone.latents[0]).abs().max().item()
            d0 = (batch0.latents[0] - alone.latents[0]).abs().max().item()
            px = max(_pixel_diff(batch2.images[2], alone.images[0]), _pixel_diff(batch0.images[0], alone.images[0]))
            mode = "image by image" if invariant else "whole batch in one call"
            say(
                f"batch invariance ({'on' if invariant else 'off'})",
                f"{mode}: seed 7 alone vs at position 0: max "
                f"|latent diff| {d0:.2e}, at position 2: {d2:.2e}; max pixel diff {px}/255",
            )
            b.summary[f"batch invariance {'on' if invariant else 'off'}"] = f"max latent diff {max(d0, d2):.2e}"
    finally:
        pipe.batch_invariant = default


def _pixel_diff(a: Any, c: Any) -> int:
    import numpy as np

    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(c, dtype=np.int16)).max())


def section_embedded(b: Bench) -> None:
    pipe = load_pipeline(device=b.device)
    kw = {"steps": 50, "cfg_scale": 5.0, "sampler": "ddim", "progress": False}
    pipe.generate("a large red circle above a small blue square", seed=0, **kw)  # warm-up
    reps = 1 if b.small else 3
    times = [
        b.time_ms(lambda s=s: pipe.generate("a large red circle above a small blue square", seed=s, **kw)) / 1e3
        for s in range(1, 1 + reps)
    ]
    med = statistics.median(times)
    say("embedded model picture time", f"{med:.3f} s, median of {reps} (64x64, 50 DDIM steps, cfg 5, float32)")
    b.summary["embedded picture"] = f"{med:.3f} s"


def section_autotune(b: Bench, argv: list[str]) -> None:
    """max-autotune compiles for minutes: in a child process, stopped when the time budget runs out."""
    left = b.budget_s - b.elapsed() - 15
    if left < 60:
        say("max-autotune-no-cudagraphs", f"skipped: {max(left, 0):.0f} s of the {b.budget_s:.0f} s budget left")
        b.summary["max-autotune-no-cudagraphs"] = "skipped (time budget)"
        return
    free()
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--child-autotune"]
    cmd += ["--channels-last"] if b.channels_last else []
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=left, check=False)
    except subprocess.TimeoutExpired:
        say("max-autotune-no-cudagraphs", f"did not finish within the {left:.0f} s left of the budget: skipped")
        b.summary["max-autotune-no-cudagraphs"] = "did not finish in the time budget"
        return
    lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
    if out.returncode or not lines:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"child process exited with {out.returncode}: {tail}")
    r = json.loads(lines[-1])
    say(
        "compile",
        f"{r['what']}: first call {r['first_s']:.1f} s; {r['graphs']} graph(s), {r['graph_breaks']} graph breaks",
    )
    say(
        "UNet compiled ms/step",
        f"{r['ms']:.2f}  (max-autotune-no-cudagraphs; eager in that process {r['eager_ms']:.2f})",
    )
    say("CUDA graphs used", cudagraphs_line(r["cudagraphs"], r["cudagraph_skips"])[1])
    b.summary["max-autotune-no-cudagraphs"] = f"{r['ms']:.2f} ms per step, {r['graph_breaks']} graph breaks"


def child_autotune(b: Bench) -> None:
    """The autotune section's child: compile a random UNet, time it, print one JSON line."""
    unet = random_unet(b).to(memory_format=torch.channels_last if b.channels_last else torch.contiguous_format)
    x, t, ctx = b.unet_inputs()
    mode = "max-autotune-no-cudagraphs"
    with torch.no_grad():
        eager_ms = interleaved_ms(b, {"eager": lambda: unet(x, t, ctx)})["eager"]
        compiled = compile_unet(b, unet, mode)
        first = b.time_ms(lambda: compiled(x, t, ctx)) / 1e3
        ms = interleaved_ms(b, {"compiled": lambda: compiled(x, t, ctx)})["compiled"]
    what = f"mode {mode!r}" if b.backend == "inductor" else f"backend {b.backend!r} (modes are inductor's)"
    c = compile_counters()
    cudagraphs = cudagraphs_recorded(b)
    print(
        json.dumps(
            {
                "what": what,
                "first_s": first,
                "ms": ms,
                "eager_ms": eager_ms,
                "cudagraphs": cudagraphs,
                "graphs": c["graphs"],
                "graph_breaks": c["graph_breaks"],
                "cudagraph_skips": c["cudagraph_skips"],
            }
        ),
        flush=True,
    )


# --------------------------------------------------------------------------------------------------------------------


def preflight() -> None:
    missing = [m for m in ("numpy", "PIL", "regex", "safetensors", "tqdm") if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"sdviz needs {', '.join(missing)}: pip install them (diffusers is optional)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="TINY config at 64 and 96 px (for the CPU)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from {', '.join(SECTIONS)}")
    parser.add_argument("--backend", default=None, help="torch.compile backend (default inductor; aot_eager on CPU)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="total seconds; autotune stops at the budget")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="default float16 (float32 on the CPU)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's; 1 on the CPU)")
    parser.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-autotune", action="store_true", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    preflight()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu --small")
    # one thread on the CPU: on a shared machine, OpenMP threads that spin-wait for each other are many times slower
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    backend = args.backend or ("inductor" if device.type == "cuda" else "aot_eager")
    dtype = DTYPES[args.dtype or ("float16" if device.type == "cuda" else "float32")]
    b = Bench(device, args.small, backend, args.budget_s, dtype=dtype, channels_last=args.channels_last)
    if args.child_autotune:
        child_autotune(b)
        return
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"sdviz GPU benchmark: {name}; torch {torch.__version__}; {b.cfg.name} config, random weights, "
        f"{b.sizes[0]}x{b.sizes[0]} (and {b.sizes[1]}), 1 guided image (UNet batch 2), {str(dtype)[6:]}; "
        f"compile backend {backend}",
        flush=True,
    )
    child_argv = [a for a in argv if a != "--channels-last"]
    for s in chosen:
        print(f"== {s}", flush=True)
        start = time.perf_counter()
        try:
            if s == "autotune":
                section_autotune(b, child_argv)
            else:
                globals()[f"section_{s}"](b)
        except Exception as e:  # one failing section must not stop the others
            say(f"{s} FAILED", one_line(e))
            b.summary.setdefault(s, f"FAILED: {one_line(e)}")
        print(f"  ({s}: {time.perf_counter() - start:.1f} s)", flush=True)
        free()

    print("== summary", flush=True)
    for k, v in b.summary.items():
        say(k, v)
    compiled = [
        float(v.split()[0])
        for k, v in b.summary.items()
        if k in ("reduce-overhead", "max-autotune-no-cudagraphs") and v[:1].isdigit()
    ]
    if compiled:
        best = min(compiled)
        say(
            "goal: compiled <= 7.8 ms/step",
            f"best {best:.2f} ms: {'met' if best <= GOAL_COMPILED_MS else 'NOT met'}"
            + ("" if b.cuda and not b.small else " (the goal is for SD 1.5 on an H100; this run is not that)"),
        )
    print(f"total {b.elapsed():.0f} s", flush=True)


if __name__ == "__main__":
    main()

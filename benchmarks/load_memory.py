"""Peak host memory of `load_pipeline(path, dtype=torch.float16)` for SD 1.5, against the old way of loading.

Writes random SD 1.5 weights as a CompVis single file (float32, like `v1-5-pruned-emaonly.safetensors`: 4.3 GB, in
a temporary folder that is deleted afterwards), then loads it in a fresh Python process per approach and reads that
process's peak resident memory (`resource.getrusage(RUSAGE_SELF).ru_maxrss`; file pages that are memory-mapped
and read count in it, as they do in the operating system's view of the process):

* new: `load_pipeline(path, dtype=torch.float16)`: networks built on the meta device, each tensor converted to
  float16 as it is read and assigned to its network (`load_state_dict(assign=True)`);
* old: what `load_pipeline` did before: `safetensors.torch.load_file` (memory-mapped), float32 networks, then a
  cast to float16 when the pipeline is made.

Goal: the new peak stays under 3 GB (issue 16). float16 on the CPU is only for measuring the load; generating in
float16 is for GPUs.

    .venv/bin/python benchmarks/load_memory.py [--modes new,old] [--dtype float16] [--tmp DIR]
                                               [--layout compvis|sdviz] [--device cpu|cuda] [--weights PATH]

`--weights` measures an existing file (a real checkpoint, or a diffusers/sdviz folder for the new mode) instead of
random weights. The CompVis file needs diffusers and transformers (the test extras) to name its keys; `--layout
sdviz` writes an sdviz folder instead, named by sdviz alone (new mode only). With `--device cuda` the networks go
to the GPU, and each tensor leaves the host as soon as it is read.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
GOAL_GB = 3.0


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GB (ru_maxrss is in KiB on Linux, in bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e9 if sys.platform == "darwin" else peak * 1024 / 1e9


# ----------------------------------------------------------------------------------------------------------------
# Random weights, written one tensor at a time (the parent never holds the model either)


def compvis_shapes() -> dict[str, tuple[int, ...]]:
    """SD 1.5's CompVis key names and shapes, from diffusers/transformers reference models built on the meta device
    and renamed by `tests/reference.py`'s CompVis mapping (independent of sdviz's loader)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from reference import diffusers_unet, diffusers_vae, hf_clip, to_compvis

    from sdviz.config import SD15

    with torch.device("meta"):
        unet, vae, clip = diffusers_unet(SD15), diffusers_vae(SD15), hf_clip(SD15)
    sd = to_compvis(unet.state_dict(), vae.state_dict(), clip.state_dict(), SD15)
    return {k: tuple(v.shape) for k, v in sd.items()}


def sdviz_shapes() -> dict[str, tuple[int, ...]]:
    """SD 1.5's key names and shapes in sdviz's own file (`unet.conv_in.weight`, ...), from networks on meta."""
    from sdviz.config import SD15
    from sdviz.weights import COMPONENTS, build_models

    models = build_models(SD15, device="meta")
    return {f"{c}.{k}": tuple(v.shape) for c in COMPONENTS for k, v in getattr(models, c).state_dict().items()}


def write_random(path: Path, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype = torch.float32) -> int:
    """Random weights (N(0, 0.02)) as a safetensors file; returns its size in bytes.

    The layout: 8-byte header length, JSON header (padded to 8 bytes), then the tensors back to back.
    """
    code = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}[dtype]
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = torch.Size(shape).numel() * dtype.itemsize
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    g = torch.Generator().manual_seed(0)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for shape in shapes.values():
            values = (torch.randn(shape, generator=g) * 0.02).to(dtype)
            f.write(values.reshape(-1).view(torch.uint8).numpy().tobytes())
    return path.stat().st_size


# ----------------------------------------------------------------------------------------------------------------
# One measurement (in a fresh child process)


def measure(mode: str, path: str, dtype: torch.dtype, device: str) -> dict:
    """Load `path` the `mode` way and report this process's peak."""
    from sdviz.pipeline import StableDiffusion, load_pipeline

    if device.startswith("cuda"):
        torch.zeros(1, device=device)  # the CUDA context's own host memory counts with the imports, not the load
    before = peak_rss_gb()  # Python, torch and sdviz imported
    start = time.perf_counter()
    if mode == "new":
        pipe = load_pipeline(path, device=device, dtype=dtype)
    elif mode == "old":
        from safetensors.torch import load_file

        from sdviz.config import SD15
        from sdviz.weights import Source, from_compvis, models_from_state_dicts

        sds = from_compvis(load_file(path), SD15, path)  # memory-mapped float32 tensors
        models = models_from_state_dicts(SD15, sds, Source(Path(path)))  # float32 networks
        pipe = StableDiffusion(models, device=device, dtype=dtype)  # the cast (and the move)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    params = {f"{p.dtype} on {p.device}" for m in pipe.modules().values() for p in m.parameters()}
    return {"mode": mode, "peak_gb": peak_rss_gb(), "imports_gb": before, "seconds": seconds, "params": sorted(params)}


def run_child(mode: str, path: Path, dtype: str, device: str) -> dict:
    """A fresh process per measurement, so that one approach's peak never hides in another's."""
    cmd = [sys.executable, __file__, "--child", mode, "--weights", str(path), "--dtype", dtype, "--device", device]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="new,old", help="comma-separated: new, old (default: both)")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--tmp", help="folder for the temporary 4.3 GB file (default: the system's temp folder)")
    parser.add_argument("--layout", default="compvis", choices=["compvis", "sdviz"], help="of the random weights")
    parser.add_argument("--device", default="cpu", help="where the networks go: cpu (default), cuda")
    parser.add_argument("--weights", help="measure this file or folder instead of writing random SD 1.5 weights")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        torch.set_num_threads(2)
        print(json.dumps(measure(args.child, args.weights, getattr(torch, args.dtype), args.device)))
        return

    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="sdviz-load-memory-") as tmp:
        if args.weights:
            path = Path(args.weights)
            print(f"weights: {path}")
        else:
            start = time.perf_counter()
            if args.layout == "compvis":
                path = Path(tmp) / "sd15-random.safetensors"
                size = write_random(path, compvis_shapes())
            else:
                from sdviz.config import SD15

                path = Path(tmp) / "sd15-random"
                path.mkdir()
                (path / "sdviz.json").write_text(json.dumps({"format": "sdviz", "config": SD15.to_dict()}))
                size = write_random(path / "model.safetensors", sdviz_shapes())
            seconds = time.perf_counter() - start
            print(f"wrote random SD 1.5 weights ({args.layout}, float32): {size / 1e9:.2f} GB in {seconds:.0f} s")
        results = [run_child(mode, path, args.dtype, args.device) for mode in args.modes.split(",")]
    print(f"peak host memory of loading SD 1.5 as {args.dtype} onto {args.device} (ru_maxrss of a fresh process):")
    for r in results:
        print(
            f"  {r['mode']}: {r['peak_gb']:.2f} GB peak (imports alone {r['imports_gb']:.2f} GB), "
            f"{r['seconds']:.1f} s, parameters {', '.join(r['params'])}"
        )
    new = next((r for r in results if r["mode"] == "new"), None)
    if new is not None:
        print(f"  goal: new < {GOAL_GB:.0f} GB -> {'met' if new['peak_gb'] < GOAL_GB else 'NOT met'}")


if __name__ == "__main__":
    main()

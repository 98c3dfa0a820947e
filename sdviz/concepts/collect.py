"""Collect activations at hook points over many generations, streamed to disk in shards.

A sparse autoencoder learns from many activation vectors: one per pixel of a hook point's feature map, per denoising
step, per picture. `collect` generates each (prompt, seed) pair once and, at every hook point it was asked for,
keeps the *conditional* rows of the UNet batch (the half that sees the prompt) at the steps it was asked for. Every
stored row says where it comes from:

    x      (N, C) float16   the activation vector of one pixel of the feature map
    pair   (N,)   int32     which (prompt, seed) pair: index into collection.json's "pairs"
    step   (N,)   int16     the denoising step (0 = the noisiest); its timestep is collection.json's "timesteps"[step]
    pos    (N,)   int16     the pixel of the (H, W) feature map, row-major: pos = y * W + x

Rows go to `<out>/<hook name>/shard_00000.safetensors`, ... as soon as `shard_rows` of them have piled up, so that a
collection never holds more than one shard per hook point in memory. The generated pictures (what the judge reads
later) go to `<out>/pictures/shard_*.safetensors` (`images` (n, H, W, 3) uint8 and `pair`), and `collection.json`
says what was collected and how. Before anything runs, the size on disk is estimated; more than `budget_mb` is
refused with the estimate.

    from sdviz.concepts import collect, Activations
    collect(pipe, ["unet.up_blocks.0.attentions.1.hook_block_out"], pairs, "runs/sae/train", budget_mb=500)
    acts = Activations("runs/sae/train").load("unet.up_blocks.0.attentions.1.hook_block_out")   # dict of tensors
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from sdviz import shapes
from sdviz.events import Scope, current_call
from sdviz.hooks import HookCall, hook_points, select

ROW_META_BYTES = 4 + 2 + 2  # pair (int32), step (int16), pos (int16) per stored row


@dataclass(frozen=True)
class CollectSettings:
    """How the pictures of a collection are generated, and which of their steps are kept."""

    steps: int = 20
    cfg_scale: float = 5.0
    sampler: str = "ddim"
    every: int = 1  # keep every `every`-th step (and always the last one)

    def kept_steps(self) -> list[int]:
        return sorted({*range(0, self.steps, self.every), self.steps - 1})


def point_shapes(pipe: Any, points: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """The (C, H, W) of each hook point at the model's picture size (a run on the meta device, nothing computed)."""
    factor = pipe.config.vae.downsampling_factor
    size = pipe.config.image_size // factor
    layout = shapes.unet_layout(pipe.config.unet, (size, size)).hooks
    out = {}
    for name in points:
        if name not in layout:
            raise ValueError(f"points: {name!r} is not a hook point of the UNet's forward pass")
        shape = layout[name]
        if len(shape) != 4:
            raise ValueError(f"points: {name!r} gives a {tuple(shape)} tensor, not a (B, C, H, W) feature map")
        out[name] = tuple(int(v) for v in shape[1:])
    return out


def estimate_bytes(pipe: Any, points: Sequence[str], n_pairs: int, settings: CollectSettings) -> int:
    """The size on disk of a collection: rows (float16 vector + its pair, step, pos) plus the pictures."""
    per_picture = 0
    for c, h, w in point_shapes(pipe, points).values():
        per_picture += len(settings.kept_steps()) * h * w * (2 * c + ROW_META_BYTES)
    side = pipe.config.image_size
    return n_pairs * (per_picture + side * side * 3 + 4)


class _Shards:
    """Rows of one hook point (or the pictures), written to numbered safetensors files as they fill up."""

    def __init__(self, folder: Path, shard_rows: int):
        self.folder, self.shard_rows = folder, shard_rows
        folder.mkdir(parents=True, exist_ok=True)
        self.parts: dict[str, list[Tensor]] = {}
        self.rows, self.written = 0, 0

    def add(self, **tensors: Tensor) -> None:
        for k, v in tensors.items():
            self.parts.setdefault(k, []).append(v)
        self.rows += len(next(iter(tensors.values())))
        if self.rows >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        tensors = {k: torch.cat(v).contiguous() for k, v in self.parts.items()}
        save_file(tensors, str(self.folder / f"shard_{self.written:05d}.safetensors"))
        self.parts, self.rows, self.written = {}, 0, self.written + 1


def collect(
    pipe: Any,
    points: str | Sequence[str],
    pairs: Sequence[tuple[str, int]],
    out: str | Path,
    settings: CollectSettings = CollectSettings(),
    budget_mb: float = 1000.0,
    shard_rows: int = 200_000,
    progress: bool = True,
) -> Path:
    """Generate every (prompt, seed) of `pairs` and store the conditional activations at `points` (hook names or a
    filter) at the kept steps, with the pictures. Returns the folder. Refuses, before generating anything, when
    the estimated size exceeds `budget_mb`."""
    names = select(list(hook_points(pipe)), points)
    dims = point_shapes(pipe, names)
    need = estimate_bytes(pipe, names, len(pairs), settings)
    if need > budget_mb * 1e6:
        raise ValueError(
            f"budget_mb={budget_mb:g}: collecting {len(pairs)} pictures x {len(settings.kept_steps())} steps at "
            f"{len(names)} hook point(s) needs about {need / 1e6:.0f} MB; raise the budget or collect less"
        )
    out = Path(out)
    if (out / "collection.json").exists():
        raise FileExistsError(f"out: {out} already holds a collection; choose an empty folder")
    shards = {n: _Shards(out / n, shard_rows) for n in names}
    pictures = _Shards(out / "pictures", 256)
    keep = set(settings.kept_steps())
    state: dict[str, Any] = {"pair": 0, "timesteps": None}
    points_by_name = hook_points(pipe)

    def listener(name: str):
        c, h, w = dims[name]

        def on(x: Tensor, _hook: HookCall) -> None:
            call = current_call()
            if call is None or call.step not in keep:
                return
            state["timesteps"] = call.info.timesteps
            x = x[call.cond_rows]  # (B, C, H, W): the rows that see the prompt
            rows = x.detach().float().permute(0, 2, 3, 1).reshape(-1, c)  # (B, C, H, W) -> (B*H*W, C)
            n = len(rows)
            shards[name].add(
                x=rows.to(torch.float16),
                pair=torch.full((n,), state["pair"], dtype=torch.int32),
                step=torch.full((n,), call.step, dtype=torch.int16),
                pos=torch.arange(h * w, dtype=torch.int16).repeat(len(x)),
            )

        return on

    scope, handles = Scope(), []
    scope.open()
    iterator: Any = pairs
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(pairs, desc="collect")
    t0 = time.perf_counter()
    try:
        for name in names:
            handles.append(points_by_name[name].listen(listener(name), scope=scope))
        for i, (prompt, seed) in enumerate(iterator):
            state["pair"] = i
            result = pipe.generate(
                prompt, seed=int(seed), steps=settings.steps, cfg_scale=settings.cfg_scale,
                sampler=settings.sampler, progress=False,
            )
            image = torch.from_numpy(np.asarray(result.image.convert("RGB")).copy())  # (H, W, 3) uint8
            pictures.add(images=image[None], pair=torch.tensor([i], dtype=torch.int32))
    finally:
        scope.close()
        for handle in handles:
            handle.remove()
    for s in [*shards.values(), pictures]:
        s.flush()
    record = {
        "points": {n: list(dims[n]) for n in names},
        "pairs": [[p, int(s)] for p, s in pairs],
        "settings": asdict(settings),
        "kept_steps": settings.kept_steps(),
        "timesteps": [int(t) for t in state["timesteps"] or []],
        "model": model_fingerprint(pipe),
        "seconds": round(time.perf_counter() - t0, 1),
        "torch_threads": torch.get_num_threads(),
        "bytes": sum(f.stat().st_size for f in out.rglob("*.safetensors")),
    }
    (out / "collection.json").write_text(json.dumps(record, indent=1) + "\n")
    return out


def model_fingerprint(pipe: Any) -> str:
    """A short name for the UNet's weights (the first 12 hex digits of a hash of a few of its tensors), so that an
    SAE can tell the model it was trained on from another one."""
    import hashlib

    digest = hashlib.sha256()
    state = pipe.unet.state_dict()
    for key in sorted(state)[:: max(1, len(state) // 16)]:  # every 16th tensor, in a fixed order
        digest.update(key.encode())
        digest.update(state[key].detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:12]


class Activations:
    """A collection on disk: its record, and the rows of each hook point (read shard by shard)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        path = self.folder / "collection.json"
        if not path.is_file():
            raise FileNotFoundError(f"{self.folder} holds no collection.json; run sdviz sae collect first")
        self.record = json.loads(path.read_text())
        self.pairs: list[tuple[str, int]] = [(p, int(s)) for p, s in self.record["pairs"]]

    @property
    def points(self) -> dict[str, tuple[int, int, int]]:
        return {n: tuple(v) for n, v in self.record["points"].items()}

    def shards(self, point: str) -> list[Path]:
        if point not in self.record["points"]:
            raise ValueError(f"point: {point!r} was not collected here; collected: {', '.join(self.record['points'])}")
        return sorted((self.folder / point).glob("shard_*.safetensors"))

    def load(self, point: str, steps: Sequence[int] | None = None) -> dict[str, Tensor]:
        """Every row of one hook point (optionally only some steps), as one dict of tensors (see the docstring)."""
        parts: dict[str, list[Tensor]] = {}
        for path in self.shards(point):
            shard = load_file(str(path))
            if steps is not None:
                keep = torch.isin(shard["step"], torch.tensor(list(steps), dtype=torch.int16))
                shard = {k: v[keep] for k, v in shard.items()}
            for k, v in shard.items():
                parts.setdefault(k, []).append(v)
        return {k: torch.cat(v) for k, v in parts.items()}

    def pictures(self) -> Tensor:
        """The generated pictures, (n_pairs, H, W, 3) uint8, in the order of `pairs`."""
        parts = [load_file(str(p)) for p in sorted((self.folder / "pictures").glob("shard_*.safetensors"))]
        images = torch.cat([p["images"] for p in parts])
        order = torch.cat([p["pair"] for p in parts]).argsort()
        return images[order]

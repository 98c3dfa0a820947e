"""A trace as one file: what `Trace.save` writes and `sdviz.load_trace` reads back.

The file is torch's zip format holding plain tensors, lists, numbers and strings only (read with
`weights_only=True`: nothing in it can run code), with a format marker and a version. Records are independent of the
pipeline, so a trace computed with SD 1.5 on a GPU machine opens in a notebook without the weights. Every way a file
can be wrong (a folder, a missing file, a truncated or foreign file, a newer version, a damaged record) is one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sdviz.tracing.layout import KINDS
from sdviz.tracing.records import (
    AttentionRecord,
    GroupNormRecord,
    LatentsRecord,
    SelfAttentionRecord,
    TimeEmbeddingRecord,
)

FORMAT = "sdviz-trace"
VERSION = 1

LOADERS = {
    "cross_attention": AttentionRecord,
    "self_attention": SelfAttentionRecord,
    "groupnorm": GroupNormRecord,
    "time_embedding": TimeEmbeddingRecord,
    "latents": LatentsRecord,
}


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def state_dict(tr: Any) -> dict:
    """What a trace holds, as plain data."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "info": tr.info,
        "encodings": tr.encodings,
        "images": tr.images_u8,
        "keep": {k: sorted(v) for k, v in tr.keep.items()},
        "layers": tr.layers,
        "records": {k: r.state_dict() for k, r in tr.records.items()},
    }


def save(tr: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict(tr), path)
    return path


def read(path: str | Path) -> dict:
    """The plain data of a trace file, checked for its marker and version; anything else is a one-line error."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a trace file (Trace.save writes one file, e.g. trace.pt)")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's reader: zip errors, EOFError, unpickling errors, KeyError ...
        raise ValueError(f"{path} is not (or no longer) an sdviz trace: unreadable ({first_line(e)})") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ValueError(f"{path} is not an sdviz trace (it holds no sdviz trace format marker)")
    if not isinstance(d.get("version"), int) or d["version"] > VERSION:
        raise ValueError(f"{path} is an sdviz trace of format {d.get('version')}; this sdviz reads up to {VERSION}")
    return d


def fill(tr: Any, d: dict) -> None:
    """Put the data of a file (`read`) into a new, pipeline-less trace."""
    tr.info, tr.encodings, tr.images_u8, tr.layers = d["info"], d["encodings"], d["images"], d["layers"]
    tr.keep = {k: frozenset(v) for k, v in d["keep"].items()}
    tr.records = {k: LOADERS[k].from_state_dict(v) for k, v in d["records"].items() if k in KINDS}

"""Checks on what a trace holds, each failing with one line that says how to record what is missing."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sdviz.tracing import AttentionRecord, LatentsRecord, Trace


def need_latents(trace: Trace, who: str) -> LatentsRecord:
    """The trace's latents record, or a one-line error saying how to record it."""
    records = getattr(trace, "records", None) or {}
    if getattr(trace, "info", None) is None:
        raise ValueError(f"{who} needs a trace of a generation: run pipe.generate(...) inside `with sdviz.trace(pipe)`")
    if not records or "latents" not in records:
        raise ValueError(
            f"{who} needs the per-step latents, which this trace did not record "
            f"(it has {', '.join(records) or 'nothing'}): trace with sdviz.trace(pipe, record=[..., 'latents'])"
        )
    return records["latents"]


def need_cross_attention(trace: Trace, who: str, per_step: bool = False) -> AttentionRecord:
    """The trace's cross-attention record (kept per step if `per_step`), or a one-line error saying how to get it."""
    if getattr(trace, "info", None) is None:
        raise ValueError(f"{who} needs a trace of a generation: run pipe.generate(...) inside `with sdviz.trace(pipe)`")
    rec = trace.records.get("cross_attention")
    if rec is None:
        raise ValueError(f"{who} needs cross-attention: trace with sdviz.trace(pipe, record=[..., 'cross_attention'])")
    if per_step and "step" not in rec.keep:
        raise ValueError(
            f"{who} needs cross-attention per step, and this trace summed it over the steps: "
            "trace with sdviz.trace(pipe, keep=['step'])"
        )
    return rec

"""Instrumentation: named hook points, and a Trace that records what the model did during a generation.

    import sdviz
    sdviz.hook_names(pipe)                             # every hook point, by module path
    with sdviz.trace(pipe, record=["cross_attention", "latents"]) as tr:
        pipe.generate("a red circle above a blue square", seed=1)
    tr.word_map("circle")                              # (H, W) attention map of the word "circle"

`sdviz.trace`, `sdviz.load_trace` and `sdviz.hook_names` are these functions, re-exported by the package.

    layout.py    what a trace will record, and the memory estimate it checks before it starts
    records.py   the records (attention, group norm, time embedding, latents) and their query methods
    tracing.py   the Trace context manager (a pipeline observer and hook listeners)
    files.py     a trace as one file: saving and loading
    methods.py   the word-map recipes: "sdviz", "daam", "best", your own `Aggregator`
    aggregate.py the one reduction from attention records to word maps (every figure and widget uses it)
    preview.py   the latent -> RGB preview map, time embeddings for any t
    export.py    one self-contained web page per trace (`tr.to_html`, `sdviz export`)
"""

from sdviz.hooks import HookNameError, hook_names, hook_points, hooks, select
from sdviz.tracing.layout import DEFAULT_BUDGET, DEFAULT_RECORD, KINDS, MemoryEstimate, estimate, unet_layout
from sdviz.tracing.preview import latent_rgb_map, time_embeddings
from sdviz.tracing.records import AttentionRecord, GroupNormRecord, LatentsRecord, TimeEmbeddingRecord
from sdviz.tracing.tracing import Trace, TraceBudgetError, load, trace

__all__ = [
    "DEFAULT_BUDGET",
    "DEFAULT_RECORD",
    "KINDS",
    "AttentionRecord",
    "GroupNormRecord",
    "HookNameError",
    "LatentsRecord",
    "MemoryEstimate",
    "TimeEmbeddingRecord",
    "Trace",
    "TraceBudgetError",
    "estimate",
    "hook_names",
    "hook_points",
    "hooks",
    "latent_rgb_map",
    "load",
    "select",
    "time_embeddings",
    "trace",
    "unet_layout",
]

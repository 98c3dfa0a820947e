"""sdviz: Stable Diffusion 1.x from scratch in PyTorch, instrumented so that you can watch it work.

    import sdviz
    pipe = sdviz.load_pipeline()                 # the embedded model, or sdviz.load_pipeline("v1-5.safetensors")
    with sdviz.trace(pipe) as tr:                # record what the model does (sdviz.tracing)
        pipe.generate("a red circle above a blue square", seed=1)
    tr.word_map("circle")
    sdviz.hook_names(pipe, "*attn2.hook_probs")  # every hook point by name (sdviz.hooks)
    with sdviz.edit(pipe, sdviz.editing.Reweight({"red": 2.0})):   # prompt-to-prompt edits (sdviz.editing)
        pipe.generate("a red circle above a blue square", seed=1)
    tr = sdviz.load_trace("trace.pt")

The names here are imported on first use, so that `import sdviz` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute)
_LAZY = {
    "load_pipeline": ("sdviz.pipeline", "load_pipeline"),
    "StableDiffusion": ("sdviz.pipeline", "StableDiffusion"),
    "trace": ("sdviz.tracing", "trace"),
    "load_trace": ("sdviz.tracing", "load"),
    "Trace": ("sdviz.tracing", "Trace"),
    "hook_names": ("sdviz.hooks", "hook_names"),
    "edit": ("sdviz.editing", "edit"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'sdviz' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])

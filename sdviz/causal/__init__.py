"""Causes, not correlations: interventions on hook points (ablation, activation patching) and what they change.

    from sdviz.causal import intervene, record, AblateWord, Patch

    with intervene(pipe, AblateWord("red", layers="unet.up_blocks", window=0.5)):
        ablated = pipe.generate("a red circle on the left", seed=1)

    clean = record(pipe, "a red circle on the left", seed=1)
    with intervene(pipe, Patch(clean, hooks="unet.mid_block", window=(0.0, 0.3))):
        patched = pipe.generate("a blue circle on the left", seed=1)

`interventions.py` holds the ablations and the `with` block that attaches them; `patching.py` the recordings and
patches. The toy world grades them: `sdviz.toy.causal_tracing` (which layer carries a colour, a shape, a relation)
and `sdviz.toy.faithfulness` (does an attention map point at the pixels its word causes).
"""

from sdviz.causal.interventions import (
    AblateBlock,
    AblateCrossAttention,
    AblateHead,
    AblateWord,
    Intervention,
    intervene,
)
from sdviz.causal.patching import Patch, PatchText, Recording, record

__all__ = [
    "AblateBlock",
    "AblateCrossAttention",
    "AblateHead",
    "AblateWord",
    "Intervention",
    "Patch",
    "PatchText",
    "Recording",
    "intervene",
    "record",
]

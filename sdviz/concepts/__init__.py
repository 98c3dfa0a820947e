"""Concepts inside the UNet: sparse autoencoders trained on its activations, graded against the toy world's truth.

    collect.py    activations at hook points over many generations, streamed to disk in shards
    sae.py        the TopK sparse autoencoder (Gao et al. 2024), its file format and its checks
    train.py      training it on the CPU: resumable, with a progress bar
    grade.py      each world concept's best feature and its AUROC at the object's pixels
    intervene.py  features during generation: splice the reconstruction in, ablate, clamp or add a feature
    cli.py        `sdviz sae collect | train | grade | causal`
"""

from sdviz.concepts.collect import Activations, CollectSettings, collect, estimate_bytes

__all__ = ["Activations", "CollectSettings", "collect", "estimate_bytes"]

"""Concepts inside the UNet: sparse autoencoders trained on its activations, graded against the toy world's truth.

    collect.py    activations at hook points over many generations, streamed to disk in shards
    sae.py        the TopK sparse autoencoder (Gao et al. 2024), its file format and its checks
    train.py      training it on the CPU: resumable, with a progress bar
    grade.py      each world concept's best feature and its AUROC at the object's pixels
    intervene.py  features during generation: splice the reconstruction in, ablate, clamp or add a feature
    measure.py    the judge's measurements: splicing, ablation against control prompts, steering red to blue
    card.py       the shipped SAEs (sdviz/toy/sae/), their record and card; `load_sae`
    cli.py        `sdviz sae collect | train | grade | causal | ship`
"""

from sdviz.concepts.card import load_sae
from sdviz.concepts.collect import Activations, CollectSettings, collect, estimate_bytes
from sdviz.concepts.intervene import intervene
from sdviz.concepts.sae import SAE, SAEMismatch

__all__ = ["SAE", "Activations", "CollectSettings", "SAEMismatch", "collect", "estimate_bytes", "intervene", "load_sae"]

"""Your own picture: invert it, then explain it and edit it like a generated one.

    from sdviz.inversion import invert, explain, edit_inverted
    inv = invert(pipe, "circle.png", "a red circle on the left", method="null_text")   # or "ddim", "negative_prompt"
    inv.redraw(pipe).image                                   # the picture again, drawn by the model
    tr = explain(pipe, inv)                                  # a traced redraw: tr.word_map("circle"), every figure
    edit_inverted(pipe, inv, "a blue circle on the left").images[1]   # prompt-to-prompt on the picture

    inversion.py   `invert`, the `Inversion` it returns (start latents, per-step null embeddings, settings, the
                   weights' fingerprint), reading a picture file, PSNR
    walk.py        the walks: DDIM inversion (Song et al. 2021) and null-text optimisation (Mokady et al. 2023)
    explain.py     the traced redraw and prompt-to-prompt edits on an inversion
    cli.py         `sdviz invert` and `sdviz explain`
    measure.py     the measured record on the toy world's own scenes (readme-images/inversion.json)
"""

from sdviz.inversion.explain import edit_inverted, explain
from sdviz.inversion.inversion import METHODS, Inversion, invert, load_picture, psnr, weights_id

__all__ = ["METHODS", "Inversion", "edit_inverted", "explain", "invert", "load_picture", "psnr", "weights_id"]

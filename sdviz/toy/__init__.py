"""The embedded model's world, training and evaluation, in reading order:

    world.py               the captioned-shapes world: captions, held-out combinations, scenes with exact masks
    judge.py               reads a generated picture back: objects by colour, their count, shape and position
    losses.py              what training minimises: the VAE loss, the diffusion loss (DDPM eq. 4, 14, Min-SNR),
                           caption dropout
    train.py               the two training stages and `train()`; loop.py holds its machinery (checkpoints,
                           logs, Ctrl-C, learning-rate schedule, EMA)
    evaluate.py            the held-out generation loop, the judge's rates, the model card, the settings (`EVAL`)
    attention_scores.py    generated scenes with each object's true pixels, and a word map's scores against them
    validate_attention.py  cross-attention word maps against the objects' true pixels (mIoU); the command line of
                           `sdviz validate-attention`, with and without --ladder
    attention_ladder.py    the ablation ladder of the aggregators; attention_ladder.md is its output
                           (`sdviz validate-attention --ladder --threads 1 --out sdviz/toy/attention_ladder.md`)
    model/                 the shipped weights, their card and training logs
"""

"""The guidance lesson: the denoising loop in a dozen lines, classifier guidance with a classifier that needs no
training, and the figure that sets it beside classifier-free guidance.

    sample(pipe, prompt, ..., guide=fn)          the denoising loop, with a hook to change the predicted x0
    colour_log_prob(images, "red")               log p(colour | picture): the judge's nearest-colour rule, made soft
    colour_classifier_guide(pipe, colour, s)     classifier guidance (Dhariwal & Nichol 2021) with that classifier
    classifier_guidance_figure(pipe)             no guidance, classifier guidance and classifier-free guidance

`sdviz.viz.lessons` re-exports these names with the course's other figures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sdviz.viz.display import Figure
from sdviz.viz.style import no_ticks, to_u8, wrap

if TYPE_CHECKING:
    from sdviz.pipeline import StableDiffusion

# --------------------------------------------------------------------------------------------------------------------
# The denoising loop, with a place to change the noise prediction (classifier guidance needs one)
# --------------------------------------------------------------------------------------------------------------------

# guide(x0, t) -> a shift of the predicted clean latent x0 (classifier guidance, below)
Guide = Callable[[Tensor, int], Tensor]


def sample(
    pipe: StableDiffusion,
    prompt: str,
    seed: int = 0,
    steps: int = 25,
    cfg_scale: float = 1.0,
    guide: Guide | None = None,
    sampler: str = "ddim",
) -> Tensor:
    """Text-to-image in a dozen lines (what `pipe.generate` does, minus batches, pictures and observers), with a
    `guide` that may shift the clean latent x0 each step predicts: the step lands on sqrt(alpha_bar_next) (x0 +
    shift) + sqrt(1 - alpha_bar_next) eps, the noise left as predicted (exact for DDIM). Returns the final scaled
    latents (1, 4, h, w).
    """
    from sdviz.samplers import get_sampler

    s = get_sampler(sampler, pipe.config.schedule)
    s.set_timesteps(steps)
    g = torch.Generator("cpu").manual_seed(seed)
    size = pipe.config.image_size // pipe.config.vae.downsampling_factor
    shape = (1, pipe.config.unet.in_channels, size, size)
    x = torch.randn(shape, generator=g).to(pipe.device, pipe.dtype) * s.init_noise_sigma  # x_T: pure noise
    context = pipe.encode_prompts([prompt])  # (1, 77, width)
    uncond = pipe.encode_prompts([""]) if cfg_scale > 1 else None
    timesteps = s.timesteps.tolist()
    for i, t in enumerate(timesteps):
        eps_cond, eps_uncond = pipe.predict_noise(s.scale_model_input(x, t), t, context, uncond)
        eps = eps_cond if uncond is None else eps_uncond + cfg_scale * (eps_cond - eps_uncond)  # CFG
        out = s.step(eps, t, x, generator=[g])  # x_t -> x_{t-1}
        x = out.prev_sample
        if guide is not None:
            ab_next = float(s.schedule.alphas_cumprod[timesteps[i + 1]]) if i + 1 < len(timesteps) else 1.0
            x = x + ab_next**0.5 * guide(out.pred_original_sample, t).to(x)
    return x


def colour_log_prob(images: Tensor, colour: str, sigma: float = 60.0) -> Tensor:
    """log p(colour | image): a classifier that needs no training, for the shapes world.

    It looks at the average colour m of the picture's objects (every pixel weighted by how far it is from the
    background colour) and scores each palette colour c by a Gaussian around it: logit_c = -|m - c|^2 / (2 sigma^2),
    p = softmax over the six colours. A nearest-colour rule like the judge's, made smooth: its gradient pulls the
    objects' colour towards `colour` from anywhere (a log-softmax never goes flat). images: (B, 3, H, W) in [-1, 1]
    -> (B,).
    """
    from sdviz.toy.world import BACKGROUND, PALETTE

    rgb = (images.float().clamp(-1, 1) + 1) * 127.5  # (B, 3, H, W) in [0, 255]
    pixels = rgb.flatten(2).transpose(1, 2)  # (B, HW, 3)
    background = torch.tensor(BACKGROUND, dtype=torch.float32, device=images.device)
    palette = torch.tensor(list(PALETTE.values()), dtype=torch.float32, device=images.device)  # (6, 3)
    weight = 1 - torch.exp(-((pixels - background) ** 2).sum(-1) / (2 * sigma**2))  # (B, HW): 0 on background
    weight = weight.detach()  # which pixels are objects is not for the gradient to change
    mean = (weight[..., None] * pixels).sum(1) / (weight.sum(1, keepdim=True) + 1e-6)  # (B, 3): objects' colour
    logits = -((mean[:, None, :] - palette[None]) ** 2).sum(-1) / (2 * sigma**2)  # (B, 6)
    return torch.log_softmax(logits, dim=-1)[:, list(PALETTE).index(colour)]


def colour_classifier_guide(pipe: StableDiffusion, colour: str, scale: float) -> Guide:
    """Classifier guidance with a classifier of clean pictures (`colour_log_prob`).

    Dhariwal & Nichol (2021) train a classifier on *noisy* pictures and shift every noise prediction along its
    gradient, eps_hat = eps - scale * sqrt(1 - alpha_bar_t) * grad_{x_t} log p(y | x_t) (their eq. 14). Our
    classifier knows only clean pictures, so it is asked about the clean picture each step predicts, decode(x0),
    and the predicted x0 is moved up its gradient, the same step at every t (the idea of "universal guidance",
    Bansal et al. 2023, for off-the-shelf classifiers):

        x0_hat = x0 + scale * grad_{x0} log p(y | decode(x0))

    The gradient flows back through the VAE decoder. The model itself is never told the colour: the prompt is "".
    """

    def guide(x0: Tensor, t: int) -> Tensor:
        with torch.enable_grad():
            x0 = x0.detach().float().requires_grad_(True)
            picture = pipe.vae.decode(x0.to(pipe.dtype) / pipe.config.vae.scaling_factor)  # (1, 3, H, W)
            (grad,) = torch.autograd.grad(colour_log_prob(picture, colour).sum(), x0)
        return scale * grad

    return guide


# --------------------------------------------------------------------------------------------------------------------
# 4. Classifier guidance vs classifier-free guidance
# --------------------------------------------------------------------------------------------------------------------


def classifier_guidance_figure(
    pipe: StableDiffusion,
    colour: str = "red",
    seeds: Sequence[int] = (0, 1, 2, 3),
    scale: float = 4.0,
    cfg_prompt: str | None = None,
    cfg_scale: float = 5.0,
    steps: int = 25,  # half of SETTINGS' 50: classifier guidance backpropagates through the VAE each step
) -> Figure:
    """Three ways to sample, the same seeds in each column:

    1. no guidance, empty prompt: the model draws anything of its world;
    2. classifier guidance: the same unconditional model, steered at every step by the gradient of a separate
       classifier, log p(colour | picture) (`colour_classifier_guide`); the model never hears the word;
    3. classifier-free guidance: the model is told the prompt, and its conditional and unconditional predictions
       are combined, eps_uncond + cfg_scale (eps_cond - eps_uncond); no classifier at all.
    """
    cfg_prompt = cfg_prompt or f"a {colour} circle in the centre"
    rows = [
        ("no guidance\n(prompt \"\")", dict(prompt="")),
        (f"classifier guidance\n(prompt \"\", classifier:\n\"{colour}\", scale {scale:g})",
         dict(prompt="", guide=colour_classifier_guide(pipe, colour, scale))),
        ("classifier-free guidance\n" + wrap(f'(prompt "{cfg_prompt}", cfg {cfg_scale:g})', 24),
         dict(prompt=cfg_prompt, cfg_scale=cfg_scale)),
    ]  # fmt: skip
    fig = Figure(figsize=(1.75 * len(seeds) + 1.9, 1.85 * len(rows) + 0.6), layout="constrained")
    axes = fig.subplots(len(rows), len(seeds), squeeze=False)
    for r, (label, kw) in enumerate(rows):
        for c, seed in enumerate(seeds):
            z = sample(pipe, seed=seed, steps=steps, **kw)
            ax = axes[r, c]
            ax.imshow(to_u8(pipe.decode_latents(z)[0]), interpolation="nearest")  # (1, 4, h, w) -> (H, W, 3)
            no_ticks(ax)
            if r == 0:
                ax.set_title(f"seed {seed}", fontsize=9)
            if c == 0:
                ax.set_ylabel(label, fontsize=8.5)
    fig.suptitle("classifier guidance steers with a classifier's gradient; classifier-free guidance with the prompt",
                 fontsize=10)  # fmt: skip
    return fig

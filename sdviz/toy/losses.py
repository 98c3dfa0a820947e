"""What the embedded model learns from: the two losses of latent diffusion, and caption dropout.

Stable Diffusion is trained in two stages, and so is sdviz's toy model (`train.py` runs them; this file is only
the arithmetic, the lesson of the training, to be read start to end).

**Stage 1, the VAE** squeezes a 64x64x3 picture x into a 4x16x16 latent z and back. The encoder does not output one
z but a Gaussian, a mean and a log-variance per latent element; a z is *sampled* from it with the
reparameterisation trick, so that the sample stays differentiable with respect to mean and variance
(Kingma & Welling 2014, section 2.4):

    z = mean + sigma * eps,   sigma = exp(logvar / 2),   eps ~ N(0, 1)

The loss is the L1 reconstruction error of the decoded sample plus a small KL term that pulls every Gaussian
towards N(0, 1), so that latents stay bounded and smooth (Kingma & Welling 2014, appendix B; Rombach et al. 2022
use the same "KL-regularised" autoencoder, with a perceptual and an adversarial loss that flat shapes do not need):

    L_vae = mean |decode(z) - x|  +  KL_WEIGHT * mean KL(N(mean, sigma^2) || N(0, 1))
    KL    = 1/2 (mean^2 + sigma^2 - 1 - log sigma^2)                                   per latent element

**Stage 2, the UNet and the text encoder** learn to remove noise from the latents of the frozen VAE. For a clean
latent z_0, a random timestep t and noise eps, the forward process jumps straight to the noisy latent

    x_t = sqrt(alpha_bar_t) z_0 + sqrt(1 - alpha_bar_t) eps                              (DDPM eq. 4)

and the UNet, told t and the caption's CLIP encoding c, predicts the noise it was given: the "simple" loss
(Ho et al. 2020, eq. 14)

    L_simple = || eps - eps_theta(x_t, t, c) ||^2

with one change for a short training run: *Min-SNR-gamma weighting* (Hang et al. 2023, eq. 9 for eps-prediction).
The signal-to-noise ratio SNR_t = alpha_bar_t / (1 - alpha_bar_t) is huge at the almost-clean timesteps, which are
easy and would otherwise dominate the gradient; weighting each sample by min(SNR_t, gamma) / SNR_t (gamma = 5)
turns them down and speeds up convergence.

**Caption dropout.** A fraction of the captions is replaced by the empty prompt "" so that the same network also
learns the unconditional prediction eps_theta(x_t, t, ""), which classifier-free guidance subtracts at generation
time (Ho & Salimans 2022, section 3.2).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from sdviz.models.vae import VAE
from sdviz.samplers.schedule import NoiseSchedule

KL_WEIGHT = 1e-5  # weight of the KL term against the mean absolute reconstruction error
MIN_SNR_GAMMA = 5.0  # gamma of the Min-SNR weighting
CAPTION_DROPOUT = 0.1  # fraction of captions replaced by "" (for classifier-free guidance)


def sample_latent(mean: Tensor, logvar: Tensor, generator: torch.Generator) -> Tensor:
    """z = mean + sigma * eps: a sample of the encoder's Gaussian (the reparameterisation trick)."""
    eps = torch.randn(mean.shape, generator=generator).to(mean.device)  # (B, 4, h, w) ~ N(0, 1)
    return mean + torch.exp(0.5 * logvar) * eps


def vae_loss(vae: VAE, x: Tensor, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
    """Stage 1: L1 reconstruction of a sampled latent + KL_WEIGHT * KL to N(0, 1). Returns (loss, parts).

    `parts` holds "l1", "kl" and "reconstruction" (the decoded pictures, float32) for logging.
    """
    mean, logvar = vae.encode(x)  # (B, 3, 64, 64) -> 2 x (B, 4, 16, 16)
    z = sample_latent(mean, logvar, generator)  # (B, 4, 16, 16)
    reconstruction = vae.decode(z).float()  # (B, 4, 16, 16) -> (B, 3, 64, 64)
    mean, logvar = mean.float(), logvar.float()  # (the encoder may have run in bfloat16 autocast)
    l1 = (reconstruction - x.float()).abs().mean()
    kl = 0.5 * (mean**2 + logvar.exp() - 1.0 - logvar).mean()  # KL(N(mean, sigma^2) || N(0, 1)) per element
    return l1 + KL_WEIGHT * kl, {"l1": l1, "kl": kl, "reconstruction": reconstruction}


def drop_captions(captions: Sequence[str], rng: np.random.Generator, p: float = CAPTION_DROPOUT) -> list[str]:
    """Replace each caption by "" with probability p: the unconditional examples classifier-free guidance needs."""
    drop = rng.random(len(captions)) < p
    return ["" if d else c for c, d in zip(captions, drop, strict=True)]


def min_snr_weight(schedule: NoiseSchedule, t: Tensor, gamma: float = MIN_SNR_GAMMA) -> Tensor:
    """min(SNR_t, gamma) / SNR_t per sample, for a loss on the predicted noise (Hang et al. 2023)."""
    snr = schedule.snr[t]  # (B,)  alpha_bar_t / (1 - alpha_bar_t)
    return snr.clamp(max=gamma) / snr


def diffusion_loss(
    unet: nn.Module,
    context: Tensor,
    z0: Tensor,
    schedule: NoiseSchedule,
    generator: torch.Generator,
    min_snr_gamma: float | None = MIN_SNR_GAMMA,
) -> tuple[Tensor, Tensor]:
    """Stage 2: noise clean latents z0 to random timesteps and score the UNet's noise prediction.

    `context` is the text encoder's output for the (possibly dropped) captions, (B, 77, width). Returns
    (loss, mse): the Min-SNR-weighted mean that is optimised (`min_snr_gamma=None`: unweighted, plain eq. 14), and
    the unweighted squared error per sample, (B,).
    """
    b = z0.shape[0]
    t = torch.randint(0, schedule.num_train_timesteps, (b,), generator=generator)  # (B,) a timestep per latent
    eps = torch.randn(z0.shape, generator=generator).to(z0.device)  # (B, 4, 16, 16) the noise to be predicted
    alpha_bar = schedule.alphas_cumprod[t].to(z0.device).view(b, 1, 1, 1)  # (B,) -> (B, 1, 1, 1)
    x_t = alpha_bar.sqrt() * z0 + (1 - alpha_bar).sqrt() * eps  # (DDPM eq. 4)
    eps_pred = unet(x_t, t.to(z0.device), context)  # (B, 4, 16, 16)
    mse = ((eps_pred.float() - eps) ** 2).mean(dim=(1, 2, 3))  # (B,) || eps - eps_theta ||^2 (DDPM eq. 14)
    if min_snr_gamma is None:
        return mse.mean(), mse
    weight = min_snr_weight(schedule, t, min_snr_gamma).to(z0.device)  # (B,)
    return (weight * mse).mean(), mse

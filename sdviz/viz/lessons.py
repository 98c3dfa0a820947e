"""Figures for the lessons that a trace alone cannot draw: each runs a small computation on the model and plots it.

    data_distribution_figure(pipe)     training scenes of the shapes world, the model's samples, where objects sit
    forward_process_figure(pipe)       q(x_t | x_0): a picture's latent noised to several t, and what the VAE sees
    training_step_figure(pipe)         one training step: z_0, eps, x_t, the UNet's eps_hat, the error; loss over t
    classifier_guidance_figure(pipe)   classifier guidance (a hand-written colour classifier) vs classifier-free
    norm_axes_figure(pipe)             which values batch, layer, instance and group norm share, on a real activation
    clip_figure(pipe, prompt)          token and position embeddings, the causal mask, similarity of the token vectors
    inpainting_figure(pipe, ...)       an inpainting result: the picture, the mask, and a few repainted prompts

The figures of a recorded generation (attention, group-norm statistics, the denoising strip...) are in `plots`.
Every function takes the pipeline (the embedded model by default in the notebooks) and returns a
`sdviz.viz.display.Figure`, which a notebook shows as a picture.

Two pieces of the lessons are small algorithms worth reading on their own, in `guidance_lesson.py` (and here):

    sample(pipe, prompt, ..., guide=fn)          the denoising loop in a dozen lines, with a hook to change eps
    colour_classifier_guide(pipe, colour, s)     classifier guidance (Dhariwal & Nichol 2021) with a classifier
                                                 that needs no training: the judge's nearest-colour rule, made soft
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sdviz.viz.display import Figure
from sdviz.viz.guidance_lesson import (  # the guidance lesson, in its own file
    Guide,
    classifier_guidance_figure,
    colour_classifier_guide,
    colour_log_prob,
    sample,
)
from sdviz.viz.style import SETTINGS, no_ticks, to_u8, upsample, wrap

if TYPE_CHECKING:
    from sdviz.pipeline import StableDiffusion

__all__ = [
    "NORMS",
    "Guide",
    "box_mask",
    "capture_norm_input",
    "classifier_guidance_figure",
    "clip_figure",
    "colour_classifier_guide",
    "colour_log_prob",
    "data_distribution_figure",
    "forward_process_figure",
    "inpainting_figure",
    "norm_axes_figure",
    "normalise",
    "sample",
    "training_step_figure",
]

# --------------------------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------------------------


def _preview(pipe: StableDiffusion, z: Tensor, size: tuple[int, int] | None = None) -> np.ndarray:
    """Scaled latents (4, h, w) as the cheap linear RGB preview, upsampled to `size` in blocks: (H, W, 3) uint8."""
    from sdviz.tracing.preview import latent_rgb_map

    w, b = latent_rgb_map(pipe)
    rgb = (torch.einsum("oc,chw->ohw", w, z.float().cpu()) + b[:, None, None]).clamp(-1, 1)
    pic = to_u8(rgb)
    return upsample(pic, size) if size else pic


def _decode(pipe: StableDiffusion, z: Tensor) -> np.ndarray:
    """Scaled latents (B, 4, h, w) -> (B, H, W, 3) uint8 through the VAE decoder."""
    return np.stack([to_u8(x) for x in pipe.decode_latents(z)])


def _schedule(pipe: StableDiffusion) -> Any:
    from sdviz.samplers.schedule import NoiseSchedule

    return NoiseSchedule(pipe.config.schedule)


# --------------------------------------------------------------------------------------------------------------------
# 1. Generative models: the data distribution
# --------------------------------------------------------------------------------------------------------------------


def data_distribution_figure(
    pipe: StableDiffusion | None = None,
    n: int = 6,
    seed: int = 0,
    samples: int = 8,
    steps: int = 25,  # half of SETTINGS' 50: the figure generates n + `samples` pictures
) -> Figure:
    """What the model learns from and what it makes: `n` training scenes of the shapes world with their captions,
    the model's pictures for the same captions (other noise, so other pictures), and on the right where single
    objects sit: the centroids of 600 training scenes (the data distribution of positions) and those the judge
    finds in `samples` generated pictures. Without a pipeline, the data only."""
    from sdviz.toy import world
    from sdviz.toy.judge import judge

    rng = np.random.default_rng(seed)
    scenes = world.sample_scenes(rng, n)
    singles = [s for s in world.sample_scenes(np.random.default_rng(seed + 1), 1200) if len(s.objects) == 1][:600]
    rows = 2 if pipe is not None else 1
    fig = Figure(figsize=(2.0 * n + 4.6, 2.5 * rows + 0.7), layout="constrained")
    grid = fig.add_gridspec(rows, n + 2)
    for c, scene in enumerate(scenes):
        ax = fig.add_subplot(grid[0, c])
        ax.imshow(scene.image, interpolation="nearest")
        ax.set_title(wrap(scene.caption, 22), fontsize=7.5)
        no_ticks(ax)
        if c == 0:
            ax.set_ylabel("training data", fontsize=9)
    made: list[tuple[str, tuple[float, float]]] = []
    if pipe is not None:
        for c, scene in enumerate(scenes):
            pic = pipe.generate(scene.caption, seed=seed + c, progress=False, **{**SETTINGS, "steps": steps})
            ax = fig.add_subplot(grid[1, c])
            ax.imshow(pic.image, interpolation="nearest")
            ax.set_title(f"seed {seed + c}", fontsize=7.5)
            no_ticks(ax)
            if c == 0:
                ax.set_ylabel("the model's samples", fontsize=9)
        prompts = [s.caption for s in world.sample_scenes(np.random.default_rng(seed + 2), 4 * samples)]
        prompts = [p for p in prompts if len(world.parse_caption(p).objects) == 1][:samples]
        for k, p in enumerate(prompts):
            pic = pipe.generate(p, seed=100 + k, progress=False, **{**SETTINGS, "steps": steps}).image
            v = judge(pic, p)
            if v.objects[0].centre is not None:
                made.append((v.objects[0].colour, v.objects[0].centre))
    ax = fig.add_subplot(grid[:, n:])
    xy = np.array([s.objects[0].centre for s in singles])
    colours = np.array([world.PALETTE[s.objects[0].colour] for s in singles]) / 255
    ax.scatter(xy[:, 0], xy[:, 1], s=6, c=colours, alpha=0.6, linewidths=0, label="600 training scenes")
    if made:
        mxy = np.array([c for _, c in made])
        mc = np.array([world.PALETTE[k] for k, _ in made]) / 255
        ax.scatter(mxy[:, 0], mxy[:, 1], s=70, c=mc, marker="X", edgecolors="black", linewidths=0.8,
                   label=f"{len(made)} generated")  # fmt: skip
    for name, (x, y) in world.ANCHORS.items():
        ax.annotate(name, (x, y), xytext=(0, 12 if name != "top" else -16), textcoords="offset points",
                    ha="center", fontsize=8, color="0.3")  # fmt: skip
    ax.set_xlim(0, world.IMAGE_SIZE)
    ax.set_ylim(world.IMAGE_SIZE, 0)
    ax.set_aspect("equal")
    ax.set_facecolor(np.array(world.BACKGROUND) / 255)
    ax.set_title("where one object sits (its centroid, pixels)", fontsize=9)
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=2, frameon=False)
    fig.suptitle(
        "a generative model learns the distribution of its training data and draws new samples from it",
        fontsize=10,
    )
    return fig


# --------------------------------------------------------------------------------------------------------------------
# 2. The forward process q(x_t | x_0)
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def forward_process_figure(
    pipe: StableDiffusion,
    image: Any = None,
    timesteps: Sequence[int] = (0, 100, 250, 400, 600, 800, 999),
    seed: int = 0,
) -> Figure:
    """The forward process in one jump (DDPM eq. 4): x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, for
    the latent x_0 of a picture (default: a scene of the shapes world) at several t, with one noise eps.

    Rows: x_t through the linear latent preview (what the UNet sees), and x_t decoded by the VAE (what it would
    look like as a picture). Column titles give the weights of signal and noise.
    """
    from sdviz.pipeline import image_to_tensor
    from sdviz.toy import world

    if image is None:
        image = world.scene_from_spec("a large red circle above a small blue square", seed=3).image
    size = pipe.config.image_size
    x = image_to_tensor(image if not isinstance(image, np.ndarray) else _pil(image), size, size)
    z0 = pipe.encode_images(x)  # (1, 4, h, w): the posterior mean, scaled
    eps = torch.randn(z0.shape, generator=torch.Generator("cpu").manual_seed(seed)).to(z0)
    ab = _schedule(pipe).alphas_cumprod
    zs = torch.cat([ab[t].sqrt() * z0 + (1 - ab[t]).sqrt() * eps for t in timesteps])  # (T, 4, h, w)
    decoded = _decode(pipe, zs)
    fig = Figure(figsize=(1.75 * (len(timesteps) + 1), 4.3), layout="constrained")
    axes = fig.subplots(2, len(timesteps) + 1)
    axes[0, 0].imshow(np.asarray(image), interpolation="nearest")
    axes[0, 0].set_title("the picture", fontsize=9)
    axes[1, 0].axis("off")
    axes[1, 0].text(0.5, 0.5, "x_t = √ᾱ_t · x₀\n   + √(1−ᾱ_t) · ε\n\nε ~ N(0, I),\none draw for\nevery column",
                    ha="center", va="center", fontsize=9, transform=axes[1, 0].transAxes)  # fmt: skip
    no_ticks(axes[0, 0])
    for c, t in enumerate(timesteps, start=1):
        a = float(ab[t])
        axes[0, c].imshow(_preview(pipe, zs[c - 1], (size, size)), interpolation="nearest")
        axes[0, c].set_title(f"t = {t}\n√ᾱ={a ** 0.5:.2f}  √(1−ᾱ)={(1 - a) ** 0.5:.2f}", fontsize=8)
        axes[1, c].imshow(decoded[c - 1], interpolation="nearest")
        for r in (0, 1):
            no_ticks(axes[r, c])
    axes[0, 1].set_ylabel("latent x_t\n(linear preview)", fontsize=9)
    axes[1, 1].set_ylabel("x_t decoded\nby the VAE", fontsize=9)
    fig.suptitle("the forward process q(x_t | x₀): noise added in one jump (DDPM eq. 4); more t, less picture",
                 fontsize=10)  # fmt: skip
    return fig


def _pil(a: np.ndarray) -> Any:
    from PIL import Image

    return Image.fromarray(np.asarray(a, dtype=np.uint8))


# --------------------------------------------------------------------------------------------------------------------
# 3. Training vs sampling: one training step
# --------------------------------------------------------------------------------------------------------------------


def _heat(ax: Any, m: np.ndarray, size: int, vmax: float, cmap: str = "magma", decades: float = 3) -> Any:
    """A (h, w) map of positive values upsampled in blocks to size x size, on a fixed logarithmic colour scale from
    vmax / 10^decades to vmax (an error that falls a hundredfold over t stays visible on it)."""
    from matplotlib.colors import LogNorm

    up = m.repeat(size // m.shape[0], 0).repeat(size // m.shape[1], 1)
    norm = LogNorm(vmin=vmax / 10**decades, vmax=vmax, clip=True)
    return ax.imshow(np.maximum(up, vmax / 10**decades), cmap=cmap, norm=norm, interpolation="nearest")


@torch.no_grad()
def training_step_figure(
    pipe: StableDiffusion,
    caption: str = "a large yellow triangle on the left",
    timesteps: Sequence[int] = (50, 300, 600, 900),
    seed: int = 0,
    curve_scenes: int = 16,
) -> Figure:
    """One training step of the UNet, drawn (the arithmetic of `sdviz.toy.losses.diffusion_loss`):

    a training picture is encoded to z_0; noise eps is drawn; x_t = sqrt(alpha_bar_t) z_0 + sqrt(1 - alpha_bar_t)
    eps; the UNet, told t and the caption, predicts eps_hat; the loss is the mean of (eps_hat - eps)^2. One row per
    t, with the clean picture that eps_hat implies. Right: the same squared error averaged over `curve_scenes`
    random training scenes at 14 timesteps, the curve a training run pushes down at every t at once.
    """
    from sdviz.pipeline import image_to_tensor
    from sdviz.toy import world

    size = pipe.config.image_size
    scene = world.scene_from_spec(caption, seed=seed)
    z0 = pipe.encode_images(image_to_tensor(scene.pil(), size, size))  # (1, 4, h, w)
    eps = torch.randn(z0.shape, generator=torch.Generator("cpu").manual_seed(seed)).to(z0)
    ab = _schedule(pipe).alphas_cumprod
    context = pipe.encode_prompts([scene.caption])
    rows = []
    for t in timesteps:
        a = ab[t].to(z0)
        x_t = a.sqrt() * z0 + (1 - a).sqrt() * eps  # DDPM eq. 4
        eps_hat = pipe.unet(x_t, torch.tensor([t], device=pipe.device), context)  # (1, 4, h, w)
        x0_hat = (x_t - (1 - a).sqrt() * eps_hat) / a.sqrt()  # the clean latent the prediction implies
        err = ((eps_hat - eps) ** 2).mean(1)[0].float().cpu().numpy()  # (h, w): squared error per latent pixel
        rows.append((t, x_t[0], eps_hat[0], err, x0_hat))
    vmax = max(float(r[3].max()) for r in rows)
    titles = ["training picture x", "z₀ = VAE(x)", "noise ε", "x_t", "UNet's ε̂(x_t, t, caption)", "(ε̂ − ε)², log",
              "implied x̂₀ (decoded)"]  # fmt: skip
    n_col = len(titles)
    fig = Figure(figsize=(1.7 * n_col + 4.2, 1.8 * len(rows) + 0.9), layout="constrained")
    grid = fig.add_gridspec(len(rows), n_col + 3)
    im = None
    for r, (t, x_t, eps_hat, err, x0_hat) in enumerate(rows):
        axes = [fig.add_subplot(grid[r, c]) for c in range(n_col)]
        pics = [scene.image, _preview(pipe, z0[0], (size, size)), _preview(pipe, eps[0], (size, size)),
                _preview(pipe, x_t, (size, size)), _preview(pipe, eps_hat, (size, size))]  # fmt: skip
        for ax, pic in zip(axes[:5], pics, strict=True):
            ax.imshow(pic, interpolation="nearest")
        im = _heat(axes[5], err, size, vmax)
        axes[6].imshow(_decode(pipe, x0_hat)[0], interpolation="nearest")
        axes[5].set_xlabel(f"loss = mean = {err.mean():.3f}", fontsize=8)
        axes[0].set_ylabel(f"t = {t}\n√ᾱ_t = {float(ab[t]) ** 0.5:.2f}", fontsize=9)
        for c, ax in enumerate(axes):
            no_ticks(ax)
            if r == 0:
                ax.set_title(titles[c], fontsize=8.5)
    fig.colorbar(im, ax=fig.axes[5::n_col], fraction=0.05, pad=0.02, label="squared error (log scale)")

    # the loss over t, averaged over random training scenes
    rng = np.random.default_rng(seed + 1)
    x, captions = world.batch(curve_scenes, rng)
    zb = pipe.encode_images(x)  # (N, 4, h, w)
    noise = torch.randn(zb.shape, generator=torch.Generator("cpu").manual_seed(seed + 1)).to(zb)
    ctx = pipe.encode_prompts(captions)
    ts = np.array([0, 10, 25, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999])
    mse = []
    for t in ts:
        a = ab[t].to(zb)
        pred = pipe.unet(a.sqrt() * zb + (1 - a).sqrt() * noise, torch.full((len(zb),), int(t)), ctx)
        mse.append(float(((pred - noise) ** 2).mean()))
    ax = fig.add_subplot(grid[:, n_col:])
    ax.plot(ts, mse, "o-", color="tab:blue", ms=3, label=f"mean (ε̂ − ε)², {curve_scenes} scenes")
    ax.plot(timesteps, [float(r[3].mean()) for r in rows], "x", color="black", ms=7, label="the rows on the left")
    ax.set_yscale("log")
    ax.set_xlabel("timestep t")
    ax.set_title("the trained model's loss at every t", fontsize=9)
    ax.legend(fontsize=7.5, loc="upper right")
    ax.grid(alpha=0.3)
    fig.suptitle(f"one training step: noise a latent, predict the noise, score the prediction  ({scene.caption!r})",
                 fontsize=10)  # fmt: skip
    return fig


# --------------------------------------------------------------------------------------------------------------------
# 4. Classifier guidance vs classifier-free guidance: guidance_lesson.py (with the denoising loop it steers)
# --------------------------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------------------------
# 5. Normalisation: which values share a mean and a std
# --------------------------------------------------------------------------------------------------------------------

NORMS = {
    # name: (what is averaged over, as said to a learner)
    "batch norm": "one channel, over every image and pixel of the batch",
    "layer norm": "one image, over all its channels and pixels",
    "instance norm": "one image and one channel, over its pixels",
    "group norm": "one image and one group of channels, over their pixels",
}


def normalise(x: Tensor, kind: str, groups: int) -> Tensor:
    """x (N, C, H, W) normalised to mean 0, std 1 the way `kind` does it (no learned scale and shift)."""
    n, c = x.shape[:2]
    dims = {"batch norm": (0, 2, 3), "layer norm": (1, 2, 3), "instance norm": (2, 3)}
    if kind == "group norm":
        g = x.reshape(n, groups, -1)  # (N, C, H, W) -> (N, G, C/G * H * W)
        return ((g - g.mean(-1, keepdim=True)) / g.std(-1, keepdim=True, correction=0).add(1e-5)).reshape(x.shape)
    d = dims[kind]
    return (x - x.mean(d, keepdim=True)) / x.std(d, keepdim=True, correction=0).add(1e-5)


@torch.no_grad()
def capture_norm_input(
    pipe: StableDiffusion,
    layer: str = "unet.down_blocks.1.resnets.0.norm1",
    prompts: Sequence[str] = ("a red circle on the left", "a large blue square", "a small green triangle at the top"),
    t: int = 500,
    seed: int = 0,
) -> tuple[Tensor, int]:
    """A real activation: the input of one GroupNorm of the UNet for a small batch of noisy latents at timestep t,
    (N, C, H, W), and that layer's number of groups."""
    from sdviz.hooks import hooks
    from sdviz.pipeline import image_to_tensor
    from sdviz.toy import world

    size = pipe.config.image_size
    pictures = torch.cat([image_to_tensor(world.scene_from_spec(p, seed=seed).pil(), size, size) for p in prompts])
    z0 = pipe.encode_images(pictures)
    ab = _schedule(pipe).alphas_cumprod[t]
    eps = torch.randn(z0.shape, generator=torch.Generator("cpu").manual_seed(seed)).to(z0)
    x_t = ab.sqrt() * z0 + (1 - ab).sqrt() * eps
    seen: list[Tensor] = []
    with hooks(pipe, f"{layer}.hook_in", lambda _name, x: seen.append(x.float().cpu())):
        pipe.unet(x_t, torch.full((len(prompts),), t), pipe.encode_prompts(list(prompts)))
    norm = dict(pipe.unet.named_modules())[layer.removeprefix("unet.")]
    return torch.cat(seen), int(norm.num_groups)


def norm_axes_figure(
    pipe: StableDiffusion,
    layer: str = "unet.down_blocks.1.resnets.0.norm1",
    **capture: Any,
) -> Figure:
    """Batch, layer, instance and group norm on one real activation of the UNet (a GroupNorm's input, N images).

    Each panel draws the activation as a matrix: rows are channels (grouped as the layer groups them), columns are
    the N images side by side, each image's pixels flattened. The outlined block is one set of values that share a
    mean and a std under that normalisation (all the other blocks are normalised the same way, separately). Below:
    the values of the outlined block before (grey) and after (colour) normalising.
    """
    x, groups = capture_norm_input(pipe, layer, **capture)
    n, c, h, w = x.shape
    m = x.permute(1, 0, 2, 3).reshape(c, n * h * w).numpy()  # (C, N*H*W): channel rows, image-by-image columns
    lim = float(np.percentile(np.abs(m), 99))
    per = c // groups
    # outline the channel furthest from mean 0 (its group, in the middle image), where normalising visibly moves it
    ch = int(x.mean((0, 2, 3)).abs().argmax())
    g0, i0 = (ch // per) * per, (n // 2) * h * w
    blocks = {  # (row0, rows, col0, cols) of the highlighted set, in matrix coordinates
        "batch norm": (ch, 1, 0, n * h * w),
        "layer norm": (0, c, i0, h * w),
        "instance norm": (ch, 1, i0, h * w),
        "group norm": (g0, per, i0, h * w),
    }
    fig = Figure(figsize=(15, 6.6), layout="constrained")
    axes = fig.subplots(2, 4, height_ratios=[2.2, 1])
    import matplotlib.patches as patches

    for col, (kind, (r0, nr, c0, nc)) in enumerate(blocks.items()):
        ax = axes[0, col]
        im = ax.imshow(m, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.add_patch(patches.Rectangle((c0 - 0.5, r0 - 0.5), nc, nr, fill=False, ec="black", lw=2.2))
        ax.add_patch(patches.Rectangle((c0 - 0.5, r0 - 0.5), nc, nr, fill=False, ec="yellow", lw=1.0, ls="--"))
        for k in range(1, n):
            ax.axvline(k * h * w - 0.5, color="0.2", lw=0.6)
        for g in range(1, groups):
            ax.axhline(g * per - 0.5, color="0.6", lw=0.25)
        ax.set_title(f"{kind}:\n{NORMS[kind]}", fontsize=9)
        ax.set_xticks([(k + 0.5) * h * w for k in range(n)], [f"image {k}\n({h}x{w} px)" for k in range(n)], fontsize=7)
        ax.set_yticks([])
        if col == 0:
            ax.set_ylabel(f"{c} channels ({groups} groups of {per})", fontsize=8.5)
        # the outlined set before and after
        chosen = x.permute(1, 0, 2, 3).reshape(c, n * h * w)[r0 : r0 + nr, c0 : c0 + nc].flatten().numpy()
        after = normalise(x, kind, groups).permute(1, 0, 2, 3).reshape(c, n * h * w)[r0 : r0 + nr, c0 : c0 + nc]
        bins = np.linspace(-4, 4, 41)
        axes[1, col].hist(chosen, bins=bins, color="0.6", alpha=0.8,
                          label=f"before: mean {chosen.mean():+.2f}, std {chosen.std():.2f}")  # fmt: skip
        axes[1, col].hist(after.flatten().numpy(), bins=bins, color="tab:blue", alpha=0.6,
                          label="after: mean 0, std 1")  # fmt: skip
        axes[1, col].set_title(f"the outlined {chosen.size} values", fontsize=8.5)
        axes[1, col].legend(fontsize=7, loc="upper left", frameon=False)
        axes[1, col].set_yticks([])
    fig.colorbar(im, ax=axes[0, :], fraction=0.02, pad=0.01, label="activation")
    where = f"the input of {layer.removeprefix('unet.')}, {n} images at t={capture.get('t', 500)}"
    fig.suptitle(f"which values share a mean and a std: {where} (the UNet normalises with group norm, here {groups} "
                 "groups)", fontsize=10)  # fmt: skip
    return fig


# --------------------------------------------------------------------------------------------------------------------
# 6. CLIP: token and position embeddings, the causal mask, similarity of the token vectors
# --------------------------------------------------------------------------------------------------------------------


def _cosine(v: Tensor) -> np.ndarray:
    v = F.normalize(v.float(), dim=-1)
    return (v @ v.T).cpu().numpy()


@torch.no_grad()
def clip_figure(
    pipe: StableDiffusion,
    prompt: str = "a large red circle above a small blue square",
    padding: int = 2,
) -> Figure:
    """Inside the CLIP text encoder, for one prompt (its tokens and `padding` padding positions):

    top: the token embedding of each id, the learned position embedding of each position, and their sum (what the
    first layer receives); bottom: the causal mask with the last layer's attention (averaged over heads; nothing
    above the diagonal: a token sees only itself and the tokens before it), and the cosine similarity of the token
    vectors before the first layer and after the last (what the UNet's cross-attention reads).
    """
    from sdviz.hooks import hooks

    enc = pipe.tokenizer.encode(prompt)
    n = min(enc.length + padding, len(enc.ids))
    labels = [(tok or "(pad)") if i < enc.length else "(pad)" for i, tok in enumerate(enc.tokens[:n])]
    labels = [lab.replace("<|startoftext|>", "<start>").replace("<|endoftext|>", "<end>") for lab in labels]
    labels = [f"{lab}  {i}" for lab, i in zip(labels, enc.ids[:n], strict=True)]
    ids = torch.tensor([enc.ids], device=pipe.device)
    te = pipe.text_encoder
    token = te.token_embedding(ids)[0, :n].float().cpu()  # (n, width)
    position = te.position_embedding.weight[:n].float().cpu()  # (n, width)
    probs: dict[str, Tensor] = {}
    with hooks(pipe, "text_encoder.layers.*.attn.hook_probs", lambda name, p: probs.__setitem__(name, p)):
        out = te(ids)[0, :n].float().cpu()  # (n, width)
    last = probs[sorted(probs)[-1]][0].mean(0)[:n, :n].float().cpu().numpy()  # (heads, 77, 77) -> (n, n)
    fig = Figure(figsize=(15, 9.5), layout="constrained")
    axes = fig.subplots(2, 3)
    lim = float(max(token.abs().max(), position.abs().max()))
    for ax, m, title in (
        (axes[0, 0], token, "token embedding (one row per id)"),
        (axes[0, 1], position, "position embedding (one row per position, learned)"),
        (axes[0, 2], token + position, "their sum: what the first layer reads"),
    ):
        im = ax.imshow(m.numpy(), aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_title(title, fontsize=9.5)
        ax.set_xlabel(f"dimension (width {m.shape[1]})")
        ax.set_yticks(range(n), labels, fontsize=8)
    fig.colorbar(im, ax=axes[0, :], fraction=0.02, pad=0.01, label="value")
    short = [lab.rsplit("  ", 1)[0] for lab in labels]
    masked = np.triu(np.ones((n, n), dtype=bool), k=1)
    ax = axes[1, 0]
    shown = np.ma.masked_array(last, masked)
    im = ax.imshow(shown, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.imshow(np.where(masked, 1.0, np.nan), cmap="Greys", vmin=0, vmax=2.5, interpolation="nearest")
    ax.set_title(f"causal mask (grey: not allowed) and the last\nlayer's attention ({len(probs)} layers, head mean)",
                 fontsize=9.5)  # fmt: skip
    ax.set_ylabel("query token")
    ax.set_xlabel("key token it reads")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="attention probability")
    before, after = _cosine(token + position), _cosine(out)
    for ax, m, title in (
        (axes[1, 1], before, "cosine similarity of the token vectors\nbefore the first layer"),
        (axes[1, 2], after, "... and after the last layer\n(the context the UNet attends to)"),
    ):
        im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=9.5)
    fig.colorbar(im, ax=axes[1, 1:], fraction=0.02, pad=0.01, label="cosine similarity")
    for ax in axes[1]:
        ax.set_xticks(range(n), short, rotation=70, fontsize=8)
        ax.set_yticks(range(n), short, fontsize=8)
    fig.suptitle(f"the CLIP text encoder on {prompt!r}: {enc.length} tokens of the 77 positions "
                 f"(the rest is padding with the end token)", fontsize=10.5)  # fmt: skip
    return fig


# --------------------------------------------------------------------------------------------------------------------
# 7. The architecture: inpainting
# --------------------------------------------------------------------------------------------------------------------


def box_mask(size: int, box: tuple[int, int, int, int]) -> Any:
    """A PIL mask of `size` x `size`, white (repaint) inside box = (x0, y0, x1, y1) in pixels, black elsewhere."""
    from PIL import Image

    m = np.zeros((size, size), dtype=np.uint8)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = 255
    return Image.fromarray(m)


def inpainting_figure(
    pipe: StableDiffusion,
    image: Any,
    mask: Any,
    prompts: Sequence[str],
    seed: int = 0,
    **settings: Any,
) -> Figure:
    """Inpainting: the picture, the mask (white: repaint), and the result for each prompt. Outside the mask the
    picture's own latents, noised to the current t, are put back after every step, so only the white region is
    drawn anew, in a way that fits what surrounds it."""
    settings = {**SETTINGS, **settings}
    results = [pipe.generate(p, image=image, mask=mask, seed=seed, progress=False, **settings).image for p in prompts]
    pic, m = np.asarray(image.convert("RGB")), np.asarray(mask.convert("L")) > 127
    shown = pic.copy()
    shown[m] = (0.45 * shown[m] + 0.55 * np.array([255, 255, 255])).astype(np.uint8)
    n = len(prompts) + 2
    fig = Figure(figsize=(2.0 * n, 2.6), layout="constrained")
    axes = fig.subplots(1, n)
    for ax, im, title in zip(
        axes,
        [pic, shown, *results],
        ["the picture", "mask (white:\nrepainted)", *[wrap(f'"{p}"', 26) for p in prompts]],
        strict=True,
    ):
        ax.imshow(np.asarray(im), interpolation="nearest")
        ax.set_title(title, fontsize=7.5)
        no_ticks(ax)
    fig.suptitle("inpainting: only the masked region is generated; the rest is put back after every step", fontsize=10)
    return fig

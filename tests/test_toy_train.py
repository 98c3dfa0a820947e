"""Micro training runs of the embedded-model trainer on the TINY config: learning happens, resuming is exact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sdviz.config import TINY
from sdviz.toy import loop, world
from sdviz.toy import train as T

KW = dict(config=TINY, batch_size=4, log_every=1, progress=False, threads=1, seed=3, measure_images=64)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _losses(out: Path, stage: str) -> list[float]:
    return [r["loss"] for r in loop.read_log(out, stage)]


def test_vae_loss_goes_down_and_scaling_is_measured(tmp_path: Path) -> None:
    summary = T.train(tmp_path, stage="vae", steps=40, lr=3e-3, **KW)
    losses = _losses(tmp_path, "vae")
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    vae = summary["vae"]
    assert vae["finished"] and vae["scaling_factor"] > 0 and "psnr_held_out" in vae
    assert json.loads((tmp_path / "summary.json").read_text())["vae"]["steps"] == 40


def test_resume_continues_exactly(tmp_path: Path) -> None:
    """A run stopped at step 6 and resumed gives the same losses, step for step, as an uninterrupted run."""
    full, split = tmp_path / "full", tmp_path / "split"
    T.train(full, stage="vae", steps=12, ckpt_every=5, **KW)
    T.train(split, stage="vae", steps=12, ckpt_every=5, stop_after=6, **KW)
    assert T.load_checkpoint(split, "vae")["step"] == 6
    assert len(_losses(split, "vae")) == 6
    T.train(split, stage="vae", steps=12, **KW)
    assert _losses(split, "vae") == _losses(full, "vae")

    # The UNet stage, on top of the (identical) VAEs: text encoder, EMA, caption dropout, noise, timesteps.
    T.train(full, stage="unet", steps=10, export_model=False, **KW)
    T.train(split, stage="unet", steps=10, stop_after=4, **KW)
    T.train(split, stage="unet", steps=10, export_model=False, **KW)
    assert _losses(split, "unet") == _losses(full, "unet")
    a, b = T.load_checkpoint(full, "unet"), T.load_checkpoint(split, "unet")
    for key, value in a["ema"]["unet"].items():
        assert torch.equal(value, b["ema"]["unet"][key]), key


@pytest.mark.slow  # 10-30 s on 2 cores: make test-all (CI runs both) keeps make test under 8 minutes
def test_unet_learns_and_exports_a_loadable_model(tmp_path: Path) -> None:
    from sdviz.pipeline import load_pipeline

    T.train(tmp_path, stage="vae", steps=5, **KW)
    T.train(tmp_path, stage="unet", steps=60, lr=3e-3, stop_after=1, **KW)
    before = T.noise_prediction_loss(T.load_trained(tmp_path, ema=False), n=32)
    summary = T.train(tmp_path, stage="unet", steps=60, lr=3e-3, **KW)
    after = T.noise_prediction_loss(T.load_trained(tmp_path, ema=False), n=32)
    assert after < 0.85 * before  # on fixed held-out scenes, timesteps and noise
    pipe = load_pipeline(summary["model"])
    assert pipe.config.vae.scaling_factor == pytest.approx(summary["unet"]["scaling_factor"])
    meta = json.loads((Path(summary["model"]) / "sdviz.json").read_text())
    assert meta["vocabulary"] == {kind: list(words) for kind, words in world.vocabulary().items()}
    image = pipe.generate("a red circle on the left", steps=2, cfg_scale=3.0, seed=0, progress=False).image
    assert image.size == (64, 64)
    from sdviz.viz.plots import training_losses_figure  # the run's logs, drawn as the README's figure is

    fig = training_losses_figure(tmp_path)
    assert len(fig.axes) == 3 and all(ax.lines for ax in fig.axes)  # VAE loss, VAE PSNR, UNet loss: each drawn


@pytest.mark.slow  # 10-30 s on 2 cores: make test-all (CI runs both) keeps make test under 8 minutes
def test_relations_stage_fine_tunes_stage_2_and_resumes_exactly(tmp_path: Path) -> None:
    """Stage 3 starts from stage 2's EMA weights, keeps the VAE, resumes exactly and exports its own EMA."""
    full, split = tmp_path / "full", tmp_path / "split"
    T.train(full, stage="vae", steps=3, **KW)
    T.train(full, stage="unet", steps=4, **KW)
    shutil.copytree(full, split)  # the same stages 1 and 2
    start = T.load_trained(full, stage="unet")
    T.train(full, stage="relations", steps=6, p_two=1.0, **KW)
    T.train(split, stage="relations", steps=6, p_two=1.0, stop_after=3, **KW)
    summary = T.train(split, stage="relations", steps=6, p_two=1.0, **KW)
    assert _losses(split, "relations") == _losses(full, "relations") and len(_losses(full, "relations")) == 6
    assert T.load_checkpoint(full, "relations")["settings"]["p_two"] == 1.0
    end = T.load_trained(full)  # the latest stage: relations
    assert T.load_trained(full, stage="unet").unet.state_dict().keys() == end.unet.state_dict().keys()
    assert any(not torch.equal(a, b) for a, b in zip(start.unet.parameters(), end.unet.parameters(), strict=True))
    for a, b in zip(start.vae.state_dict().values(), end.vae.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    meta = json.loads((Path(summary["model"]) / "sdviz.json").read_text())
    assert meta["card"]["unet_steps"] == 4 and meta["card"]["relations_steps"] == 6
    assert set(meta["card"]["summary"]) == {"vae", "unet", "relations"}


@pytest.mark.slow  # 10-30 s on 2 cores: make test-all (CI runs both) keeps make test under 8 minutes
def test_relations_stage_from_a_model_folder(tmp_path: Path) -> None:
    """`init`: a run that starts from a trained model (the shipped one, in practice) keeps its VAE bit for bit and
    carries its training summary over."""
    from sdviz.weights import load_models

    T.train(tmp_path / "first", stage="vae", steps=3, **KW)
    model = T.train(tmp_path / "first", stage="unet", steps=4, **KW)["model"]
    summary = T.train(tmp_path / "second", stage="relations", steps=3, init=model, **KW)
    assert summary["relations"]["finished"]
    before, after = load_models(model), load_models(summary["model"])
    for a, b in zip(before.vae.state_dict().values(), after.vae.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert after.config.vae.scaling_factor == before.config.vae.scaling_factor
    card = json.loads((Path(summary["model"]) / "sdviz.json").read_text())["card"]
    assert card["summary"]["unet"]["steps"] == 4 and card["relations_steps"] == 3
    with pytest.raises(ValueError, match="relations"):
        T.train(tmp_path / "third", stage="unet", steps=1, init=model, **KW)


def test_unet_stage_needs_a_trained_vae(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        T.train(tmp_path, stage="unet", steps=2, **KW)


def test_lr_schedule() -> None:
    s = loop.StageSettings(steps=100, batch_size=1, lr=1.0, warmup=10, final_lr_ratio=0.1)
    assert loop.lr_at(5, s) == pytest.approx(0.5)
    assert loop.lr_at(10, s) == pytest.approx(1.0)
    assert loop.lr_at(100, s) == pytest.approx(0.1)
    assert all(loop.lr_at(i, s) >= loop.lr_at(i + 1, s) for i in range(10, 100))


def test_train_restores_the_number_of_threads(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    T.train(tmp_path, stage="vae", steps=1, **{**KW, "threads": 1})
    assert torch.get_num_threads() == 2
    with pytest.raises(FileNotFoundError):  # also when training fails
        T.train(tmp_path / "other", stage="unet", steps=1, **{**KW, "threads": 1})
    assert torch.get_num_threads() == 2


def test_the_losses_on_known_inputs() -> None:
    """The Min-SNR weight is 1 where SNR <= gamma and gamma / SNR above; a perfect noise predictor has loss 0."""
    from sdviz.config import ScheduleConfig
    from sdviz.samplers.schedule import NoiseSchedule
    from sdviz.toy import losses

    schedule = NoiseSchedule(ScheduleConfig())
    t = torch.arange(1000)
    w = losses.min_snr_weight(schedule, t, gamma=5.0)
    snr = schedule.snr
    assert torch.equal(w[snr <= 5], torch.ones(int((snr <= 5).sum())))
    torch.testing.assert_close(w[snr > 5], 5.0 / snr[snr > 5])

    class Oracle(torch.nn.Module):  # knows z0, so it can recover the noise from x_t exactly (DDPM eq. 4 inverted)
        def __init__(self, z0: torch.Tensor) -> None:
            super().__init__()
            self.z0 = z0

        def forward(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            a = schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
            return (x_t - a.sqrt() * self.z0) / (1 - a).sqrt()

    z0 = torch.randn(8, 4, 16, 16)
    loss, mse = losses.diffusion_loss(Oracle(z0), torch.zeros(8, 77, 16), z0, schedule, torch.Generator())
    assert mse.shape == (8,) and loss.item() < 1e-8
    rng = np.random.default_rng(0)
    dropped = losses.drop_captions(["a red circle"] * 1000, rng)
    assert 60 < dropped.count("") < 140 and set(dropped) == {"", "a red circle"}

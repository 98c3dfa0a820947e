"""`sdviz generate`: pictures on disk, and one-line errors that leave nothing half-written."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from sdviz.cli import main
from sdviz.config import TINY
from sdviz.weights import build_models, save_sdviz


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights") / "tiny"
    torch.manual_seed(0)
    save_sdviz(folder, build_models(TINY), dtype=None)
    return str(folder)


@pytest.fixture
def image_file(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "in.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).convert("P").save(path)
    return path


def run(*args: str) -> int:
    return main(["generate", *args, "--quiet"])


def test_generate_writes_the_picture(weights, tmp_path, capsys):
    out = tmp_path / "sub" / "picture.png"
    assert run("a red circle", "--out", str(out), "--weights", weights, "--steps", "2", "--seed", "1") == 0
    assert Image.open(out).size == (64, 64)
    assert "wrote" in capsys.readouterr().out
    again = tmp_path / "again.png"
    run("a red circle", "--out", str(again), "--weights", weights, "--steps", "2", "--seed", "1")
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))  # a seed is a picture


def test_image_to_image_and_inpainting(weights, tmp_path, image_file):
    mask = tmp_path / "mask.png"
    Image.new("L", (64, 64), 255).save(mask)
    out = tmp_path / "inpainted.png"
    args = ["a blue square", "--out", str(out), "--weights", weights, "--steps", "2", "--sampler", "ddim"]
    assert run(*args, "--image", str(image_file), "--strength", "0.6", "--mask", str(mask)) == 0
    assert Image.open(out).size == (64, 64)


def test_python_dash_m(weights, tmp_path):
    out = tmp_path / "m.png"
    cmd = [sys.executable, "-m", "sdviz", "generate", "x", "--out", str(out), "--weights", weights, "--steps", "1"]
    done = subprocess.run([*cmd, "--quiet"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--size", "60x64"], "width must be a positive multiple of 8"),
        (["--size", "big"], "--size must look like 512x512"),
        (["--steps", "0"], "steps must be an integer >= 1"),
        (["--sampler", "plms"], "unknown sampler 'plms'; known: ddpm, ddim, euler, euler_a"),
        (["--image", "IMAGE", "--strength", "1.5"], "strength must be between 0 and 1"),
        (["--image", "IMAGE", "--mask", "SMALLMASK"], "mask is 32x32 but the image is 64x64"),
        (["--mask", "SMALLMASK"], "--mask needs --image"),
        (["--image", "nowhere.png"], "no such file"),
        (["--weights", "nowhere.safetensors"], "no such file"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(weights, tmp_path, image_file, capsys, extra, message):
    small = tmp_path / "small.png"
    Image.new("L", (32, 32)).save(small)
    extra = [str(image_file) if a == "IMAGE" else str(small) if a == "SMALLMASK" else a for a in extra]
    if "--weights" not in extra:
        extra += ["--weights", weights]
    out = tmp_path / "out.png"
    assert run("a red circle", "--out", str(out), *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.png", "small.png"])  # nothing written


def test_demo_writes_a_picture_with_the_embedded_model(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    assert Image.open(out).size == (64, 64)
    assert str(out) in capsys.readouterr().out

"""Loading weights: every layout round-trips, and every bad file gives a one-line WeightsError naming file and key."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch
from reference import diffusers_unet, diffusers_vae, hf_clip, perturb_, to_compvis
from safetensors.torch import save_file

from sdviz.config import SD15, TINY, TOY
from sdviz.weights import WeightsError, build_models, detect_format, load_models, read_state_dict, save_sdviz


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """TINY reference weights as a diffusers folder, a CompVis .safetensors and a CompVis .ckpt."""
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    unet, vae, clip = perturb_(diffusers_unet(TINY)), perturb_(diffusers_vae(TINY)), perturb_(hf_clip(TINY))
    unet.save_pretrained(root / "diffusers" / "unet")
    vae.save_pretrained(root / "diffusers" / "vae")
    clip.save_pretrained(root / "diffusers" / "text_encoder")
    single = to_compvis(unet.state_dict(), vae.state_dict(), clip.state_dict(), TINY)
    save_file(single, root / "tiny.safetensors")
    torch.save({"state_dict": single, "global_step": 1}, root / "tiny.ckpt")
    return root, single, unet.eval()


def unet_output(models) -> torch.Tensor:
    torch.manual_seed(1)
    x, ctx = torch.randn(1, 4, 8, 8), torch.randn(1, 77, TINY.unet.context_dim)
    with torch.no_grad():
        return models(x, torch.tensor([7]), ctx) if isinstance(models, torch.nn.Module) else models.unet(x, 7, ctx)


def test_every_layout_loads_the_same_numbers(tiny, tmp_path):
    root, _, ref_unet = tiny
    expected = unet_output(ref_unet).sample
    diffusers = load_models(root / "diffusers")
    assert diffusers.config.unet == TINY.unet and diffusers.config.vae == TINY.vae
    for models in (diffusers, load_models(root / "tiny.safetensors", TINY), load_models(root / "tiny.ckpt", TINY)):
        assert torch.equal(unet_output(models), expected)
    save_sdviz(tmp_path / "own", diffusers, dtype=None)
    assert detect_format(tmp_path / "own") == "sdviz"
    own = load_models(tmp_path / "own")
    assert own.config == diffusers.config
    assert torch.equal(unet_output(own), expected)


def test_float16_sdviz_files_and_no_partial_file_left(tmp_path):
    models = build_models(TOY)
    save_sdviz(tmp_path / "m", models)  # float16 by default
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.safetensors", "sdviz.json"]
    sd = read_state_dict(tmp_path / "m" / "model.safetensors")
    assert all(v.dtype == torch.float16 for v in sd.values())
    loaded = load_models(tmp_path / "m")
    assert loaded.unet.conv_in.weight.dtype == torch.float32  # loaded in the dtype asked for


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_truncated_files(tiny, tmp_path):
    root, _, _ = tiny
    for name in ("tiny.safetensors", "tiny.ckpt"):
        data = (root / name).read_bytes()
        cut = tmp_path / name
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(WeightsError) as e:
            load_models(cut, TINY)
        assert str(cut) in one_line(e)


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "notes.ckpt"
    junk.write_text("these are not weights\n")
    with pytest.raises(WeightsError) as e:
        load_models(junk)
    assert "notes.ckpt" in one_line(e)
    with pytest.raises(WeightsError) as e:
        load_models(tmp_path / "missing.safetensors")
    assert "no such file" in one_line(e)
    with pytest.raises(WeightsError) as e:
        load_models(tmp_path)  # a folder of neither kind
    assert "neither" in one_line(e)


def test_safetensors_of_another_model(tmp_path):
    other = tmp_path / "classifier.safetensors"
    save_file({"fc.weight": torch.zeros(10, 5), "fc.bias": torch.zeros(10)}, other)
    with pytest.raises(WeightsError) as e:
        load_models(other)
    assert "not a Stable Diffusion 1.x single file" in one_line(e)


def test_pickle_that_needs_code_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "callback": pickle.PickleError("runs code")}, path)
    with pytest.raises(WeightsError) as e:
        load_models(path)
    assert "needs code to unpickle" in one_line(e)


def test_wrong_shapes_name_the_key(tiny):
    root, _, _ = tiny
    wider_context = dataclasses.replace(TINY, unet=dataclasses.replace(TINY.unet, context_dim=64))
    with pytest.raises(WeightsError) as e:
        load_models(root / "tiny.safetensors", wider_context)  # an SD 2.x-like mismatch: 1024-d vs 768-d context
    message = one_line(e)
    assert "tiny.safetensors" in message and "has shape (16, 32)" in message and "expects (16, 64)" in message
    assert "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight" in message
    with pytest.raises(WeightsError) as e:
        load_models(root / "tiny.safetensors", SD15)  # TINY weights, SD 1.5 architecture
    assert "tiny.safetensors" in one_line(e) and "model.diffusion_model." in str(e.value)


def test_missing_and_unexpected_keys_name_the_key(tiny, tmp_path):
    root, single, _ = tiny
    missing = dict(single)
    del missing["model.diffusion_model.out.2.weight"]
    save_file(missing, tmp_path / "missing.safetensors")
    with pytest.raises(WeightsError) as e:
        load_models(tmp_path / "missing.safetensors", TINY)
    assert "missing key 'conv_out.weight'" in one_line(e) and "missing.safetensors" in str(e.value)

    extra = dict(single)
    extra["model.diffusion_model.input_blocks.1.0.lora_up.weight"] = torch.zeros(1)
    save_file(extra, tmp_path / "extra.safetensors")
    with pytest.raises(WeightsError) as e:
        load_models(tmp_path / "extra.safetensors", TINY)
    assert "model.diffusion_model.input_blocks.1.0.lora_up.weight" in one_line(e)

    stray = dict(single)
    stray["something_else.weight"] = torch.zeros(1)
    save_file(stray, tmp_path / "stray.safetensors")
    with pytest.raises(WeightsError) as e:
        load_models(tmp_path / "stray.safetensors", TINY)
    assert "something_else.weight" in one_line(e)

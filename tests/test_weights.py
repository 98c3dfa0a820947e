"""Loading weights: every layout round-trips, and every bad file gives a one-line WeightsError naming file and key.

Comparisons with the diffusers reference use tolerances (another CPU may round differently: rtol 1e-4 and atol 1e-4
of the output's largest magnitude). Bit identity is asserted only for sdviz's own promises within one process:
loading moves numbers without arithmetic, so every layout of the same weights gives identical tensors, and a meta
build with assigned tensors equals a plain build. All of it runs with the TINY config in seconds.
"""

from __future__ import annotations

import dataclasses
import json
import pickle

import pytest
import torch
from reference import diffusers_unet, diffusers_vae, hf_clip, perturb_, to_compvis
from safetensors.torch import save_file

from sdviz.cli import main as cli_main
from sdviz.config import SD15, TINY, TOY, ConfigError, SDConfig
from sdviz.weights import (
    COMPONENTS,
    WeightsError,
    build_models,
    detect_format,
    load_models,
    read_state_dict,
    save_sdviz,
)


def assert_close_to_reference(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """sdviz against diffusers: rtol 1e-4, atol 1e-4 of the reference's largest magnitude."""
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def assert_same_tensors(a, b) -> None:
    """Two Models hold bit-identical tensors, name by name, with the same dtype and device."""
    for c in COMPONENTS:
        sa, sb = getattr(a, c).state_dict(), getattr(b, c).state_dict()
        assert list(sa) == list(sb), c
        for k in sa:
            assert sa[k].dtype == sb[k].dtype and sa[k].device == sb[k].device, f"{c}.{k}"
            assert torch.equal(sa[k], sb[k]), f"{c}.{k}"


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
    save_sdviz(tmp_path / "own", diffusers, dtype=None)
    assert detect_format(tmp_path / "own") == "sdviz"
    own = load_models(tmp_path / "own")
    assert own.config == diffusers.config
    assert_close_to_reference(unet_output(diffusers), expected)
    for models in (load_models(root / "tiny.safetensors", TINY), load_models(root / "tiny.ckpt", TINY), own):
        assert_same_tensors(models, diffusers)  # loading only moves numbers: every layout gives the same ones


def test_meta_build_with_assigned_tensors_equals_a_plain_build(tmp_path):
    torch.manual_seed(3)
    plain = build_models(TINY)  # built on the CPU with random init
    for m in (plain.text_encoder, plain.vae, plain.unet):
        perturb_(m, seed=4)
    save_sdviz(tmp_path / "m", plain, dtype=None)
    loaded = load_models(tmp_path / "m")  # built on the meta device, the file's tensors assigned
    assert_same_tensors(loaded, plain)
    for c in COMPONENTS:
        tensors = [*getattr(loaded, c).parameters(), *getattr(loaded, c).buffers()]
        assert not any(t.is_meta for t in tensors) and not getattr(loaded, c).training
    assert torch.equal(unet_output(loaded), unet_output(plain))
    ids = torch.randint(0, TINY.clip.vocab_size, (1, TINY.clip.max_length))
    with torch.no_grad():
        assert torch.equal(loaded.text_encoder(ids), plain.text_encoder(ids))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtype_is_applied_while_reading(tiny, tmp_path, dtype):
    root, single, _ = tiny
    plain = load_models(root / "tiny.safetensors", TINY)
    for path in (root / "tiny.safetensors", root / "tiny.ckpt", root / "diffusers"):
        models = load_models(path, TINY, dtype=dtype)
        for c in COMPONENTS:
            assert {p.dtype for p in getattr(models, c).parameters()} == {dtype}, (path.name, c)
        # the same numbers as a float32 load cast afterwards (the old way), bit for bit
        cast = dataclasses.replace(plain, **{c: getattr(plain, c).to(dtype) for c in COMPONENTS})
        assert_same_tensors(models, cast)
    sd = read_state_dict(root / "tiny.safetensors", dtype=torch.float16)
    assert sd["model_ema.decay"].dtype == torch.float16 and sd["betas"].dtype == torch.float16
    save_file({"ids": torch.arange(5), "w": torch.ones(2)}, tmp_path / "mixed.safetensors")
    mixed = read_state_dict(tmp_path / "mixed.safetensors", dtype=torch.float16)
    assert mixed["ids"].dtype == torch.int64 and mixed["w"].dtype == torch.float16  # integers keep their type


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
    assert "notes.ckpt" in one_line(e) and "not a PyTorch checkpoint" in str(e.value)
    assert "unpickle" not in str(e.value)  # a text file is no checkpoint at all, not one that needs code
    with pytest.raises(WeightsError) as e:
        load_models(tmp_path / "missing.safetensors")
    assert "no such file" in one_line(e)
    with pytest.raises(WeightsError) as e:
        load_models(tmp_path)  # a folder of neither kind
    assert "neither" in one_line(e)


def safetensors_bytes(header: dict, data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


@pytest.mark.parametrize(
    "data, why",
    [
        (b"", "shorter than the 8-byte header length"),
        ((10**9).to_bytes(8, "little") + b"{}", "exceeds the file's"),
        ((5).to_bytes(8, "little") + b"{oops", "not JSON"),
        (safetensors_bytes([]), "not a JSON object"),
        (safetensors_bytes({"w": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}), "bad header entry for 'w'"),
        (safetensors_bytes({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}), "bad header entry for 'w'"),
        (safetensors_bytes({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}), "4 bytes for shape (2,)"),
        (safetensors_bytes({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"1234"), "truncated"),
    ],
)
def test_broken_safetensors_files(tmp_path, data, why):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(data)
    with pytest.raises(WeightsError) as e:
        load_models(path)
    assert str(path) in one_line(e) and "not a readable safetensors file" in str(e.value) and why in str(e.value)


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


def sdviz_folder(tmp_path, config: object) -> object:
    """A TINY sdviz folder whose sdviz.json says `config` instead of the real configuration."""
    folder = tmp_path / "own"
    save_sdviz(folder, build_models(TINY), dtype=None)
    meta = json.loads((folder / "sdviz.json").read_text())
    (folder / "sdviz.json").write_text(json.dumps({**meta, "config": config}))
    return folder


def with_unet(**fields) -> dict:
    d = TINY.to_dict()
    return {**d, "unet": {**d["unet"], **fields}}


@pytest.mark.parametrize(
    "config, field, problem",
    [
        ([1, 2, 3], "config", "must be a JSON object, got a list"),
        (None, "config", "must be a JSON object, got null"),
        (with_unet(model_channels="48"), "unet.model_channels", "must be an integer, got the string '48'"),
        (with_unet(model_channels=-48), "unet.model_channels", "must be >= 1, got -48"),
        (with_unet(model_channels=16.5), "unet.model_channels", "must be an integer"),
        (with_unet(channel_mult=[1, "2", 2, 2]), "unet.channel_mult[1]", "must be an integer"),
        (with_unet(attention_levels=[True]), "unet.attention_levels", "one entry per level"),
        (with_unet(num_heads=3), "unet.num_heads", "3 heads do not divide 16 channels"),
        (with_unet(flip_sin_to_cos="yes"), "unet.flip_sin_to_cos", "must be true or false"),
        ({**TINY.to_dict(), "unet": None}, "unet", "must be a JSON object, got null"),
        ({**TINY.to_dict(), "vae": {"eps": -1}}, "vae.eps", "must be > 0"),
        ({**TINY.to_dict(), "clipp": {}}, "config", "unknown SDConfig field(s): ['clipp']"),
    ],
)
def test_bad_sdviz_json_names_the_file_and_the_field(tmp_path, capsys, config, field, problem):
    folder = sdviz_folder(tmp_path, config)
    with pytest.raises(WeightsError) as e:
        load_models(folder)
    message = one_line(e)
    assert message.startswith(f"{folder / 'sdviz.json'}: bad config: {field}: ") and problem in message
    # the command line reports it as one line too, with the usage-error status (not a traceback and status 1)
    out = tmp_path / "picture.png"
    assert cli_main(["generate", "a red circle", "--weights", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and field in err and not out.exists()


@pytest.mark.parametrize("text", ["[1, 2, 3]", "null", '"sdviz"', "{not json", "\udcff"])
def test_sdviz_json_that_is_no_description(tmp_path, text):
    folder = sdviz_folder(tmp_path, TINY.to_dict())
    (folder / "sdviz.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(WeightsError) as e:
        load_models(folder)
    assert str(folder / "sdviz.json") in one_line(e)


def test_config_from_dict_round_trips_and_checks():
    for cfg in (SD15, TINY, TOY):
        assert SDConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert SDConfig.from_dict({}) == SD15
    assert SDConfig.from_dict({"vae": {"eps": 1}}).vae.eps == 1.0  # JSON integers are fine where floats are wanted
    with pytest.raises(ConfigError, match=r"^heads: 5 heads do not divide 32 channels$"):
        dataclasses.replace(TINY.clip, heads=5)  # the checks also guard configurations made in Python


def test_sdviz_folder_of_another_architecture(tmp_path):
    folder = tmp_path / "own"
    save_sdviz(folder, build_models(TINY), dtype=None)
    meta = json.loads((folder / "sdviz.json").read_text())
    meta["config"]["clip"]["layers"] = 3  # the config says 3 text-encoder layers, the weights hold 2
    (folder / "sdviz.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError) as e:
        load_models(folder)
    message = one_line(e)
    assert message.startswith(f"{folder / 'model.safetensors'}: missing key 'text_encoder.layers.2.layer_norm1.weight'")
    assert f"the weights and the configuration in {folder / 'sdviz.json'} describe different models" in message
    with pytest.raises(WeightsError) as e:
        load_models(folder, config=dataclasses.replace(TINY, clip=dataclasses.replace(TINY.clip, layers=3)))
    assert one_line(e).endswith("the weights do not match the configuration passed to load_models")


def test_diffusers_folder_with_a_bad_config(tiny, tmp_path):
    import shutil

    root, _, _ = tiny
    folder = tmp_path / "diffusers"
    shutil.copytree(root / "diffusers", folder)
    config = json.loads((folder / "unet" / "config.json").read_text())
    for bad, words in [
        (
            {"block_out_channels": "abc"},
            "block_out_channels: expected a non-empty list of positive integers",
        ),
        ({"block_out_channels": [16, 32.5, 32, 32]}, "got [16, 32.5, 32, 32]"),
        ({"sample_size": [64]}, "sample_size: expected a positive integer, got [64]"),
        ({"norm_num_groups": 5}, "norm_num_groups: 5 groups do not divide 16 channels (sdviz's unet.groups)"),
        ({"layers_per_block": "2"}, "layers_per_block: must be an integer, got the string '2'"),
        ({"down_block_types": ["CrossAttnDownBlock2D"]}, "down_block_types: needs one entry per level"),
    ]:
        (folder / "unet" / "config.json").write_text(json.dumps({**config, **bad}))
        with pytest.raises(WeightsError) as e:
            load_models(folder)
        assert one_line(e).startswith(f"{folder / 'unet' / 'config.json'}: ") and words in str(e.value), bad
    (folder / "unet" / "config.json").write_text(json.dumps({**config, "layers_per_block": 2}))
    with pytest.raises(WeightsError) as e:
        load_models(folder)  # a config that disagrees with the weights: the file and the config are named
    message = one_line(e)
    assert str(folder / "unet" / "diffusion_pytorch_model.safetensors") in message
    assert f"the weights and {folder / 'unet' / 'config.json'} describe different models" in message


VOCABULARY = {"colours": ("red", "dark blue"), "shapes": ("circle",), "relations": ("to the left of",)}


def test_vocabulary_and_latent_rgb_round_trip_through_an_sdviz_folder(tiny, tmp_path):
    root, _, _ = tiny
    torch.manual_seed(5)
    weight, bias = torch.randn(3, TINY.vae.latent_channels), torch.randn(3)
    models = build_models(TINY)
    assert models.vocabulary is None and models.latent_rgb is None
    save_sdviz(tmp_path / "plain", models, dtype=None)
    meta = json.loads((tmp_path / "plain" / "sdviz.json").read_text())
    assert "vocabulary" not in meta and "latent_rgb" not in meta  # absent unless given
    plain = load_models(tmp_path / "plain")
    assert plain.vocabulary is None and plain.latent_rgb is None

    save_sdviz(tmp_path / "own", models, dtype=None, vocabulary=VOCABULARY, latent_rgb=(weight, bias))
    meta = json.loads((tmp_path / "own" / "sdviz.json").read_text())
    assert meta["vocabulary"]["colours"] == ["red", "dark blue"] and len(meta["latent_rgb"]["weight"]) == 3
    loaded = load_models(tmp_path / "own")
    assert loaded.vocabulary == VOCABULARY  # lists in the file, tuples on the Models
    w, b = loaded.latent_rgb
    assert w.dtype == b.dtype == torch.float32 and w.shape == (3, TINY.vae.latent_channels) and b.shape == (3,)
    assert torch.equal(w, weight) and torch.equal(b, bias)  # float32 values survive JSON's decimals exactly
    assert_same_tensors(loaded, models)

    save_sdviz(tmp_path / "again", loaded, dtype=None)  # a loaded model keeps what its folder said when saved again
    again = load_models(tmp_path / "again")
    assert again.vocabulary == VOCABULARY and torch.equal(again.latent_rgb[0], weight)
    for path in (root / "diffusers", root / "tiny.safetensors"):  # other layouts say nothing of either
        other = load_models(path, TINY)
        assert other.vocabulary is None and other.latent_rgb is None


ROWS = [[0.1, 0.2, 0.3, 0.4]] * 3  # TINY's VAE has 4 latent channels


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("vocabulary", ["red", "blue"], "expected a JSON object {kind: [phrases]}, got ['red', 'blue']"),
        ("vocabulary", None, "expected a JSON object"),
        ("vocabulary", {"colours": "red"}, "colours: expected a list of non-empty strings, got 'red'"),
        ("vocabulary", {"colours": ["red", 3]}, "colours: expected a list of non-empty strings, got ['red', 3]"),
        ("vocabulary", {"colours": ["red", " "]}, "colours: expected a list of non-empty strings"),
        ("vocabulary", {"": ["red"]}, "a kind must be a non-empty string, got ''"),
        ("latent_rgb", [ROWS, [0, 0, 0]], 'expected {"weight": [3 rows of 4 numbers], "bias": [3 numbers]}'),
        ("latent_rgb", {"weight": ROWS}, 'expected {"weight"'),
        ("latent_rgb", {"weight": ROWS, "bias": [0, 0, 0], "gamma": 2.2}, 'expected {"weight"'),
        ("latent_rgb", {"weight": ROWS[:2], "bias": [0, 0, 0]}, "weight: expected 3 rows of 4 numbers"),
        ("latent_rgb", {"weight": [[0.1, 0.2, 0.3]] * 3, "bias": [0, 0, 0]}, "weight: expected 3 rows of 4 numbers"),
        ("latent_rgb", {"weight": [[0.1, "0.2", 0.3, 0.4]] * 3, "bias": [0, 0, 0]}, "weight: expected 3 rows"),
        ("latent_rgb", {"weight": ROWS, "bias": [0, 0]}, "bias: expected 3 numbers (red, green, blue), got [0, 0]"),
        ("latent_rgb", {"weight": ROWS, "bias": [0, True, 0]}, "bias: expected 3 numbers"),
        ("latent_rgb", {"weight": ROWS, "bias": [0, float("nan"), 0]}, "not finite in float32"),
        ("latent_rgb", {"weight": [[1e39, 0, 0, 0]] * 3, "bias": [0, 0, 0]}, "not finite in float32"),
    ],
)
def test_malformed_vocabulary_or_latent_rgb_names_the_key(tmp_path, key, value, words):
    folder = sdviz_folder(tmp_path, TINY.to_dict())
    meta = json.loads((folder / "sdviz.json").read_text())
    (folder / "sdviz.json").write_text(json.dumps({**meta, key: value}))
    with pytest.raises(WeightsError) as e:
        load_models(folder)
    message = one_line(e)
    assert message.startswith(f"{folder / 'sdviz.json'}: {key}: ") and words in message, message
    # save_sdviz refuses the same value (latent_rgb given as (weight, bias)) before it writes anything
    if key == "latent_rgb" and isinstance(value, dict) and set(value) == {"weight", "bias"}:
        value = (value["weight"], value["bias"])
    elif key == "latent_rgb" or value is None:
        return  # no such value to pass: save_sdviz's latent_rgb is a pair, and None means "none"
    with pytest.raises(WeightsError) as e:
        save_sdviz(tmp_path / "refused", build_models(TINY), **{key: value})
    assert one_line(e).startswith(f"save_sdviz: {key}: ") and words in str(e.value)
    assert not (tmp_path / "refused").exists()


def test_save_sdviz_takes_latent_rgb_as_a_pair_of_tensors(tmp_path):
    models = build_models(TINY)
    for latent_rgb, words in [
        (torch.zeros(3, 4), "expected (weight (3, C), bias (3,))"),
        ((torch.zeros(3, 3), torch.zeros(3)), "weight: expected 3 rows of 4 numbers"),
        ((torch.zeros(3, 4), torch.zeros(1, 3)), "bias: expected 3 numbers"),
    ]:
        with pytest.raises(WeightsError) as e:
            save_sdviz(tmp_path / "refused", models, latent_rgb=latent_rgb)
        assert one_line(e).startswith("save_sdviz: latent_rgb: ") and words in str(e.value)
    assert not (tmp_path / "refused").exists()

"""Building the three networks and putting a state dict's tensors into them.

* `Models` is what every loader returns: the configuration, the text encoder, the VAE and the UNet, and what an
  sdviz folder may say about the model besides its weights (its vocabulary, its latent -> RGB preview map).
* `build_models` makes fresh, randomly initialised networks (training, tests).
* `models_from_state_dicts` builds the networks on PyTorch's *meta* device (shapes only: no memory, no random
  init) and hands them the file's tensors with `load_state_dict(assign=True)`: the tensors read from the file
  become the parameters, so the host never holds a second copy of the model.
* `Source` says where the state dicts came from, so that a missing, unexpected or mis-shaped key is a one-line
  `WeightsError` that names the file and the key in the file's own spelling.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from sdviz.config import SDConfig
from sdviz.models.clip import CLIPTextEncoder
from sdviz.models.unet import UNet
from sdviz.models.vae import VAE
from sdviz.weights.files import StateDict, WeightsError


@dataclass
class Models:
    """The three networks of a Stable Diffusion model, with the configuration they were built from.

    vocabulary: what the model was taught, by kind of word ({"colours": ("red", ...), ...}), when its sdviz folder
        says so; None otherwise (CompVis files and diffusers folders never say).
    latent_rgb: a linear map from the VAE's latent channels to RGB for cheap previews, (weight (3, C), bias (3,))
        in float32 on the CPU, when its sdviz folder ships one; None otherwise.
    """

    config: SDConfig
    text_encoder: CLIPTextEncoder
    vae: VAE
    unet: UNet
    vocabulary: dict[str, tuple[str, ...]] | None = None
    latent_rgb: tuple[Tensor, Tensor] | None = None


def build_models(cfg: SDConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Models:
    """The three networks with fresh random weights (for training and tests)."""
    with torch.device(device):
        te, vae, unet = CLIPTextEncoder(cfg.clip), VAE(cfg.vae), UNet(cfg.unet)
    return Models(cfg, te.to(dtype), vae.to(dtype), unet.to(dtype))


@dataclass
class Source:
    """Where a model's state dicts came from, for error messages.

    files: the file each component was read from ({component: path}), or `path` itself for all of them.
    names: {"component.sdviz_name": key in the file} where the file names keys differently (CompVis).
    prefix: {component: what the file puts before sdviz's names} (sdviz's own files: "unet.").
    why: appended to a key error: what disagrees with what ("<component>" is replaced by the component's name).
    """

    path: Path
    files: dict[str, Path] = dataclasses.field(default_factory=dict)
    names: dict[str, str] = dataclasses.field(default_factory=dict)
    prefix: dict[str, str] = dataclasses.field(default_factory=dict)
    why: str = ""

    def file(self, component: str) -> Path:
        return self.files.get(component, self.path)

    def why_for(self, component: str) -> str:
        return self.why.replace("<component>", component)


def _load_into(module: nn.Module, sd: StateDict, component: str, source: Source) -> None:
    """Strict `load_state_dict(assign=True)`: the file's tensors become the module's, already in the dtype and on
    the device asked for. Missing, unexpected and mis-shaped keys are one-line errors that name the file and the key
    (in the file's own naming when known)."""
    expected = module.state_dict()  # on the meta device: names and shapes, no memory

    def name(key: str) -> str:
        return source.names.get(f"{component}.{key}", source.prefix.get(component, "") + key)

    file, why = source.file(component), source.why_for(component)
    for key in expected:
        if key not in sd:
            raise WeightsError(f"{file}: missing key {name(key)!r} of the {component}{why}")
    for key, value in sd.items():
        if key not in expected:
            raise WeightsError(f"{file}: unexpected key {name(key)!r} for the {component}{why}")
        if tuple(value.shape) != tuple(expected[key].shape):
            raise WeightsError(
                f"{file}: key {name(key)!r} has shape {tuple(value.shape)}, the {component} expects "
                f"{tuple(expected[key].shape)}{why}"
            )
    module.load_state_dict(sd, strict=True, assign=True)
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:  # only a buffer kept out of the state dict (persistent=False) can be left empty: sdviz has none
        raise RuntimeError(f"the {component}'s {left[0]!r} is not in its state dict and stays unset after a meta build")


def models_from_state_dicts(cfg: SDConfig, sds: dict[str, StateDict], source: Source) -> Models:
    """The three networks built on the meta device (no memory, no random init) and given the state dicts' tensors.

    `sds` holds one sdviz-named state dict per component ({"unet": {"conv_in.weight": ...}, ...}); it is emptied
    as the networks take the tensors. `source` names the files in error messages.

    The tensors must already be in the dtype and on the device wanted (`read_state_dict` converts them as it reads):
    nothing is copied here, so the host never holds a second copy of the model.
    """
    with torch.device("meta"):
        modules = {"text_encoder": CLIPTextEncoder(cfg.clip), "vae": VAE(cfg.vae), "unet": UNet(cfg.unet)}
    for component, module in modules.items():
        _load_into(module, sds.pop(component), component, source)
        module.eval()
    return Models(cfg, modules["text_encoder"], modules["vae"], modules["unet"])

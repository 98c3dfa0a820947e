"""Reading weights files: one `.safetensors`, `.ckpt`, `.pt` or `.bin` file into a flat {name: tensor} dict.

This is the lowest layer of `sdviz.weights`: it knows file formats, not networks. Nothing here knows what a UNet
is; the key names are read as the file spells them (`rules.py` renames them, `build.py` puts them into networks).

* **safetensors** is read with plain file reads (`_read_safetensors`), one tensor at a time, so that converting
  fp32 weights to fp16 never holds both copies of the whole model.
* **PyTorch pickles** (`.ckpt`, `.pt`, `.bin`) are read with `torch.load(weights_only=True)`: a file whose
  unpickling would run code is refused, never executed.
* `read_json` reads the small JSON descriptions (a diffusers `config.json`, sdviz's `sdviz.json`).

Every failure is a `WeightsError`: a one-line message that names the file and, for a key problem, the key.
"""

from __future__ import annotations

import json
import math
import pickle
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

StateDict = dict[str, Tensor]  # {"conv_in.weight": tensor, ...}: what torch's state_dict() returns


class WeightsError(ValueError):
    """A checkpoint that can't be loaded: wrong file, truncated file, wrong or missing keys, wrong shapes."""


def read_state_dict(
    path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> StateDict:
    """Read one `.safetensors`, `.ckpt`, `.pt` or `.bin` file into a flat {name: tensor} dict.

    Tensors are read one at a time; each floating-point one is converted to `dtype` (None keeps the file's) and
    every one is moved to `device` as soon as it is read, so the host never holds the whole file in its stored
    precision as well as the converted copy (SD 1.5 stored in fp32 and loaded in fp16: 2.1 GB instead of 6.4 GB).

    Pickle-based files are read with `torch.load(weights_only=True)`: a checkpoint whose unpickling would need to
    run code (pickled classes, callbacks) is refused rather than executed.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    tensors = _read_safetensors(path, dtype) if path.suffix == ".safetensors" else _read_torch(path)
    out = {}
    for name, tensor in tensors:
        out[name] = tensor.to(device=device, dtype=dtype if dtype is not None and tensor.is_floating_point() else None)
        del tensor  # the file's copy goes before the next one is read
    return out


# The element types of the safetensors format (its "dtype" strings) that torch can hold.
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


def _read_safetensors(path: Path, convert_to: torch.dtype | None = None) -> Iterator[tuple[str, Tensor]]:
    """Yield the tensors of a safetensors file one at a time, with plain file reads.

    A floating-point tensor that the caller will convert to `convert_to` (another dtype) is read into one buffer
    reused from tensor to tensor (a quarter faster than fresh memory for each): it must be converted before the next
    one is asked for.

    The format: 8 bytes (little-endian) giving the length N of a JSON header, the header
    `{name: {"dtype": "F32", "shape": [320, 4, 3, 3], "data_offsets": [begin, end]}, "__metadata__": {...}}`, then
    the tensors' bytes, their offsets counted from the end of the header. The `safetensors` package memory-maps the
    file instead, and every mapped page that is read counts in the process's resident memory until the file is
    closed: converting a 4.3 GB fp32 file to fp16 would then peak at 6.4 GB.
    """

    def bad(why: str) -> WeightsError:
        return WeightsError(f"{path}: not a readable safetensors file ({why})")

    size = path.stat().st_size
    with open(path, "rb") as f:
        first = f.read(8)
        if len(first) < 8:
            raise bad(f"{size} bytes, shorter than the 8-byte header length")
        n = int.from_bytes(first, "little")
        if n > size - 8:
            raise bad(f"the header length {n} exceeds the file's {size} bytes: truncated, or another format")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise bad(f"the header is not JSON: {_first_line(e)}") from None
        if not isinstance(header, dict):
            raise bad("the header is not a JSON object")
        header.pop("__metadata__", None)
        data_start, entries = 8 + n, []
        for name, info in header.items():
            try:
                dtype, shape, (begin, end) = _SAFETENSORS_DTYPES[info["dtype"]], info["shape"], info["data_offsets"]
                if not all(isinstance(v, int) and v >= 0 for v in [*shape, begin, end]):
                    raise ValueError
            except (KeyError, TypeError, ValueError):
                raise bad(f"bad header entry for {name!r}: {info!r}"[:300]) from None
            if end - begin != math.prod(shape) * dtype.itemsize:
                raise bad(f"tensor {name!r}: {end - begin} bytes for shape {tuple(shape)} of {info['dtype']}")
            if data_start + end > size:
                raise bad(f"truncated: tensor {name!r} ends at byte {data_start + end}, the file has {size}")
            entries.append((begin, end, name, dtype, shape))
        scratch = torch.empty(0, dtype=torch.uint8)
        for begin, end, name, dtype, shape in sorted(entries, key=lambda e: e[0]):  # in file order
            f.seek(data_start + begin)
            if convert_to is not None and dtype.is_floating_point and dtype != convert_to:
                if len(scratch) < end - begin:
                    scratch = torch.empty(end - begin, dtype=torch.uint8)
                data = scratch[: end - begin]
            else:
                data = torch.empty(end - begin, dtype=torch.uint8)
            view, done = memoryview(data.numpy()), 0
            while done < len(view):  # a read may return fewer bytes than asked for
                got = f.readinto(view[done:])
                if not got:
                    raise bad(f"truncated while reading tensor {name!r}")
                done += got
            yield name, data.view(dtype).reshape(shape)
            del data, view  # the caller has converted it (or kept it): do not hold it while reading the next one


def _read_torch(path: Path) -> Iterator[tuple[str, Tensor]]:
    """Yield the tensors of a `torch.save` file (zip archive, or the older plain pickle), loaded weights-only.

    `torch.load` reads the whole file first, so for these files host memory peaks near the file's size (not
    memory-mapped, which would count the same and keep the file mapped for the model's lifetime).
    """
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04" and not magic.startswith(b"\x80"):  # a zip archive; pickle protocol 2 or later
        raise WeightsError(
            f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle: it starts with {magic!r})"
        )
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise WeightsError(
                f"{path}: this checkpoint needs code to unpickle ({_unsupported_global(e)}); sdviz refuses to run code "
                "from a weights file. Convert it to .safetensors with a tool you trust, or use a pruned/emaonly file."
            ) from None
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({_first_line(e)})") from None
    except Exception as e:  # torch raises many kinds (RuntimeError, EOFError, IndexError...) on a broken file
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint, or truncated ({_first_line(e)})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # Lightning / LDM checkpoints wrap the weights
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: does not hold a state dict of tensors")
    while obj:  # hand each tensor over and forget it, so that a converted copy replaces it rather than adds to it
        name = next(iter(obj))
        yield name, obj.pop(name)


def _unsupported_global(e: BaseException) -> str:
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
    return f"it references {found[1]}" if found else "it is not plain tensors"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def read_json(path: Path) -> dict:
    """A JSON file that must hold an object ({...}); anything else is a WeightsError naming the file."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeightsError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path}: not valid JSON ({_first_line(e)})") from None
    if not isinstance(value, dict):
        raise WeightsError(f"{path}: not a JSON object (holds {type(value).__name__ if value is not None else 'null'})")
    return value

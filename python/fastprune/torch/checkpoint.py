"""Saving and loading sparsified models: the packed weights on disk, not their dense zeros.

:func:`save_sparse` writes ``model.sparse.safetensors`` into a directory: every parameter and
persistent buffer of the model, with each :class:`SparseLinear` weight stored in
:mod:`fastprune.io`'s ``packed`` format (its ``mask`` or ``indices``, ``offsets`` and ``values``,
as its layout has them). The header's
``__metadata__`` holds two JSON entries:

- ``"fastprune.sparse"`` (written by :func:`fastprune.io.save`): for each packed weight
  ``<layer>.weight`` its ``format`` (``"packed"``), ``layout`` (``"bitmask"`` or ``"indices"``),
  ``shape`` ``[out, in]`` and ``dtype`` (``"float32"`` or ``"bfloat16"``, how the kept values are
  stored);
- ``"fastprune.model"``: ``{"version": 1, "weight_dtypes": {layer: torch dtype of the original
  weight}, "tied": {name: name it shares its storage with}}``; a tied tensor is stored once.

For a Hugging Face model the directory also gets ``config.json`` (and the generation config),
so :func:`load_sparse` can rebuild the model with nothing else; any other model is rebuilt into
a freshly constructed instance of its class that the caller passes. The file is named so that
``from_pretrained`` does not mistake it for a dense checkpoint.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import io
from .._files import atomic_write_text
from ..sparse import PackedLinear
from .sparse import SparseLinear, set_dotted

SPARSE_FILE = "model.sparse.safetensors"
_MODEL_KEY = "fastprune.model"
_VERSION = 1


@dataclass(frozen=True)
class SavedSparse:
    """What :func:`save_sparse` wrote: the file, its size, and the same tensors' dense size."""

    path: Path
    bytes: int
    dense_bytes: int
    packed_layers: int

    def __str__(self) -> str:
        ratio = self.dense_bytes / self.bytes if self.bytes else float("inf")
        return (
            f"{self.path}: {self.bytes / 2**20:.1f} MiB ({self.packed_layers} packed layers); "
            f"dense tensors {self.dense_bytes / 2**20:.1f} MiB ({ratio:.2f}x larger)"
        )


def save_sparse(model: object, directory: str | os.PathLike[str]) -> SavedSparse:
    """Write `model` (sparsified or not) to `directory` with packed weights for its SparseLinear.

    Creates the directory if needed and replaces ``model.sparse.safetensors`` atomically. A
    Hugging Face model's config is written beside it. Returns the sizes written.
    """
    if not isinstance(model, nn.Module):
        msg = f"model: expected a torch.nn.Module, got {type(model).__name__}"
        raise TypeError(msg)
    out = Path(directory)
    if out.exists() and not out.is_dir():
        msg = f"directory: {str(directory)!r} is a file"
        raise NotADirectoryError(msg)
    sparse_layers = {n: m for n, m in model.named_modules() if isinstance(m, SparseLinear)}
    packed_names = {f"{name}.{buffer}" for name in sparse_layers for buffer in _BUFFERS}
    tensors: dict[str, np.ndarray[Any, Any] | PackedLinear] = {}
    seen: dict[tuple[int, int, tuple[int, ...], torch.dtype], str] = {}
    tied: dict[str, str] = {}
    dense_bytes = 0
    for name, tensor in model.state_dict(keep_vars=False).items():
        if name in packed_names:
            continue
        if tensor.device.type != "cpu":
            msg = f"model: tensor {name!r} is on {tensor.device}; move the model to the CPU"
            raise ValueError(msg)
        key = (
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tensor.dtype,
        )
        if tensor.numel() and key in seen:
            tied[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = _to_numpy(tensor)
        dense_bytes += tensor.numel() * tensor.element_size()
    weight_dtypes = {}
    for name, layer in sparse_layers.items():
        tensors[f"{name}.weight"] = layer.packed()
        weight_dtypes[name] = str(layer.weight_dtype).removeprefix("torch.")
        dense_bytes += layer.in_features * layer.out_features * layer.weight_dtype.itemsize
    description = {"version": _VERSION, "weight_dtypes": weight_dtypes, "tied": tied}
    out.mkdir(parents=True, exist_ok=True)
    path = out / SPARSE_FILE
    io.save(path, tensors, metadata={_MODEL_KEY: json.dumps(description, sort_keys=True)})
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        settings = json.loads(config.to_json_string())
        settings["architectures"] = [type(model).__name__]  # the class load_sparse builds
        atomic_write_text(out / "config.json", json.dumps(settings, indent=2, sort_keys=True))
        generation = getattr(model, "generation_config", None)
        if generation is not None and hasattr(generation, "to_json_string"):
            atomic_write_text(out / "generation_config.json", generation.to_json_string())
    return SavedSparse(path, path.stat().st_size, dense_bytes, len(sparse_layers))


def load_sparse(directory: str | os.PathLike[str], model: object = None) -> nn.Module:
    """The model saved by :func:`save_sparse` in `directory`, its packed layers as SparseLinear.

    Without `model`, the directory's ``config.json`` names a Hugging Face architecture, which is
    built (needs ``transformers``); otherwise `model` is an instance of the saved model's class
    (its weights are replaced). Every tensor of the file must find its place and every tensor
    of the model must be in the file (tied ones are tied again); otherwise ValueError names them.
    """
    source = Path(directory)
    path = source / SPARSE_FILE
    if not path.is_file():
        msg = f"directory: {str(directory)!r} holds no {SPARSE_FILE} (written by save_sparse)"
        raise FileNotFoundError(msg)
    if model is None:
        target: nn.Module = _build_from_config(source)
    elif isinstance(model, nn.Module):
        target = model
    else:
        msg = f"model: expected a torch.nn.Module, got {type(model).__name__}"
        raise TypeError(msg)
    _, metadata = io.read_header(path)
    description = _description(path, metadata)
    tensors = io.load(path)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if isinstance(tensor, PackedLinear):
            _place_packed(target, path, name, tensor, description["weight_dtypes"])
        elif isinstance(tensor, np.ndarray):
            state[name] = _to_torch(tensor)
        else:
            msg = f"{path}: tensor {name!r} is a {type(tensor).__name__}, not a model tensor"
            raise ValueError(msg)
    missing, unexpected = target.load_state_dict(state, strict=False)
    packed = {n for n, m in target.named_modules() if isinstance(m, SparseLinear)}
    missing = [k for k in missing if k.rpartition(".")[0] not in packed or k.endswith(".bias")]
    tied = description["tied"]
    missing_untied = [k for k in missing if k not in tied]
    if unexpected or missing_untied:
        msg = f"{path}: does not fit the model: unexpected {unexpected}, missing {missing_untied}"
        raise ValueError(msg)
    for name, original in tied.items():
        shared: torch.Tensor
        try:
            shared = target.get_parameter(original)
        except AttributeError:
            shared = target.get_buffer(original)
        set_dotted(target, name, shared)
    return target.eval()


_BUFFERS = ("mask", "indices", "offsets", "values")  # SparseLinear's, in either layout


def _to_numpy(tensor: torch.Tensor) -> np.ndarray[Any, Any]:
    t = tensor.detach().contiguous()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _to_torch(array: np.ndarray[Any, Any]) -> torch.Tensor:
    a = np.array(array)  # writable, owned: the model keeps it
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _description(path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    try:
        description = json.loads(metadata[_MODEL_KEY])
    except (KeyError, ValueError) as err:
        msg = f"{path}: no valid {_MODEL_KEY!r} metadata (not written by save_sparse)"
        raise ValueError(msg) from err
    if (
        not isinstance(description, dict)
        or description.get("version") != _VERSION
        or not isinstance(description.get("weight_dtypes"), dict)
        or not isinstance(description.get("tied"), dict)
    ):
        msg = f"{path}: {_MODEL_KEY!r} metadata is not version {_VERSION} of save_sparse's"
        raise ValueError(msg)
    return description


def _place_packed(
    model: nn.Module, path: Path, name: str, packed: PackedLinear, dtypes: dict[str, str]
) -> None:
    layer_name, _, leaf = name.rpartition(".")
    try:
        layer = model.get_submodule(layer_name)
    except AttributeError:
        layer = None
    if leaf != "weight" or not isinstance(layer, nn.Linear | SparseLinear):
        msg = f"{path}: packed tensor {name!r} is not the weight of a Linear layer of the model"
        raise ValueError(msg)
    if (layer.out_features, layer.in_features) != packed.shape:
        msg = (
            f"{path}: packed tensor {name!r} has shape {packed.shape}, the model's layer "
            f"{(layer.out_features, layer.in_features)}"
        )
        raise ValueError(msg)
    weight_dtype = getattr(torch, dtypes.get(layer_name, ""), None)
    if not isinstance(weight_dtype, torch.dtype):
        msg = f"{path}: no weight dtype recorded for {layer_name!r}"
        raise ValueError(msg)
    bias = layer.bias
    set_dotted(model, layer_name, SparseLinear(packed, bias, weight_dtype))


def _build_from_config(source: Path) -> nn.Module:
    if not (source / "config.json").is_file():
        msg = (
            f"directory: {str(source)!r} has no config.json: pass `model`, an instance of the "
            "saved model's class"
        )
        raise FileNotFoundError(msg)
    try:
        import transformers
    except ImportError as err:
        msg = 'rebuilding a Hugging Face model needs transformers: pip install "fastprune[torch]"'
        raise ImportError(msg) from err
    from .models import model_class

    config = transformers.AutoConfig.from_pretrained(source, local_files_only=True)
    cls = model_class(config)
    if cls is transformers.AutoModel:  # no class named: the Auto class builds from the config
        model: nn.Module = cls.from_config(config)  # type: ignore[no-untyped-call,unused-ignore]
    else:
        model = cls(config)
    dtype = config.dtype if hasattr(config, "dtype") else getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    if isinstance(dtype, torch.dtype):
        model = model.to(dtype)
    return model

"""Conversions between the formats' NumPy components and torch's sparse tensors (torch is passed
in or imported by the caller, never at import time)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from .._arrays import bfloat16_dtype, is_bfloat16
from ._base import Array


@contextlib.contextmanager
def _quiet_beta_warning() -> Iterator[None]:
    """Silence torch's one-time note that its sparse CSR/BSR support is in beta."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse (CSR|BSR) tensor support is in beta")
        yield


def _torch_values(torch: Any, data: Array) -> Any:
    """A torch tensor sharing `data` (bfloat16 through its bits, which torch.from_numpy lacks)."""
    if is_bfloat16(data.dtype):
        return torch.from_numpy(data.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(data)


def _numpy_values(torch: Any, values: Any) -> Array:
    """The NumPy array sharing a tensor's float values (bfloat16 through its bits)."""
    if values.dtype == torch.bfloat16:
        return np.asarray(values.view(torch.int16).numpy()).view(bfloat16_dtype("values"))
    if values.dtype not in (torch.float16, torch.float32, torch.float64):
        msg = f"t: expected float16, bfloat16, float32 or float64 values, got {values.dtype}"
        raise TypeError(msg)
    return np.asarray(values.numpy())


def _require_layout(t: Any, layout: Any, name: str) -> None:
    """Refuse anything but a 2-D CPU tensor of `layout` without dense dimensions."""
    import torch

    if not isinstance(t, torch.Tensor) or t.layout != layout:
        got = getattr(t, "layout", type(t).__name__)
        msg = f"t: expected a torch.{name} tensor, got {got}"
        raise TypeError(msg)
    if t.device.type != "cpu":
        msg = f"t: expected a CPU tensor, got one on {t.device} (call .cpu() first)"
        raise ValueError(msg)
    if t.dim() != 2 or t.dense_dim() != 0:
        msg = f"t: expected a 2-D sparse matrix, got shape {tuple(t.shape)}"
        raise ValueError(msg)

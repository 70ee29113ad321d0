"""Sparse execution of pruned models on CPU: SparseLinear, sparsify and densify.

:func:`sparsify` replaces every pruned ``nn.Linear`` whose weight multiplies faster in
fastprune's packed-bitmask layout (:class:`fastprune.PackedLinear`) with a :class:`SparseLinear`;
the decision is a quick measurement on that layer's own shape against the dense layer, so layers
that would not win stay dense. :func:`densify` puts the ``nn.Linear`` layers back, bit for bit.

The product runs through the custom operator ``fastprune::packed_linear`` registered with
``torch.library``: it works under ``torch.inference_mode`` and ``torch.no_grad``, has a fake
(meta) implementation so ``torch.compile`` traces it as one opaque call, and its backward raises
a clear error (the packed weight is for inference; train on the dense, masked model).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from .. import _core
from ..sparse import PackedLinear

_FORMATS = ("auto", "packed")


# (layout, mask words or column indices, offsets, values) as the C++ kernels read them
_Arrays = tuple[str, np.ndarray, np.ndarray, np.ndarray]


def _packed_arrays(
    layout: str, structure: torch.Tensor, offsets: torch.Tensor, values: torch.Tensor
) -> _Arrays:
    """NumPy views of the packed tensors (int16 tensors hold uint16 words, indices or bfloat16
    bits), with the dtypes the C++ kernels read."""
    stored = values.numpy()
    return (
        layout,
        structure.numpy().view(np.uint16),
        offsets.numpy(),
        stored if stored.dtype == np.float32 else stored.view(np.uint16),
    )


def _arrays_product(x: torch.Tensor, arrays: _Arrays, rows: int) -> torch.Tensor:
    """``x @ W.T`` in float32 through the C++ kernel, W given by `arrays` (_packed_arrays)."""
    cols = x.shape[-1]
    flat = x.detach().reshape(-1, cols)
    if flat.dtype != torch.float32 or not flat.is_contiguous():
        flat = flat.to(torch.float32).contiguous()
    x_numpy = flat.numpy()
    if not np.isfinite(x_numpy).all():
        msg = "x: contains NaN or Inf values"
        raise ValueError(msg)
    out = np.empty((x_numpy.shape[0], rows), dtype=np.float32)
    layout, structure, offsets, values = arrays
    if layout == "bitmask":
        _core.sparse_linear.linear(structure, offsets, values, cols, x_numpy, out)
    else:
        _core.sparse_linear.linear_indices(offsets, structure, values, cols, x_numpy, out)
    return torch.from_numpy(out).reshape(*x.shape[:-1], rows)


@torch.library.custom_op("fastprune::packed_linear", mutates_args=())  # type: ignore[untyped-decorator]
def packed_linear(
    x: torch.Tensor, mask: torch.Tensor, offsets: torch.Tensor, values: torch.Tensor, rows: int
) -> torch.Tensor:
    """``x @ W.T`` (float32) for W in the packed-bitmask layout held by the other tensors.

    mask is int16 holding the uint16 mask words, values float32 or int16 holding bfloat16 bits.
    """
    return _arrays_product(x, _packed_arrays("bitmask", mask, offsets, values), rows)


@torch.library.custom_op("fastprune::indexed_linear", mutates_args=())  # type: ignore[untyped-decorator]
def indexed_linear(
    x: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, values: torch.Tensor, rows: int
) -> torch.Tensor:
    """``x @ W.T`` (float32) for W in the index layout held by the other tensors.

    indices is int16 holding the uint16 column indices, values float32 or int16 holding
    bfloat16 bits.
    """
    return _arrays_product(x, _packed_arrays("indices", indices, offsets, values), rows)


def _product_fake(
    x: torch.Tensor, structure: torch.Tensor, offsets: torch.Tensor, values: torch.Tensor, rows: int
) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], rows), dtype=torch.float32)


def _no_backward(ctx: Any, grad: torch.Tensor) -> None:
    msg = (
        "SparseLinear has no backward: its packed weight is for inference. Train the dense "
        "masked model (fastprune.torch.densify undoes sparsify) and sparsify it afterwards."
    )
    raise RuntimeError(msg)


_OPERATORS = {"bitmask": packed_linear, "indices": indexed_linear}
for _operator in _OPERATORS.values():
    _operator.register_fake(_product_fake)
    _operator.register_autograd(_no_backward)


class SparseLinear(nn.Module):  # type: ignore[misc]
    """An ``nn.Linear`` whose weight is held in one of fastprune's packed layouts.

    The layout is that of the :class:`fastprune.PackedLinear` it is built from: ``"bitmask"``
    (buffers ``mask``, ``offsets``, ``values``) or ``"indices"`` (buffers ``indices``,
    ``offsets``, ``values``); the buffers move with ``state_dict``, and the bias stays the
    original parameter. Inputs of any float dtype are multiplied in float32 and the result is
    returned in the input's dtype.
    """

    offsets: torch.Tensor
    values: torch.Tensor

    def __init__(
        self, packed: PackedLinear, bias: torch.Tensor | None, weight_dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = packed.shape
        self.weight_dtype = weight_dtype
        self.layout = packed.layout
        values = torch.from_numpy(packed.values.copy())
        if packed.dtype == "bfloat16":
            values = values.view(torch.int16)
        structure = packed.mask if self.layout == "bitmask" else packed.indices
        self.register_buffer(self._structure, torch.from_numpy(structure.view(np.int16).copy()))
        self.register_buffer("offsets", torch.from_numpy(packed.offsets.copy()))
        self.register_buffer("values", values)
        self.bias = bias if bias is None or isinstance(bias, nn.Parameter) else nn.Parameter(bias)
        self.weight_requires_grad = False
        self._views: tuple[tuple[torch.Tensor, ...], _Arrays] | None = None

    @property
    def _structure(self) -> str:
        """The name of the buffer that says where the kept weights are: mask or indices."""
        return "mask" if self.layout == "bitmask" else "indices"

    def _tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # read directly: nn.Module's attribute lookup costs microseconds per call
        buffers = cast(dict[str, torch.Tensor], self._buffers)
        return buffers[self._structure], buffers["offsets"], buffers["values"]

    def _arrays(self) -> _Arrays:
        """NumPy views of the buffers, made again only when a buffer is replaced (``.to``)."""
        tensors = self._tensors()
        views = self._views
        if views is None or any(a is not b for a, b in zip(views[0], tensors, strict=True)):
            views = (tensors, _packed_arrays(self.layout, *tensors))
            self._views = views
        return views[1]

    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = super().__getstate__()  # type: ignore[no-untyped-call]
        state["_views"] = None  # views of this process's buffers
        return state

    @classmethod
    def from_linear(cls, linear: nn.Linear, layout: str = "auto") -> SparseLinear:
        """The SparseLinear of `linear` (float32, bfloat16 or float16 weight; exact), in
        `layout` ("auto", "bitmask" or "indices"; see :meth:`fastprune.PackedLinear.from_dense`).
        """
        weight = linear.weight.detach()
        if weight.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            msg = f"linear: weight dtype {weight.dtype} is not float32, bfloat16 or float16"
            raise TypeError(msg)
        if weight.dtype == torch.bfloat16:
            dense = weight.view(torch.int16).numpy().view(_bf16())
        else:
            dense = weight.to(torch.float32).numpy()
        module = cls(PackedLinear.from_dense(dense, layout=layout), linear.bias, weight.dtype)
        module.weight_requires_grad = linear.weight.requires_grad
        return module

    def packed(self) -> PackedLinear:
        """The weight as a :class:`fastprune.PackedLinear` (copies of the buffers)."""
        layout, structure, offsets, values = _packed_arrays(self.layout, *self._tensors())
        shape = (self.out_features, self.in_features)
        dtype = "float32" if values.dtype == np.float32 else "bfloat16"
        if layout == "bitmask":
            return PackedLinear(structure, offsets, values, shape, dtype)
        return PackedLinear.from_indices(offsets, structure, values, shape, dtype)

    def to_linear(self) -> nn.Linear:
        """The equivalent ``nn.Linear``, its weight equal to the original bit for bit."""
        linear = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None, device="cpu"
        )
        dense = torch.from_numpy(self.packed().to_dense()).to(self.weight_dtype)
        linear.weight = nn.Parameter(dense, requires_grad=self.weight_requires_grad)
        if self.bias is not None:
            linear.bias = self.bias
        return linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad or x.device.type != "cpu" or torch.compiler.is_compiling():
            # the registered operator: a clear error on backward, one opaque node when compiled
            y = _OPERATORS[self.layout](x, *self._tensors(), self.out_features)
        else:
            # eager inference: the same product without the operator's dispatch, whose cost
            # (tens of microseconds) is as large as the product itself on a small layer
            y = _arrays_product(x, self._arrays(), self.out_features)
        if self.bias is not None:
            y = y + self.bias.to(torch.float32)
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def extra_repr(self) -> str:
        density = int(self.offsets[-1]) / max(1, self.in_features * self.out_features)
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, layout={self.layout}, density={density:.3f}"
        )


def _bf16() -> Any:
    import ml_dtypes

    return ml_dtypes.bfloat16


@dataclass
class LayerDecision:
    """What sparsify did with one pruned nn.Linear."""

    name: str
    shape: tuple[int, int]
    layout: str
    density: float
    dense_seconds: float
    sparse_seconds: float
    swapped: bool

    @property
    def speedup(self) -> float:
        """Dense time over sparse time; NaN when the layer was not measured."""
        if self.sparse_seconds <= 0.0:
            return float("nan")
        return self.dense_seconds / self.sparse_seconds


@dataclass
class SparsifyReport:
    """Per-layer decisions of :func:`sparsify` (measured at `tokens` rows of input)."""

    tokens: int
    layers: list[LayerDecision] = field(default_factory=list)

    @property
    def swapped(self) -> list[str]:
        return [d.name for d in self.layers if d.swapped]

    def __str__(self) -> str:
        lines = [f"sparsify: {len(self.swapped)} of {len(self.layers)} pruned layers swapped"]
        for d in self.layers:
            rows, cols = d.shape
            lines.append(
                f"  {d.name:<40} {rows}x{cols} density {d.density:.2f} {d.layout:<7} "
                + (f"speed-up {d.speedup:.2f}x " if d.sparse_seconds > 0 else "unmeasured ")
                + ("sparse" if d.swapped else "dense")
            )
        return "\n".join(lines)


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _measure(
    pairs: list[tuple[nn.Linear, SparseLinear]], tokens: int, repeat: int
) -> list[tuple[float, float]]:
    """Median seconds of the dense layer and of the sparse layer, for every pair.

    Each repetition calls every dense layer in turn, then every sparse layer, in the model's
    order, so that a layer's weight is as cold as in the model's own forward pass: evicted from
    the caches by the other layers' weights when the model is larger than the caches, as in
    decoding, and still cached when it is not. Timing one layer over and over instead would keep
    its weight in cache and miss the memory traffic that sparsity saves. Both are called as the
    model calls them, as modules: a bare ``F.linear`` would leave out the module call that the
    dense layer pays too (several microseconds, as long as a small layer's product).
    """
    generator = torch.Generator().manual_seed(0)
    inputs = [
        torch.randn(tokens, linear.in_features, generator=generator).to(linear.weight.dtype)
        for linear, _ in pairs
    ]
    dense_times: list[list[float]] = [[] for _ in pairs]
    sparse_times: list[list[float]] = [[] for _ in pairs]
    with torch.inference_mode():
        for rep in range(repeat + 1):  # the first pass warms up and is not kept
            for times, (linear, _), x in zip(dense_times, pairs, inputs, strict=True):
                t = _timed(lambda: linear(x))  # noqa: B023
                if rep:
                    times.append(t)
            for times, (_, sparse), x in zip(sparse_times, pairs, inputs, strict=True):
                t = _timed(lambda: sparse(x))  # noqa: B023
                if rep:
                    times.append(t)
    return [
        (statistics.median(d), statistics.median(s))
        for d, s in zip(dense_times, sparse_times, strict=True)
    ]


def _pruned_linears(model: nn.Module, max_density: float) -> Iterator[tuple[str, nn.Linear]]:
    for name, module in model.named_modules():
        if type(module) is nn.Linear and module.weight.device.type == "cpu":
            weight = module.weight.detach()
            density = float(torch.count_nonzero(weight)) / max(1, weight.numel())
            if density <= max_density and weight.dtype in (
                torch.float32,
                torch.bfloat16,
                torch.float16,
            ):
                yield name, module


def set_dotted(model: nn.Module, name: str, value: object) -> None:
    """Sets the submodule, parameter or buffer that the dotted `name` names in `model`."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, value)


def sparsify(
    model: object,
    format: str = "auto",
    min_speedup: float = 1.1,
    *,
    tokens: int = 1,
    max_density: float = 0.75,
    repeat: int = 15,
    layout: str = "auto",
) -> SparsifyReport:
    """Replaces the pruned ``nn.Linear`` layers of `model` (in place) with SparseLinear.

    A layer counts as pruned when at most `max_density` of its weights are non-zero. With
    `format` "auto" each such layer is timed against the dense layer on an input of `tokens` rows
    (medians of `repeat` passes over all the pruned layers in the model's order, so that each
    weight comes from memory or cache as it does in the model's forward pass), and swapped only
    when it is at least `min_speedup` times faster; "packed" swaps every pruned layer
    unmeasured. `layout` picks the packed layout of every layer ("auto": each layer's own,
    see :func:`fastprune.sparse.choose_layout`). Returns the report of every pruned layer:
    shape, layout, density, measured times (0 when unmeasured) and whether it was swapped.
    """
    if format not in _FORMATS:
        msg = f"format: expected one of {_FORMATS}, got {format!r}"
        raise ValueError(msg)
    if not isinstance(model, nn.Module):
        msg = f"model: expected a torch.nn.Module, got {type(model).__name__}"
        raise TypeError(msg)
    if not 0.0 < max_density <= 1.0:
        msg = f"max_density: expected a value in (0, 1], got {max_density}"
        raise ValueError(msg)
    if tokens < 1 or repeat < 1:
        msg = "tokens, repeat: must be >= 1"
        raise ValueError(msg)
    report = SparsifyReport(tokens=tokens)
    found = [
        (n, lin, SparseLinear.from_linear(lin)) for n, lin in _pruned_linears(model, max_density)
    ]
    if format == "auto":
        times = _measure([(lin, sparse) for _, lin, sparse in found], tokens, repeat)
    else:
        times = [(0.0, 0.0)] * len(found)
    for (name, linear, sparse), (dense_s, sparse_s) in zip(found, times, strict=True):
        density = int(sparse.offsets[-1]) / max(1, linear.weight.numel())
        swap = format == "packed" or dense_s >= min_speedup * sparse_s
        shape = (linear.out_features, linear.in_features)
        decision = LayerDecision(name, shape, sparse.layout, density, dense_s, sparse_s, swap)
        report.layers.append(decision)
        if swap:
            set_dotted(model, name, sparse)
    return report


def densify(model: object) -> int:
    """Replaces every SparseLinear of `model` (in place) by its exact ``nn.Linear``.

    Returns the number of layers replaced.
    """
    if not isinstance(model, nn.Module):
        msg = f"model: expected a torch.nn.Module, got {type(model).__name__}"
        raise TypeError(msg)
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, SparseLinear)]
    for name, module in found:
        set_dotted(model, name, module.to_linear())
    return len(found)

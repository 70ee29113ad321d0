"""Forward hooks that turn a running PyTorch model into calibration statistics.

Two pieces:
- `capture_block_inputs` runs the model on each calibration batch only as far as the first block
  and records exactly what that block was called with (positional and keyword arguments, such as
  the attention mask and rotary position embeddings), so later blocks can be replayed one by one.
- `Calibrator` puts a forward pre-hook on every layer to be pruned and streams the inputs it sees
  into `fastprune.Calibration` objects. Layers that read the very same tensor in a forward pass
  (q/k/v, gate/up) are detected and share one Calibration. Tokens that the attention mask marks
  as padding never enter the statistics.
- `DenseTwin` keeps a dense copy of a block and, run on the dense model's input to that block,
  records what each of its layers reads, so that a `Calibrator` can also gather the statistic
  ``Σ x₀ xᵀ`` pairing each token's input in the dense model (x₀) with its input in the model being
  pruned (x): what reconstructing the dense model's outputs needs.

Tensors reach NumPy without copies where the dtype allows (float32/float64/float16 on the CPU;
bfloat16 is viewed through ml_dtypes when it is installed).
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import fastprune as fp

from .experts import token_rows

Batch = Any  # a Mapping of model keyword arguments, a tuple/list of positional ones, or a tensor
TokenMask = np.ndarray[Any, np.dtype[np.bool_]] | None  # (batch, seq), True = real token


class StopForward(Exception):
    """Raised by a hook to end a forward pass once what it was run for is known (the first
    block's input, or every input of the layers being calibrated)."""


@dataclass
class BlockInput:
    """What one block was called with for one calibration batch."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    token_mask: TokenMask


@dataclass
class CalibrationDigest:
    """A running SHA-256 of the calibration batches and how many there were."""

    sha: Any = field(default_factory=hashlib.sha256)
    batches: int = 0
    samples: int = 0

    def update(self, batch: Batch) -> None:
        self.batches += 1
        for key, tensor in _batch_tensors(batch):
            self.sha.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
            data = tensor.detach().cpu().contiguous()
            if data.dtype == torch.bfloat16:
                data = data.view(torch.int16)
            self.sha.update(data.numpy().tobytes())
        first = next(iter(_batch_tensors(batch)), None)
        if first is not None and first[1].ndim > 0:
            self.samples += int(first[1].shape[0])

    def hexdigest(self) -> str:
        return str(self.sha.hexdigest())


def _batch_tensors(batch: Batch) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(batch, torch.Tensor):
        yield "0", batch
    elif isinstance(batch, Mapping):
        for key in sorted(batch):
            if isinstance(batch[key], torch.Tensor):
                yield str(key), batch[key]
    elif isinstance(batch, (tuple, list)):
        for i, value in enumerate(batch):
            if isinstance(value, torch.Tensor):
                yield str(i), value


def token_mask_of(batch: Batch) -> TokenMask:
    """The (batch, seq) boolean mask of real tokens: the batch's 2-D ``attention_mask``, if any."""
    if isinstance(batch, Mapping):
        mask = batch.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.ndim == 2:
            return np.asarray(mask.detach().cpu().numpy() != 0)
    return None


def call_model(model: nn.Module, batch: Batch) -> Any:
    """Run `model` on one calibration batch (no key/value cache for generative models)."""
    if isinstance(batch, Mapping):
        kwargs = dict(batch)
        if "use_cache" not in kwargs and _accepts(model, "use_cache"):
            kwargs["use_cache"] = False
        return model(**kwargs)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def _accepts(model: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return False


def capture_block_inputs(
    model: nn.Module,
    block: nn.Module,
    batches: Iterable[Batch],
    digest: CalibrationDigest | None = None,
) -> list[BlockInput]:
    """The arguments `block` receives for each batch in a forward pass of `model` (a forward
    pre-hook records them); the rest of each forward is skipped."""
    captured: list[BlockInput] = []
    mask: list[TokenMask] = [None]

    def stop(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured.append(BlockInput(tuple(args), dict(kwargs), mask[0]))
        raise StopForward

    handle = block.register_forward_pre_hook(stop, with_kwargs=True)
    try:
        for batch in batches:
            if digest is not None:
                digest.update(batch)
            mask[0] = token_mask_of(batch)
            try:
                with torch.no_grad():
                    call_model(model, batch)
            except StopForward:
                continue
            msg = "blocks: the model's forward pass never reached the first block"
            raise ValueError(msg)
    finally:
        handle.remove()
    return captured


def blocks_are_chained(model: nn.Module, blocks: Sequence[nn.Module], batch: Batch) -> bool:
    """Whether each block's output, as it is, is what the model passes to the next block.

    One forward pass of `model` on `batch` records every block's arguments; each block is then
    replayed on its own and its output compared with the hidden states the next block received.
    A model that does anything between its blocks (a scaling, a norm, a residual outside the
    blocks) fails, and calibrating block k+1 on block k's raw output would then be wrong.
    """
    received: list[BlockInput | None] = [None] * len(blocks)

    def recorder(index: int) -> Any:
        def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if received[index] is None:  # a block called twice is judged by its first call
                received[index] = BlockInput(tuple(args), dict(kwargs), None)

        return hook

    handles = [
        block.register_forward_pre_hook(recorder(i), with_kwargs=True)
        for i, block in enumerate(blocks)
    ]
    try:
        with torch.no_grad():
            call_model(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    for index in range(len(blocks) - 1):
        now, following = received[index], received[index + 1]
        if now is None or following is None:
            return False
        with torch.no_grad():
            replayed = with_hidden_states(now, run_block(blocks[index], now))
        expected, got = hidden_states_of(following), hidden_states_of(replayed)
        if expected is None or got is None or expected.shape != got.shape:
            return False
        finite = expected.detach().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
        scale = float(finite.abs().max()) if finite.numel() else 0.0
        if not torch.allclose(got, expected, rtol=1e-5, atol=1e-6 * scale, equal_nan=True):
            return False
    return True


def hidden_states_of(inputs: BlockInput) -> torch.Tensor | None:
    """The hidden states a block was called with (its first positional argument, or
    ``hidden_states``)."""
    hidden = inputs.args[0] if inputs.args else inputs.kwargs.get("hidden_states")
    return hidden if isinstance(hidden, torch.Tensor) else None


def run_block(block: nn.Module, inputs: BlockInput) -> Any:
    return block(*inputs.args, **inputs.kwargs)


def run_calibration_pass(block: nn.Module, inputs: BlockInput) -> None:
    """Run `block` for a `Calibrator`, which may end the pass early (`StopForward`) once the
    layers it calibrates have seen their inputs."""
    try:
        block(*inputs.args, **inputs.kwargs)
    except StopForward:
        return


def with_hidden_states(inputs: BlockInput, output: Any) -> BlockInput:
    """The input of the next block: `inputs` with the hidden states replaced by `output`'s."""
    hidden = output[0] if isinstance(output, (tuple, list)) else output
    if not isinstance(hidden, torch.Tensor):
        msg = f"blocks: a block returned {type(output).__name__}, expected a tensor or a tuple"
        raise TypeError(msg)
    if inputs.args:
        return BlockInput((hidden, *inputs.args[1:]), inputs.kwargs, inputs.token_mask)
    if "hidden_states" in inputs.kwargs:
        kwargs = {**inputs.kwargs, "hidden_states": hidden}
        return BlockInput((), kwargs, inputs.token_mask)
    msg = "blocks: cannot tell which argument of the block carries the hidden states"
    raise ValueError(msg)


def is_transposed(module: nn.Module) -> bool:
    """Whether the layer stores its weight as (in, out): transformers' ``Conv1D`` (GPT-2 style
    models), recognised without importing transformers."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def weight_matrix(module: nn.Module) -> np.ndarray[Any, Any]:
    """The layer's weight as an (out, in) NumPy array: a view for float32/float64 CPU weights."""
    weight = weight_of(module).detach()
    if is_transposed(module):
        return tensor_to_numpy(weight).T
    return tensor_to_numpy(weight.reshape(weight.shape[0], -1))


def weight_of(module: nn.Module) -> torch.Tensor:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        msg = f"{type(module).__name__} has no weight tensor"
        raise TypeError(msg)
    return weight


def write_weight(module: nn.Module, weight: np.ndarray[Any, Any]) -> None:
    """Copy a pruned (out, in) matrix into the layer, keeping the layer's dtype and device."""
    param = weight_of(module)
    array = np.ascontiguousarray(weight)
    if not array.flags.writeable:  # e.g. a result read from Ray's object store
        array = array.copy()  # torch wraps only writable arrays
    if array.dtype.name == "bfloat16":  # ml_dtypes' bfloat16: torch reads it through its bits
        values = torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    else:
        values = torch.from_numpy(array)
    if is_transposed(module):
        values = values.T
    param.data.copy_(values.reshape(param.shape))


def tensor_to_numpy(t: torch.Tensor) -> np.ndarray[Any, Any]:
    """A NumPy view of a tensor (after a device copy for non-CPU tensors)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.dtype == torch.bfloat16:
        try:
            import ml_dtypes
        except ImportError:
            return t.float().numpy()
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    if t.dtype in (torch.float32, torch.float64, torch.float16):
        return t.numpy()
    return t.float().numpy()


def in_features(module: nn.Module) -> int:
    """Width of the input rows the layer's weight multiplies (in * kh * kw for convolutions)."""
    if is_transposed(module):
        return int(weight_of(module).shape[0])
    return int(weight_of(module)[0].numel())


class CrossStatistic:
    """Running ``C = 2/N Σ_t x₀_t x_tᵀ`` over paired tokens, ``(in, in)`` in float64.

    ``x₀_t`` is token t's input to a layer in the dense model, ``x_t`` its input to the same
    layer in the model being pruned; with x₀ = x, C is the Hessian ``2/N Σ x xᵀ``. Each batch's
    product is formed in float32 (float64 for float64 inputs) and summed in float64.
    """

    def __init__(self, width: int) -> None:
        self._sum = np.zeros((width, width))
        self.count = 0

    def update(
        self, dense_rows: np.ndarray[Any, Any], rows: np.ndarray[Any, Any], mask: TokenMask
    ) -> None:
        width = self._sum.shape[0]
        dtype = np.float64 if rows.dtype == np.float64 else np.float32
        dense = np.asarray(dense_rows, dtype=dtype).reshape(-1, width)
        here = np.asarray(rows, dtype=dtype).reshape(-1, width)
        if mask is not None:
            keep = np.asarray(mask).reshape(-1)
            dense, here = dense[keep], here[keep]
        self._sum += dense.T @ here
        self.count += here.shape[0]

    @property
    def value(self) -> np.ndarray[Any, Any]:
        """``2/N Σ x₀ xᵀ`` (zeros while N = 0), a new array."""
        return self._sum * (2.0 / self.count if self.count else 0.0)


class DenseTwin:
    """A dense copy of a block, made before any of its layers is pruned.

    `layer_inputs(inputs)` runs the copy on the dense model's input to the block and returns what
    each named layer read, keyed by the layer's name in the original model; `run(inputs)` gives
    the copy's output, the dense model's input to the next block.
    """

    def __init__(self, block: nn.Module, layers: Mapping[str, nn.Module]) -> None:
        self.block = copy.deepcopy(block)
        relative = {id(module): name for name, module in block.named_modules()}
        twins = dict(self.block.named_modules())
        self.layers = {name: twins[relative[id(module)]] for name, module in layers.items()}

    def layer_inputs(self, inputs: BlockInput) -> dict[str, list[torch.Tensor]]:
        """Per layer name, its inputs in the order of its calls (usually one)."""
        seen: dict[str, list[torch.Tensor]] = {}

        def hook_for(name: str) -> Any:
            def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                x = args[0] if args else kwargs.get("input")
                if isinstance(x, torch.Tensor):
                    seen.setdefault(name, []).append(x)

            return hook

        handles = [
            module.register_forward_pre_hook(hook_for(name), with_kwargs=True)
            for name, module in self.layers.items()
        ]
        try:
            self.run(inputs)
        finally:
            for handle in handles:
                handle.remove()
        return seen

    def run(self, inputs: BlockInput) -> Any:
        return run_block(self.block, inputs)


class Group:
    """Layers that read the same input, the one Calibration they share, and (when the dense
    model's inputs are known) the cross statistic of their dense and current inputs."""

    def __init__(self, width: int, *, cross: bool = False) -> None:
        self.members: list[str] = []
        self.calibration = fp.Calibration(width)
        self.cross = CrossStatistic(width) if cross else None


class LayerInputError(ValueError):
    """A layer's calibration input was refused (NaN or Inf in it): says which layer."""

    def __init__(self, layer: str, error: ValueError) -> None:
        # Calibration.update names its argument `x`: here that is the layer's input
        self.reason = str(error).removeprefix("x: ")
        super().__init__(f"{layer}: its calibration input {self.reason}")
        self.layer = layer


class Calibrator:
    """Forward pre-hooks on `layers` that feed their inputs into shared Calibrations.

    Use as a context manager; call `new_batch(token_mask, dense_inputs)` before each forward
    pass. After the passes, `groups` lists the layers that share an input, in the order they were
    first called. With `first_group_only`, only the group that is called first gets statistics
    (and is the only one in `groups`); the other layers' inputs are ignored. With `cross`, every
    batch must come with `dense_inputs` (the dense model's input to each layer, from
    `DenseTwin.layer_inputs`), and each group also gathers its `CrossStatistic`.

    With `first_group_only` and `stop_early`, every forward pass after the first ends with
    `StopForward` at the first call of another layer once each member of the first group has
    been called as often as in the first (whole) pass: the rest of the pass feeds nothing this
    calibration reads. `stopped` counts those passes, `seconds` the time spent in the hooks.
    """

    def __init__(
        self,
        layers: Mapping[str, nn.Module],
        *,
        first_group_only: bool = False,
        cross: bool = False,
        stop_early: bool = False,
    ) -> None:
        self.layers = dict(layers)
        self.first_group_only = first_group_only
        self.cross = cross
        self.stop_early = stop_early and first_group_only
        self.stopped = 0
        self.seconds = 0.0
        self._batches = 0
        self._calls_needed: dict[str, int] | None = None  # the first group's calls per pass
        self.groups: list[Group] = []
        self.group_of: dict[str, Group] = {}
        self._seen: list[tuple[torch.Tensor, Group]] = []
        self._token_mask: TokenMask = None
        self._dense_inputs: Mapping[str, list[torch.Tensor]] = {}
        self._calls: dict[str, int] = {}  # per layer, its calls so far in this batch
        self._handles: list[Any] = []

    def __enter__(self) -> Calibrator:
        for name, module in self.layers.items():
            hook = self._hook_for(name)
            self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._seen.clear()

    def new_batch(
        self, token_mask: TokenMask, dense_inputs: Mapping[str, list[torch.Tensor]] | None = None
    ) -> None:
        if self.cross and dense_inputs is None:
            msg = "Calibrator: with cross=True every batch needs the dense model's layer inputs"
            raise ValueError(msg)
        self._seen.clear()  # drops the references that kept last batch's inputs alive
        if self.stop_early and self._calls_needed is None and self._batches and self.groups:
            self._calls_needed = {name: self._calls[name] for name in self.groups[0].members}
        self._batches += 1
        self._token_mask = token_mask
        self._dense_inputs = dense_inputs or {}
        self._calls.clear()

    def _hook_for(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            needed = self._calls_needed
            if (
                needed is not None
                and name not in needed
                and all(self._calls.get(member, 0) >= calls for member, calls in needed.items())
            ):
                self.stopped += 1
                raise StopForward
            x = args[0] if args else kwargs.get("input")
            if not isinstance(x, torch.Tensor):
                msg = f"{name}: cannot find the layer's input tensor"
                raise TypeError(msg)
            start = time.perf_counter()
            try:
                self._observe(name, module, x)
            except LayerInputError:
                raise
            except ValueError as err:
                raise LayerInputError(name, err) from err
            finally:
                self.seconds += time.perf_counter() - start

        return hook

    def _observe(self, name: str, module: nn.Module, x: torch.Tensor) -> None:
        call = self._calls.get(name, 0)
        self._calls[name] = call + 1
        own = self.group_of.get(name)
        for seen, group in self._seen:
            if _same_tensor(seen, x) and (own is None or own is group):
                if own is None:
                    self._join(name, group)
                return  # this input is already in the group's statistics
        if own is None:
            if self.first_group_only and self.groups:
                return  # not the first group's input: calibrated in a later round
            own = Group(in_features(module), cross=self.cross)
            self.groups.append(own)
            self._join(name, own)
        rows, mask = layer_rows(name, module, x, self._token_mask)
        own.calibration.update(rows, mask=mask)
        if own.cross is not None:  # pair this call's input with the same call's in the dense twin
            calls = self._dense_inputs.get(name, [])
            dense = calls[call] if call < len(calls) else None
            if dense is None or dense.shape != x.shape:
                msg = f"{name}: the dense model's input to this layer is missing or mis-shaped"
                raise ValueError(msg)
            dense_rows, _ = layer_rows(name, module, dense, self._token_mask)
            own.cross.update(dense_rows, rows, mask)
        self._seen.append((x, own))

    def _join(self, name: str, group: Group) -> None:
        group.members.append(name)
        self.group_of[name] = group


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    # Both are alive (self._seen holds `a`), so equal storage views mean the same data.
    return (
        a.data_ptr() == b.data_ptr()
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.dtype == b.dtype
        and a.device == b.device
    )


def layer_rows(
    name: str,
    module: nn.Module,
    x: torch.Tensor,
    token_mask: TokenMask,
) -> tuple[np.ndarray[Any, Any], TokenMask]:
    """The layer's input as (..., in_features) rows, and which rows are real tokens."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return _conv_patches(name, module, x), None
    rows = tensor_to_numpy(x)
    if token_mask is None:
        return rows, None
    routed = token_rows(module)  # an expert's input: the tokens routed to it
    if routed is not None and rows.ndim == 2 and len(routed) == len(rows):
        flat = token_mask.reshape(-1)
        positions = routed.detach().cpu().numpy()
        if positions.size == 0 or int(positions.max()) < flat.size:
            return rows, flat[positions]
    if rows.shape[:-1] == token_mask.shape:
        return rows, token_mask
    if rows.ndim >= 2 and int(np.prod(rows.shape[:-1])) == token_mask.size:
        return rows, token_mask.reshape(rows.shape[:-1])
    msg = (
        f"{name}: its input of shape {tuple(x.shape)} does not line up with the attention mask "
        f"of shape {token_mask.shape}, so padding cannot be left out; add the layer to `ignore`"
    )
    raise ValueError(msg)


def _conv_patches(
    name: str, module: nn.Conv1d | nn.Conv2d, x: torch.Tensor
) -> np.ndarray[Any, Any]:
    """Every receptive field of the convolution as a row (ordered like the flattened weight)."""
    if module.groups != 1:
        msg = f"{name}: grouped convolutions cannot be calibrated; add the layer to `ignore`"
        raise ValueError(msg)
    # Padding the input first covers every padding setting ("same", reflect, ...) at once.
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
    if isinstance(module, nn.Conv1d):
        patches = F.unfold(
            x.unsqueeze(-2),
            kernel_size=(1, module.kernel_size[0]),
            dilation=(1, module.dilation[0]),
            stride=(1, module.stride[0]),
        )
    else:
        patches = F.unfold(
            x, kernel_size=module.kernel_size, dilation=module.dilation, stride=module.stride
        )
    return tensor_to_numpy(patches.transpose(1, 2))

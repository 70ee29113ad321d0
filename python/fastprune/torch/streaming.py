"""Prune a causal language model whose weights do not fit in memory, one block at a time.

`prune_streaming` reads a Hugging Face model directory (safetensors, one file or shards) without
ever loading the model whole:

- the model is built on the meta device from its ``config.json``; the tensors outside the
  blocks (embeddings, final norm, head) are memory-mapped, so only the embedding rows the
  calibration tokens look up are read; buffers that are computed rather than stored (rotary
  frequencies) are computed on the CPU;
- a forward pass of the calibration batches stops at the first block and records what the
  decoder hands it (hidden states, attention mask, position ids, rotary embeddings);
- then for each block: its tensors are read from disk, its layers pruned group by group exactly
  as `prune_model`'s default sequential mode does (the same per-layer step), the block written
  to its own safetensors file, run on the calibration inputs to give the next block's inputs
  (block k+1 is calibrated on the outputs of the pruned block k), and freed.

The output directory holds ``.fastprune-incomplete`` until the last file is written, and
``.fastprune-progress.json`` records the blocks finished (each block's layer reports are in its
file's header): a run stopped part-way resumes
(``resume=True``) after the last finished block, recomputing that block's inputs from the
pruned blocks already written, and gives the same weights as a run that was never stopped.
"""

from __future__ import annotations

import ctypes
import fnmatch
import hashlib
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

import fastprune as fp

from .. import executors
from .._files import atomic_path, atomic_write_text, incomplete_marker
from ..io import Entry, read_header
from ._layers import Pass, Pruner
from .experts import is_expert_tensor_module
from .hooks import (
    Batch,
    BlockInput,
    CalibrationDigest,
    capture_block_inputs,
    hidden_states_of,
    in_features,
    run_block,
    run_calibration_pass,
    weight_of,
    with_hidden_states,
)
from .models import check_model_dir, copy_companion_files, generates_text, model_class
from .prune import (
    DEFAULT_TARGETS,
    METHODS,
    PlanItem,
    SparsitySpec,
    _describe_sparsity,
    _flag,
    _group_size,
    _nonnegative,
    _positive_int,
    _progress,
    check_ignore,
    plan_layers,
    prune_block,
    resolve_blocks,
    run_manifest,
)
from .report import LayerReport, PruneReport

PROGRESS_FILE = ".fastprune-progress.json"
INDEX_FILE = "model.safetensors.index.json"
_LAYERS_KEY = "fastprune.layers"  # a block file's header: the reports of its pruned layers
_ACTIVATIONS_PREFIX = ".fastprune-activations-"
_TORCH_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})
#: Bytes per squared input width that one group's statistics take while it is pruned: the
#: float32 sums and the Hessian read from them, SparseGPT's float64 factor and damped Hessian,
#: the float32 copy the output error is measured with (4 + 4 + 8 + 8 + 4), and the solver's
#: buffers that fastprune's memory cache keeps for the block's next groups (16: a SparseGPT
#: run measured 0.99 GB against 0.95 GB planned with 32).
HESSIAN_BYTES_PER_WIDTH2 = 48
#: Bytes per token and unit of the widest layer input that a block's forward pass allocates
#: at most (the feed-forward's activations and their products, in float32).
WORK_BYTES_PER_TOKEN_WIDTH = 16
#: What the refit of SparseGPT's kept weights (``refit=True``) adds while it solves one layer,
#: on its iterative route: float64 arrays the shape of its weight (the right-hand sides, the
#: iterates and their temporaries: 64 bytes per weight of the largest layer) and the inverse of
#: its damped Hessian with the inversion's workspace (24 bytes per squared input width).
#: Measured with tracemalloc on a 576x1536 layer: 76 MB against 113 MB planned. The direct
#: route needs less: the right-hand sides and the result (16 bytes per weight) and the threads'
#: factorisation buffers (at most 16 bytes per squared input width, `refit_direct`).
REFIT_BYTES_PER_WEIGHT = 64
REFIT_BYTES_PER_WIDTH2 = 24


def parse_memory(value: object, name: str = "max_memory") -> int:
    """A number of bytes from an int or a text such as ``"12GB"``, ``"512MiB"`` or ``"1.5e9"``.

    KB, MB, GB, TB are powers of 1000 and KiB, MiB, GiB, TiB powers of 1024 (case ignored).
    ValueError naming `name` for anything else or a value below one byte.
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        size = int(value)
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", value)
        unit = match.group(2).lower() if match else ""
        if match is None or unit not in _UNITS:
            msg = f"{name}: expected a size such as 12GB or 512MiB, got {value!r}"
            raise ValueError(msg)
        size = int(float(match.group(1)) * _UNITS[unit])
    else:
        msg = f"{name}: expected a number of bytes or a size such as 12GB, got {value!r}"
        raise ValueError(msg)
    if size < 1:
        msg = f"{name}: expected at least one byte, got {value!r}"
        raise ValueError(msg)
    return size


def peak_rss() -> int | None:
    """The process's peak resident memory in bytes so far (None where it cannot be read)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return peak if sys.platform == "darwin" else peak * 1024


def skeleton(model_dir: str | Path) -> tuple[nn.Module, list[nn.Module], str]:
    """The model its ``config.json`` describes, built on the meta device (no memory for its
    weights), with its blocks and their dotted path; eval mode."""
    import transformers

    folder = check_model_dir(model_dir)
    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    cls = model_class(config)
    if cls is transformers.AutoModel:
        msg = f"model_dir: the config.json in {str(folder)!r} names no model class (architectures)"
        raise ValueError(msg)
    with torch.device("meta"):
        model = cls(config)
    model.eval()
    blocks, path = resolve_blocks(model, None)
    return model, blocks, path


def prune_streaming(
    model_dir: str | Path,
    out_dir: str | Path,
    calibration_batches: Iterable[Batch] | None,
    *,
    method: str = "sparsegpt",
    sparsity: SparsitySpec = 0.5,
    pattern: str = "unstructured",
    ignore: Sequence[str] = (),
    blocksize: int = 128,
    damp: float = 0.01,
    refit: bool = False,
    max_memory: int | str | None = None,
    activations_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    seed: int | None = None,
    executor: object = None,
    manifest: Mapping[str, Any] | None = None,
    on_block: Callable[[int], None] | None = None,
) -> PruneReport:
    """Prune the causal language model in `model_dir` block by block into `out_dir`.

    The result is what ``prune_model`` gives the model loaded whole with its defaults for a
    causal language model (``sequential=True``, ``reconstruct="layer"``): every layer
    calibrated on its inputs after the layers before it were pruned. Only one block's weights
    are in memory at a time, so models larger than memory can be pruned.

    Args:
        model_dir: a Hugging Face model directory: ``config.json`` naming a causal language
            model (Llama, Mistral, Qwen, GPT-2, ...) and its safetensors weights (one file or
            shards). The model's forward must hand each block's output to the next block as
            it is, which these decoders do.
        out_dir: where the pruned model goes: one safetensors file per block
            (``block-00000.safetensors``, ...), one per tensor outside the blocks, an index
            ``model.safetensors.index.json``, the other files of `model_dir` (config,
            tokenizer) copied, and the report (``prune_report.json``, ``manifest.json``).
            Transformers' ``from_pretrained`` loads it.
        calibration_batches: what the model is called with, one item per forward pass (a
            tokenizer's output, as for ``prune_model``). Optional for ``method="magnitude"``,
            which then runs no forward pass at all (given, they measure each layer's output
            error).
        method, sparsity, pattern, ignore, blocksize, damp, refit, executor, seed: as for
            ``prune_model`` (`refit` is off by default, as ``prune_model`` has it for causal
            language models).
        max_memory: the memory budget, bytes or a text such as ``"12GB"`` (see `parse_memory`);
            None: no budget, the calibration activations stay in memory. The run plans for
            ``base + 3·block + 48·w² + 16·t·w`` bytes, where base is the process's resident
            memory when pruning starts (interpreter, torch, calibration batches, embedding rows
            read), block the largest block's bytes (its weights, the copies kept until its
            layers are all pruned, the file's bytes as they are written), w the widest layer
            input (one group's statistics, SparseGPT's factor and buffers), t the tokens of the
            largest batch (a forward pass's temporaries); or for ``base + 2·`` the largest
            tensor outside the blocks when that is more (it is read and written whole). ValueError
            naming `max_memory` when that exceeds the budget. The hidden states of all
            calibration batches (twice: a block's inputs and outputs) are kept in memory when
            they fit in what is left, otherwise in files, read back one batch at a time. The
            budget is what the run plans for, not a limit the operating system enforces: the
            report gives the peak it measured.
        activations_dir: when given, the activations are always kept in files there (on a
            disk with room for twice their size); otherwise in memory when they fit the budget,
            else in files in `out_dir`. The files are removed once read for the last time.
        resume: continue the run in `out_dir` that was stopped (it still holds
            ``.fastprune-progress.json``) after its last finished block; it must have had the
            same model, calibration batches and options (ValueError otherwise). False starts
            from the first block, replacing what `out_dir` holds.
        progress: show a progress bar (when tqdm is installed).
        manifest: entries added to the report's manifest, mappings merged one level deep (the
            CLI adds the model's name and the calibration text's).
        on_block: called with the block's index after each block is written and recorded.

    Returns the report of every pruned layer (blocks finished before a resume included); its
    manifest's ``"memory"`` holds the budget, the planned bytes, where the activations were,
    and the measured peak resident memory of the process (``peak_rss``, bytes).

    Raises:
        FileNotFoundError: `model_dir` is not a model directory or holds no safetensors file.
        ValueError: a model that does not generate text, tensors missing from the checkpoint,
            the budget too small for one block, nothing to resume, a resume with other
            options or data, and what ``prune_model`` refuses.
    """
    start = time.perf_counter()
    if method not in METHODS:
        msg = f"method: expected one of {', '.join(METHODS)}, got {method!r}"
        raise ValueError(msg)
    group_size = _group_size(pattern)
    fp_blocksize = _positive_int(blocksize, "blocksize")
    fp_damp = _nonnegative(damp, "damp")
    fp_refit = _flag(refit, "refit")
    _flag(resume, "resume")
    check_ignore(ignore)
    budget = None if max_memory is None else parse_memory(max_memory)
    source = check_model_dir(model_dir)
    out = Path(out_dir)
    if out.resolve() == source.resolve():
        msg = "out_dir: must differ from model_dir (the pruned blocks would overwrite the input)"
        raise ValueError(msg)
    stored = _stored_tensors(source)
    model, blocks, path = skeleton(source)
    if not generates_text(model):
        msg = (
            f"model_dir: {type(model).__name__} is not a causal language model; streaming "
            "prunes decoders, whose blocks pass their output straight to the next one"
        )
        raise ValueError(msg)
    experts = [
        f"{path}.{i}.{name}"
        for i, block in enumerate(blocks)
        for name, module in block.named_modules()
        if is_expert_tensor_module(module)
        and not any(fnmatch.fnmatchcase(f"{path}.{i}.{name}", p) for p in ignore)
    ]
    if experts:
        msg = (
            f"model_dir: {experts[0]} keeps mixture-of-experts weights as 3-D tensors, which "
            "streaming does not unroll yet; prune the model in memory with prune_model, or add "
            f"{experts[0]!r} to `ignore`"
        )
        raise ValueError(msg)
    plan, skipped = plan_layers(
        model, blocks, path, DEFAULT_TARGETS, ignore, sparsity, pattern, group_size
    )
    block_keys = [
        sorted(k for k in stored if k.startswith(f"{path}.{i}.")) for i in range(len(blocks))
    ]
    in_blocks = {key for keys in block_keys for key in keys}
    outside = sorted(key for key in stored if key not in in_blocks)
    _map_outside(model, blocks, {key: stored[key] for key in outside})

    digest = CalibrationDigest()
    calibrated = calibration_batches is not None
    captured: list[BlockInput] = []
    if calibration_batches is None:
        if method != "magnitude":
            msg = f"calibration_batches: method {method!r} needs calibration data"
            raise ValueError(msg)
    else:
        with torch.no_grad():
            captured = capture_block_inputs(model, blocks[0], list(calibration_batches), digest)
        if not captured:
            msg = "calibration_batches: no batches were given"
            raise ValueError(msg)
    on_disk = activations_dir is not None
    refits = fp_refit and method == "sparsegpt"
    memory = _plan_memory(budget, block_keys, outside, stored, plan, captured, on_disk, refits)

    options: dict[str, Any] = {
        "sparsity": _describe_sparsity(sparsity),
        "pattern": pattern,
        "targets": [t.__name__ for t in DEFAULT_TARGETS],
        "ignore": list(ignore),
        "sequential": True,
        "blocks": path,
        "blocksize": fp_blocksize,
        "damp": fp_damp,
        "reconstruct": "layer",
        "refit": fp_refit,
        "streaming": True,
    }
    runner = executors.executor(executor)
    options["executor"] = getattr(runner, "name", type(runner).__name__)
    pruner = Pruner(method, pattern, fp_blocksize, fp_damp, refit=fp_refit, executor=runner)
    fingerprint = {
        "method": method,
        "options": {k: v for k, v in options.items() if k != "executor"},
        "calibration": digest.hexdigest(),
        "model": _fingerprint(source, stored),
    }
    frames = [with_hidden_states(item, _NO_HIDDEN) for item in captured]
    spill = Path(activations_dir) if activations_dir is not None else out
    rows: list[LayerReport] = []
    done = 0
    written = [_block_file(i) for i in range(len(blocks))]
    if resume:
        done, rows = _read_progress(out, fingerprint, pruner, written)
    with incomplete_marker(out), torch.no_grad():
        _write_progress(out, fingerprint, done, pruner)
        for leftover in spill.glob(f"{_ACTIVATIONS_PREFIX}*.bin"):  # from a killed run
            leftover.unlink()
        hidden = _HiddenStates(spill if memory["activations"] == "disk" else None)
        try:
            for i, item in enumerate(captured):
                hidden.put(i, _hidden(item))
            del captured
            for index in range(done if calibrated else 0):  # the next block's inputs, from disk
                finished = _stored_tensors_of(out / written[index])
                _load_block(blocks[index], f"{path}.{index}.", finished)
                hidden = _advance(blocks[index], frames, hidden)
                blocks[index].to("meta")
            for index in _progress(range(done, len(blocks)), progress, "pruning blocks"):
                block = blocks[index]
                prefix = f"{path}.{index}."
                _load_block(block, prefix, {key: stored[key] for key in block_keys[index]})
                layers = [item for item in plan if item[0] == index]
                if calibrated:
                    passes = _passes(block, frames, hidden)
                    pruned = prune_block(pruner, layers, passes, by_group=True)
                else:  # magnitude pruning without data: no forward pass at all
                    pruned = [pruner.prune_alone(*item) for item in layers]
                rows += pruned
                state = block.state_dict()
                tensors = {key: state[key.removeprefix(prefix)] for key in block_keys[index]}
                reports = json.dumps([asdict(row) for row in pruned])  # read back on resume
                _save(out / written[index], tensors, {_LAYERS_KEY: reports})
                pruner.keep()  # the block is on disk: nothing to restore
                del state, tensors
                if calibrated and index + 1 < len(blocks):
                    hidden = _advance(block, frames, hidden)
                block.to("meta")
                fp.release_memory()  # the solver's kept buffers: the next block is not smaller
                _return_freed_memory()
                _write_progress(out, fingerprint, index + 1, pruner)
                if on_block is not None:
                    on_block(index)
        finally:
            hidden.close()
        weight_map = {key: written[i] for i, keys in enumerate(block_keys) for key in keys}
        for key in outside:
            weight_map[key] = f"{key}.safetensors"
            _save(out / weight_map[key], {key: _read(*stored[key])})
        total = sum(stored[key][1].end - stored[key][1].begin for key in stored)
        index_text = json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
        atomic_write_text(out / INDEX_FILE, index_text + "\n")
        copy_companion_files(source, out, skip_index=True)
        memory["peak_rss"] = peak_rss()
        report_manifest = run_manifest(method, options, digest, pruner, seed)
        report_manifest["memory"] = memory
        report_manifest["resumed_after_blocks"] = done
        for key, value in (manifest or {}).items():  # mappings merged one level deep
            known = report_manifest.get(key)
            if isinstance(value, Mapping) and isinstance(known, dict):
                known.update(value)
            else:
                report_manifest[key] = value
        report = PruneReport(rows, report_manifest, time.perf_counter() - start, skipped)
        report.save(out)
        (out / PROGRESS_FILE).unlink()
    return report


_NO_HIDDEN = torch.empty(0)


def _stored_tensors(folder: Path) -> dict[str, tuple[Path, Entry]]:
    """Every tensor of the safetensors files in `folder`: the file and where its bytes lie."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        msg = f"model_dir: {str(folder)!r} holds no .safetensors file"
        raise FileNotFoundError(msg)
    found: dict[str, tuple[Path, Entry]] = {}
    for f in files:
        found.update(_stored_tensors_of(f))
    return found


def _stored_tensors_of(path: Path) -> dict[str, tuple[Path, Entry]]:
    entries, _ = read_header(path)
    return {name: (path, entry) for name, entry in entries.items()}


def _torch_dtype(entry: Entry, name: str) -> torch.dtype:
    dtype = _TORCH_DTYPES.get(entry.code)
    if dtype is None:
        msg = f"model_dir: tensor {name} has dtype {entry.code}, which torch cannot hold"
        raise ValueError(msg)
    return dtype


def _read(path: Path, entry: Entry) -> torch.Tensor:
    """The tensor's bytes read into new memory (not mapped: only what is read is resident)."""
    tensor = torch.empty(entry.shape, dtype=_torch_dtype(entry, path.name))
    with path.open("rb") as f:
        f.seek(entry.begin)
        _read_into(f, tensor)
    return tensor


def _read_into(f: IO[bytes], tensor: torch.Tensor) -> None:
    buffer = tensor.reshape(-1).view(torch.uint8).numpy().data
    got = 0
    while got < len(buffer):
        count = f.readinto(buffer[got:])  # type: ignore[attr-defined]
        if not count:
            msg = f"{getattr(f, 'name', 'file')}: ended before the tensor's last byte"
            raise ValueError(msg)
        got += count


def _map_outside(
    model: nn.Module, blocks: Sequence[nn.Module], stored: Mapping[str, tuple[Path, Entry]]
) -> None:
    """Give the modules outside the blocks their stored tensors, memory-mapped copy-on-write
    (nothing is read until used), and compute the buffers that are not stored (rotary
    frequencies) by building those modules again on the CPU from the model's config."""
    mapped = {}
    for key, (path, entry) in stored.items():
        raw = np.memmap(
            path, np.uint8, mode="c", offset=entry.begin, shape=(entry.end - entry.begin,)
        )
        mapped[key] = torch.from_numpy(raw).view(_torch_dtype(entry, key)).reshape(entry.shape)
    result = model.load_state_dict(mapped, strict=False, assign=True)
    if result.unexpected_keys:
        msg = f"model_dir: the checkpoint's tensor {result.unexpected_keys[0]} is not in the model"
        raise ValueError(msg)
    inside = {id(module) for block in blocks for module in block.modules()}
    for name, module in list(model.named_modules()):
        if id(module) in inside or not any(b.is_meta for b in module.buffers(recurse=False)):
            continue
        config = getattr(module, "config", None)
        if config is None:
            msg = f"model_dir: cannot compute the buffers of {name} ({type(module).__name__})"
            raise ValueError(msg)
        with torch.device("cpu"):
            model.set_submodule(name, type(module)(config))


def _load_block(block: nn.Module, prefix: str, stored: Mapping[str, tuple[Path, Entry]]) -> None:
    """Read the block's tensors (keys under `prefix`) from disk into the block."""
    state = {key.removeprefix(prefix): _read(*where) for key, where in stored.items()}
    try:
        block.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        msg = f"model_dir: the checkpoint does not match the config's {prefix[:-1]}: {err}"
        raise ValueError(msg) from err
    for name, tensor in [*block.named_parameters(), *block.named_buffers()]:
        if tensor.is_meta:
            msg = f"model_dir: {prefix}{name} is neither stored nor computable in a block"
            raise ValueError(msg)


def _save(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write `tensors` to the safetensors file `path` atomically, with `metadata` in its header."""
    from safetensors.torch import save_file

    with atomic_path(path) as temporary:
        contiguous = {key: t.detach().contiguous() for key, t in tensors.items()}
        save_file(contiguous, temporary, metadata={"format": "pt", **(metadata or {})})


def _block_file(index: int) -> str:
    return f"block-{index:05d}.safetensors"


def _hidden(item: BlockInput) -> torch.Tensor:
    hidden = hidden_states_of(item)
    if hidden is None:
        msg = "blocks: cannot tell which argument of the block carries the hidden states"
        raise ValueError(msg)
    return hidden


class _HiddenStates:
    """The hidden states entering a block, one tensor per calibration batch: in memory, or in a
    file in `directory`, written and read with plain file I/O (not mapped, so they never count
    in the process's resident memory) one batch at a time."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._tensors: dict[int, torch.Tensor] = {}
        self._where: dict[int, tuple[int, torch.Size, torch.dtype]] = {}
        self._path: Path | None = None
        self._file: IO[bytes] | None = None
        self._end = 0
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            n = 0
            while (directory / f"{_ACTIVATIONS_PREFIX}{n}.bin").exists():
                n += 1
            self._path = directory / f"{_ACTIVATIONS_PREFIX}{n}.bin"
            self._file = self._path.open("w+b")

    def put(self, index: int, tensor: torch.Tensor) -> None:
        if self._file is None:
            self._tensors[index] = tensor
            return
        data = tensor.detach().contiguous()
        self._file.seek(self._end)
        self._file.write(data.reshape(-1).view(torch.uint8).numpy().data)
        self._where[index] = (self._end, data.shape, data.dtype)
        self._end += data.numel() * data.element_size()

    def get(self, index: int) -> torch.Tensor:
        if self._file is None:
            return self._tensors[index]
        offset, shape, dtype = self._where[index]
        tensor = torch.empty(shape, dtype=dtype)
        self._file.flush()
        self._file.seek(offset)
        _read_into(self._file, tensor)
        return tensor

    def close(self) -> None:
        self._tensors.clear()
        if self._file is not None and self._path is not None:
            self._file.close()
            self._path.unlink(missing_ok=True)


def _passes(
    block: nn.Module, frames: Sequence[BlockInput], hidden: _HiddenStates
) -> Callable[[], Iterator[Pass]]:
    """Forward passes of `block` on the stored inputs, each announced by its token mask."""

    def passes() -> Iterator[Pass]:
        for i, frame in enumerate(frames):
            item = with_hidden_states(frame, hidden.get(i))
            yield item.token_mask, None
            run_calibration_pass(block, item)

    return passes


def _advance(
    block: nn.Module, frames: Sequence[BlockInput], hidden: _HiddenStates
) -> _HiddenStates:
    """The next block's inputs: `block` run on each batch's stored input (which is dropped)."""
    following = _HiddenStates(hidden.directory)
    try:
        for i, frame in enumerate(frames):
            output = run_block(block, with_hidden_states(frame, hidden.get(i)))
            following.put(i, _hidden(with_hidden_states(frame, output)))
    except BaseException:
        following.close()
        raise
    hidden.close()
    return following


def _plan_memory(
    budget: int | None,
    block_keys: Sequence[Sequence[str]],
    outside: Sequence[str],
    stored: Mapping[str, tuple[Path, Entry]],
    plan: Sequence[PlanItem],
    captured: Sequence[BlockInput],
    on_disk: bool,
    refit: bool,
) -> dict[str, Any]:
    """The memory the run plans for (see `prune_streaming`'s `max_memory`) and where the
    activations go (on disk when `on_disk` or when they do not fit), with the refit's arrays
    when SparseGPT's kept weights are refitted (`refit`); ValueError naming `max_memory` when
    one block does not fit."""

    def size(key: str) -> int:
        return stored[key][1].end - stored[key][1].begin

    block_bytes = max(sum(size(key) for key in keys) for keys in block_keys)
    width = max(in_features(module) for _, _, module, _ in plan)
    tokens = max((int(_hidden(item).shape[:-1].numel()) for item in captured), default=0)
    batch_bytes = max((_nbytes(_hidden(item)) for item in captured), default=0)
    activations = sum(_nbytes(_hidden(item)) for item in captured)
    base = _resident()
    block_need = (
        3 * block_bytes
        + HESSIAN_BYTES_PER_WIDTH2 * width * width
        + WORK_BYTES_PER_TOKEN_WIDTH * tokens * width
    )
    if refit:
        largest = max(weight_of(module).numel() for _, _, module, _ in plan)
        block_need += REFIT_BYTES_PER_WEIGHT * largest + REFIT_BYTES_PER_WIDTH2 * width * width
    needed = base + max(block_need, 2 * max((size(key) for key in outside), default=0))
    in_memory = not on_disk and (budget is None or needed + 2 * activations <= budget)
    plan_bytes = needed + 2 * (activations if in_memory else batch_bytes)
    if budget is not None and plan_bytes > budget:
        msg = (
            f"max_memory: {budget} bytes is less than one block needs: {plan_bytes} bytes "
            f"({base} resident already, blocks of {block_bytes} bytes, layer inputs {width} "
            f"wide, batches of {tokens} tokens)"
        )
        raise ValueError(msg)
    return {
        "max_memory": budget,
        "planned": plan_bytes,
        "resident_at_start": base,
        "block_bytes": block_bytes,
        "activation_bytes": activations,
        "activations": "memory" if in_memory else "disk",
    }


def _return_freed_memory() -> None:
    """Hand the memory freed on the C heap back to the operating system (glibc's
    ``malloc_trim``): otherwise what one block freed in pieces stays resident and the process
    grows from block to block, though nothing is referenced any more."""
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return
    trim(0)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _resident() -> int:
    """The process's resident memory now, in bytes (its peak where /proc is missing)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return peak_rss() or 0
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")


def _fingerprint(source: Path, stored: Mapping[str, tuple[Path, Entry]]) -> str:
    """A SHA-256 of the model's config and of its tensors' names, files, dtypes and places."""
    sha = hashlib.sha256((source / "config.json").read_bytes())
    for key in sorted(stored):
        path, entry = stored[key]
        sha.update(f"{key}:{path.name}:{entry.code}:{entry.shape}:{entry.begin};".encode())
    return sha.hexdigest()


def _write_progress(out: Path, fingerprint: dict[str, Any], done: int, pruner: Pruner) -> None:
    """Record that `done` blocks are written (their reports are in their files' headers)."""
    state = {
        "fingerprint": fingerprint,
        "finished_blocks": done,
        "groups": pruner.groups_seen,
        "tokens": pruner.tokens,
    }
    atomic_write_text(out / PROGRESS_FILE, json.dumps(state, indent=1) + "\n")


def _read_progress(
    out: Path, fingerprint: dict[str, Any], pruner: Pruner, files: Sequence[str]
) -> tuple[int, list[LayerReport]]:
    """The blocks finished by the stopped run in `out` and their reports, read from the blocks'
    `files`; the pruner continues its group numbering and token count."""
    try:
        state = json.loads((out / PROGRESS_FILE).read_text())
    except FileNotFoundError as err:
        msg = f"resume: {str(out)!r} holds no stopped streaming run ({PROGRESS_FILE})"
        raise ValueError(msg) from err
    if state["fingerprint"] != json.loads(json.dumps(fingerprint)):
        msg = (
            f"resume: the run in {str(out)!r} had another model, calibration data or options; "
            "resume with the same ones, or start again without resume"
        )
        raise ValueError(msg)
    pruner.groups_seen = int(state["groups"])
    pruner.tokens = int(state["tokens"])
    done = int(state["finished_blocks"])
    rows = []
    for name in files[:done]:
        _, metadata = read_header(out / name)
        for row in json.loads(metadata[_LAYERS_KEY]):
            rows.append(LayerReport(**{**row, "shape": tuple(row["shape"])}))
    return done, rows

"""Prune a PyTorch model layer by layer from calibration data.

`prune_model` finds the layers to prune (Linear and convolution layers inside the model's
repeated blocks), gathers the statistics of their inputs with forward hooks, and replaces each
weight by the pruned one that SparseGPT, Wanda or magnitude pruning computes.

Sequential mode follows the SparseGPT and Wanda papers: the inputs to the first block are
captured once, then block k is calibrated on the outputs of blocks 0..k-1 *after* they were
pruned, pruned itself, and run again to produce the inputs of block k+1. Inside a block the
layers are pruned in execution order too ("true sequential", as the papers' LLaMA code does):
the layers reading one input (q/k/v; the attention output; the feed-forward input; its output)
form a group, the group called first is calibrated, pruned, and the block is run again so that
the next group is calibrated on its inputs as they are after the earlier groups were pruned.
``sequential="block"`` calibrates all of a block's layers in one pass of the block instead, and
``sequential=False`` calibrates every layer in one forward pass of the dense model.

Two refinements of SparseGPT's weights, both on by default, neither changing which weights are
pruned (so per-layer sparsity and N:M validity are exactly those of plain SparseGPT):

- ``reconstruct="dense"`` (true-sequential mode only): a layer sees inputs X that differ from
  the dense model's X₀, because the layers before it were pruned. The papers fit the pruned layer
  to its own dense weights on X, ``min ‖ŴX − WX‖²``; reconstructing the dense model's output
  instead, ``min ‖ŴX − WX₀‖² + λ‖Ŵ − W‖²`` (λ the damping), lets each layer also correct the
  error the layers before it left. Expanding the square, this is SparseGPT's problem on the usual
  damped Hessian ``H = 2/N·XXᵀ + λI``, started from ``W* = W·C·H⁻¹`` instead of W, where
  ``C = 2/N·X₀Xᵀ + λI`` pairs each token's dense and current inputs; a dense copy of the block
  run on the dense model's inputs provides X₀. With X₀ = X this is plain SparseGPT.
- ``refit=True``: SparseGPT decides column by column and only adjusts the weights to the right of
  each pruned one, so its kept weights are not the best ones for its mask. Once the mask is
  chosen, every row's kept weights are solved for the same objective, ``Ŵ_S = (W·C)_S · H_SS⁻¹``
  over the row's kept columns S (with C = H when reconstructing the layer's own output), by
  conjugate gradients in float64 from SparseGPT's weights, one GEMM with H per step (to a
  relative residual of 1e-6, at most 100 steps).

Both fit the calibration tokens more closely than SparseGPT's own updates do, and that is only a
gain when those tokens are like the text the model will see: on a decoder LLM calibrated on a
small, different text they overfit it (README, "Pruning a decoder LLM", gives the measurements).
So by default (``"auto"``) they are used for models that do not generate text (encoders, whose
embeddings are usually calibrated on text of the task) and not for causal language models, which
follow the paper.
"""

from __future__ import annotations

import contextlib
import fnmatch
import platform
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

import fastprune as fp
from fastprune import executors
from fastprune._arrays import check_sparsity

from ._layers import Pass, Pruner
from .experts import ExpertLinear, unrolled_experts
from .hooks import (
    Batch,
    BlockInput,
    CalibrationDigest,
    DenseTwin,
    blocks_are_chained,
    call_model,
    capture_block_inputs,
    in_features,
    run_block,
    run_calibration_pass,
    token_mask_of,
    with_hidden_states,
)
from .models import generates_text
from .report import LayerReport, PruneReport

METHODS = ("sparsegpt", "wanda", "magnitude")
RECONSTRUCT = ("auto", "dense", "layer")
DEFAULT_TARGETS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)

SparsitySpec = float | Mapping[str, float] | Callable[[str, nn.Module], float | None]
#: A layer to prune: its block (None when the whole model is one block), name, module, sparsity.
PlanItem = tuple[int | None, str, nn.Module, float]


def prune_model(
    model: nn.Module,
    calibration_batches: Iterable[Batch] | None = None,
    *,
    method: str = "sparsegpt",
    sparsity: SparsitySpec = 0.5,
    pattern: str = "unstructured",
    targets: Sequence[type[nn.Module]] = DEFAULT_TARGETS,
    ignore: Sequence[str] = (),
    sequential: bool | str = True,
    blocks: str | Sequence[nn.Module] | None = None,
    blocksize: int = 128,
    damp: float = 0.01,
    reconstruct: str = "auto",
    refit: bool | None = None,
    progress: bool = True,
    seed: int | None = None,
    executor: object = None,
) -> PruneReport:
    """Prune `model` in place and report what was done.

    Args:
        model: any ``torch.nn.Module``; its dtype, device and training mode are kept.
        calibration_batches: what the model is called with, one item per forward pass: a
            mapping of keyword arguments (e.g. a tokenizer's output, whose 2-D
            ``attention_mask`` keeps padding out of the statistics), a tuple of positional
            arguments, or a tensor. Optional for ``method="magnitude"``, which then only
            uses it to measure each layer's output error.
        method: ``"sparsegpt"`` (OBS updates from the inverse Hessian of the layer's
            inputs), ``"wanda"`` (prunes the lowest ``|W_ij| * ||X_j||`` in each output row)
            or ``"magnitude"`` (the lowest ``|W_ij|`` of the layer); with an N:M pattern the
            scores are compared within each group of M.
        sparsity: fraction of weights to prune: one float for every layer, a mapping from
            layer names or glob patterns to floats (first match wins; unmatched layers stay
            dense), or a callable ``(name, module) -> float | None`` (None leaves it dense).
        pattern: ``"unstructured"`` or ``"N:M"`` (N weights kept in every M along the input).
        targets: the module types to prune; convolutions are pruned as (out, in*kh*kw) matrices.
        ignore: names or glob patterns (``fnmatch``) of layers to leave dense.
        sequential: True (the default) calibrates each block on the outputs of the already
            pruned blocks, and each group of layers in it on its inputs after the groups called
            before it were pruned; ``"block"`` calibrates all layers of a block together, on the
            outputs of the pruned blocks before it; False calibrates every layer on the dense
            model in one pass. A model without repeated blocks is calibrated in one pass.
        blocks: the model's repeated blocks: a dotted path to a ``ModuleList`` (e.g.
            ``"encoder.layer"``), a sequence of modules, or None to pick the ModuleList that
            holds the most parameters (the whole model is one block when there is none).
            Only layers inside the blocks are pruned.
        blocksize, damp: SparseGPT's column block size and relative damping.
        reconstruct: SparseGPT only: what each pruned layer's output is fitted to. ``"auto"``
            (the default): ``"layer"`` for a causal language model, ``"dense"`` otherwise (see
            the module docstring for why). ``"dense"``: the dense model's output of that layer,
            so each layer also corrects the error of the pruned layers before it (sequential
            mode keeps a dense copy of the current block and runs it on the dense model's inputs
            alongside); ``"layer"``: the layer's own dense weights on the inputs it now sees, as
            in the SparseGPT paper.
            ``"dense"`` needs ``sequential=True``; with ``"block"`` or False the layer's own
            output is fitted (every layer of a block, calibrated before any of them is pruned,
            would otherwise correct the same error of the blocks before it once more: on
            MiniLM at 50 % that gave 0.916 instead of 0.943). See the module docstring.
        refit: SparseGPT only (None, the default: True except for causal language models,
            like `reconstruct`): after SparseGPT chose the mask, solve every row's kept weights
            for the same least-squares objective (conjugate gradients, each step one float64
            GEMM of the layer's size; a few to a hundred steps, so on wide layers this can take
            longer than SparseGPT itself). The mask, hence the sparsity and N:M validity, does
            not change.
        progress: show a progress bar (when tqdm is installed).
        seed: recorded in the manifest (the pruning itself is deterministic).
        executor: where the solves of the layers calibrated together run, once their
            statistics are gathered: None or ``"serial"`` here, ``"ray"`` (a local Ray, or
            the cluster ``RAY_ADDRESS`` names), ``"ray://..."`` / ``"ray:ADDRESS"``, or any
            :class:`fastprune.executors.Executor`. The weights are the same whichever runs them.

    Failure leaves the model as it was: when anything fails part-way (a NaN in a layer's
    input, a layer SparseGPT cannot solve, an interrupt), every layer already pruned gets its
    original weight back before the exception propagates, and the message names the layer and
    its block. For that, each pruned layer's original weight is kept in CPU memory until the
    call returns (as much memory as the pruned weights).

    Sequential modes calibrate block k+1 on what the model's own forward pass hands it: on
    block k's output replayed directly when one dense forward pass shows that is what the
    model passes on, otherwise (a model that scales or normalises between blocks) on the
    inputs a forward pass of the whole model, already pruned up to block k, delivers to it.

    Raises:
        TypeError: `model` is not a ``torch.nn.Module``.
        ValueError: an unknown method, a bad sparsity, a pattern that does not divide a layer's
            input width, no calibration data, a layer the calibration never reached, a layer
            whose calibration input holds NaN or Inf, or ``reconstruct="dense"`` for a model
            that transforms the hidden states between its blocks.
    """
    start = time.perf_counter()
    given: object = model
    if not isinstance(given, nn.Module):
        msg = (
            f"model: expected a torch.nn.Module, got {type(given).__name__} (load the model "
            "first, e.g. with transformers' AutoModel.from_pretrained)"
        )
        raise TypeError(msg)
    if method not in METHODS:
        msg = f"method: expected one of {', '.join(METHODS)}, got {method!r}"
        raise ValueError(msg)
    group_size = _group_size(pattern)
    if not isinstance(sequential, bool) and sequential != "block":
        msg = f"sequential: expected True, False or 'block', got {sequential!r}"
        raise ValueError(msg)
    fp_blocksize = _positive_int(blocksize, "blocksize")
    fp_damp = _nonnegative(damp, "damp")
    if reconstruct not in RECONSTRUCT:
        msg = f"reconstruct: expected one of {', '.join(RECONSTRUCT)}, got {reconstruct!r}"
        raise ValueError(msg)
    follow_paper = generates_text(model)
    requested_reconstruct = reconstruct
    if reconstruct == "auto":
        reconstruct = "layer" if follow_paper else "dense"
    fp_refit = (not follow_paper) if refit is None else _flag(refit, "refit")
    check_ignore(ignore)

    block_list, block_names = resolve_blocks(model, blocks)
    # experts kept as 3-D tensors are run as one layer per expert while the model is pruned
    with unrolled_experts(model, block_list, ignore) as expert_modules:
        plan, skipped = plan_layers(
            model, block_list, block_names, targets, ignore, sparsity, pattern, group_size
        )

        options: dict[str, Any] = {
            "sparsity": _describe_sparsity(sparsity),
            "pattern": pattern,
            "targets": [t.__name__ for t in targets],
            "ignore": list(ignore),
            "sequential": sequential,
            "blocks": block_names,
            "blocksize": fp_blocksize,
            "damp": fp_damp,
            "reconstruct": reconstruct,
            "refit": fp_refit,
            "experts_unrolled": expert_modules,
        }
        runner = executors.executor(executor)
        options["executor"] = getattr(runner, "name", type(runner).__name__)
        pruner = Pruner(method, pattern, fp_blocksize, fp_damp, refit=fp_refit, executor=runner)
        requested_dense = reconstruct == "dense" and requested_reconstruct == "dense"
        # only true-sequential mode calibrates a layer after every layer before it was pruned; in
        # whole-block mode all layers of a block would correct the same earlier error at once
        dense_target = method == "sparsegpt" and reconstruct == "dense" and sequential is True
        digest = CalibrationDigest()
        work = _Work()
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                if calibration_batches is None:
                    if method != "magnitude":
                        msg = f"calibration_batches: method {method!r} needs calibration data"
                        raise ValueError(msg)
                    reports = [pruner.prune_alone(*item) for item in plan]
                elif sequential and block_list[0] is not model:
                    reports = _prune_sequential(
                        model,
                        block_list,
                        calibration_batches,
                        plan,
                        pruner,
                        digest,
                        work,
                        progress,
                        by_group=sequential is True,
                        dense_target=dense_target,
                        dense_requested=requested_dense,
                        options=options,
                    )
                else:
                    reports = _prune_in_one_pass(
                        model, calibration_batches, plan, pruner, digest, work
                    )
        except BaseException:
            pruner.restore()  # the model is left as it was, whatever failed (an interrupt too)
            raise
        finally:
            model.train(was_training)

        manifest = run_manifest(method, options, digest, pruner, seed)
        seconds = time.perf_counter() - start
        work_done = work.summary(seconds, reports, pruner)
        return PruneReport(reports, manifest, seconds, skipped, work_done)


def check_ignore(ignore: Sequence[str]) -> None:
    """TypeError unless `ignore` is a list of names or glob patterns."""
    not_text = [name for name in ignore if not isinstance(name, str)]
    if not_text or isinstance(ignore, str):
        msg = f"ignore: expected a list of names or glob patterns, got {ignore!r}"
        raise TypeError(msg)


def plan_layers(
    model: nn.Module,
    block_list: Sequence[nn.Module],
    block_names: str,
    targets: Sequence[type[nn.Module]],
    ignore: Sequence[str],
    sparsity: SparsitySpec,
    pattern: str,
    group_size: int,
) -> tuple[list[PlanItem], list[str]]:
    """The layers to prune as (block, name, module, sparsity), and those `sparsity` leaves dense.

    ValueError when nothing would be pruned, or when an N:M pattern's M does not divide a
    layer's input width."""
    candidates = select_layers(model, block_list, targets, ignore)
    plan: list[PlanItem] = []
    skipped: list[str] = []
    for block, name, module in candidates:
        layer_sparsity = _sparsity_for(sparsity, name, module)
        if layer_sparsity is None:
            skipped.append(name)
        else:
            plan.append((block, name, module, layer_sparsity))
    if not plan:
        kinds = ", ".join(t.__name__ for t in targets)
        msg = f"model: nothing to prune: {len(candidates)} layers ({kinds}) in {block_names}"
        if skipped:
            msg += f", and `sparsity` leaves every one of them dense ({skipped[0]}, ...)"
        msg += "; check `targets`, `ignore`, `blocks` and `sparsity`"
        raise ValueError(msg)
    for _, name, module, _ in plan:
        width = in_features(module)
        if group_size and width % group_size:
            msg = (
                f"pattern: {pattern} needs every layer's input width to be a multiple of "
                f"{group_size}, but {name} has {width}; add it to `ignore`"
            )
            raise ValueError(msg)
    return plan, skipped


def run_manifest(
    method: str,
    options: dict[str, Any],
    digest: CalibrationDigest,
    pruner: Pruner,
    seed: int | None,
) -> dict[str, Any]:
    """What reproduces a run: versions, the method and its options, the calibration data's size
    and SHA-256, the seed."""
    return {
        "fastprune_version": fp.__version__,
        "torch_version": str(torch.__version__),
        "python_version": platform.python_version(),
        "method": method,
        "options": options,
        "calibration": {
            "batches": digest.batches,
            "samples": digest.samples,
            "tokens": pruner.tokens,
            "sha256": digest.hexdigest() if digest.batches else None,
        },
        "seed": seed,
    }


def prune_block(
    pruner: Pruner,
    layers: list[PlanItem],
    passes: Callable[[], Iterator[Pass]],
    *,
    by_group: bool,
    cross: bool = False,
) -> list[LayerReport]:
    """Prune the layers of one block on its forward passes `passes`: group by group, each
    calibrated after the groups called before it were pruned (`by_group`), or all together."""
    if not by_group:
        return pruner.prune_calibrated(layers, passes) if layers else []
    rows: list[LayerReport] = []
    while len(rows) < len(layers):  # one group per round, in the order they are called
        done = {row.name for row in rows}
        rest = [item for item in layers if item[1] not in done]
        rows += pruner.prune_calibrated(rest, passes, first_group_only=True, cross=cross)
    order = {item[1]: i for i, item in enumerate(layers)}
    return sorted(rows, key=lambda row: order[row.name])


def resolve_blocks(
    model: nn.Module, blocks: str | Sequence[nn.Module] | None
) -> tuple[list[nn.Module], str]:
    """The model's repeated blocks and a name for them."""
    if isinstance(blocks, str):
        try:
            found = model.get_submodule(blocks)
        except AttributeError as err:
            msg = f"blocks: the model has no submodule {blocks!r}"
            raise ValueError(msg) from err
        if not isinstance(found, (nn.ModuleList, nn.Sequential)) or len(found) == 0:
            msg = f"blocks: {blocks!r} is a {type(found).__name__}, expected a non-empty ModuleList"
            raise ValueError(msg)
        return list(found), blocks
    if blocks is not None:
        block_list = list(blocks)
        if not block_list or not all(isinstance(b, nn.Module) for b in block_list):
            msg = "blocks: expected a dotted path or a non-empty sequence of modules"
            raise ValueError(msg)
        return block_list, f"{len(block_list)} given modules"
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) >= 2:
            kinds = {type(child) for child in module}
            size = sum(p.numel() for p in module.parameters())
            if len(kinds) == 1 and size > 0 and (best is None or size > best[0]):
                best = (size, name, module)
    if best is None:
        return [model], "(whole model)"
    return list(best[2]), best[1]


def select_layers(
    model: nn.Module,
    blocks: Sequence[nn.Module],
    targets: Sequence[type[nn.Module]],
    ignore: Sequence[str],
) -> list[tuple[int | None, str, nn.Module]]:
    """The prunable layers inside `blocks`, in model order, as (block index, name, module).

    The default `targets` also take transformers' ``Conv1D`` (the projections of GPT-2 style
    models, weights stored transposed) when transformers is loaded, and the experts of
    mixture-of-experts blocks while they are unrolled (`fastprune.torch.experts`).
    """
    target_types = tuple(targets)
    if targets is DEFAULT_TARGETS:
        target_types += (*_loaded_conv1d(), ExpertLinear)
    if not target_types or not all(
        isinstance(t, type) and issubclass(t, nn.Module) for t in target_types
    ):
        msg = f"targets: expected torch.nn.Module subclasses, got {targets!r}"
        raise TypeError(msg)
    block_of: dict[int, int | None] = {}
    whole = len(blocks) == 1 and blocks[0] is model
    for index, block in enumerate(blocks):
        for module in block.modules():
            block_of.setdefault(id(module), None if whole else index)
    chosen = []
    for name, module in model.named_modules():
        if id(module) not in block_of or not isinstance(module, target_types):
            continue
        if not isinstance(getattr(module, "weight", None), torch.Tensor):
            continue
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in ignore):
            continue
        chosen.append((block_of[id(module)], name, module))
    return chosen


def _loaded_conv1d() -> tuple[type[nn.Module], ...]:
    utils = sys.modules.get("transformers.pytorch_utils")
    conv1d = getattr(utils, "Conv1D", None)
    return (conv1d,) if isinstance(conv1d, type) and issubclass(conv1d, nn.Module) else ()


@dataclass
class _Work:
    """Where a run's time goes besides the solves: the forward passes through the model and its
    blocks (calibration hooks included), and how many passes over the calibration set each
    block made."""

    forward_seconds: float = 0.0
    one_pass_seconds: float | None = 0.0  # the passes that carry the data once through the model
    block_passes: list[int] = field(default_factory=list)
    passes_now: int = 0  # passes over the calibration data of the block being pruned

    @contextlib.contextmanager
    def forward(self, *, one_pass: bool = False) -> Iterator[None]:
        """Times what runs inside as forward passes."""
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.forward_seconds += elapsed
            if one_pass and self.one_pass_seconds is not None:
                self.one_pass_seconds += elapsed

    def end_block(self) -> None:
        self.block_passes.append(self.passes_now)
        self.passes_now = 0

    def summary(self, seconds: float, reports: list[LayerReport], pruner: Pruner) -> dict[str, Any]:
        """The report's ``work`` section (see `PruneReport`)."""
        statistics = min(pruner.statistics_seconds, self.forward_seconds)
        forward = self.forward_seconds - statistics
        solves = sum(row.seconds for row in reports)
        tokens = pruner.tokens
        # without passes of their own (one calibrated pass), the model's forward is the one pass
        one_pass = self.one_pass_seconds or forward if self.one_pass_seconds is not None else None
        return {
            "seconds": seconds,
            "model_forward_seconds": forward,
            "statistics_seconds": statistics,
            "solve_seconds": solves,
            "other_seconds": max(seconds - forward - statistics - solves, 0.0),
            "calibration_tokens": tokens,
            "ms_per_token_one_pass": 1e3 * one_pass / tokens if tokens and one_pass else None,
            "block_passes": list(self.block_passes),
            "passes_stopped_early": pruner.passes_stopped,
        }


def _prune_sequential(
    model: nn.Module,
    blocks: list[nn.Module],
    batches: Iterable[Batch],
    plan: list[PlanItem],
    pruner: Pruner,
    digest: CalibrationDigest,
    work: _Work,
    progress: bool,
    by_group: bool,
    dense_target: bool,
    dense_requested: bool,
    options: dict[str, Any],
) -> list[LayerReport]:
    batch_list = list(batches)  # run again when the model works between its blocks
    with work.forward(one_pass=True):
        inputs = capture_block_inputs(model, blocks[0], batch_list, digest)
    if not inputs:
        msg = "calibration_batches: no batches were given"
        raise ValueError(msg)
    # Block k+1 is calibrated on block k's output replayed where that is what the model hands
    # it; otherwise on what the model's own forward hands it, captured by a pre-hook.
    with work.forward():
        chained = len(blocks) == 1 or blocks_are_chained(model, blocks, batch_list[0])
    if dense_target and not chained:
        if dense_requested:
            msg = (
                "reconstruct: 'dense' replays a dense copy of each block on the previous "
                "block's output, but this model transforms the hidden states between its "
                "blocks; use reconstruct='layer'"
            )
            raise ValueError(msg)
        dense_target = False
        options["reconstruct"] = "layer"  # what "auto" comes to for such a model
    dense_inputs = list(inputs) if dense_target else None  # the dense model's, block by block
    reports: list[LayerReport] = []
    for index in _progress(range(len(blocks)), progress, "pruning blocks"):
        block = blocks[index]
        layers = [item for item in plan if item[0] == index]
        twin = None
        if dense_inputs is not None:
            twin = DenseTwin(block, {name: module for _, name, module, _ in layers})
        passes = _block_passes(block, inputs, twin, dense_inputs, work)
        reports += prune_block(pruner, layers, passes, by_group=by_group, cross=twin is not None)
        if index + 1 < len(blocks) and not chained:
            with work.forward():
                inputs = capture_block_inputs(model, blocks[index + 1], batch_list)
            work.one_pass_seconds = None  # each capture runs the model from its start
            work.passes_now += 1
        elif index + 1 < len(blocks):
            with work.forward(one_pass=True):
                inputs = [with_hidden_states(item, run_block(block, item)) for item in inputs]
            work.passes_now += 1
            if twin is not None and dense_inputs is not None:
                with work.forward():
                    dense_inputs = [with_hidden_states(x, twin.run(x)) for x in dense_inputs]
        work.end_block()
    return reports


def _block_passes(
    block: nn.Module,
    inputs: list[BlockInput],
    twin: DenseTwin | None,
    dense_inputs: list[BlockInput] | None,
    work: _Work,
) -> Callable[[], Iterator[Pass]]:
    """Forward passes of `block`, each announced by its token mask and, with a dense `twin`,
    the dense model's inputs to the block's layers for the same batch."""

    def passes() -> Iterator[Pass]:
        work.passes_now += 1
        for i, item in enumerate(inputs):
            dense = None
            if twin is not None and dense_inputs is not None:
                with work.forward():
                    dense = twin.layer_inputs(dense_inputs[i])
            yield item.token_mask, dense
            with work.forward():
                run_calibration_pass(block, item)

    return passes


def _prune_in_one_pass(
    model: nn.Module,
    batches: Iterable[Batch],
    plan: list[PlanItem],
    pruner: Pruner,
    digest: CalibrationDigest,
    work: _Work,
) -> list[LayerReport]:
    def passes() -> Iterator[Pass]:
        for batch in batches:
            digest.update(batch)
            yield token_mask_of(batch), None
            with work.forward():
                call_model(model, batch)

    reports = pruner.prune_calibrated(plan, passes)
    work.passes_now += 1
    work.end_block()
    if digest.batches == 0:
        msg = "calibration_batches: no batches were given"
        raise ValueError(msg)
    return reports


def _group_size(pattern: object) -> int:
    """M of an "N:M" pattern, 0 for unstructured; ValueError for anything else."""
    if not isinstance(pattern, str):
        msg = f"pattern: expected 'unstructured' or 'N:M', got {pattern!r}"
        raise TypeError(msg)
    parsed = fp.masks.pattern(pattern)
    if isinstance(parsed, fp.masks.Unstructured):
        return 0
    if isinstance(parsed, fp.masks.NM):
        return int(parsed.m)
    msg = f"pattern: prune_model prunes 'unstructured' or 'N:M' patterns, got {pattern!r}"
    raise ValueError(msg)


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        msg = f"{name}: expected a positive integer, got {value!r}"
        raise ValueError(msg)
    return int(value)


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        msg = f"{name}: expected True or False, got {value!r}"
        raise TypeError(msg)
    return value


def _nonnegative(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        msg = f"{name}: expected a non-negative number, got {value!r}"
        raise ValueError(msg)
    if not float(value) >= 0.0:
        msg = f"{name}: expected a non-negative number, got {value!r}"
        raise ValueError(msg)
    return float(value)


def _sparsity_for(spec: SparsitySpec, name: str, module: nn.Module) -> float | None:
    if isinstance(spec, Mapping):
        value = next((v for key, v in spec.items() if fnmatch.fnmatchcase(name, str(key))), None)
    elif callable(spec):
        value = spec(name, module)
    else:
        value = spec
    if value is None:
        return None
    return check_sparsity(value, "sparsity", where=name)


def _describe_sparsity(spec: SparsitySpec) -> Any:
    if isinstance(spec, Mapping):
        return {str(k): float(v) for k, v in spec.items()}
    if callable(spec):
        return f"callable {getattr(spec, '__qualname__', repr(spec))}"
    return float(spec)


def _progress(items: range, enabled: bool, description: str) -> Iterable[int]:
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=description, unit="block")  # type: ignore[no-any-return]

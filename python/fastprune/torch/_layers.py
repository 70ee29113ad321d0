"""The per-layer step of `prune_model` (fastprune.torch.prune): calibrate a set of layers on
the forward passes it is given, then prune each one with SparseGPT, Wanda or magnitude pruning
and write its weight, keeping what is needed to put every weight back on failure.

The numerics (SparseGPT, the damped Hessian, the dense-output start, the refit) are the NumPy API
of fastprune (`fastprune.solver`); this module only adapts modules and tensors to it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

import fastprune as fp
from fastprune.executors import Executor, SerialExecutor
from fastprune.result import PruneResult
from fastprune.solver import damped_hessian, dense_target_start, refit_kept

from .experts import ExpertLinear
from .hooks import (
    Calibrator,
    Group,
    LayerInputError,
    TokenMask,
    weight_matrix,
    weight_of,
    write_weight,
)
from .report import LayerReport

#: What the forward passes of a calibration yield per batch: its token mask and, when the dense
#: model's outputs are reconstructed, the dense model's inputs to the layers.
Pass = tuple[TokenMask, dict[str, list[torch.Tensor]] | None]


class Pruner:
    """Prunes layers with one method and one set of options, and keeps the reports' rows."""

    def __init__(
        self,
        method: str,
        pattern: str,
        blocksize: int,
        damp: float,
        *,
        refit: bool,
        executor: Executor | None = None,
    ) -> None:
        self.method = method
        self.pattern = pattern
        self.blocksize = blocksize
        self.damp = damp
        self.refit = refit
        self.executor = executor or SerialExecutor()
        self.tokens = 0
        self.statistics_seconds = 0.0  # inside the calibration hooks
        self.passes_stopped = 0  # forward passes ended once their layers' inputs were known
        self.groups_seen = 0  # groups pruned so far: the next group's index in the reports
        # every layer written so far and a CPU copy of its weight before: restored on failure
        self._originals: list[tuple[torch.Tensor, torch.Tensor]] = []

    def restore(self) -> None:
        """Put back the original weight of every layer pruned so far (last first)."""
        with torch.no_grad():
            for param, original in reversed(self._originals):
                param.data.copy_(original)
        self._originals.clear()

    def keep(self) -> None:
        """Make the layers pruned so far final: drop the copies of their original weights that
        `restore` would put back (a streaming run frees each block once it is written)."""
        self._originals.clear()

    def prune_calibrated(
        self,
        layers: list[tuple[int | None, str, nn.Module, float]],
        passes: Callable[[], Iterator[Pass]],
        *,
        first_group_only: bool = False,
        cross: bool = False,
    ) -> list[LayerReport]:
        """Calibrate `layers` on the forward passes `passes` runs, then prune them.

        `passes()` yields each batch's token mask (and, with `cross`, the dense model's inputs to
        the layers) just before it runs that batch's forward pass. With `first_group_only`, only
        the layers reading the input called first are calibrated and pruned (at least one layer,
        or ValueError), and every pass after the first may end with `StopForward` once those
        layers' inputs are known (`passes` must catch it). With `cross`, SparseGPT reconstructs
        the dense model's outputs.
        """
        modules = {name: module for _, name, module, _ in layers}
        blocks = {name: block for block, name, _, _ in layers}
        calibrator = Calibrator(
            modules, first_group_only=first_group_only, cross=cross, stop_early=first_group_only
        )
        try:
            with calibrator:
                for token_mask, dense_inputs in passes():
                    calibrator.new_batch(token_mask, dense_inputs)
        except LayerInputError as err:
            place = where(err.layer, blocks.get(err.layer))
            msg = f"{place}: its calibration input {err.reason}"
            raise ValueError(msg) from err
        finally:
            self.statistics_seconds += calibrator.seconds
            self.passes_stopped += calibrator.stopped
        rows: list[LayerReport] = []
        order = {name: i for i, (_, name, _, _) in enumerate(layers)}
        for group in calibrator.groups:
            count = int(group.calibration.count)
            if count == 0:
                msg = f"{group.members[0]}: every calibration token was padding"
                raise ValueError(msg)
            self.tokens = max(self.tokens, count)
            rows += self._prune_group(group, layers, order)
        missing = [name for name in modules if name not in calibrator.group_of]
        if missing and (not first_group_only or not calibrator.groups):
            unrouted = [name for name in missing if isinstance(modules[name], ExpertLinear)]
            others = [name for name in missing if name not in unrouted]
            if others:
                msg = (
                    f"{others[0]}: the calibration forward passes never reached this layer; "
                    "add it to `ignore`"
                )
                raise ValueError(msg)
            warnings.warn(
                f"{len(unrouted)} expert projections saw no calibration token (the router sent "
                f"none to them: {', '.join(unrouted[:4])}{', ...' if len(unrouted) > 4 else ''})"
                "; they are pruned by weight magnitude instead. More calibration text routes "
                "tokens to more experts.",
                UserWarning,
                stacklevel=4,
            )
            rows += [self.prune_alone(*layers[order[name]]) for name in unrouted]
        return sorted(rows, key=lambda row: order[row.name])

    def _prune_group(
        self,
        group: Group,
        layers: list[tuple[int | None, str, nn.Module, float]],
        order: dict[str, int],
    ) -> list[LayerReport]:
        t0 = time.perf_counter()
        source: Any = group.calibration
        hessian = group.calibration.hessian
        damped = None
        cross = None
        if self.method == "sparsegpt":
            source = fp.sparsegpt_factor(hessian, damp=self.damp)
            damped, shift = damped_hessian(hessian, source)
            if group.cross is not None:
                cross = group.cross.value
                cross[np.diag_indices_from(cross)] += shift
        shared = _SharedInput(
            index=self.groups_seen,
            source=source,
            hessian=hessian,
            tokens=int(group.calibration.count),
            seconds=(time.perf_counter() - t0) / len(group.members),
            damped=damped,
            cross=cross,
        )
        self.groups_seen += 1
        members = [layers[order[name]] for name in group.members]
        weights = [weight_matrix(module) for _, _, module, _ in members]
        # the solves only need the weight and what the group shares: the executor may run them
        # elsewhere; writing the weights and the reports happen here, in order
        solve = _Solve(self.method, self.pattern, self.blocksize, self.damp, self.refit, shared)
        items = [
            (w, layer_sparsity, name, block)
            for w, (block, name, _, layer_sparsity) in zip(weights, members, strict=True)
        ]
        results = self.executor.map(_solve_layer, items, shared=solve)
        return [
            self._record(block, name, module, layer_sparsity, shared, w, result, seconds)
            for (block, name, module, layer_sparsity), w, (result, seconds) in zip(
                members, weights, results, strict=True
            )
        ]

    def prune_alone(
        self, block: int | None, name: str, module: nn.Module, layer_sparsity: float
    ) -> LayerReport:
        """Prunes a layer without calibration data, by weight magnitude: magnitude pruning
        without data, or an expert the router never picked whatever the method."""
        weight = weight_matrix(module)
        solve = _Solve("magnitude", self.pattern, self.blocksize, self.damp, self.refit, None)
        result, seconds = _solve_layer(solve, weight, layer_sparsity, name, block)
        return self._record(block, name, module, layer_sparsity, None, weight, result, seconds)

    def _record(
        self,
        block: int | None,
        name: str,
        module: nn.Module,
        layer_sparsity: float,
        shared: _SharedInput | None,
        weight: np.ndarray[Any, Any],
        result: PruneResult,
        seconds: float,
    ) -> LayerReport:
        """Writes a solved weight into its layer (keeping the original) and reports it."""
        with _in_layer(name, block):
            error = None
            if shared is not None:  # before the write: `weight` may be a view of the parameter
                error = output_error(weight, result.weight, shared.hessian)
                seconds += shared.seconds
            param = weight_of(module)
            self._originals.append((param, param.detach().to("cpu", copy=True)))
            write_weight(module, result.weight)
            return LayerReport(
                name=name,
                block=block,
                shape=(int(weight.shape[0]), int(weight.shape[1])),
                pattern=self.pattern,
                target_sparsity=layer_sparsity,
                sparsity=result.sparsity,
                loss=float(result.loss),
                error=error,
                damp_used=None if result.damp_used is None else float(result.damp_used),
                seconds=seconds,
                group=None if shared is None else shared.index,
                tokens=0 if shared is None else shared.tokens,
            )


@dataclass(frozen=True)
class _Solve:
    """What every solve of a group needs besides its weight: the method, its options and what
    the group shares (None for magnitude pruning without calibration). Picklable, so that an
    executor can send it to other processes."""

    method: str
    pattern: str
    blocksize: int
    damp: float
    refit: bool
    shared: _SharedInput | None


def _solve_layer(
    solve: _Solve,
    weight: np.ndarray[Any, Any],
    layer_sparsity: float,
    name: str,
    block: int | None,
) -> tuple[PruneResult, float]:
    """The pruned weight of one layer and the seconds it took: NumPy in, NumPy out, so that an
    executor may run it in another process. Errors name the layer."""
    shared = solve.shared
    with _in_layer(name, block):
        t0 = time.perf_counter()
        if solve.method == "sparsegpt":
            assert shared is not None and shared.damped is not None
            start_from: np.ndarray[Any, Any] = weight
            gram_target = None  # W·C, the right-hand side of the least-squares problem
            if shared.cross is not None:
                gram_target = weight.astype(np.float64) @ shared.cross
                start_from = dense_target_start(gram_target, shared.source, weight.dtype)
            result = fp.sparsegpt(
                start_from,
                shared.source,
                sparsity=layer_sparsity,
                pattern=solve.pattern,
                blocksize=solve.blocksize,
                damp=solve.damp,
            )
            if solve.refit:
                if gram_target is None:
                    gram_target = weight.astype(np.float64) @ shared.damped
                refitted = refit_kept(
                    result.mask, shared.damped, gram_target, shared.source.dead, result.weight
                )
                result = dataclasses.replace(result, weight=refitted.astype(result.weight.dtype))
        elif solve.method == "wanda":
            assert shared is not None
            result = fp.wanda(weight, shared.source, sparsity=layer_sparsity, pattern=solve.pattern)
        else:
            # the whole layer is ranked together; N:M patterns select within each group
            whole_layer = solve.pattern == "unstructured"
            result = fp.magnitude_prune(
                weight,
                sparsity=layer_sparsity,
                pattern=solve.pattern,
                scope="layer" if whole_layer else "row",
            )
        return result, time.perf_counter() - t0


@dataclass(frozen=True)
class _SharedInput:
    """What the layers reading one input share: statistics, factor, and their cost."""

    index: int
    source: Any  # the Calibration, or SparseGPT's factor of its Hessian
    hessian: np.ndarray[Any, Any]
    tokens: int
    seconds: float  # each member's share of the time spent on the shared work
    damped: np.ndarray[Any, Any] | None  # SparseGPT's damped Hessian H + λI, float64
    cross: np.ndarray[Any, Any] | None  # C = 2/N X₀Xᵀ + λI when reconstructing the dense output


def output_error(
    dense: np.ndarray[Any, Any], pruned: np.ndarray[Any, Any], hessian: np.ndarray[Any, Any]
) -> float:
    """Mean over the calibration tokens of ``‖(W − Ŵ) x‖²``, from ``H = 2/N Σ x xᵀ``."""
    delta = dense.astype(np.float32) - pruned.astype(np.float32)
    return float(np.einsum("ij,ij->", delta @ hessian.astype(np.float32), delta)) / 2.0


@contextlib.contextmanager
def _in_layer(name: str, block: int | None) -> Iterator[None]:
    """Prefixes a ValueError or TypeError raised inside with the layer it concerns."""
    try:
        yield
    except (ValueError, TypeError) as err:
        raise type(err)(f"{where(name, block)}: {err}") from err


def where(name: str, block: int | None) -> str:
    """A layer in the user's terms: its name in the model and, inside blocks, its block."""
    return f"layer {name}" if block is None else f"layer {name} (block {block})"

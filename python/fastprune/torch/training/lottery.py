"""Iterative magnitude pruning with rewinding (:class:`LotteryTicket`): train, prune, rewind,
repeat."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from fastprune.schedules import round_sparsity

from .config import LotteryConfig, RewindStrategy
from .masked import MaskedModel
from .ticket import RoundRecord, WinningTicket, load_state, save_state


class LotteryTicket:
    """Iterative magnitude pruning with rewinding (the lottery-ticket procedure).

    ``LotteryTicket(model, config)`` or ``LotteryTicket(model, rounds=..., rate=..., ...)``
    (keywords override fields of `config`), then ``run(train_fn, eval_fn)``:

    1. round 0: ``train_fn(model)`` trains the dense model;
    2. each round r = 1..rounds: every masked layer is pruned by magnitude to
       ``1 − (1 − rate_l)^r`` (already pruned weights stay pruned), the model is rewound
       (:class:`RewindStrategy`) with its masks applied, and ``train_fn(model)`` trains it
       again while the masks hold (:class:`MaskedModel`: any optimizer ``train_fn`` creates);
    3. after every training ``eval_fn(model)`` (optional) gives the round's metric.

    ``run`` returns the last round's :class:`WinningTicket`; :attr:`tickets` holds the ticket
    of every round (round 0: no mask). The model ends with the last round's trained weights,
    pruned, and no hooks.
    """

    def __init__(
        self, model: nn.Module, config: LotteryConfig | None = None, **overrides: Any
    ) -> None:
        module: object = model
        if not isinstance(module, nn.Module):
            msg = f"model: expected a torch.nn.Module, got {type(module).__name__}"
            raise TypeError(msg)
        base = config if config is not None else LotteryConfig()
        given: object = base
        if not isinstance(given, LotteryConfig):
            msg = f"config: expected a LotteryConfig, got {type(given).__name__}"
            raise TypeError(msg)
        self.model = model
        self.config = dataclasses.replace(base, **overrides) if overrides else base
        self.tickets: list[WinningTicket] = []

    def run(
        self,
        train_fn: Callable[[nn.Module], object],
        eval_fn: Callable[[nn.Module], float] | None = None,
        *,
        progress: bool = True,
    ) -> WinningTicket:
        given: object = train_fn
        if not callable(given):
            msg = f"train_fn: expected a callable taking the model, got {train_fn!r}"
            raise TypeError(msg)
        evaluate: object = eval_fn
        if evaluate is not None and not callable(evaluate):
            msg = f"eval_fn: expected a callable taking the model, got {eval_fn!r}"
            raise TypeError(msg)
        cfg = self.config
        rewind = RewindStrategy.parse(cfg.rewind)
        masked = MaskedModel(self.model, cfg.targets, cfg.ignore)
        names = masked.names
        rates = {name: cfg.rate_of(i, len(names)) for i, name in enumerate(names)}
        together = [n for n in names if rates[n] == cfg.rate] if cfg.scope == "global" else []
        rewind_point = save_state(self.model)  # initialisation; iteration k once trained to it
        self.tickets = []
        records: list[RoundRecord] = []
        reporter = _RoundReporter(cfg.rounds + 1, progress)
        try:
            for r in range(cfg.rounds + 1):
                t0 = time.perf_counter()
                if r > 0:
                    if together:
                        masked.prune(round_sparsity(cfg.rate, r), scope="global", layers=together)
                    alone = [n for n in names if n not in together]
                    masked.prune(
                        {n: round_sparsity(rates[n], r) for n in alone},
                        pattern=cfg.pattern,
                        scope="layer",
                        layers=alone,
                    )
                    if rewind.kind != "none":
                        load_state(self.model, rewind_point)
                        masked.apply_masks()
                # the weights this round's training starts from (pruned ones zeroed by apply)
                ticket_weights = rewind_point if rewind.kind != "none" else save_state(self.model)
                if r == 0 and rewind.kind == "iteration" and rewind.iteration > 0:
                    rewind_point = _train_and_capture(self.model, train_fn, rewind.iteration)
                else:
                    train_fn(self.model)
                metric = None if eval_fn is None else float(eval_fn(self.model))
                record = RoundRecord(
                    round=r,
                    sparsity=masked.sparsity,
                    layers=masked.layer_sparsity(),
                    metric=metric,
                    seconds=time.perf_counter() - t0,
                )
                records.append(record)
                self.tickets.append(
                    WinningTicket(masked.masks, ticket_weights, list(records), cfg.to_dict())
                )
                reporter.update(record)
        finally:
            reporter.close()
            masked.remove()
        return self.tickets[-1]


def _train_and_capture(
    model: nn.Module, train_fn: Callable[[nn.Module], object], k: int
) -> dict[str, np.ndarray[Any, Any]]:
    """Run `train_fn` and return the model's state after the k-th optimizer step on its
    parameters (late rewinding); ValueError when training took fewer steps."""
    params = {id(p) for p in model.parameters()}
    steps = 0
    captured: dict[str, np.ndarray[Any, Any]] = {}

    def hook(optimizer: Any, _args: Any, _kwargs: Any) -> None:
        nonlocal steps, captured
        if any(id(p) in params for g in optimizer.param_groups for p in g["params"]):
            steps += 1
            if steps == k:
                captured = save_state(model)

    handle = register_optimizer_step_post_hook(hook)
    try:
        train_fn(model)
    finally:
        handle.remove()
    if steps < k:
        msg = (
            f"rewind: late rewinding to iteration {k}, but the first training took only "
            f"{steps} optimizer steps"
        )
        raise ValueError(msg)
    return captured


class _RoundReporter:
    """A tqdm bar over the rounds (one line per round on stderr without tqdm)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, desc="lottery rounds", unit="round")

    def update(self, record: RoundRecord) -> None:
        if not self.enabled:
            return
        metric = "-" if record.metric is None else f"{record.metric:.4f}"
        if self.bar is not None:
            self.bar.set_postfix(sparsity=f"{record.sparsity:.3f}", metric=metric)
            self.bar.update(1)
        else:
            print(
                f"round {record.round}: sparsity {record.sparsity:.4f}, metric {metric}, "
                f"{record.seconds:.2f} s",
                file=sys.stderr,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

"""Lottery tickets on real data: an MLP on scikit-learn's bundled handwritten digits.

``python -m bench.lottery`` runs the experiment of Frankle & Carbin (2019) at small scale and
prints a Markdown table (the one in README.md): LeNet-300-100's shape (64-300-100-10) trained
with Adam on the 8×8 digits of ``sklearn.datasets.load_digits`` (1797 images, bundled with
scikit-learn, no download), a fixed stratified split of 1347 training and 450 test images.
Iterative magnitude pruning, per layer, 20 % of the remaining weights per round (10 % for the
output layer, as in the paper), rewinding to initialisation, 15 rounds (96 % sparse). At every
round the test accuracy after training of:

- (a) the winning ticket: the round's masks with the original initial weights;
- (b) the same masks with freshly drawn initial weights ("reinit");
- (c) random masks with the same per-layer sparsity and the original initial weights.

Mean (and min..max) over seeds 0, 1, 2 (``--seeds``). Every training sees the same batches
in the same order. ``--plot FILE`` writes a PNG of the three curves (matplotlib).

``python -m bench lottery`` instead times one training epoch through :class:`MaskedModel`
(masks enforced after every optimizer step) against the same epoch of the dense model.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ._harness import Row, Table, torch_or_none

HIDDEN = (300, 100)
EPOCHS = 30
BATCH = 64
LR = 1.2e-3


def digits() -> tuple[Any, Any, Any, Any]:
    """The fixed split as float32 / int64 torch tensors: x_train, y_train, x_test, y_test."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, data.target, test_size=450, random_state=0, stratify=data.target
    )
    return (
        torch.from_numpy(x_train),
        torch.from_numpy(y_train.astype(np.int64)),
        torch.from_numpy(x_test),
        torch.from_numpy(y_test.astype(np.int64)),
    )


def mlp(seed: int) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    sizes = (64, *HIDDEN, 10)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def trainer(
    data: tuple[Any, Any, Any, Any], seed: int, epochs: int = EPOCHS
) -> Callable[[Any], None]:
    """train_fn: Adam, minibatches of 64 in an order fixed by `seed` (the same every call)."""
    import torch
    from torch import nn

    x, y = data[0], data[1]

    def train(model: Any) -> None:
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), BATCH):
                batch = order[start : start + BATCH]
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()  # type: ignore[no-untyped-call]
                optimizer.step()

    return train


def evaluator(data: tuple[Any, Any, Any, Any]) -> Callable[[Any], float]:
    import torch

    x, y = data[2], data[3]

    def evaluate(model: Any) -> float:
        model.eval()
        with torch.no_grad():
            return float((model(x).argmax(dim=1) == y).float().mean())

    return evaluate


def random_masks(masks: dict[str, Any], seed: int) -> dict[str, Any]:
    """Masks with the same number kept in every layer, at random positions."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, mask in masks.items():
        keep = np.zeros(mask.size, dtype=bool)
        keep[rng.permutation(mask.size)[: int(mask.sum())]] = True
        out[name] = keep.reshape(mask.shape)
    return out


def one_seed(seed: int, rounds: int, rate: float, epochs: int) -> dict[str, list[float]]:
    """Sparsity and test accuracy of (a), (b), (c) at every round, for one seed."""
    from fastprune.torch import LotteryTicket, MaskedModel

    data = digits()
    train, evaluate = trainer(data, seed, epochs), evaluator(data)
    model = mlp(seed)
    lottery = LotteryTicket(model, rounds=rounds, rate=rate, rewind="init")
    lottery.run(train, evaluate, progress=False)
    result: dict[str, list[float]] = {"sparsity": [], "ticket": [], "reinit": [], "random": []}
    for ticket in lottery.tickets:
        record = ticket.rounds[-1]
        result["sparsity"].append(record.sparsity)
        assert record.metric is not None
        result["ticket"].append(record.metric)
        for kind, masks, init_seed in (
            ("reinit", ticket.masks, 1000 + seed),
            ("random", random_masks(ticket.masks, 2000 + seed + 17 * record.round), seed),
        ):
            start = mlp(init_seed)
            masked = MaskedModel(start, masks=masks)  # round 0: no masks, a dense training
            train(start)
            masked.remove()
            result[kind].append(evaluate(start))
    return result


def experiment(
    seeds: tuple[int, ...] = (0, 1, 2), rounds: int = 15, rate: float = 0.2, epochs: int = EPOCHS
) -> list[dict[str, list[float]]]:
    results = []
    for seed in seeds:
        t0 = time.perf_counter()
        results.append(one_seed(seed, rounds, rate, epochs))
        print(f"seed {seed}: {time.perf_counter() - t0:.1f} s", flush=True)
    return results


def markdown(results: list[dict[str, list[float]]]) -> str:
    def cell(kind: str, r: int) -> str:
        values = [100 * res[kind][r] for res in results]
        if len(values) == 1:
            return f"{values[0]:.1f}"
        return f"{statistics.mean(values):.1f} ({min(values):.1f}..{max(values):.1f})"

    lines = [
        "| round | sparsity | weights left | (a) winning ticket | (b) same masks, reinit "
        "| (c) random masks |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r, sparsity in enumerate(results[0]["sparsity"]):
        lines.append(
            f"| {r} | {100 * sparsity:.1f} % | {100 * (1 - sparsity):.1f} % | "
            f"{cell('ticket', r)} | {cell('reinit', r)} | {cell('random', r)} |"
        )
    return "\n".join(lines)


def plot(results: list[dict[str, list[float]]], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.0), layout="constrained")
    ax = fig.subplots()
    left = [100 * (1 - s) for s in results[0]["sparsity"]]
    for kind, label in (
        ("ticket", "(a) winning ticket"),
        ("reinit", "(b) same masks, reinit"),
        ("random", "(c) random masks"),
    ):
        mean = [statistics.mean(100 * res[kind][r] for res in results) for r in range(len(left))]
        ax.plot(left, mean, "o-", label=label, markersize=3)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel(f"test accuracy (%), mean of {len(results)} seeds")
    ax.set_title("MLP 64-300-100-10 on sklearn digits, rewinding to initialisation")
    ax.legend()
    fig.savefig(path, dpi=120)


def run(table: Table) -> None:
    """One training epoch under MaskedModel (95 % sparse) against the dense model's epoch."""
    torch = torch_or_none()
    if torch is None:
        print("lottery: torch is not installed; skipped")
        return
    try:
        data = digits()
    except ImportError:
        print("lottery: scikit-learn is not installed; skipped")
        return
    from fastprune.torch import MaskedModel

    train = trainer(data, seed=0, epochs=1)
    dense = mlp(0)
    sparse = mlp(0)
    masked = MaskedModel(sparse)
    masked.prune(0.95)

    def median_epoch(model: Any) -> float:
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            train(model)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    ours, baseline = median_epoch(sparse), median_epoch(dense)
    masked.remove()
    steps = -(-len(data[0]) // BATCH)
    table.add(
        Row(
            "training epoch under MaskedModel",
            f"MLP 64-300-100-10, {steps} Adam steps",
            torch.get_num_threads(),
            ours,
            "the same epoch, no masks",
            baseline,
            f"{1e3 * (ours - baseline) / steps:.3f} ms added per step",
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lottery", description=__doc__)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--rate", type=float, default=0.2)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--plot", type=Path, help="write a PNG of accuracy against sparsity")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # a 64-300-100-10 MLP: more threads only add synchronisation
    results = experiment(tuple(range(args.seeds)), args.rounds, args.rate, args.epochs)
    print(markdown(results))
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

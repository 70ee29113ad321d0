"""Pruning during training (fastprune.torch.training): masks under optimizers, lottery tickets
with rewinding, gradual pruning; and one real experiment on scikit-learn's digits."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import fastprune as fp  # noqa: E402
from fastprune.schedules import SparsitySchedule, round_sparsity  # noqa: E402
from fastprune.torch import (  # noqa: E402
    GradualPruner,
    LotteryConfig,
    LotteryTicket,
    MaskedModel,
    RewindStrategy,
    WinningTicket,
)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mlp(seed: int = 0, sizes: tuple[int, ...] = (16, 32, 24, 8)) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def toy_data(seed: int = 0) -> tuple[Any, Any]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(64, 16, generator=g), torch.randint(0, 8, (64,), generator=g)


def train_steps(model: nn.Module, optimizer: Any, steps: int, seed: int = 0) -> None:
    x, y = toy_data(seed)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def trainer(steps: int = 10) -> Callable[[nn.Module], None]:
    def train(model: nn.Module) -> None:
        train_steps(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), steps)

    return train


def weights(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


# --- MaskedModel ---------------------------------------------------------------------------


OPTIMIZERS = {
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2),
    "sgd-nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_masks_survive_100_steps(name: str) -> None:
    model = mlp()
    optimizer = OPTIMIZERS[name](model.parameters())
    train_steps(model, optimizer, 5)  # momentum and moments already built up, then masked
    masked = MaskedModel(model)
    masked.prune(0.6)
    masks = {n: torch.from_numpy(m) for n, m in masked.masks.items()}
    start = {n: masked.layer(n).weight.detach().clone() for n in masks}
    train_steps(model, optimizer, 100)
    for n, keep in masks.items():
        w = masked.layer(n).weight.detach()
        assert torch.count_nonzero(w[~keep]) == 0, n
        # the kept weights moved (all but those of units a ReLU has switched off for good)
        assert float((w[keep] != start[n][keep]).float().mean()) > 0.5, n
        assert masked.layer(n).weight.grad is not None
        assert torch.count_nonzero(masked.layer(n).weight.grad[~keep]) == 0
    masked.remove()


def test_fresh_optimizer_and_zero_gradients() -> None:
    model = mlp()
    masked = MaskedModel(model, masks={"0": np.arange(32 * 16).reshape(32, 16) % 3 == 0})
    keep = torch.from_numpy(masked.masks["0"])
    x, y = toy_data()
    nn.functional.cross_entropy(model(x), y).backward()
    grad = model[0].weight.grad
    assert torch.count_nonzero(grad[~keep]) == 0
    assert torch.count_nonzero(grad[keep]) > 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    optimizer.step()
    assert torch.count_nonzero(model[0].weight.detach()[~keep]) == 0
    # state at pruned positions stays exactly zero
    assert torch.count_nonzero(optimizer.state[model[0].weight]["exp_avg"][~keep]) == 0
    masked.remove()


def test_remove_keeps_zeros_and_takes_hooks_off() -> None:
    model = mlp()
    masked = MaskedModel(model)
    masked.prune(0.5)
    keep = torch.from_numpy(masked.masks["0"])
    assert masked.remove() is model
    assert torch.count_nonzero(model[0].weight.detach()[~keep]) == 0
    x, y = toy_data()
    nn.functional.cross_entropy(model(x), y).backward()
    assert torch.count_nonzero(model[0].weight.grad[~keep]) > 0  # no gradient hook any more
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.step()
    assert torch.count_nonzero(model[0].weight.detach()[~keep]) > 0  # no step hook any more
    masked.remove()  # twice is fine
    with pytest.raises(RuntimeError, match="removed"):
        masked.prune(0.5)


def test_context_manager_removes() -> None:
    model = mlp()
    with MaskedModel(model) as masked:
        masked.prune(0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train_steps(model, optimizer, 1)
    assert np.count_nonzero(model[0].weight.detach().numpy()) == 32 * 16


def test_prune_matches_fastprune_masks() -> None:
    model = mlp()
    masked = MaskedModel(model)
    mats = {n: masked.layer(n).weight.detach().numpy().copy() for n in masked.names}
    masked.prune(0.7, scope="global")
    expected = fp.mask([np.abs(m) for m in mats.values()], 0.7, scope="global")
    for n, e in zip(mats, expected, strict=True):
        assert np.array_equal(masked.masks[n], e)
    total = sum(m.size for m in mats.values())
    assert masked.sparsity == int(total * 0.7) / total
    masked.remove()


@pytest.mark.parametrize(
    ("earlier", "pattern", "sparsity"),
    [
        (("3:4", None), "2:4", None),
        (("2:4", None), "1:4", None),
        ((fp.Block(4, 4), 0.25), fp.Block(4, 4), 0.5),
        (("row", 0.1), "row", 0.25),
        (("unstructured", 0.15), "unstructured", 0.3),
    ],
)
def test_prune_patterns_and_nesting(
    earlier: tuple[Any, float | None], pattern: Any, sparsity: float | None
) -> None:
    model = mlp()
    masked = MaskedModel(model)
    masked.prune(earlier[1], pattern=earlier[0])  # an earlier, lighter mask
    before = masked.masks
    masked.prune(sparsity, pattern=pattern)
    for n in masked.names:
        keep = masked.mask_matrix(n)
        if pattern != "unstructured":  # (check counts unstructured sparsity per row)
            assert fp.masks.check(keep, pattern, sparsity), n
        assert not (keep & ~before[n]).any(), n  # nothing revived
        w = masked.layer(n).weight.detach().numpy()
        assert np.count_nonzero(w[~keep]) == 0
    masked.remove()


def test_prune_with_given_scores_and_per_layer_sparsity() -> None:
    model = mlp()
    masked = MaskedModel(model)
    rng = np.random.default_rng(0)
    scores = {"0": rng.random((32, 16)).astype(np.float32)}
    got = masked.prune({"0": 0.5, "2": 0.25}, scores=scores, layers=["0", "2"])
    assert got == {"0": 0.5, "2": 0.25}
    assert np.array_equal(masked.masks["0"], fp.mask(scores["0"], 0.5, scope="layer"))
    assert "4" not in masked.masks
    with pytest.raises(KeyError, match="sparsity"):
        masked.prune({"0": 0.5}, layers=["0", "2"])
    masked.remove()


def test_conv_layers_are_masked_as_matrices() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    masked = MaskedModel(model)
    masked.prune(pattern="2:4")
    assert fp.masks.check(masked.mask_matrix("0"), "2:4")
    assert masked.masks["0"].shape == (8, 4, 3, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    x = torch.randn(4, 4, 8, 8)
    for _ in range(10):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
    w = model[0].weight.detach().numpy()
    assert np.count_nonzero(w[~masked.masks["0"]]) == 0
    masked.remove()


def test_masked_model_errors() -> None:
    model = mlp()
    with pytest.raises(TypeError, match="model"):
        MaskedModel("model")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="targets"):
        MaskedModel(model, targets=(nn.Conv2d,))
    with pytest.raises(TypeError, match="ignore"):
        MaskedModel(model, ignore="0")
    masked = MaskedModel(model, ignore=["4"])
    assert masked.names == ["0", "2"]
    with pytest.raises(KeyError, match="masked layers"):
        masked.set_mask("4", np.ones((8, 24), dtype=bool))
    with pytest.raises(TypeError, match="bool"):
        masked.set_mask("0", np.ones((32, 16)))
    with pytest.raises(ValueError, match="shape"):
        masked.set_mask("0", np.ones((16, 32), dtype=bool))
    with pytest.raises(TypeError, match="global"):
        masked.prune({"0": 0.5}, scope="global")
    masked.remove()


def test_masks_given_are_not_modified() -> None:
    model = mlp()
    mask = np.ones((32, 16), dtype=bool)
    mask[0] = False
    copy = mask.copy()
    masked = MaskedModel(model, masks={"0": mask})
    masked.prune(0.5)
    assert np.array_equal(mask, copy)
    masked.remove()


# --- lottery tickets -------------------------------------------------------------------------


def test_per_round_sparsities_compound_as_configured() -> None:
    model = mlp()
    config = LotteryConfig(rounds=4, rate=0.3, first_rate=0.2, last_rate=0.1)
    lottery = LotteryTicket(model, config)
    ticket = lottery.run(trainer(3), progress=False)
    sizes = {"0": 32 * 16, "2": 24 * 32, "4": 8 * 24}
    rates = {"0": 0.2, "2": 0.3, "4": 0.1}
    assert [r.round for r in ticket.rounds] == [0, 1, 2, 3, 4]
    for record in ticket.rounds:
        for name, size in sizes.items():
            pruned = int(size * round_sparsity(rates[name], record.round))
            assert record.layers[name] == pytest.approx(pruned / size, abs=1e-12)
    # masks of later rounds lie inside the earlier ones
    for earlier, later in zip(lottery.tickets[1:], lottery.tickets[2:], strict=False):
        for name in sizes:
            assert not (later.masks[name] & ~earlier.masks[name]).any()
    # the model ends trained, pruned, and without hooks
    final = ticket.masks["2"]
    assert np.count_nonzero(model[2].weight.detach().numpy()[~final]) == 0


def test_default_rates_and_global_scope() -> None:
    model = mlp()
    lottery = LotteryTicket(model, rounds=2, rate=0.5, scope="global")
    ticket = lottery.run(trainer(3), progress=False)
    # the last layer is pruned at half the rate on its own, the others together
    assert ticket.rounds[2].layers["4"] == pytest.approx(int(192 * 0.4375) / 192)
    together = 32 * 16 + 24 * 32
    pruned = sum(ticket.rounds[2].layers[n] * s for n, s in (("0", 512), ("2", 768)))
    assert round(pruned) == int(together * 0.75)


def test_rewinding_to_init_restores_the_saved_weights_on_kept_positions() -> None:
    model = mlp()
    init = weights(model)
    seen: list[dict[str, np.ndarray]] = []

    def train(m: nn.Module) -> None:
        seen.append(weights(m))
        trainer(5)(m)

    lottery = LotteryTicket(model, rounds=3, rate=0.4, rewind="init")
    lottery.run(train, progress=False)
    for r, start in enumerate(seen):
        ticket = lottery.tickets[r]
        for key, value in start.items():
            layer = key.split(".")[0]
            if key.endswith("weight") and layer in ticket.masks:
                keep = ticket.masks[layer]
                assert np.array_equal(value[keep], init[key][keep])
                assert np.count_nonzero(value[~keep]) == 0
            else:
                assert np.array_equal(value, init[key])
        assert all(np.array_equal(ticket.weights[k], init[k]) for k in init)


def test_late_rewinding_restores_iteration_k() -> None:
    model = mlp()
    at_k: dict[str, np.ndarray] = {}
    seen: list[dict[str, np.ndarray]] = []

    def train(m: nn.Module) -> None:
        seen.append(weights(m))
        optimizer = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
        for step in range(6):
            train_steps(m, optimizer, 1)
            if step == 2 and len(seen) == 1:
                at_k.update(weights(m))

    lottery = LotteryTicket(model, rounds=2, rate=0.5, rewind=RewindStrategy.to_iteration(3))
    lottery.run(train, progress=False)
    keep = lottery.tickets[1].masks["0"]
    assert np.array_equal(seen[1]["0.weight"][keep], at_k["0.weight"][keep])
    assert np.array_equal(seen[1]["0.bias"], at_k["0.bias"])
    assert np.array_equal(lottery.tickets[2].weights["2.weight"], at_k["2.weight"])

    too_far = LotteryTicket(mlp(), rounds=1, rewind="iteration:50")
    with pytest.raises(ValueError, match="iteration 50"):
        too_far.run(trainer(5), progress=False)


def test_fine_tuning_continues_from_the_trained_weights() -> None:
    model = mlp()
    seen: list[dict[str, np.ndarray]] = []
    after: list[dict[str, np.ndarray]] = []

    def train(m: nn.Module) -> None:
        seen.append(weights(m))
        trainer(4)(m)
        after.append(weights(m))

    lottery = LotteryTicket(model, rounds=2, rate=0.5, rewind="none")
    lottery.run(train, progress=False)
    keep = lottery.tickets[1].masks["0"]
    assert np.array_equal(seen[1]["0.weight"][keep], after[0]["0.weight"][keep])
    assert np.count_nonzero(seen[1]["0.weight"][~keep]) == 0
    assert np.array_equal(seen[1]["0.bias"], after[0]["0.bias"])


def test_ticket_saved_and_loaded_gives_the_same_model(tmp_path: Path) -> None:
    model = mlp()

    def evaluate(m: nn.Module) -> float:
        with torch.no_grad():
            return float(m(toy_data()[0]).sum())

    ticket = LotteryTicket(model, rounds=2, rate=0.5).run(trainer(3), evaluate, progress=False)
    written = ticket.save(tmp_path)
    assert {p.name for p in written} >= {"ticket.safetensors", "ticket.json"}
    loaded = WinningTicket.load(tmp_path)
    assert loaded.rounds == ticket.rounds
    assert loaded.config == ticket.config
    assert loaded.sparsity == ticket.sparsity
    first, second = mlp(seed=5), mlp(seed=6)
    a, b = ticket.apply(first), loaded.apply(second)
    x = toy_data(1)[0]
    assert torch.equal(first(x), second(x))
    for n in a.masks:
        assert np.array_equal(a.masks[n], b.masks[n])
    train_steps(first, torch.optim.AdamW(first.parameters(), lr=1e-2), 5)
    train_steps(second, torch.optim.AdamW(second.parameters(), lr=1e-2), 5)
    assert torch.equal(first(x), second(x))
    a.remove()
    b.remove()
    assert "round" in ticket.table()


def test_config_builder_and_errors() -> None:
    config = LotteryConfig.builder().rate(0.2).reach(0.95).scope("global").fine_tune().build()
    assert config.rounds == 14
    assert config.rewind == RewindStrategy.fine_tune()
    assert LotteryConfig.builder().rewind_to_iteration(7).build().rewind == RewindStrategy(
        "iteration", 7
    )
    assert RewindStrategy.parse("iteration:3") == RewindStrategy.to_iteration(3)
    with pytest.raises(ValueError, match="not both"):
        LotteryConfig.builder().rounds(3).reach(0.9).build()
    with pytest.raises(ValueError, match="N:M"):
        LotteryConfig(pattern="2:4")
    with pytest.raises(ValueError, match="global"):
        LotteryConfig(scope="global", pattern="block:4x4")
    with pytest.raises(ValueError, match="rate"):
        LotteryConfig(rate=1.0)
    with pytest.raises(ValueError, match="rounds"):
        LotteryConfig(rounds=-1)
    with pytest.raises(ValueError, match="rewind"):
        LotteryConfig(rewind="later")
    with pytest.raises(TypeError, match="train_fn"):
        LotteryTicket(mlp()).run("train", progress=False)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="config"):
        LotteryTicket(mlp(), {"rounds": 2})  # type: ignore[arg-type]


def test_block_pattern_lottery() -> None:
    model = mlp()
    ticket = LotteryTicket(model, rounds=2, rate=0.5, pattern=fp.Block(4, 4)).run(
        trainer(2), progress=False
    )
    for name, keep in ticket.masks.items():
        assert fp.masks.check(keep.reshape(keep.shape[0], -1), fp.Block(4, 4)), name


# --- gradual pruning -------------------------------------------------------------------------


def run_gradual(pruner: GradualPruner, model: nn.Module, steps: int) -> list[float]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = toy_data()
    sparsities = []
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        pruner.step()
        optimizer.step()
        sparsities.append(pruner.masked.sparsity)
    return sparsities


def test_gradual_magnitude_follows_the_schedule() -> None:
    model = mlp()
    schedule = SparsitySchedule(final=0.8, start=2, end=20, every=3)
    pruner = GradualPruner(model, schedule, scope="layer")
    got = run_gradual(pruner, model, 25)
    sizes = {"0": 512, "2": 768, "4": 192}
    for t, s in enumerate(got):
        target = schedule.sparsity(t)
        expected = sum(int(n * target) for n in sizes.values()) / sum(sizes.values())
        assert s == pytest.approx(expected), t
    assert [h["step"] for h in pruner.history] == schedule.update_steps()
    pruner.remove()


def test_gradual_nm_steps_down_to_n_of_m() -> None:
    model = mlp()
    schedule = SparsitySchedule(final=0.5, start=0, end=8, every=2, kind="linear")
    pruner = GradualPruner(model, schedule, pattern="2:4", importance="taylor")
    got = run_gradual(pruner, model, 10)
    assert got[0] == got[2] == 0.0  # 4:4 (sparsity 0, then 0.125)
    assert got[4] == pytest.approx(0.25)  # 3:4 from step 4 (sparsity 0.25)
    assert got[-1] == pytest.approx(0.5)
    for n in pruner.masked.names:
        assert fp.masks.check(pruner.masked.mask_matrix(n), "2:4"), n
    pruner.remove()
    with pytest.raises(ValueError, match="final sparsity"):
        GradualPruner(mlp(), SparsitySchedule(0.6), pattern="2:4")


def test_gradual_wanda_uses_the_inputs_since_the_last_update() -> None:
    model = mlp()
    schedule = SparsitySchedule(final=0.5, start=1, end=1)
    pruner = GradualPruner(model, schedule, importance="wanda", scope="row")
    x, _ = toy_data()
    model(x)
    model(2 * x)  # two forward passes before the update at step 1
    pruner.step()  # step 0: no update
    w = model[0].weight.detach().numpy().copy()
    act_sq = (x.numpy().astype(np.float64) ** 2).sum(0) * 5  # x² + (2x)²
    pruner.step()
    expected = fp.mask(fp.importance.wanda(w, act_sq), 0.5, scope="row")
    assert np.array_equal(pruner.masked.masks["0"], expected)
    pruner.remove()


def test_gradual_custom_importance_and_errors() -> None:
    model = mlp()
    calls: list[str] = []

    def score(name: str, module: nn.Module) -> np.ndarray:
        calls.append(name)
        return np.abs(module.weight.detach().numpy())

    pruner = GradualPruner(model, SparsitySchedule(0.5), importance=score, scope="global")
    assert pruner.step()
    assert calls == ["0", "2", "4"]
    pruner.remove()
    taylor = GradualPruner(mlp(), SparsitySchedule(0.5), importance="taylor")
    with pytest.raises(RuntimeError, match=r"backward"):
        taylor.step()
    taylor.remove()
    with pytest.raises(ValueError, match="importance"):
        GradualPruner(mlp(), SparsitySchedule(0.5), importance="random")
    with pytest.raises(TypeError, match="schedule"):
        GradualPruner(mlp(), 0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scope"):
        GradualPruner(mlp(), SparsitySchedule(0.5), pattern="block:4x4", scope="global")


# --- the real experiment -----------------------------------------------------------------------


@pytest.mark.slow
def test_lottery_ticket_on_digits() -> None:
    """LeNet-300-100-shaped MLP on sklearn's bundled digits: the winning ticket (rewound to
    initialisation) against the same masks re-initialised and random masks, one seed, fewer
    rounds and epochs than ``python -m bench.lottery``."""
    datasets = pytest.importorskip("sklearn.datasets")
    selection = pytest.importorskip("sklearn.model_selection")
    data = datasets.load_digits()
    x_np = (data.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = selection.train_test_split(
        x_np, data.target, test_size=450, random_state=0, stratify=data.target
    )
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train.astype(np.int64))
    xe, ye = torch.from_numpy(x_test), torch.from_numpy(y_test.astype(np.int64))

    def train(model: nn.Module) -> None:
        generator = torch.Generator().manual_seed(0)
        optimizer = torch.optim.Adam(model.parameters(), lr=1.2e-3)
        for _ in range(15):
            order = torch.randperm(len(xt), generator=generator)
            for start in range(0, len(xt), 64):
                batch = order[start : start + 64]
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(xt[batch]), yt[batch]).backward()
                optimizer.step()

    def accuracy(model: nn.Module) -> float:
        with torch.no_grad():
            return float((model(xe).argmax(1) == ye).float().mean())

    sizes = (64, 300, 100, 10)
    lottery = LotteryTicket(mlp(0, sizes), rounds=5, rate=0.5)  # 0, 50, 75, ..., ~97 % sparse
    final = lottery.run(train, accuracy, progress=False)
    sparsity = [r.sparsity for r in final.rounds]
    ticket = [r.metric for r in final.rounds]
    assert sparsity[-1] >= 0.95
    dense = ticket[0]
    assert dense is not None and dense > 0.95
    controls = {}
    for kind in ("reinit", "random"):
        model = mlp(1000 if kind == "reinit" else 0, sizes)
        masks = lottery.tickets[-1].masks
        if kind == "random":
            rng = np.random.default_rng(0)
            masks = {n: rng.permutation(m.ravel()).reshape(m.shape) for n, m in masks.items()}
        masked = MaskedModel(model, masks=masks)
        assert masked.sparsity == pytest.approx(sparsity[-1])
        train(model)
        masked.remove()
        controls[kind] = accuracy(model)
    print("sparsity", sparsity, "ticket", ticket, "controls at the last round", controls)
    at_80 = [m for s, m in zip(sparsity, ticket, strict=True) if s <= 0.88]
    assert all(m is not None and m >= dense - 0.015 for m in at_80)
    assert ticket[-1] is not None
    assert ticket[-1] > max(controls.values())

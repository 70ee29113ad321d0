"""How a lottery ticket is searched: :class:`RewindStrategy`, :class:`LotteryConfig` and its
builder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

import fastprune as fp
from fastprune._arrays import check_sparsity
from fastprune.schedules import rounds_to_reach

from ..prune import DEFAULT_TARGETS


@dataclass(frozen=True)
class RewindStrategy:
    """Where the surviving weights restart from after each round of pruning.

    ``RewindStrategy.to_init()`` (Frankle & Carbin: the values at initialisation),
    ``RewindStrategy.to_iteration(k)`` (late rewinding: the values after the k-th optimizer
    step of the first, dense training) or ``RewindStrategy.fine_tune()`` (no rewinding: the
    trained weights are pruned and training goes on from them). :meth:`parse` reads
    ``"init"``, ``"iteration:K"`` and ``"none"``.
    """

    kind: Literal["init", "iteration", "none"] = "init"
    iteration: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("init", "iteration", "none"):
            msg = f"kind: expected 'init', 'iteration' or 'none', got {self.kind!r}"
            raise ValueError(msg)
        if isinstance(self.iteration, bool) or not isinstance(self.iteration, int):
            msg = f"iteration: expected an int, got {self.iteration!r}"
            raise TypeError(msg)
        if self.iteration < 0 or (self.kind != "iteration" and self.iteration != 0):
            msg = (
                f"iteration: expected 0 for {self.kind!r} and >= 0 otherwise, got {self.iteration}"
            )
            raise ValueError(msg)

    @classmethod
    def to_init(cls) -> RewindStrategy:
        return cls("init")

    @classmethod
    def to_iteration(cls, k: int) -> RewindStrategy:
        return cls("iteration", k)

    @classmethod
    def fine_tune(cls) -> RewindStrategy:
        return cls("none")

    @classmethod
    def parse(cls, spec: str | RewindStrategy) -> RewindStrategy:
        if isinstance(spec, RewindStrategy):
            return spec
        given: object = spec
        if not isinstance(given, str):
            msg = f"rewind: expected a RewindStrategy or a str, got {type(given).__name__}"
            raise TypeError(msg)
        text = spec.strip().lower()
        if text in ("init", "none"):
            return cls(text)  # type: ignore[arg-type]
        if text.startswith("iteration:") and text[len("iteration:") :].isdigit():
            return cls("iteration", int(text[len("iteration:") :]))
        msg = f"rewind: expected 'init', 'iteration:K' or 'none', got {spec!r}"
        raise ValueError(msg)

    def __str__(self) -> str:
        return f"iteration:{self.iteration}" if self.kind == "iteration" else self.kind


@dataclass(frozen=True)
class LotteryConfig:
    """How :class:`LotteryTicket` prunes.

    Attributes:
        rounds: rounds of pruning (training runs ``rounds + 1`` times: dense, then once per
            mask).
        rate: the fraction of the *remaining* weights each round prunes, so after ``r``
            rounds a layer's sparsity is ``1 − (1 − rate)^r``.
        scope: ``"layer"`` (every layer pruned to its own sparsity) or ``"global"`` (the
            layers pruned at `rate` ranked together, as the paper does for deep networks).
        pattern: unstructured, or a Block / Row / Column pattern (per layer). N:M fixes the
            sparsity, so it cannot compound over rounds; use :class:`GradualPruner` for it.
        first_rate: the rate of the first maskable layer (None: `rate`).
        last_rate: the rate of the last maskable layer (None: ``rate / 2``, as the paper
            prunes its output layers at half the rate). A single maskable layer uses `last_rate`.
        rewind: a :class:`RewindStrategy` or its spec (``"init"``, ``"iteration:K"``, ``"none"``).
        targets, ignore: which layers are masked, as for :class:`MaskedModel`.
    """

    rounds: int = 5
    rate: float = 0.2
    scope: Literal["layer", "global"] = "layer"
    pattern: str | fp.Pattern = "unstructured"
    first_rate: float | None = None
    last_rate: float | None = None
    rewind: RewindStrategy | str = field(default_factory=RewindStrategy.to_init)
    targets: tuple[type[nn.Module], ...] = DEFAULT_TARGETS
    ignore: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 0:
            msg = f"rounds: expected an int >= 0, got {self.rounds!r}"
            raise ValueError(msg)
        check_sparsity(self.rate, "rate")
        for name in ("first_rate", "last_rate"):
            if getattr(self, name) is not None:
                check_sparsity(getattr(self, name), name)
        if self.scope not in ("layer", "global"):
            msg = f"scope: expected 'layer' or 'global', got {self.scope!r}"
            raise ValueError(msg)
        pat = fp.pattern(self.pattern)
        if isinstance(pat, fp.NM):
            msg = (
                f"pattern: {pat} fixes the sparsity at {pat.sparsity:g}, so it cannot compound "
                "over rounds; use GradualPruner for N:M"
            )
            raise ValueError(msg)
        if self.scope == "global" and not isinstance(pat, fp.Unstructured):
            msg = f"scope: 'global' ranks single weights; {pat} needs scope='layer'"
            raise ValueError(msg)
        object.__setattr__(self, "rewind", RewindStrategy.parse(self.rewind))
        object.__setattr__(self, "targets", tuple(self.targets))
        ignore: object = self.ignore
        if isinstance(ignore, str):
            msg = f"ignore: expected a list of names or glob patterns, got {self.ignore!r}"
            raise TypeError(msg)
        object.__setattr__(self, "ignore", tuple(self.ignore))

    @classmethod
    def builder(cls) -> LotteryConfigBuilder:
        return LotteryConfigBuilder()

    def rate_of(self, index: int, count: int) -> float:
        """The per-round rate of the maskable layer at position `index` of `count`."""
        if index == count - 1:
            return self.rate / 2 if self.last_rate is None else self.last_rate
        if index == 0:
            return self.rate if self.first_rate is None else self.first_rate
        return self.rate

    def to_dict(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "rate": self.rate,
            "scope": self.scope,
            "pattern": str(self.pattern),
            "first_rate": self.first_rate,
            "last_rate": self.last_rate,
            "rewind": str(self.rewind),
            "targets": [t.__name__ for t in self.targets],
            "ignore": list(self.ignore),
        }


class LotteryConfigBuilder:
    """Builds a :class:`LotteryConfig` step by step; every method returns the builder.

    ``LotteryConfig.builder().rate(0.2).reach(0.95).rewind_to_init().build()``.
    """

    def __init__(self) -> None:
        self._fields: dict[str, Any] = {}
        self._reach: float | None = None

    def rounds(self, rounds: int) -> LotteryConfigBuilder:
        self._fields["rounds"] = rounds
        return self

    def reach(self, sparsity: float) -> LotteryConfigBuilder:
        """As many rounds as it takes for the layers at `rate` to reach `sparsity`."""
        self._reach = check_sparsity(sparsity, "sparsity")
        return self

    def rate(self, rate: float) -> LotteryConfigBuilder:
        self._fields["rate"] = rate
        return self

    def scope(self, scope: Literal["layer", "global"]) -> LotteryConfigBuilder:
        self._fields["scope"] = scope
        return self

    def pattern(self, pattern: str | fp.Pattern) -> LotteryConfigBuilder:
        self._fields["pattern"] = pattern
        return self

    def first_rate(self, rate: float | None) -> LotteryConfigBuilder:
        self._fields["first_rate"] = rate
        return self

    def last_rate(self, rate: float | None) -> LotteryConfigBuilder:
        self._fields["last_rate"] = rate
        return self

    def rewind_to_init(self) -> LotteryConfigBuilder:
        self._fields["rewind"] = RewindStrategy.to_init()
        return self

    def rewind_to_iteration(self, k: int) -> LotteryConfigBuilder:
        self._fields["rewind"] = RewindStrategy.to_iteration(k)
        return self

    def fine_tune(self) -> LotteryConfigBuilder:
        self._fields["rewind"] = RewindStrategy.fine_tune()
        return self

    def layers(
        self, targets: Sequence[type[nn.Module]] = DEFAULT_TARGETS, ignore: Sequence[str] = ()
    ) -> LotteryConfigBuilder:
        self._fields["targets"] = tuple(targets)
        self._fields["ignore"] = tuple(ignore)
        return self

    def build(self) -> LotteryConfig:
        fields = dict(self._fields)
        if self._reach is not None:
            if "rounds" in fields:
                msg = "rounds: give either rounds(...) or reach(...), not both"
                raise ValueError(msg)
            rate = fields.get("rate", LotteryConfig.rate)
            fields["rounds"] = rounds_to_reach(self._reach, check_sparsity(rate, "rate"))
        return LotteryConfig(**fields)

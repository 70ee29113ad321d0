"""Mixture-of-experts blocks whose experts are stored as 3-D tensors.

Hugging Face transformers keeps the experts of a mixture-of-experts block (Mixtral, Qwen2-MoE,
Qwen3-MoE, OLMoE, ...) in one module with two parameters: ``gate_up_proj`` of shape
``(experts, 2 * intermediate, hidden)`` (each expert's gate rows, then its up rows) and
``down_proj`` of shape ``(experts, hidden, intermediate)``. There is no ``nn.Linear`` per expert,
so nothing that looks for Linear layers sees them.

`unrolled_experts` swaps each such module, for the duration of a pruning run, for an
`UnrolledExperts` that runs the same computation expert by expert through `ExpertLinear`
layers whose weights are views of the 3-D tensors (what is written into them lands in the
model's own parameters). Each expert's projections are then calibrated on exactly the tokens the
router sent to it, and padding is left out through `ExpertLinear.token_rows`. Before it is used,
the unrolled module is checked against the original on random tokens routed to every expert;
another layout is refused with the module's name.

An expert that sees no calibration token has no statistics; `prune_model` then prunes its
projections by weight magnitude and warns (see `Pruner.prune_calibrated`).
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


class ExpertLinear(nn.Module):  # type: ignore[misc]
    """One expert's projection, called like an ``nn.Linear`` without bias: its weight is the
    ``(out, in)`` slice of a 3-D expert tensor (a view: writing it writes the model).

    `token_rows` holds, during a call, the positions among the flattened ``batch * seq`` tokens
    of the rows of the input (the tokens routed to this expert).
    """

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)  # shares weight's storage
        self.in_features = int(weight.shape[1])
        self.out_features = int(weight.shape[0])
        self.token_rows: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class UnrolledExperts(nn.Module):  # type: ignore[misc]
    """The experts of `experts` (a transformers experts module with 3-D ``gate_up_proj`` and
    ``down_proj``) run one by one through `ExpertLinear` layers named ``gate_up_proj.<e>`` and
    ``down_proj.<e>``; the forward pass is the experts module's eager one."""

    def __init__(self, experts: nn.Module) -> None:
        super().__init__()
        gate_up, down = _tensor(experts, "gate_up_proj"), _tensor(experts, "down_proj")
        self.num_experts = int(gate_up.shape[0])
        self.gate_up_proj = nn.ModuleList(ExpertLinear(gate_up[e]) for e in range(self.num_experts))
        self.down_proj = nn.ModuleList(ExpertLinear(down[e]) for e in range(self.num_experts))
        self.act_fn: Any = experts.act_fn

    def expert(self, e: int) -> tuple[ExpertLinear, ExpertLinear]:
        """Expert `e`'s gate/up and down projections."""
        gate_up, down = self.gate_up_proj[e], self.down_proj[e]
        assert isinstance(gate_up, ExpertLinear) and isinstance(down, ExpertLinear)
        return gate_up, down

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)
        for e in range(self.num_experts):
            token_idx, slot = torch.where(top_k_index == e)
            if token_idx.numel() == 0:
                continue
            gate_up, down = self.expert(e)
            gate_up.token_rows = down.token_rows = token_idx
            try:
                gate, up = gate_up(hidden_states[token_idx]).chunk(2, dim=-1)
                y = down(self.act_fn(gate) * up)
            finally:
                gate_up.token_rows = down.token_rows = None
            y = y * top_k_weights[token_idx, slot, None]
            out.index_add_(0, token_idx, y.to(out.dtype))
        return out


def is_expert_tensor_module(module: nn.Module) -> bool:
    """Whether `module` keeps experts as 3-D parameters (``gate_up_proj``, ``down_proj``, ...)."""
    return any(
        p.dim() == 3 for name, p in module.named_parameters(recurse=False) if name.endswith("proj")
    )


def _tensor(module: nn.Module, name: str) -> torch.Tensor:
    value = getattr(module, name, None)
    if not isinstance(value, torch.Tensor):
        msg = f"{type(module).__name__} has no tensor {name!r}"
        raise TypeError(msg)
    return value.data


def _supported(module: nn.Module) -> bool:
    gate_up = getattr(module, "gate_up_proj", None)
    down = getattr(module, "down_proj", None)
    if not (isinstance(gate_up, torch.Tensor) and isinstance(down, torch.Tensor)):
        return False
    experts, twice_inner, hidden = gate_up.shape if gate_up.dim() == 3 else (0, 0, 0)
    layout = (
        getattr(module, "is_concatenated", True)
        and not getattr(module, "is_transposed", False)
        and not getattr(module, "has_bias", False)
        and getattr(module, "has_gate", True)
        and not getattr(module, "has_post_expert_norm", False)
    )
    return bool(
        layout
        and callable(getattr(module, "act_fn", None))
        and experts > 0
        and twice_inner % 2 == 0
        and tuple(down.shape) == (experts, hidden, twice_inner // 2)
    )


def _same_outputs(original: nn.Module, unrolled: UnrolledExperts) -> bool:
    """Both modules agree on random tokens routed so that every expert gets some."""
    first = unrolled.expert(0)[0]
    weight, experts, hidden = first.weight, unrolled.num_experts, first.in_features
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2 * experts, hidden, generator=generator).to(weight.dtype)
    pick = torch.arange(2 * experts) % experts
    index = torch.stack([pick, (pick + 1) % experts], dim=1)
    weights = torch.rand(2 * experts, 2, generator=generator).to(weight.dtype)
    with torch.no_grad():
        expected = original(x, index, weights)
        got = unrolled(x, index, weights)
    if not isinstance(expected, torch.Tensor) or expected.shape != got.shape:
        return False
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    return bool(torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * max(scale, 1.0)))


@contextlib.contextmanager
def unrolled_experts(
    model: nn.Module, blocks: Sequence[nn.Module], ignore: Sequence[str]
) -> Iterator[list[str]]:
    """Within the context, every 3-D experts module inside `blocks` (unless its name matches
    `ignore`) is replaced by its `UnrolledExperts`; the names of those modules are yielded. The
    originals are put back on exit, whatever happens; the weights written meanwhile stay."""
    inside = {id(m) for block in blocks for m in block.modules()}
    swaps: list[tuple[nn.Module, str, nn.Module, UnrolledExperts]] = []
    names: list[str] = []
    for name, module in model.named_modules():
        if id(module) not in inside or not is_expert_tensor_module(module):
            continue
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in ignore):
            continue
        if not _supported(module):
            msg = (
                f"model: {name} ({type(module).__name__}) keeps its experts as 3-D tensors in a "
                "layout fastprune cannot unroll (only concatenated gate/up without bias); add "
                f"{name!r} to `ignore` to leave it dense"
            )
            raise ValueError(msg)
        unrolled = UnrolledExperts(module)
        if not _same_outputs(module, unrolled):
            msg = (
                f"model: {name} ({type(module).__name__}) does not compute what its 3-D "
                f"weights imply, so its experts cannot be pruned; add {name!r} to `ignore`"
            )
            raise ValueError(msg)
        parent_name, _, attribute = name.rpartition(".")
        swaps.append((model.get_submodule(parent_name), attribute, module, unrolled))
        names.append(name)
    try:
        for parent, attribute, _, unrolled in swaps:
            setattr(parent, attribute, unrolled)
        yield names
    finally:
        for parent, attribute, module, _ in reversed(swaps):
            setattr(parent, attribute, module)


def token_rows(module: nn.Module) -> Any:
    """The routed token positions of an `ExpertLinear`'s current input (None otherwise)."""
    return module.token_rows if isinstance(module, ExpertLinear) else None

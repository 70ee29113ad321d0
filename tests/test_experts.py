"""Mixture-of-experts blocks whose experts are 3-D tensors (fastprune.torch.experts): every
expert is calibrated on the tokens routed to it, padding left out, with an independent float64
reference; experts the router never picks fall back to magnitude pruning with a warning; other
layouts are refused by name."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import fastprune as fp  # noqa: E402
from fastprune.torch import prune_model  # noqa: E402
from fastprune.torch.experts import UnrolledExperts  # noqa: E402

VOCAB = 64
EXPERTS = 4


def _mixtral(seed: int = 0) -> object:
    config = transformers.MixtralConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        num_local_experts=EXPERTS, num_experts_per_tok=2,
    )  # fmt: skip
    torch.manual_seed(seed)
    return transformers.MixtralForCausalLM(config).eval()


def _batches() -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    out = []
    for _ in range(3):
        ids = torch.randint(1, VOCAB, (2, 16), generator=generator)
        mask = torch.ones(2, 16, dtype=torch.long)
        mask[1, 11:] = 0  # padding: never in any expert's statistics
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _expert_inputs(model, layer: int, batches) -> dict[int, list[np.ndarray]]:
    """Per expert, float64 (gate_up input, down input) rows of real tokens, from the dense
    model, computed here from the experts module's own arguments."""
    experts = model.model.layers[layer].mlp.experts
    seen: dict[int, list[list[np.ndarray]]] = {e: [[], []] for e in range(EXPERTS)}
    current = {}

    def hook(_module, args):
        hidden, index, _ = args
        keep = current["mask"]
        for e in range(EXPERTS):
            tokens = sorted({int(t) for t in torch.where(index == e)[0] if keep[int(t)]})
            x = hidden[tokens].double()
            gate_up = x @ experts.gate_up_proj[e].double().T
            gate, up = gate_up.chunk(2, dim=-1)
            seen[e][0].append(x.numpy())
            seen[e][1].append((torch.nn.functional.silu(gate) * up).numpy())

    handle = experts.register_forward_pre_hook(hook)
    with torch.no_grad():
        for batch in batches:
            current["mask"] = batch["attention_mask"].reshape(-1).bool().tolist()
            model(**batch)
    handle.remove()
    return {e: [np.concatenate(rows) for rows in pair] for e, pair in seen.items()}


def _wanda_reference(w: np.ndarray, x: np.ndarray, sparsity: float) -> np.ndarray:
    """Wanda's rule in float64: in each row, zero the lowest |w_ij| * ||x_j||."""
    scores = np.abs(w) * np.sqrt((x * x).sum(axis=0))[None, :]
    k = int(w.shape[1] * sparsity)
    out = w.copy()
    for i, row in enumerate(scores):
        out[i, np.argsort(row, kind="stable")[:k]] = 0.0
    return out


def test_every_expert_is_pruned_on_the_tokens_routed_to_it():
    dense, model = _mixtral(), _mixtral()
    batches = _batches()
    report = prune_model(model, batches, method="wanda", sparsity=0.5, sequential=False)
    # q/k/v/o and, per expert, gate_up and down, in both blocks
    assert len(report.layers) == 2 * (4 + 2 * EXPERTS)
    assert report.manifest["options"]["experts_unrolled"] == [
        f"model.layers.{i}.mlp.experts" for i in range(2)
    ]
    for i in range(2):
        experts = model.model.layers[i].mlp.experts
        assert type(experts).__name__ == "MixtralExperts"  # the original module is back
        inputs = _expert_inputs(dense, i, batches)  # one dense pass: sequential=False
        for e in range(EXPERTS):
            for name, x in zip(("gate_up_proj", "down_proj"), inputs[e], strict=True):
                w = getattr(dense.model.layers[i].mlp.experts, name)[e].detach().double().numpy()
                got = getattr(experts, name)[e].detach().numpy()
                expected = _wanda_reference(w, x, 0.5)
                np.testing.assert_array_equal(got != 0, expected != 0, err_msg=f"{i}.{name}.{e}")
                np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=f"{i}.{name}.{e}")
                row = report[f"model.layers.{i}.mlp.experts.{name}.{e}"]
                assert row.tokens == len(x)  # padding left out
    assert model(**batches[0]).logits.isfinite().all()


@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_sequential_pruning_of_experts_keeps_shapes_and_sparsity(method):
    model = _mixtral()
    report = prune_model(model, _batches(), method=method, sparsity=0.5, pattern="2:4")
    for i in range(2):
        experts = model.model.layers[i].mlp.experts
        for name in ("gate_up_proj", "down_proj"):
            w = getattr(experts, name).detach()
            assert w.dim() == 3
            groups = (w.reshape(-1, 4) != 0).sum(dim=1)
            assert torch.equal(groups, torch.full_like(groups, 2))
    assert report.error is not None


def test_an_expert_the_router_never_picks_is_pruned_by_magnitude_with_a_warning():
    dense, model = _mixtral(), _mixtral()

    def never_three(_module, _args, output):
        logits, scores, index = output
        return logits, scores, torch.where(index == 3, (index + 1) % 3, index)

    for layer in model.model.layers:
        layer.mlp.gate.register_forward_hook(never_three)
    with pytest.warns(UserWarning, match="saw no calibration token"):
        report = prune_model(model, _batches(), method="sparsegpt", sparsity=0.5)
    for i in range(2):
        for name in ("gate_up_proj", "down_proj"):
            row = report[f"model.layers.{i}.mlp.experts.{name}.3"]
            assert row.tokens == 0 and row.error is None
            w = getattr(dense.model.layers[i].mlp.experts, name)[3].detach().numpy()
            expected = fp.magnitude_prune(w, sparsity=0.5, scope="layer").weight
            got = getattr(model.model.layers[i].mlp.experts, name)[3].detach().numpy()
            np.testing.assert_array_equal(got, expected)
            assert report[f"model.layers.{i}.mlp.experts.{name}.0"].tokens > 0


def test_an_experts_layout_it_cannot_unroll_is_refused_or_ignored():
    # GPT-OSS keeps its experts transposed, gate and up interleaved, with biases
    config = transformers.GptOssConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
        num_local_experts=EXPERTS, num_experts_per_tok=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GptOssForCausalLM(config).eval()
    batches = [{"input_ids": batch["input_ids"]} for batch in _batches()]
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.experts .*`ignore`"):
        prune_model(model, batches, method="wanda")
    before = model.model.layers[1].mlp.experts.gate_up_proj.detach().clone()
    report = prune_model(model, batches, method="wanda", ignore=["*mlp.experts"])
    assert torch.equal(model.model.layers[1].mlp.experts.gate_up_proj, before)
    assert report.manifest["options"]["experts_unrolled"] == []
    assert len(report.layers) == 2 * 4  # attention projections only


def test_experts_that_do_not_compute_what_their_weights_say_are_refused():
    model = _mixtral()
    experts = model.model.layers[0].mlp.experts
    experts.forward = lambda hidden, index, weights: 2.0 * hidden
    with pytest.raises(ValueError, match="does not compute what its 3-D weights imply"):
        prune_model(model, _batches(), method="wanda")


def test_the_unrolled_experts_compute_what_the_original_computes():
    experts = _mixtral().model.layers[0].mlp.experts
    unrolled = UnrolledExperts(experts)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(10, 32, generator=generator)
    index = torch.randint(0, EXPERTS, (10, 2), generator=generator)
    weights = torch.rand(10, 2, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(unrolled(x, index, weights), experts(x, index, weights))
    # the unrolled layers are views: writing them writes the model
    unrolled.down_proj[2].weight.data.zero_()
    assert not experts.down_proj[2].any() and experts.down_proj[1].any()


MOE_FAMILIES = {
    # name: (config class, model class, extra config, prunable Linear layers per block)
    "qwen2_moe": (
        "Qwen2MoeConfig", "Qwen2MoeForCausalLM",
        {"num_experts": EXPERTS, "moe_intermediate_size": 24,
         "shared_expert_intermediate_size": 40},
        4 + 3 + 1,  # attention, the shared expert's MLP and its gate
    ),
    "qwen3_moe": (
        "Qwen3MoeConfig", "Qwen3MoeForCausalLM",
        {"num_experts": EXPERTS, "moe_intermediate_size": 24, "head_dim": 8}, 4,
    ),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", {"num_experts": EXPERTS}, 4),
}  # fmt: skip


@pytest.mark.parametrize("family", sorted(MOE_FAMILIES))
def test_other_moe_families_prune_every_expert(family):
    config_class, model_class, extra, linear_layers = MOE_FAMILIES[family]
    config = getattr(transformers, config_class)(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        num_experts_per_tok=2, pad_token_id=0, bos_token_id=0, eos_token_id=0, **extra,
    )  # fmt: skip
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(config).eval()
    report = prune_model(model, _batches(), method="wanda", sparsity=0.5)
    assert len(report.layers) == 2 * (linear_layers + 2 * EXPERTS)
    for layer in model.model.layers:
        for name in ("gate_up_proj", "down_proj"):
            w = getattr(layer.mlp.experts, name).detach()
            assert (w == 0).double().mean().item() == pytest.approx(0.5)

"""Tiny random models of the common architectures prune end to end with prune_model: every
projection of every block is pruned (GPT-2's transposed ``Conv1D`` included), to the sparsity
and pattern asked, and the model still runs."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fastprune.torch import prune_model  # noqa: E402

VOCAB = 64
SMALL = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}


def _decoder(config_class: str, model_class: str, **extra: object) -> object:
    config = getattr(transformers, config_class)(
        **SMALL, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **extra
    )
    return getattr(transformers, model_class)(config)


def _opt() -> object:
    config = transformers.OPTConfig(
        vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
        word_embed_proj_dim=32, max_position_embeddings=64,
    )  # fmt: skip
    return transformers.OPTForCausalLM(config)


def _bert() -> object:
    config = transformers.BertConfig(**SMALL, num_attention_heads=4, max_position_embeddings=64)
    return transformers.BertModel(config)


def _gpt2() -> object:
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


# name: (builder, prunable projections per block)
ARCHITECTURES = {
    "llama": (lambda: _decoder("LlamaConfig", "LlamaForCausalLM"), 7),
    "mistral": (lambda: _decoder("MistralConfig", "MistralForCausalLM"), 7),
    "qwen2": (lambda: _decoder("Qwen2Config", "Qwen2ForCausalLM"), 7),
    "gemma": (lambda: _decoder("GemmaConfig", "GemmaForCausalLM", head_dim=8), 7),
    "opt": (_opt, 6),
    "bert": (_bert, 6),
    "gpt2": (_gpt2, 4),
}


def _out_in(module: torch.nn.Module) -> np.ndarray:
    w = module.weight.detach().numpy()
    return w.T if type(module).__name__ == "Conv1D" else w


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize(("method", "pattern"), [("wanda", "2:4"), ("sparsegpt", "unstructured")])
def test_every_block_projection_is_pruned(name, method, pattern):
    build, per_block = ARCHITECTURES[name]
    torch.manual_seed(0)
    model = build().eval()
    generator = torch.Generator().manual_seed(1)
    batches = [
        {"input_ids": torch.randint(1, VOCAB, (2, 16), generator=generator)} for _ in range(2)
    ]
    report = prune_model(
        model, batches, method=method, sparsity=0.5, pattern=pattern, progress=False
    )
    assert len(report.layers) == 2 * per_block
    modules = dict(model.named_modules())
    for layer in report.layers:
        w = _out_in(modules[layer.name])
        assert np.count_nonzero(w == 0) == w.size // 2, layer.name
        if pattern == "2:4":  # two kept in every four consecutive inputs of each output
            assert (np.count_nonzero(w.reshape(w.shape[0], -1, 4), axis=-1) <= 2).all()
    with torch.no_grad():
        out = model(**batches[0])
    hidden = out.logits if hasattr(out, "logits") else out.last_hidden_state
    assert torch.isfinite(hidden).all()


def test_gpt2_conv1d_is_pruned_like_the_same_linear():
    """A Conv1D holds W transposed: pruned through fastprune it gives the same weights as the
    nn.Linear that computes the same function."""
    torch.manual_seed(0)
    model = _gpt2().eval()
    conv = model.transformer.h[0].mlp.c_fc
    linear = torch.nn.Linear(conv.weight.shape[0], conv.weight.shape[1])
    with torch.no_grad():
        linear.weight.copy_(conv.weight.T)
        linear.bias.copy_(conv.bias)
    x = torch.randn(3, 5, conv.weight.shape[0], generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(linear(x), conv(x))
    for module in (conv, linear):
        prune_model(module, [x], method="sparsegpt", sparsity=0.5, progress=False)
    torch.testing.assert_close(conv.weight.T, linear.weight)


def test_a_model_with_nothing_to_prune_is_an_error():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.LayerNorm(8))
    with pytest.raises(ValueError, match="nothing to prune"):
        prune_model(model, [torch.zeros(1, 3, dtype=torch.long)], method="wanda", progress=False)
    llama = ARCHITECTURES["llama"][0]()
    with pytest.raises(ValueError, match="leaves every one of them dense"):
        prune_model(llama, None, method="magnitude", sparsity={"nothing.*": 0.5}, progress=False)

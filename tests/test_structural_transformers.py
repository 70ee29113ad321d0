"""Structural width/depth pruning of tiny randomly initialised Llama (GQA), BERT and GPT-2 models.

Exactness: zeroing the channels a plan removes and then removing them must not change the
outputs. Hidden-channel pruning changes the norms' statistics, so it is checked instead against
an independent reference: a fresh model of the new config loaded with the original state dict
sliced on every dimension of the hidden size.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fastprune.torch.structural import (  # noqa: E402
    StructureError,
    block_importance,
    check_saveable,
    count_parameters,
    flops_per_token,
    layout,
    magnitude,
    prune_width,
    remove_blocks,
    taylor,
)

VOCAB = 61
HIDDEN = 40  # no other dimension of the tiny models has this size


def llama(kv: int = 2, tied: bool = False) -> Any:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=56,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=kv,
        head_dim=12,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def bert() -> Any:
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=56,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    return transformers.BertModel(config).eval()


def gpt2() -> Any:
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=HIDDEN, n_layer=3, n_head=4, n_inner=56, n_positions=64
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


MODELS = {"llama": llama, "bert": bert, "gpt2": gpt2}


def batches(n: int = 2, padded: bool = True) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(3, VOCAB, (2, 9), generator=g)
        mask = torch.ones_like(ids)
        if padded:
            mask[1, 6:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def outputs(model: Any, batch: dict[str, Any]) -> Any:
    with torch.no_grad():
        out = model(**batch)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def zero_removed(plan: Any) -> None:
    for part in plan.parts:
        removed = torch.tensor(sorted(set(range(part.channels)) - set(part.keep.tolist())))
        if removed.numel() == 0:
            continue
        for s in part.slices:
            t = s.tensor()
            with torch.no_grad():
                t.index_fill_(s.dim, s.index(removed), 0.0)


def check_zero_then_remove(model: Any, **sizes: Any) -> Any:
    plan = prune_width(model, batches(), dry_run=True, **sizes)
    assert not plan.applied
    zero_removed(plan)
    x = batches(1)[0]
    before = outputs(model, x)
    plan.apply()
    after = outputs(model, x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    return plan


@pytest.mark.parametrize("family", sorted(MODELS))
def test_heads_zero_then_remove(family: str) -> None:
    model = MODELS[family](**({"kv": 4} if family == "llama" else {}))  # multi-head attention
    check_zero_then_remove(model, heads=2)
    for i in range(3):
        assert layout(model).blocks[i] is not None
    assert model.config.num_attention_heads == 2


def test_gqa_whole_kv_group_zero_then_remove() -> None:
    model = llama(kv=2)
    plan = check_zero_then_remove(model, kv_heads=1)
    assert model.config.num_key_value_heads == 1
    assert model.config.num_attention_heads == 2  # the group's two query heads went with it
    assert model.config.head_dim == 12
    attn = model.model.layers[0].self_attn
    assert attn.num_key_value_groups == 2
    assert attn.k_proj.out_features == 12 and attn.q_proj.out_features == 24
    assert any("KV heads" in p.what for p in plan.parts)


def test_gqa_query_heads_within_groups() -> None:
    model = llama(kv=2)
    check_zero_then_remove(model, heads=2)  # one query head per group, both groups kept
    assert model.config.num_key_value_heads == 2
    assert model.model.layers[1].self_attn.num_key_value_groups == 1


def test_gqa_ratio_that_cannot_be_kept() -> None:
    with pytest.raises(StructureError, match="spread evenly"):
        prune_width(llama(kv=2), batches(), heads=3)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_ffn_zero_then_remove(family: str) -> None:
    model = MODELS[family]()
    check_zero_then_remove(model, ffn=20)
    cfg = model.config
    assert (cfg.n_inner if family == "gpt2" else cfg.intermediate_size) == 20


@pytest.mark.parametrize("importance", ["magnitude", "taylor", "callable"])
def test_other_importances_zero_then_remove(importance: str) -> None:
    model = llama()
    chosen: Any = importance
    if importance == "taylor":
        out = model(**batches(1)[0], labels=batches(1)[0]["input_ids"])
        out.loss.backward()
    if importance == "callable":

        def chosen(part: Any) -> Any:
            return torch.arange(part.channels, dtype=torch.float64)  # keeps the last channels

    plan = check_zero_then_remove(model, ffn=24, heads=2, importance=chosen)
    if importance == "callable":
        ffn_part = next(p for p in plan.parts if "FFN" in p.what)
        assert ffn_part.keep.tolist() == list(range(32, 56))


def test_activation_scores_ignore_padding() -> None:
    model = llama()
    padded = batches(2, padded=True)
    keep_padded = prune_width(copy.deepcopy(model), padded, ffn=20, dry_run=True)
    # same real tokens, but padding positions in the second row of each batch removed
    only_real = [{"input_ids": b["input_ids"][1:, :6]} for b in padded] + [
        {"input_ids": b["input_ids"][:1]} for b in padded
    ]
    keep_real = prune_width(copy.deepcopy(model), only_real, ffn=20, dry_run=True)
    assert keep_padded.parts[0].keep.tolist() == keep_real.parts[0].keep.tolist()
    assert (padded[0]["attention_mask"] == 0).any()


def reference_hidden_prune(model: Any, keep: torch.Tensor) -> Any:
    """Fresh model of the shrunk config, loaded with every hidden-sized dim sliced."""
    config = copy.deepcopy(model.config)
    if config.model_type == "llama":
        config.head_dim = model.config.head_dim
    config.hidden_size = keep.numel()
    if config.model_type in ("bert", "gpt2"):
        config.num_attention_heads = model.config.num_attention_heads
    sliced = {}
    for name, t in model.state_dict().items():
        for d, size in enumerate(t.shape):
            if size == HIDDEN:
                t = t.index_select(d, keep)
        sliced[name] = t
    ref = type(model)(config).eval()
    ref.load_state_dict(sliced)
    return ref


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_hidden_equals_reference(family: str) -> None:
    model = MODELS[family]()
    original = copy.deepcopy(model)
    plan = prune_width(model, batches(), hidden=24)
    keep = plan.parts[0].keep
    assert keep.numel() == 24
    # the reference keeps head sizes through the attention modules of the original layout
    if family == "gpt2":
        # GPT-2 derives the head size from n_embd / n_head: give the reference 24 / 4 heads?
        # not possible with head size 10; compare module by module instead
        for (n1, p1), (n2, p2) in zip(
            model.state_dict().items(), original.state_dict().items(), strict=True
        ):
            assert n1 == n2
            expected = p2
            for d, size in enumerate(p2.shape):
                if size == HIDDEN and not (n1.endswith("attn.c_proj.weight") and d == 0):
                    expected = expected.index_select(d, keep)
            torch.testing.assert_close(p1, expected)
        assert outputs(model, batches(1)[0]).shape[-1] == VOCAB
        return
    ref = reference_hidden_prune(original, keep)
    x = batches(1)[0]
    torch.testing.assert_close(outputs(model, x), outputs(ref, x), rtol=1e-4, atol=1e-5)


def test_hidden_tied_lm_head_stays_tied() -> None:
    model = llama(tied=True)
    prune_width(model, batches(), hidden=32)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.lm_head.weight.shape == (VOCAB, 32)
    assert model.lm_head.in_features == 32


def test_bert_hidden_on_base_model_runs_and_pooler_shrinks() -> None:
    model = bert()
    prune_width(model, batches(), hidden=24, heads=2)
    out = model(**batches(1)[0])
    assert out.last_hidden_state.shape[-1] == 24
    assert out.pooler_output.shape[-1] == 24


def test_hidden_refuses_unknown_heads() -> None:
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=4
    )
    model = transformers.BertForSequenceClassification(config).eval()
    with pytest.raises(StructureError, match="classifier"):
        prune_width(model, batches(), hidden=24)


def test_bad_sizes_raise_naming_the_argument() -> None:
    model = llama()
    with pytest.raises(ValueError, match="remove everything"):
        prune_width(model, batches(), ffn=0)
    with pytest.raises(ValueError, match=r"ffn.*only 56"):
        prune_width(model, batches(), ffn=100)
    with pytest.raises(ValueError, match="calibration_batches"):
        prune_width(model, None, ffn=8)
    with pytest.raises(ValueError, match="importance"):
        prune_width(model, batches(), ffn=8, importance="nope")
    with pytest.raises(StructureError, match="expected a Hugging Face"):
        prune_width(torch.nn.Linear(2, 2), batches(), ffn=8)


def test_plan_prints_before_it_changes_anything() -> None:
    model = llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = prune_width(model, batches(), ffn=24, kv_heads=1, dry_run=True)
    text = str(plan)
    assert "not applied" in text and "FFN neurons: keep 24 of 56" in text
    assert "KV heads: keep 1 of 2" in text and "down_proj" in text
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_non_uniform_widths_run_but_cannot_be_saved() -> None:
    model = llama()
    prune_width(model, batches(), ffn={0: 16, 2: 24})
    outputs(model, batches(1)[0])
    with pytest.raises(StructureError, match="different FFN widths"):
        check_saveable(model)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_save_and_reload_gives_same_outputs(family: str, tmp_path: Any) -> None:
    model = MODELS[family]()
    sizes: dict[str, Any] = {"ffn": 24}
    if family == "llama":
        sizes.update(kv_heads=1, hidden=32)
    prune_width(model, batches(), **sizes)
    remove_blocks(model, [1])
    check_saveable(model)
    model.save_pretrained(tmp_path)
    auto = {
        "llama": transformers.AutoModelForCausalLM,
        "bert": transformers.AutoModel,
        "gpt2": transformers.AutoModelForCausalLM,
    }[family]
    loaded = auto.from_pretrained(tmp_path).eval()
    x = batches(1)[0]
    torch.testing.assert_close(outputs(loaded, x), outputs(model, x))
    assert count_parameters(loaded) == count_parameters(model)


def test_bert_head_pruning_cannot_use_stock_config() -> None:
    model = bert()
    prune_width(model, batches(), heads=2)
    with pytest.raises(StructureError, match="hidden_size / num_attention_heads"):
        check_saveable(model)


def test_remove_blocks_equals_skipping_them_and_keeps_kv_cache_working() -> None:
    model = llama()
    x = batches(1, padded=False)[0]
    handle = model.model.layers[1].register_forward_hook(
        lambda _m, args, kwargs, out: args[0] if args else kwargs["hidden_states"],
        with_kwargs=True,
    )
    skipped = outputs(model, x)
    handle.remove()
    assert remove_blocks(model, [1]) == [0, 2]
    assert model.config.num_hidden_layers == 2
    assert [b.self_attn.layer_idx for b in model.model.layers] == [0, 1]
    torch.testing.assert_close(outputs(model, x), skipped)
    ids = x["input_ids"]
    with torch.no_grad():
        full = model(input_ids=ids).logits[:, -1]
        first = model(input_ids=ids[:, :-1], use_cache=True)
        cache = getattr(first, "cache", None) or first.past_key_values
        step = model(input_ids=ids[:, -1:], cache=cache).logits[:, -1]
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-5)


def test_remove_blocks_bad_input() -> None:
    with pytest.raises(ValueError, match=r"which.*out of range"):
        remove_blocks(llama(), [3])
    with pytest.raises(ValueError, match="no model"):
        remove_blocks(llama(), [0, 1, 2])


def test_block_importance_matches_direct_computation() -> None:
    model = llama()
    data = batches(2)
    scores = block_importance(model, data)
    # independent: hidden states from output_hidden_states, cosine over real tokens
    sums = torch.zeros(3, dtype=torch.float64)
    count = 0
    with torch.no_grad():
        for b in data:
            hs = model(**b, output_hidden_states=True).hidden_states
            mask = b["attention_mask"].bool()
            count += int(mask.sum())
            for i in range(2):  # the last entry is after the final norm
                cos = torch.nn.functional.cosine_similarity(
                    hs[i].double(), hs[i + 1].double(), dim=-1
                )
                sums[i] += cos[mask].sum()
    for i in range(2):
        assert scores.bi[i] == pytest.approx(1 - float(sums[i]) / count, abs=1e-6)
    assert len(scores.least_important(1)) == 1


def test_block_importance_loss_increase() -> None:
    model = llama()
    data = [dict(b, labels=b["input_ids"]) for b in batches(1, padded=False)]
    scores = block_importance(model, data, loss=True)
    assert scores.loss_increase is not None and len(scores.loss_increase) == 3
    with torch.no_grad():
        dense = float(model(**data[0]).loss)
    pruned = copy.deepcopy(model)
    remove_blocks(pruned, [2])
    with torch.no_grad():
        without = float(pruned(**data[0]).loss)
    assert scores.loss_increase[2] == pytest.approx(without - dense, abs=1e-5)


def test_sizes_shrink() -> None:
    model = llama()
    params, flops = count_parameters(model), flops_per_token(model, 16)
    prune_width(model, batches(), ffn=28)
    remove_blocks(model, [0])
    assert count_parameters(model) < params
    assert flops_per_token(model, 16) < flops
    expected_linear = sum(
        2 * m.in_features * m.out_features
        for m in model.modules()
        if isinstance(m, torch.nn.Linear)
    )
    attn = 2 * 4 * 16 * 4 * 12
    assert flops_per_token(model, 16) == expected_linear + attn


def test_magnitude_and_taylor_factories() -> None:
    model = llama()
    plan = prune_width(model, batches(), ffn=20, dry_run=True, importance=magnitude(p=1))
    part = plan.parts[0]
    m = model.model.layers[0].mlp
    expected = (
        m.gate_proj.weight.abs().sum(1)
        + m.up_proj.weight.abs().sum(1)
        + m.down_proj.weight.abs().sum(0)
    )
    top = torch.sort(torch.argsort(-expected.double(), stable=True)[:20]).values
    assert part.keep.tolist() == top.tolist()
    with pytest.raises(ValueError, match=r"no \.grad"):
        prune_width(model, batches(), ffn=20, importance=taylor())

"""What a supported Hugging Face transformer looks like to structural pruning: its `Layout`
(blocks, attention, FFN, norms, embeddings of a Llama-family, BERT or GPT-2 model), the tensor
slices that make up one head, neuron or hidden channel, and the model's size (parameters,
FLOPs per token)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from .plan import Slice


class StructureError(ValueError):
    """The model or the requested sizes cannot be pruned structurally as asked."""


# --- what the model looks like -------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where the parts of a supported transformer are."""

    family: Literal["llama", "bert", "gpt2"]
    model: Any  # Hugging Face modules: their submodules are reached by attribute
    base: Any
    blocks_owner: Any
    blocks_attr: str

    @property
    def blocks(self) -> Any:
        return getattr(self.blocks_owner, self.blocks_attr)

    @property
    def config(self) -> Any:
        return self.model.config


def layout(model: nn.Module) -> Layout:
    """Recognise a supported Hugging Face transformer; raises `StructureError` otherwise."""
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        msg = f"model: expected a Hugging Face transformers model, got {type(model).__name__}"
        raise StructureError(msg)
    for attr in ("model", "transformer", "bert"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module) and inner is not model:
            base = inner
            break
    else:
        base = model
    layers = getattr(base, "layers", None)
    if isinstance(layers, nn.ModuleList) and len(layers) and hasattr(layers[0], "self_attn"):
        attn = layers[0].self_attn
        if all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")) and hasattr(
            layers[0].mlp, "down_proj"
        ):
            return Layout("llama", model, base, base, "layers")
    encoder = getattr(base, "encoder", None)
    layer = getattr(encoder, "layer", None)
    if isinstance(layer, nn.ModuleList) and len(layer) and hasattr(layer[0].attention, "self"):
        return Layout("bert", model, base, encoder, "layer")
    h = getattr(base, "h", None)
    if isinstance(h, nn.ModuleList) and len(h) and hasattr(getattr(h[0], "attn", None), "c_attn"):
        return Layout("gpt2", model, base, base, "h")
    msg = (
        f"model: {type(model).__name__} is not a supported layout (Llama-family decoder, BERT "
        "encoder or GPT-2)"
    )
    raise StructureError(msg)


@dataclass(frozen=True)
class _Attention:
    module: nn.Module
    heads: int
    kv_heads: int
    head_dim: int
    q: list[Slice]  # query-head channels, out dim (q rows) and in dim (output projection)
    kv: list[Slice]  # kv-head channels (equal to the query heads without GQA)


def _attention(lay: Layout, i: int) -> _Attention:
    block: Any = lay.blocks[i]
    p = f"blocks.{i}."
    if lay.family == "llama":
        a = block.self_attn
        d = int(a.head_dim)
        heads = a.q_proj.out_features // d
        kv = a.k_proj.out_features // d
        q = [_lin_out(a.q_proj, p + "q_proj"), _lin_in(a.o_proj, p + "o_proj")]
        kvs = [_lin_out(a.k_proj, p + "k_proj"), _lin_out(a.v_proj, p + "v_proj")]
        return _Attention(a, heads, kv, d, q, kvs)
    if lay.family == "bert":
        s = block.attention.self
        d = int(s.attention_head_size)
        heads = s.query.out_features // d
        q = [
            _lin_out(s.query, p + "query"),
            _lin_out(s.key, p + "key"),
            _lin_out(s.value, p + "value"),
            _lin_in(block.attention.output.dense, p + "attention.output.dense"),
        ]
        return _Attention(s, heads, heads, d, q, [])
    a = block.attn
    d = int(a.head_dim)
    width = int(a.split_size)
    c_attn = Slice(a.c_attn, "weight", 1, (0, width, 2 * width), p + "attn.c_attn")
    c_bias = Slice(a.c_attn, "bias", 0, (0, width, 2 * width), p + "attn.c_attn")
    q = [c_attn, c_bias, Slice(a.c_proj, "weight", 0, (0,), p + "attn.c_proj")]
    return _Attention(a, width // d, width // d, d, q, [])


def _ffn(lay: Layout, i: int) -> tuple[int, list[Slice], Any]:
    """FFN width of block `i`, its slices (the activation's input channel on each) and the
    module whose input is the FFN activation (for activation importance)."""
    block: Any = lay.blocks[i]
    p = f"blocks.{i}."
    if lay.family == "llama":
        m = block.mlp
        s = [_lin_out(m.gate_proj, p + "gate_proj"), _lin_out(m.up_proj, p + "up_proj")]
        return m.down_proj.in_features, [*s, _lin_in(m.down_proj, p + "down_proj")], m.down_proj
    if lay.family == "bert":
        up, down = block.intermediate.dense, block.output.dense
        s = [_lin_out(up, p + "intermediate.dense"), _lin_in(down, p + "output.dense")]
        return down.in_features, s, down
    fc, proj = block.mlp.c_fc, block.mlp.c_proj
    s = [
        Slice(fc, "weight", 1, label=p + "mlp.c_fc"),
        Slice(fc, "bias", 0, label=p + "mlp.c_fc"),
        Slice(proj, "weight", 0, label=p + "mlp.c_proj"),
    ]
    return int(proj.nx), s, proj


def _hidden(lay: Layout) -> tuple[int, list[Slice], list[nn.Module]]:
    """Every slice carrying a hidden channel, and the norms whose outputs score the channels."""
    cfg = lay.config
    base = lay.base
    slices: list[Slice] = []
    norms: list[nn.Module] = []
    if lay.family == "llama":
        _check_wrapper(lay, ("LlamaModel",), allow_lm_head=True)
        slices.append(Slice(base.embed_tokens, "weight", 1, label="embed_tokens"))
        for i, b in enumerate(lay.blocks):
            p = f"blocks.{i}."
            a, m = b.self_attn, b.mlp
            norms += [b.input_layernorm, b.post_attention_layernorm]
            slices += _norm(b.input_layernorm, p + "input_layernorm")
            slices += _norm(b.post_attention_layernorm, p + "post_attention_layernorm")
            for name in ("q_proj", "k_proj", "v_proj"):
                slices.append(_lin_in(getattr(a, name), p + name))
            slices += _lin_out_all(a.o_proj, p + "o_proj")
            slices += [_lin_in(m.gate_proj, p + "gate_proj"), _lin_in(m.up_proj, p + "up_proj")]
            slices += _lin_out_all(m.down_proj, p + "down_proj")
        norms.append(base.norm)
        slices += _norm(base.norm, "norm")
    elif lay.family == "bert":
        _check_wrapper(lay, ("BertModel",), allow_lm_head=False)
        e = base.embeddings
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
            if isinstance(getattr(e, name, None), nn.Embedding):
                slices.append(Slice(getattr(e, name), "weight", 1, label=f"embeddings.{name}"))
        norms.append(e.LayerNorm)
        slices += _norm(e.LayerNorm, "embeddings.LayerNorm")
        for i, b in enumerate(lay.blocks):
            p = f"blocks.{i}."
            s = b.attention.self
            for name in ("query", "key", "value"):
                slices.append(_lin_in(getattr(s, name), p + name))
            out = b.attention.output
            slices += _lin_out_all(out.dense, p + "attention.output.dense")
            slices += _norm(out.LayerNorm, p + "attention.output.LayerNorm")
            slices.append(_lin_in(b.intermediate.dense, p + "intermediate.dense"))
            slices += _lin_out_all(b.output.dense, p + "output.dense")
            slices += _norm(b.output.LayerNorm, p + "output.LayerNorm")
            norms += [out.LayerNorm, b.output.LayerNorm]
        pooler = getattr(base, "pooler", None)
        if pooler is not None:
            slices.append(_lin_in(pooler.dense, "pooler.dense"))
            slices += _lin_out_all(pooler.dense, "pooler.dense")
    else:
        _check_wrapper(lay, ("GPT2Model",), allow_lm_head=True)
        slices += [
            Slice(base.wte, "weight", 1, label="wte"),
            Slice(base.wpe, "weight", 1, label="wpe"),
        ]
        for i, b in enumerate(lay.blocks):
            p = f"blocks.{i}."
            norms += [b.ln_1, b.ln_2]
            slices += _norm(b.ln_1, p + "ln_1") + _norm(b.ln_2, p + "ln_2")
            slices.append(Slice(b.attn.c_attn, "weight", 0, label=p + "attn.c_attn"))
            slices += _conv1d_out_all(b.attn.c_proj, p + "attn.c_proj")
            slices.append(Slice(b.mlp.c_fc, "weight", 0, label=p + "mlp.c_fc"))
            slices += _conv1d_out_all(b.mlp.c_proj, p + "mlp.c_proj")
        norms.append(base.ln_f)
        slices += _norm(base.ln_f, "ln_f")
    head = getattr(lay.model, "lm_head", None)
    if isinstance(head, nn.Linear):
        slices.append(_lin_in(head, "lm_head"))
    return int(cfg.hidden_size), slices, norms


def _check_wrapper(lay: Layout, bases: tuple[str, ...], allow_lm_head: bool) -> None:
    if lay.model is lay.base:
        return
    extra = [n for n, _ in lay.model.named_children() if n not in ("model", "transformer", "bert")]
    if allow_lm_head and extra == ["lm_head"]:
        return
    msg = (
        f"hidden: pruning hidden channels supports {', '.join(bases)}"
        f"{' and its causal-LM head' if allow_lm_head else ''}; {type(lay.model).__name__} has "
        f"other modules reading the hidden state ({', '.join(extra)}): prune its base model"
    )
    raise StructureError(msg)


def _lin_out(lin: nn.Module, label: str) -> Slice:
    return Slice(lin, "weight", 0, label=label)


def _lin_in(lin: nn.Module, label: str) -> Slice:
    return Slice(lin, "weight", 1, label=label)


def _lin_out_all(lin: nn.Module, label: str) -> list[Slice]:
    out = [Slice(lin, "weight", 0, label=label)]
    if getattr(lin, "bias", None) is not None:
        out.append(Slice(lin, "bias", 0, label=label))
    return out


def _conv1d_out_all(conv: nn.Module, label: str) -> list[Slice]:
    return [Slice(conv, "weight", 1, label=label), Slice(conv, "bias", 0, label=label)]


def _norm(norm: nn.Module, label: str) -> list[Slice]:
    out = [Slice(norm, "weight", 0, label=label)]
    if getattr(norm, "bias", None) is not None:
        out.append(Slice(norm, "bias", 0, label=label))
    return out


def _with_biases(slices: list[Slice]) -> list[Slice]:
    """Add the bias of every Linear whose output rows are in `slices`."""
    out = list(slices)
    for s in slices:
        lin = s.module
        if (
            isinstance(lin, nn.Linear)
            and s.name == "weight"
            and s.dim == 0
            and lin.bias is not None
        ):
            out.append(Slice(s.module, "bias", 0, s.offsets, s.label))
    return out


# --- sizes ---------------------------------------------------------------------------------


def count_parameters(model: nn.Module) -> int:
    """Parameters, tied tensors counted once."""
    return sum(p.numel() for p in model.parameters())


def flops_per_token(model: nn.Module, seq_len: int) -> int:
    """Forward FLOPs per token at sequence length `seq_len`: 2 per multiply-add of every
    projection (the LM head included), plus attention's scores and weighted sum
    (``4 · seq_len · heads · head_dim`` per block, the causal mask not discounted)."""
    lay = layout(model)
    total = 0
    m: Any
    for m in model.modules():
        if isinstance(m, nn.Linear):
            total += 2 * m.in_features * m.out_features
        elif type(m).__name__ == "Conv1D":
            total += 2 * int(m.nx) * int(m.nf)
    for i in range(len(lay.blocks)):
        att = _attention(lay, i)
        total += 4 * seq_len * att.heads * att.head_dim
    pooler = getattr(lay.base, "pooler", None)
    if pooler is not None:  # runs once per sequence, not per token
        total -= 2 * pooler.dense.in_features * pooler.dense.out_features
    return total

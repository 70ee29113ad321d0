"""Run fastprune's benchmarks: ``python -m bench [module ...] [--markdown FILE] [--readme]``.

Every module in this folder whose name does not start with an underscore is a benchmark with
``run(table)``, except the whole-model benchmarks in `STANDALONE`. The table printed at the end
compares fastprune with the strongest baseline a user would reach for, measured in the same run,
together with the machine's own limits.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import pkgutil
import platform
import sys
from pathlib import Path

import fastprune

from . import _harness

# Benchmarks of whole models, run on their own (``python -m bench.NAME``): they need optional
# packages and data, take minutes, and print tables of their own.
STANDALONE = frozenset(
    {"decoder", "decoder_domains", "owl", "ray_solves", "sparse_decoder", "streaming"}
)


def available() -> list[str]:
    here = Path(__file__).parent
    return sorted(
        m.name
        for m in pkgutil.iter_modules([str(here)])
        if not m.name.startswith("_") and m.name not in STANDALONE
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "modules", nargs="*", help=f"benchmarks to run (default all: {available()})"
    )
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    parser.add_argument(
        "--readme",
        action="store_true",
        help="replace the benchmark table in README.md (between its bench markers)",
    )
    args = parser.parse_args(argv)
    names = args.modules or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")

    info = fastprune.info()
    limits = _harness.machine_limits()
    header = [
        f"date: {datetime.date.today().isoformat()}",
        f"machine: {info['cpu']}, {info['threads']} threads, {platform.machine()}",
        f"fastprune {info['version']} ({info['isa']}), numpy {__import__('numpy').__version__}",
        f"machine limits: numpy SGEMM {limits['sgemm_gflops']:.0f} GFLOP/s, "
        f"copy bandwidth {limits['copy_gbps']:.1f} GB/s",
    ]
    print("\n".join(header), flush=True)
    table = _harness.Table()
    for name in names:
        importlib.import_module(f"bench.{name}").run(table)
    text = "\n".join(f"- {line}" for line in header) + "\n\n" + table.markdown() + "\n"
    if args.markdown:
        args.markdown.write_text(text)
    if args.readme:
        update_readme(Path(__file__).resolve().parents[1] / "README.md", text)
    return 0


START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def update_readme(path: Path, text: str) -> None:
    readme = path.read_text()
    if START not in readme or END not in readme:
        msg = f"{path}: no {START} ... {END} section to replace"
        raise SystemExit(msg)
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{START}\n{text}{END}{tail}")


if __name__ == "__main__":
    sys.exit(main())

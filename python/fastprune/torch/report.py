"""What `prune_model` did: one row per pruned layer, totals, and a reproducibility manifest."""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._files import atomic_write, atomic_write_text

REPORT_FILE = "prune_report.json"
MANIFEST_FILE = "manifest.json"
PLOT_FILE = "prune_report.png"


@dataclass(frozen=True)
class LayerReport:
    """How one layer was pruned.

    Attributes:
        name: the module's qualified name in the model.
        block: index of the block the layer belongs to (None when the whole model is one block).
        shape: the weight matrix shape (out_features, in_features; in*kh*kw for convolutions).
        pattern: "unstructured" or "N:M" (N kept in every M).
        target_sparsity: the sparsity asked for.
        sparsity: the fraction of weights the mask pruned.
        loss: the method's own loss figure (`PruneResult.loss`: SparseGPT's OBS estimate, the
            pruned weights' squared (scaled) magnitude for Wanda and magnitude pruning).
        error: the mean over the calibration tokens of ``‖(W − Ŵ) x‖²``, the squared change of
            the layer's output, the same measure for every method (None without calibration).
        damp_used: relative damping that made the Hessian factorisable (SparseGPT), else None.
        seconds: wall time spent pruning the layer (its share of a shared factorisation included).
        group: index of the set of layers that read the same input and shared one Calibration.
        tokens: how many input rows (non-padding tokens) the layer was calibrated on.
    """

    name: str
    block: int | None
    shape: tuple[int, int]
    pattern: str
    target_sparsity: float
    sparsity: float
    loss: float
    error: float | None
    damp_used: float | None
    seconds: float
    group: int | None
    tokens: int

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]


@dataclass
class PruneReport:
    """Per-layer results of `prune_model`, totals, and the manifest that reproduces the run.

    `manifest` holds the fastprune and torch versions, the method and every option, the number
    of calibration batches, samples and tokens, a SHA-256 of the calibration data, and the seed;
    the CLI adds the model and calibration-text sources.

    `work` says where the time went (seconds): ``model_forward_seconds`` (the model's own
    forward passes), ``statistics_seconds`` (fastprune's calibration hooks),
    ``solve_seconds`` (the layers' solves, shared factorisations included) and
    ``other_seconds``; ``calibration_tokens`` and ``ms_per_token_one_pass`` (one forward pass
    of a calibration token through the model); ``block_passes`` (per block, the passes over
    the calibration data: one per group of layers calibrated in turn, plus the one that carries
    the data to the next block) and ``passes_stopped_early`` (per batch, the calibration passes
    that ended once the layers' inputs were known).
    """

    layers: list[LayerReport]
    manifest: dict[str, Any]
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)
    work: dict[str, Any] = field(default_factory=dict)

    @property
    def total_weights(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def pruned_weights(self) -> int:
        return sum(round(layer.sparsity * layer.size) for layer in self.layers)

    @property
    def sparsity(self) -> float:
        """Fraction of the pruned layers' weights set to zero."""
        return self.pruned_weights / max(self.total_weights, 1)

    @property
    def loss(self) -> float:
        return sum(layer.loss for layer in self.layers)

    @property
    def error(self) -> float | None:
        """The layers' output errors added up (None when they were pruned without data)."""
        errors = [layer.error for layer in self.layers]
        return None if None in errors else sum(e for e in errors if e is not None)

    def __getitem__(self, name: str) -> LayerReport:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def table(self) -> str:
        """A plain-text table: one line per layer, then the totals."""
        header = ("layer", "shape", "pattern", "sparsity", "error", "loss", "damp", "seconds")
        rows = [
            (
                layer.name,
                f"{layer.shape[0]}x{layer.shape[1]}",
                layer.pattern,
                f"{layer.sparsity:.4f}",
                _number(layer.error),
                f"{layer.loss:.4g}",
                "-" if layer.damp_used is None else f"{layer.damp_used:.3g}",
                f"{layer.seconds:.3f}",
            )
            for layer in self.layers
        ]
        total = (
            f"total ({len(self.layers)} layers)",
            f"{self.total_weights} weights",
            "",
            f"{self.sparsity:.4f}",
            _number(self.error),
            f"{self.loss:.4g}",
            "",
            f"{self.seconds:.3f}",
        )
        widths = [max(len(r[i]) for r in [header, *rows, total]) for i in range(len(header))]

        def line(cells: tuple[str, ...]) -> str:
            first = cells[0].ljust(widths[0])
            rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
            return "  ".join([first, *rest]).rstrip()

        rule = "-" * len(line(header))
        out = [line(header), rule, *(line(r) for r in rows), rule, line(total)]
        if self.skipped:
            out.append(f"left dense: {', '.join(self.skipped)}")
        if self.work.get("calibration_tokens"):
            out.append(self.work_summary())
        return "\n".join(out)

    def work_summary(self) -> str:
        """Where the time went, in one line (empty without calibration)."""
        w = self.work
        if not w.get("calibration_tokens"):
            return ""
        total = max(float(w["seconds"]), 1e-12)
        shares = ", ".join(
            f"{what} {w[key]:.1f} s ({w[key] / total:.0%})"
            for what, key in (
                ("model forward", "model_forward_seconds"),
                ("statistics", "statistics_seconds"),
                ("solves", "solve_seconds"),
                ("other", "other_seconds"),
            )
        )
        passes = w.get("block_passes") or [0]
        line = f"time: {shares}; {w['calibration_tokens']} calibration tokens"
        if w.get("ms_per_token_one_pass") is not None:
            line += f", {w['ms_per_token_one_pass']:.3f} ms per token per pass through the model"
        line += f"; {max(passes)} passes per block ({w.get('passes_stopped_early', 0)} ended early)"
        return line

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": [asdict(layer) for layer in self.layers],
            "skipped": list(self.skipped),
            "totals": {
                "layers": len(self.layers),
                "weights": self.total_weights,
                "pruned": self.pruned_weights,
                "sparsity": self.sparsity,
                "loss": self.loss,
                "error": self.error,
                "seconds": self.seconds,
            },
            "manifest": self.manifest,
            "work": self.work,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> PruneReport:
        data = json.loads(text)
        layers = [
            LayerReport(**{**layer, "shape": tuple(layer["shape"])}) for layer in data["layers"]
        ]
        return cls(
            layers,
            data["manifest"],
            data["totals"]["seconds"],
            data["skipped"],
            data.get("work", {}),
        )

    def save(self, directory: str | Path) -> list[Path]:
        """Write the report, the manifest and (with matplotlib) the plot into `directory`.

        Each file is written atomically (complete, or the previous one left as it was)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        written = [out / REPORT_FILE, out / MANIFEST_FILE]
        atomic_write_text(written[0], self.to_json() + "\n")
        atomic_write_text(written[1], json.dumps(self.manifest, indent=2) + "\n")
        with contextlib.suppress(ImportError):
            written.append(self.plot(out / PLOT_FILE))
        return written

    def plot(self, path: str | Path) -> Path:
        """A PNG with the per-layer sparsity and error; ImportError without matplotlib."""
        from matplotlib.figure import Figure

        names = [layer.name for layer in self.layers]
        positions = range(len(names))
        fig = Figure(figsize=(max(6.0, 0.18 * len(names) + 2.0), 7.0), layout="constrained")
        top, bottom = fig.subplots(2, 1, sharex=True)
        top.bar(positions, [layer.sparsity for layer in self.layers], color="tab:blue")
        top.set_ylabel("sparsity")
        top.set_ylim(0.0, 1.0)
        top.set_title(f"{self.manifest.get('method', '')} — {self.sparsity:.1%} of weights pruned")
        errors = [layer.error for layer in self.layers]
        if None in errors:  # pruned without data: only the method's own estimate is known
            bottom.bar(positions, [layer.loss for layer in self.layers], color="tab:red")
            bottom.set_ylabel("method's loss estimate")
        else:
            bottom.bar(positions, errors, color="tab:red")
            bottom.set_ylabel("output error per token")
        if any(bar.get_height() > 0 for bar in bottom.patches):
            bottom.set_yscale("log")
        bottom.set_xticks(list(positions), names, rotation=90, fontsize=6)
        target = Path(path)
        atomic_write(target, lambda f: fig.savefig(f, dpi=120, format="png"))
        return target


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"

"""fastprune.torch.report: the pruning report's table, JSON, files, plot and manifest."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

import fastprune as fp  # noqa: E402
from _torch_toy import batches, toy  # noqa: E402
from fastprune.torch import PruneReport, prune_model  # noqa: E402

# --- report and manifest ---------------------------------------------------------------------


def test_the_calibration_hash_identifies_the_data():
    def digest(data):
        return prune_model(toy(), data, method="wanda").manifest["calibration"]["sha256"]

    assert digest(batches(seed=1)) == digest(batches(seed=1))
    assert digest(batches(seed=1)) != digest(batches(seed=2))


def test_report_table_json_and_files(tmp_path):
    report = prune_model(toy(), batches(), method="sparsegpt", seed=5, progress=False)
    table = report.table()
    assert table.count("\n") == len(report.layers) + 3
    assert "layers.1.down" in table
    assert "total (12 layers)" in table
    assert str(report) == table
    data = json.loads(report.to_json())
    assert data["totals"]["layers"] == 12
    assert data["totals"]["sparsity"] == 0.5
    assert data["manifest"]["seed"] == 5
    assert data["manifest"]["fastprune_version"] == fp.__version__
    assert data["manifest"]["calibration"]["batches"] == 3
    assert data["manifest"]["options"]["blocks"] == "layers"
    again = PruneReport.from_json(report.to_json())
    assert again.layers == report.layers
    assert again.manifest == report.manifest
    for layer in report.layers:
        assert layer.loss >= 0.0
        assert layer.damp_used is not None
        assert layer.seconds >= 0.0
    written = report.save(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == report.manifest
    assert json.loads((tmp_path / "out" / "prune_report.json").read_text()) == data
    names_written = {p.name for p in written}
    assert {"manifest.json", "prune_report.json"} <= names_written
    with pytest.raises(KeyError):
        report["nope"]


def test_report_plot(tmp_path):
    pytest.importorskip("matplotlib")
    report = prune_model(toy(), batches(), method="wanda", progress=False)
    path = report.plot(tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "prune_report.png" in {p.name for p in report.save(tmp_path)}

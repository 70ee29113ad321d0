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
    assert table.count("\n") == len(report.layers) + 4  # header, rules, total, where time went
    assert table.splitlines()[-1] == report.work_summary()
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
    assert again.work == report.work == data["work"]
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


def test_report_says_where_the_time_went():
    report = prune_model(toy(), batches(), method="sparsegpt", progress=False)
    work = report.work
    # per block: one pass per group of layers (q/k/v, o, up, down), plus one carrying the data
    # on to the next block; of the 3 batches of each group's pass, the last 2 stop once the
    # group's inputs are known (the first runs whole to learn the calls), except for "down"
    assert work["block_passes"] == [5, 4]
    assert work["passes_stopped_early"] == 2 * 3 * 2
    assert work["calibration_tokens"] == report.manifest["calibration"]["tokens"] > 0
    assert work["ms_per_token_one_pass"] > 0
    parts = ("model_forward_seconds", "statistics_seconds", "solve_seconds", "other_seconds")
    assert all(work[key] >= 0 for key in parts)
    assert work["solve_seconds"] == pytest.approx(sum(row.seconds for row in report.layers))
    assert sum(work[key] for key in parts) == pytest.approx(report.seconds, rel=1e-6)
    assert "passes per block" in report.work_summary()


def test_without_calibration_the_report_has_no_work_line():
    report = prune_model(toy(), None, method="magnitude", progress=False)
    assert report.work_summary() == ""
    assert report.table().splitlines()[-1].startswith("total")


def test_report_plot(tmp_path):
    pytest.importorskip("matplotlib")
    report = prune_model(toy(), batches(), method="wanda", progress=False)
    path = report.plot(tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "prune_report.png" in {p.name for p in report.save(tmp_path)}

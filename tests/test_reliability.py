"""Bad inputs to every public function and CLI command: each is refused with the documented
exception type and a message that names the argument (or the file) in the user's terms, and
every result that comes back agrees with itself (weight, mask, sparsity, loss).

The README's "Reliability" section quotes the number of cases this module collects.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastprune as fp
from fastprune import importance, masks, schedules
from fastprune.cli import main

ml_dtypes = pytest.importorskip("ml_dtypes")

RNG = np.random.default_rng(0)
W = RNG.standard_normal((8, 16)).astype(np.float32)
H = np.eye(16)
A = np.ones(16, np.float32)


def calibrated(n: int = 16) -> fp.Calibration:
    cal = fp.Calibration(n)
    cal.update(RNG.standard_normal((64, n)).astype(np.float32))
    return cal


# (case id, call, exception type, regular expression the message must match: the argument)
Case = tuple[str, Callable[[], object], type[Exception], str]

CASES: list[Case] = [
    # importance
    ("magnitude weight str", lambda: importance.magnitude("w"), TypeError, r"^weight: "),
    (
        "magnitude weight int",
        lambda: importance.magnitude(np.ones((2, 2), int)),
        TypeError,
        r"^weight: ",
    ),
    ("magnitude weight 1-D", lambda: importance.magnitude(np.ones(3)), ValueError, r"^weight: "),
    (
        "magnitude weight nan",
        lambda: importance.magnitude(np.full((2, 2), np.nan)),
        ValueError,
        r"^weight: ",
    ),
    ("magnitude norm", lambda: importance.magnitude(W, "l3"), ValueError, r"^norm: "),
    ("magnitude group", lambda: importance.magnitude(W, group="diag"), ValueError, r"^group: "),
    ("magnitude block", lambda: importance.magnitude(W, group=(3, 3)), ValueError, r"^group: "),
    (
        "magnitude float64 overflow",
        lambda: importance.magnitude(np.full((2, 2), 1e300), "l2"),
        ValueError,
        r"^weight: .*overflow",
    ),
    ("wanda act_sq length", lambda: importance.wanda(W, np.ones(3)), ValueError, r"^act_sq: "),
    ("wanda act_sq negative", lambda: importance.wanda(W, -A), ValueError, r"^act_sq: "),
    (
        "wanda act_sq inf",
        lambda: importance.wanda(W, np.full(16, np.inf)),
        ValueError,
        r"^act_sq: ",
    ),
    ("wanda act_sq list of str", lambda: importance.wanda(W, ["a"] * 16), TypeError, r"^act_sq: "),
    (
        "wanda float64 overflow",
        lambda: importance.wanda(np.full((2, 2), 1e300), np.full(2, 1e300)),
        ValueError,
        r"^weight and act_sq: .*overflow",
    ),
    ("taylor grad shape", lambda: importance.taylor(W, W[:, :3]), ValueError, r"^grad: "),
    (
        "taylor grad nan",
        lambda: importance.taylor(W, np.full_like(W, np.nan)),
        ValueError,
        r"^grad: ",
    ),
    ("taylor per", lambda: importance.taylor(W, W, per="row"), ValueError, r"^per: "),
    (
        "taylor multivariable",
        lambda: importance.taylor(W, W, multivariable="yes", per="channel"),
        TypeError,
        r"^multivariable: ",
    ),
    (
        "taylor float64 overflow",
        lambda: importance.taylor(np.full((2, 2), 1e300), np.full((2, 2), 1e300)),
        ValueError,
        r"^weight and grad: .*overflow",
    ),
    ("reduce_group empty", lambda: importance.reduce_group([]), ValueError, r"^scores_list: "),
    (
        "reduce_group lengths",
        lambda: importance.reduce_group([np.ones(2), np.ones(3)]),
        ValueError,
        r"^scores_list\[1\]: ",
    ),
    (
        "reduce_group reduction",
        lambda: importance.reduce_group([np.ones(2)], "median"),
        ValueError,
        r"^reduction: ",
    ),
    (
        "normalize scores 2-D",
        lambda: importance.normalize(np.ones((2, 2))),
        ValueError,
        r"^scores: ",
    ),
    (
        "normalize normalizer",
        lambda: importance.normalize(np.ones(2), "l2"),
        ValueError,
        r"^normalizer: ",
    ),
    ("group_taylor pairs", lambda: importance.group_taylor("x"), ValueError, r"pairs"),
    (
        "saliency hessian shape",
        lambda: importance.sparsegpt(W, np.eye(3)),
        ValueError,
        r"^hessian: ",
    ),
    (
        "saliency empty calibration",
        lambda: importance.sparsegpt(W, fp.Calibration(16)),
        ValueError,
        r"^calibration_or_hessian: .*no tokens",
    ),
    # masks
    ("pattern spec", lambda: masks.pattern("5:4"), ValueError, r"^pattern: |^n: "),
    ("pattern type", lambda: masks.pattern(3), TypeError, r"^pattern: |^spec: "),
    ("mask sparsity", lambda: fp.mask(W, 1.5), ValueError, r"^sparsity: "),
    ("mask sparsity type", lambda: fp.mask(W, "half"), TypeError, r"^sparsity: "),
    ("mask scores nan", lambda: fp.mask(np.full((2, 2), np.nan), 0.5), ValueError, r"^scores: "),
    ("mask scope", lambda: fp.mask(W, 0.5, scope="model"), ValueError, r"^scope: "),
    ("mask nm width", lambda: fp.mask(W[:, :6], None, "4:8"), ValueError, r"pattern|in_features"),
    ("check mask dtype", lambda: masks.check(np.ones((2, 4)), "2:4"), TypeError, r"^mask: "),
    ("apply_mask dtype", lambda: fp.apply_mask(W, np.ones(W.shape)), TypeError, r"^mask: "),
    ("apply_mask shape", lambda: fp.apply_mask(W, np.ones((2, 2), bool)), ValueError, r"^mask: "),
    # pruners
    (
        "wanda empty calibration",
        lambda: fp.wanda(W, fp.Calibration(16)),
        ValueError,
        r"^calibration_or_act_sq: .*no tokens",
    ),
    (
        "wanda overflowed calibration",
        lambda: fp.wanda(W, overflowed()),
        ValueError,
        r"^calibration_or_act_sq: .*overflowed",
    ),
    ("wanda weight 3-D", lambda: fp.wanda(np.ones((2, 2, 2)), A[:2]), ValueError, r"^weight: "),
    ("wanda variant", lambda: fp.wanda(W, A, variant="x"), ValueError, r"^variant: "),
    (
        "wanda global lists",
        lambda: fp.wanda([W], [A, A], scope="global"),
        ValueError,
        r"^calibration_or_act_sq: ",
    ),
    (
        "magnitude_prune global",
        lambda: fp.magnitude_prune(W, scope="global"),
        TypeError,
        r"^weight: ",
    ),
    ("magnitude_prune sparsity", lambda: fp.magnitude_prune(W, -0.1), ValueError, r"^sparsity: "),
    # sparsegpt
    (
        "sparsegpt empty calibration",
        lambda: fp.sparsegpt(W, fp.Calibration(16)),
        ValueError,
        r"^calibration_or_hessian: .*no tokens",
    ),
    (
        "sparsegpt overflowed calibration",
        lambda: fp.sparsegpt(W, overflowed()),
        ValueError,
        r"^calibration_or_hessian: .*overflowed",
    ),
    (
        "sparsegpt zero hessian",
        lambda: fp.sparsegpt(W, np.zeros((16, 16))),
        ValueError,
        r"^hessian: .*all zero",
    ),
    (
        "sparsegpt underflowing hessian",
        lambda: fp.sparsegpt(W, 1e-46 * H),
        ValueError,
        r"^hessian: .*underflows",
    ),
    (
        "sparsegpt float16 overflow",
        lambda: fp.sparsegpt(*float16_overflow()),
        ValueError,
        r"^weight: .*float16",
    ),
    (
        "sparsegpt hessian nan",
        lambda: fp.sparsegpt(W, np.full((16, 16), np.nan)),
        ValueError,
        r"^hessian: ",
    ),
    ("sparsegpt hessian shape", lambda: fp.sparsegpt(W, np.eye(4)), ValueError, r"^hessian: "),
    ("sparsegpt blocksize", lambda: fp.sparsegpt(W, H, blocksize=0), ValueError, r"^blocksize: "),
    ("sparsegpt damp", lambda: fp.sparsegpt(W, H, damp=-1), ValueError, r"^damp: "),
    (
        "sparsegpt precision",
        lambda: fp.sparsegpt(W, H, precision="half"),
        ValueError,
        r"^precision: ",
    ),
    ("sparsegpt pattern", lambda: fp.sparsegpt(W, H, pattern="row"), ValueError, r"^pattern: "),
    (
        "sparsegpt keep_mask",
        lambda: fp.sparsegpt(W, H, keep_mask=np.ones((2, 2), bool)),
        ValueError,
        r"^keep_mask: ",
    ),
    (
        "sparsegpt inplace",
        lambda: fp.sparsegpt(W.astype(np.float64), H, inplace=True),
        ValueError,
        r"^weight: ",
    ),
    (
        "sparsegpt_factor damp",
        lambda: fp.sparsegpt_factor(H, damp=float("nan")),
        ValueError,
        r"^damp: ",
    ),
    (
        "sparsegpt_factor empty",
        lambda: fp.sparsegpt_factor(fp.Calibration(4)),
        ValueError,
        r"^calibration_or_hessian: ",
    ),
    # Calibration
    ("Calibration in_features", lambda: fp.Calibration(0), ValueError, r"^in_features: "),
    ("Calibration dtype", lambda: fp.Calibration(4, np.float16), TypeError, r"^dtype: "),
    ("update shape", lambda: fp.Calibration(4).update(np.ones((2, 3))), ValueError, r"^x: "),
    ("update nan", lambda: fp.Calibration(4).update(np.full((2, 4), np.nan)), ValueError, r"^x: "),
    (
        "update mask dtype",
        lambda: fp.Calibration(4).update(np.ones((2, 4)), np.ones(2)),
        TypeError,
        r"^mask: ",
    ),
    (
        "update mask shape",
        lambda: fp.Calibration(4).update(np.ones((2, 4)), np.ones(3, bool)),
        ValueError,
        r"^mask: ",
    ),
    ("merge type", lambda: fp.Calibration(4).merge("x"), TypeError, r"^other: "),
    ("merge width", lambda: fp.Calibration(4).merge(fp.Calibration(5)), ValueError, r"^other: "),
    # schedules
    ("schedule every", lambda: schedules.SparsitySchedule(0.5, every=0), ValueError, r"^every: "),
    (
        "schedule end",
        lambda: schedules.SparsitySchedule(0.5, start=5, end=1),
        ValueError,
        r"^end: ",
    ),
    ("kept_per_group", lambda: schedules.kept_per_group(0.5, 5, 4), ValueError, r"^n: "),
    (
        "rank_pruned_first",
        lambda: schedules.rank_pruned_first(W, np.ones((2, 2), bool)),
        ValueError,
        r"^keep: ",
    ),
    # formats
    ("CSR from_dense 3-D", lambda: fp.CSR.from_dense(np.ones((2, 2, 2))), ValueError, r"^x: "),
    (
        "CSR indptr",
        lambda: fp.CSR(np.array([0, 5]), np.array([0]), np.ones(1), (1, 2)),
        ValueError,
        r"indptr",
    ),
    ("to_nm pattern", lambda: fp.CSR.from_dense(W).to_nm(5, 4), ValueError, r"^n: |n and m|^m: "),
    # threads and memory
    ("set_num_threads", lambda: fp.set_num_threads(0), ValueError, r"^n: "),
    ("set_memory_cache_limit", lambda: fp.set_memory_cache_limit(-1), ValueError, r"^nbytes: "),
    # io
    ("save tensors", lambda: fp.save("unused.safetensors", [W]), TypeError, r"^tensors: "),
    ("save name", lambda: fp.save("unused.safetensors", {"": W}), ValueError, r"^tensors: "),
    (
        "save dtype",
        lambda: fp.save("unused.safetensors", {"a": np.ones(2, complex)}),
        TypeError,
        r"^tensors\['a'\]: ",
    ),
]


def overflowed() -> fp.Calibration:
    # update and merge refuse to get here; a calibration whose sums overflowed anyway (loaded
    # by other code, or built from its parts) must still be refused by every method.
    x = np.ones((4, 16), np.float32)
    x[0, 3] = 3e19  # finite, but its square is not in float32
    wide = fp.Calibration(16, dtype=np.float64)
    wide.update(x)
    with pytest.raises(ValueError, match=r"^other: merged, the sum of squares of feature 3"):
        fp.Calibration(16).merge(wide)
    cal = fp.Calibration(16)
    with np.errstate(over="ignore"):
        cal._gram = wide._gram.astype(np.float32)
    cal._count = wide.count
    return cal


def float16_overflow() -> tuple[np.ndarray, np.ndarray]:
    # two nearly collinear inputs: pruning one moves its weight onto the other, past 65504
    w = np.full((4, 8), 60000, np.float16)
    h = np.eye(8)
    h[0, 1] = h[1, 0] = 0.999
    return w, h


@pytest.mark.parametrize(
    ("call", "error", "named"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_refused_naming_the_argument(call, error, named, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the io cases never write: they fail before
    with pytest.raises(error) as info:
        call()
    assert info.type is error or issubclass(info.type, error)
    assert re.search(named, str(info.value)), str(info.value)
    assert not any(tmp_path.iterdir())


# --- malformed safetensors: one reader, the same refusal from fp.load and fastprune inspect ---


def header_file(path: Path, header: object, data: bytes = b"", length: int | None = None) -> Path:
    text = json.dumps(header).encode() if not isinstance(header, bytes) else header
    size = len(text) if length is None else length
    path.write_bytes(size.to_bytes(8, "little") + text + data)
    return path


GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
MALFORMED: list[tuple[str, object, bytes, int | None]] = [
    ("length 2**31", GOOD, bytes(8), 2**31),
    ("length 2**63", GOOD, bytes(8), 2**63),
    ("length 2**64-1", GOOD, bytes(8), 2**64 - 1),
    ("a JSON list", [1, 2], b"", None),
    ("a JSON string", "header", b"", None),
    ("not JSON", b"{oops", b"", None),
    ("not UTF-8", b"\xff\xfe", b"", None),
    ("no data_offsets", {"a": {"dtype": "F32", "shape": [2]}}, bytes(8), None),
    (
        "offsets past the end",
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 80]}},
        bytes(8),
        None,
    ),
    (
        "offsets reversed",
        {"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}},
        bytes(8),
        None,
    ),
    (
        "shape not matching bytes",
        {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
        bytes(8),
        None,
    ),
    (
        "negative dimension",
        {"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}},
        bytes(8),
        None,
    ),
    (
        "dimension 2**70",
        {"a": {"dtype": "F32", "shape": [2**70, 0], "data_offsets": [0, 0]}},
        b"",
        None,
    ),
    (
        "65 dimensions",
        {"a": {"dtype": "F32", "shape": [1] * 65, "data_offsets": [0, 4]}},
        bytes(4),
        None,
    ),
    (
        "unknown dtype",
        {"a": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}},
        bytes(16),
        None,
    ),
    (
        "overlapping tensors",
        {
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
        },
        bytes(8),
        None,
    ),
    ("deeply nested", b"[" * 100000 + b"]" * 100000, b"", None),
    ("bad metadata", {"__metadata__": {"k": 1}}, b"", None),
    ("truncated", b"", b"", 0),
]


@pytest.mark.parametrize(
    ("header", "data", "length"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_safetensors_are_refused_alike_by_load_and_inspect(
    tmp_path, capsys, header, data, length
):
    path = header_file(tmp_path / "bad.safetensors", header, data, length)
    with pytest.raises(ValueError, match=r"bad\.safetensors: not a valid safetensors file") as info:
        fp.load(path)
    status = main(["inspect", str(path)])
    err = capsys.readouterr().err
    assert status == 1
    assert str(info.value) in err  # the same reader, the same reason
    assert "Traceback" not in err


def test_a_directory_or_a_missing_file_is_named(tmp_path):
    with pytest.raises(IsADirectoryError, match=re.escape(str(tmp_path))):
        fp.load(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"missing\.safetensors"):
        fp.load(tmp_path / "missing.safetensors")
    with pytest.raises(IsADirectoryError, match=r"^path: .*is a directory"):
        fp.Calibration.load(tmp_path)
    (tmp_path / "x.npz").mkdir()
    with pytest.raises(IsADirectoryError, match=r"^path: .*is a directory"):
        fp.Calibration.load(tmp_path / "x.npz")
    with pytest.raises(IsADirectoryError, match=r"^path: "):
        fp.save(tmp_path / "x.npz", {"a": W})
    (tmp_path / "c.safetensors").mkdir()
    for target in (tmp_path / "x.npz", tmp_path / "c.safetensors"):
        with pytest.raises(IsADirectoryError, match=r"^path: .*is a directory"):
            calibrated().save(target)
    with pytest.raises(FileNotFoundError, match=r"^path: the directory of .* does not exist"):
        calibrated().save(tmp_path / "no" / "c.npz")


# --- files: atomic, permissions kept, symlinks written through --------------------------------


def test_save_keeps_permissions_and_uses_the_umask_for_new_files(tmp_path):
    target = tmp_path / "w.safetensors"
    fp.save(target, {"a": W})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    target.chmod(0o640)
    fp.save(target, {"a": W * 2})
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    np.testing.assert_array_equal(fp.load(target)["a"], W * 2)
    cal = tmp_path / "c.npz"
    cal.write_bytes(b"")
    cal.chmod(0o604)
    calibrated().save(cal)
    assert stat.S_IMODE(cal.stat().st_mode) == 0o604


@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links need privileges there")
@pytest.mark.parametrize("kind", ["safetensors", "npz"])
def test_a_symlink_is_written_through_and_kept(tmp_path, kind):
    real = tmp_path / "store" / f"real.{kind}"
    real.parent.mkdir()
    link = tmp_path / f"link.{kind}"
    link.symlink_to(real)
    cal = calibrated()
    if kind == "npz":
        cal.save(link)
        loaded = fp.Calibration.load(real)
        np.testing.assert_array_equal(loaded.hessian, cal.hessian)
    else:
        fp.save(link, {"a": W})
        np.testing.assert_array_equal(fp.load(real)["a"], W)
    assert link.is_symlink()
    assert sorted(p.name for p in real.parent.iterdir()) == [real.name]  # no temporary left


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_an_interrupted_save_leaves_the_previous_file_whole(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"c{suffix}"
    first = calibrated()
    first.save(path)
    before = path.read_bytes()

    def interrupted(*_args: Any, **_kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    monkeypatch.setattr("safetensors.numpy.save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        calibrated().save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_statistics_that_overflowed_are_never_written(tmp_path):
    path = tmp_path / "c.npz"
    with pytest.raises(ValueError, match=r"^path: not written: the sums of squares overflowed"):
        overflowed().save(path)
    assert not path.exists()
    # what is written can always be read back, float32 up to the edge of its range
    cal = fp.Calibration(2)
    cal.update(np.array([[1e19, 1.0]], np.float32))
    cal.save(path)
    np.testing.assert_array_equal(fp.Calibration.load(path).act_sq, cal.act_sq)


# --- results agree with themselves --------------------------------------------------------------


def test_scores_beyond_float32_are_computed_in_float64():
    w = np.full((2, 4), 1e30, np.float32)
    w[0, 0] = 2e30
    scores = importance.magnitude(w, "l2")
    assert scores.dtype == np.float64
    np.testing.assert_allclose(scores, np.square(w.astype(np.float64)))
    act = np.full(4, 1e30, np.float32)
    result = fp.wanda(w, act, 0.5)
    assert result.mask[0, 0]  # the largest score is kept, not lost to an Inf tie
    assert np.isfinite(result.loss)
    taylor = importance.taylor(w, w)
    np.testing.assert_allclose(taylor, np.square(w.astype(np.float64)))


def bfloat16_cases() -> list[tuple[str, Callable[[Any], object]]]:
    cal = calibrated()
    return [
        ("magnitude", lambda t: importance.magnitude(t)),
        ("magnitude group", lambda t: importance.magnitude(t, "l2", group="row")),
        ("wanda scores", lambda t: importance.wanda(t, cal.act_sq)),
        ("taylor", lambda t: importance.taylor(t, t)),
        ("saliency", lambda t: importance.sparsegpt(t, cal)),
        ("mask", lambda t: fp.mask(t, 0.5)),
        ("apply_mask", lambda t: fp.apply_mask(t, np.ones((8, 16), bool))),
        ("wanda", lambda t: fp.wanda(t, cal).weight),
        ("magnitude_prune", lambda t: fp.magnitude_prune(t).weight),
        ("sparsegpt", lambda t: fp.sparsegpt(t, cal).weight),
        ("Calibration.update", lambda t: fp.Calibration(16).update(t)),
        ("CSR.from_dense", lambda t: fp.CSR.from_dense(t).to_dense()),
    ]


@pytest.mark.parametrize("case", bfloat16_cases(), ids=[c[0] for c in bfloat16_cases()])
def test_torch_bfloat16_tensors_are_accepted_through_dlpack(case):
    torch = pytest.importorskip("torch")
    tensor = torch.from_numpy(W).to(torch.bfloat16)
    as_numpy = W.astype(ml_dtypes.bfloat16)
    got, expected = case[1](tensor), case[1](as_numpy)
    if expected is None:
        return
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_a_bfloat16_tensor_is_viewed_not_copied():
    torch = pytest.importorskip("torch")
    from fastprune._arrays import to_numpy

    tensor = torch.from_numpy(W).to(torch.bfloat16)
    view = to_numpy(tensor, "weight")
    assert view.dtype == np.dtype(ml_dtypes.bfloat16)
    assert view.ctypes.data == tensor.data_ptr()


# --- the command line ---------------------------------------------------------------------------

CLI_CASES = [
    ("prune --out file", ["prune", "--out", "{file}"], r"--out: .* is a file, not a directory"),
    (
        "prune --out file --overwrite",
        ["prune", "--out", "{file}", "--overwrite"],
        r"--out: .* is a file",
    ),
    ("prune --sparsity", ["prune", "--out", "{dir}/o", "--sparsity", "1.5"], r"--sparsity: "),
    ("prune --damp", ["prune", "--out", "{dir}/o", "--damp", "-1"], r"--damp: "),
    ("prune --samples", ["prune", "--out", "{dir}/o", "--samples", "0"], r"--samples: "),
    ("prune --pattern", ["prune", "--out", "{dir}/o", "--pattern", "5:4"], r"--pattern: "),
    ("prune model dir", ["prune", "{dir}/nothing", "--out", "{dir}/o"], r"nothing"),
    ("inspect missing", ["inspect", "{dir}/missing"], r"does not exist"),
    ("inspect empty dir", ["inspect", "{dir}"], r"holds no \.safetensors file"),
    ("inspect --pattern", ["inspect", "{file}", "--pattern", "row"], r"--pattern: "),
    ("shrink --out file", ["shrink", "--out", "{file}"], r"--out: .* is a file"),
]


@pytest.mark.parametrize(
    ("argv", "named"), [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES]
)
def test_cli_bad_input_is_one_line_naming_the_option(tmp_path, capsys, argv, named):
    pytest.importorskip("torch")
    afile = tmp_path / "afile"
    afile.write_text("x")
    args = [a.format(file=afile, dir=tmp_path) for a in argv]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert re.search(named, err), err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_an_output_directory_is_marked_incomplete_until_written(tmp_path):
    from fastprune._files import INCOMPLETE, incomplete_marker

    out = tmp_path / "model"

    def write_then_crash() -> None:
        with incomplete_marker(out):
            (out / "config.json").write_text("{}")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_then_crash()
    assert (out / INCOMPLETE).exists()  # a crash leaves the directory marked partial
    with incomplete_marker(out):
        assert (out / INCOMPLETE).exists()
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]


ENTRY_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from(["F32", "F16", "BF16", "I8", "BOOL", "F128", ""]),
    st.lists(st.integers(-2, 2**65), max_size=3),
)
ENTRIES = st.dictionaries(
    st.sampled_from(["dtype", "shape", "data_offsets", "extra"]), ENTRY_VALUES, max_size=4
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    header=st.dictionaries(st.sampled_from(["a", "b", "__metadata__"]), ENTRIES, max_size=2),
    data=st.binary(max_size=24),
)
def test_any_header_is_read_or_refused_alike_by_load_and_inspect(tmp_path, capsys, header, data):
    path = header_file(tmp_path / "fuzz.safetensors", header, data)
    refused: str | None = None
    try:
        loaded = fp.load(path)
    except ValueError as err:
        refused = str(err)
    if refused is not None:
        assert refused.startswith(f"{path}: not a valid safetensors file")
        assert main(["inspect", str(path)]) == 1
        assert refused in capsys.readouterr().err
        return
    status = main(["inspect", str(path), "--json"])
    out = capsys.readouterr().out
    assert status == 0
    assert {row["tensor"] for row in json.loads(out)} == set(loaded)

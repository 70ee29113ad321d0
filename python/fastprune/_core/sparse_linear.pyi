# Stubs for fastprune._core.sparse_linear (linear layers with packed-bitmask sparse weights).
# mask is uint16 (rows, ceil(cols / 16)), offsets int64 (rows + 1,), values float32 or uint16
# (bfloat16 bits) with SLACK elements after the last kept weight; out is allocated by the caller.
from typing import Any

import numpy.typing as npt

_A = npt.NDArray[Any]

BLOCK: int
SLACK: int
GEMM_COLUMNS: int

def check(mask: _A, offsets: _A, cols: int) -> int: ...
def linear(
    mask: _A, offsets: _A, values: _A, cols: int, x: _A, out: _A, gemm_from: int = ...
) -> None: ...
def to_dense(mask: _A, offsets: _A, values: _A, out: _A) -> None: ...

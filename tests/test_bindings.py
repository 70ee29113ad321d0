"""The compiled bindings' own contract, on every instruction-set level: the one dtype dispatch
names the argument and the dtypes it takes, the exported bitmask row size, and the memory
cache under its one name."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from fastprune import _core


@pytest.fixture(params=_core.supported_levels())
def core(request: pytest.FixtureRequest) -> Iterator[Any]:
    with _core.use(request.param):
        yield _core


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.importance.magnitude(np.ones((2, 2), np.int32), "l1"), "weight"),
        (lambda c: c.masks.per_row(np.ones((2, 2), np.int64), 1), "scores"),
        (lambda c: c.calibration.all_finite(np.ones((2, 2), np.float16)), "x"),
        (lambda c: c.sparsegpt.hessian_factor(np.eye(2, dtype=np.int8), 0.01, 6), "hessian"),
    ],
)
def test_a_wrong_dtype_names_the_argument_and_the_dtypes_taken(
    core: Any, call: Callable[[Any], object], message: str
) -> None:
    with pytest.raises(TypeError, match=rf"^{message}: expected dtype float32 or float64, got"):
        call(core)


def test_storage_and_index_dispatch_list_their_dtypes(core: Any) -> None:
    formats = core.formats
    with pytest.raises(TypeError, match=r"^x: expected dtype float32, float64 or uint16, got int8"):
        formats.row_nonzeros(np.ones((2, 2), np.int8))
    x = np.ones((2, 2), np.float32)
    with pytest.raises(TypeError, match=r"^indptr: expected dtype int32 or int64, got uint32"):
        formats.dense_to_csr(x, np.zeros(3, np.uint32), np.zeros(4, np.int32), np.zeros(4, x.dtype))


@pytest.mark.parametrize("cols", [0, 1, 7, 8, 9, 63, 64, 65, 1000, 2**40 + 1])
def test_bitmask_row_bytes_is_the_packed_row_length(core: Any, cols: int) -> None:
    formats = core.formats
    assert formats.bitmask_row_bytes(cols) == (cols + 7) // 8
    if cols <= 4096:
        assert formats.bitmask_row_bytes(cols) == np.packbits(np.ones(cols, bool)).size


def test_the_memory_cache_has_one_name(core: Any) -> None:
    held, limit = core.memory_cache()
    assert 0 <= held <= limit or limit == 0
    assert not any("scratch" in name for name in dir(core))

# Stubs for fastprune._core.calibration (the compiled kernels). `gram` is a C-contiguous square
# float32/float64 array; `x` a 2-D (tokens, features) array of the same dtype whose features or
# tokens are contiguous.
from typing import Any

import numpy as np
import numpy.typing as npt

_Floats = npt.NDArray[np.floating[Any]]

def add_gram_lower(gram: _Floats, x: npt.NDArray[Any]) -> None: ...
def all_finite(x: npt.NDArray[Any]) -> bool: ...
def copy_finite(x: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], bool]: ...
def symmetric_from_lower(gram: _Floats, scale: float) -> _Floats: ...

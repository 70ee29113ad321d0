"""Sparse storage formats for pruned weights, their conversions, interop and sparse matmul.

Five formats, each an immutable object holding NumPy component arrays:

- :class:`CSR` — ``indptr`` (rows + 1), ``indices`` (column of each stored value, sorted and
  unique within a row), ``data``. The layout of ``scipy.sparse.csr_array`` and ``torch``'s
  sparse CSR tensors.
- :class:`COO` — ``row``, ``col``, ``data``, in canonical order: sorted by (row, column), no
  duplicates.
- :class:`BSR` — blocks of ``h × w``: ``indptr`` over block rows, ``indices`` (block column of
  each stored block), ``data`` of shape ``(blocks, h, w)``. The layout of ``scipy.sparse.bsr_array``
  and torch's sparse BSR tensors.
- :class:`NMCompressed` — N kept of every M consecutive weights along a row: ``values`` of shape
  ``(rows, cols / m * n)`` and ``indices``, each kept value's position (0 … m-1) within its group
  packed into ``b`` bits (``b`` = 1 for m ≤ 2, 2 for m ≤ 4, 4 for m ≤ 16, 8 for m ≤ 256) of a
  uint8 array of shape ``(rows, ceil(cols / m * n * b / 8))``, least significant bits first:
  the position of kept value ``j`` of a row is ``(indices[i, j*b // 8] >> (j*b % 8)) & (2**b - 1)``.
  Positions are strictly increasing within a group.

  For 2:4 this is the metadata that NVIDIA's sparse tensor cores consume (``mma.sp``, cuSPARSELt):
  2 bits per kept value, the two positions of a group of four in one nibble with the first
  position in the low two bits, so one little-endian uint16 holds the metadata of 8 kept values
  (16 dense columns) and ``values`` is the compressed operand. The hardware additionally wants
  the metadata words of a tile interleaved in the order its thread fragments load them; that
  reordering is specific to the instruction shape and is left to the deployment tool (cuSPARSELt
  ``cusparseLtSpMMACompress`` or CUTLASS's reorder), which takes this row-major form as input.
- :class:`Bitmask` — ``mask``, one bit per element, ``mask[i] == np.packbits(x[i] != 0)`` (most
  significant bit first, rows padded to whole bytes with zero bits), and ``data``, the values at
  set bits in row-major order. The compact checkpoint form.

Values keep their dtype: float16, bfloat16 (ml_dtypes), float32 or float64. Indices are int32,
or int64 when the number of stored values or a dimension needs it. An element is non-zero when
``x != 0`` (so -0.0 is not stored and NaN is). ``nnz`` counts stored values, explicit zeros
included (an N:M group with fewer than N non-zeros is padded with explicit zeros at its lowest
free positions, and its ``nnz`` is always ``rows * cols / m * n``).

Conversions are two-pass O(nnz) kernels in C++ (count per row, prefix sum, fill), multithreaded
over rows, with results independent of the thread count. ``to_csr()`` of every format, and
``CSR.to_coo()``, ``CSR.to_bitmask()``, ``COO.to_csr()`` share or derive arrays without going
through a dense matrix; ``to_bsr()`` and ``to_nm()`` from another format go through the dense
matrix (O(rows · cols) memory) and drop explicit zeros.

Matmul ``A @ x`` takes a dense right-hand side of shape ``(cols,)``, ``(cols, k)`` or batched
``(..., cols, k)``. It is computed in float32 for float16/bfloat16/float32 matrices (16-bit stored
values are decoded one at a time inside the kernel; ``x`` is converted to float32 if it is not)
and in float64 for float64 matrices, and the result has that dtype. Each output row is a sum over
the row's stored values in storage order, register-blocked over the k columns of ``x``.

Interop: ``to_scipy()`` / ``from_scipy()`` for CSR, COO and BSR (``csr_array`` and
``csr_matrix`` alike) share the arrays when the layouts match (float16/bfloat16 values are
converted to float32, which scipy.sparse needs); ``to_torch()`` / ``from_torch()`` for torch's
sparse CSR, COO and BSR tensors (COO indices are int64 in torch, so they are copied). scipy and
torch are imported only inside those methods.

One module per format (:mod:`.csr`, :mod:`.coo`, :mod:`.bsr`, :mod:`.nm`, :mod:`.bitmask`) over
:mod:`._base`, which holds the argument checks and the interface they share; CSR and BSR also share
their compressed-rows layout (:mod:`._compressed`), and :mod:`._torch` the tensor conversions.
Timings are in the README (``python -m bench formats``).
"""

from ._base import SparseMatrix
from .bitmask import Bitmask
from .bsr import BSR
from .coo import COO
from .csr import CSR
from .nm import NMCompressed

__all__ = ["BSR", "COO", "CSR", "Bitmask", "NMCompressed", "SparseMatrix"]

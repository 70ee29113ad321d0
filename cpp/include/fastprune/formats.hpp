// Sparse storage formats: conversion kernels and sparse x dense matmul.
//
// Values are stored in their own dtype. 16-bit floats (float16, bfloat16) travel as their raw
// bits (uint16_t): conversions only copy them and test them against zero (any bit set other
// than the sign bit), and the matmul decodes them to float32 with the codecs below. An element
// is "non-zero" exactly when NumPy's `x != 0` says so (so -0.0 is zero and NaN is not).
//
// Every conversion is two passes over the data: count per row, prefix-sum (by the caller), fill.
// Work is split over rows with OpenMP; every output element is written by one thread in a fixed
// order, so results never depend on the thread count. Index arrays are int32_t or int64_t (`I`).
// Matrices are row-major; dense inputs are MatrixViews with contiguous rows.
#pragma once

#include <cstdint>
#include <cstring>

#include "fastprune/common.hpp"

namespace fastprune::formats {

// --- value codecs: how a stored value becomes a number to compute with -------------------

struct Float16 {  // IEEE binary16 bits, computed in float32
  using Storage = std::uint16_t;
  using Compute = float;
  static float decode(std::uint16_t h) {
    // The exponent and mantissa moved into float32 position give 2^-112 times the value for
    // normals and subnormals alike; infinities and NaNs keep an all-ones exponent.
    const std::uint32_t magnitude = static_cast<std::uint32_t>(h & 0x7fffu) << 13;
    float f;
    if (magnitude >= (0x7c00u << 13)) {
      const std::uint32_t bits = magnitude | 0x7f800000u;
      std::memcpy(&f, &bits, sizeof f);
    } else {
      std::memcpy(&f, &magnitude, sizeof f);
      f *= 0x1p112f;
    }
    std::uint32_t bits;
    std::memcpy(&bits, &f, sizeof bits);
    bits |= static_cast<std::uint32_t>(h & 0x8000u) << 16;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
};

struct BFloat16 {  // the upper half of a float32
  using Storage = std::uint16_t;
  using Compute = float;
  static float decode(std::uint16_t h) {
    const std::uint32_t bits = static_cast<std::uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
};

template <class T>
struct Native {  // float or double, computed as itself
  using Storage = T;
  using Compute = T;
  static T decode(T v) { return v; }
};

inline bool is_nonzero(std::uint16_t bits) { return (bits & 0x7fffu) != 0; }
inline bool is_nonzero(float v) { return v != 0.0f; }
inline bool is_nonzero(double v) { return v != 0.0; }

// --- CSR ---------------------------------------------------------------------------------

// counts[i] = number of non-zeros in row i of x.
template <class S>
void count_row_nonzeros(ConstMatrixView<S> x, std::int64_t* counts);

// The CSR arrays of x, given indptr (rows + 1, from count_row_nonzeros) and room for
// indptr[rows] column indices and values. Column indices come out sorted within each row.
template <class S, class I>
void dense_to_csr(ConstMatrixView<S> x, const I* indptr, I* indices, S* data);

// out (rows x cols, overwritten) = the dense matrix of a valid CSR matrix.
template <class S, class I>
void csr_to_dense(const I* indptr, const I* indices, const S* data, MatrixView<S> out);

// Checks CSR structure: indptr[0] == 0, non-decreasing, indptr[rows] == nnz, and column
// indices in [0, cols), strictly increasing within each row. Returns {-1, ok} or the first
// offending row and what is wrong with it. indptr and indices share one integer type, except
// for the int64 offsets and uint16 columns of sparse_linear's index layout.
enum class CsrProblem : int {
  ok = 0,
  indptr_start,
  indptr_decreasing,
  indptr_end,
  index_range,
  index_order
};
struct CsrCheck {
  std::int64_t row = -1;
  CsrProblem problem = CsrProblem::ok;
};
template <class P, class I>
CsrCheck check_csr(const P* indptr, const I* indices, Index rows, Index cols, Index nnz);

// --- COO (canonical: sorted by (row, column), no duplicates) ------------------------------

// row[k] = the row of the k-th non-zero of a CSR matrix.
template <class I>
void expand_indptr(const I* indptr, Index rows, I* row);

// Checks a COO matrix: rows in [0, rows), cols in [0, cols), (row, col) strictly increasing.
// Returns -1 or the first offending entry.
template <class I>
std::int64_t check_coo(const I* row, const I* col, Index nnz, Index rows, Index cols);

// indptr (rows + 1) of the CSR matrix with the same entries as a valid canonical COO matrix.
template <class I>
void compress_rows(const I* row, Index nnz, Index rows, I* indptr);

// --- BSR (blocks of h x w; rows % h == 0, cols % w == 0) --------------------------------

// counts[b] = number of h x w blocks of block row b holding a non-zero.
template <class S>
void count_block_row_nonzeros(ConstMatrixView<S> x, Index h, Index w, std::int64_t* counts);

// The BSR arrays of x given indptr over block rows; blocks is (indptr[end], h, w) row-major.
template <class S, class I>
void dense_to_bsr(ConstMatrixView<S> x, Index h, Index w, const I* indptr, I* indices, S* blocks);

// out (overwritten) = the dense matrix of a valid BSR matrix.
template <class S, class I>
void bsr_to_dense(const I* indptr, const I* indices, const S* blocks, Index h, Index w,
                  MatrixView<S> out);

// counts[i] = non-zero elements of row i of a valid BSR matrix (explicit zeros in blocks
// are dropped by bsr_to_csr).
template <class S, class I>
void count_bsr_row_nonzeros(const I* indptr, const S* blocks, Index block_rows, Index h, Index w,
                            std::int64_t* counts);

// The CSR arrays (csr_indptr from count_bsr_row_nonzeros) of a valid BSR matrix.
template <class S, class I, class J>
void bsr_to_csr(const I* indptr, const I* indices, const S* blocks, Index block_rows, Index h,
                Index w, const J* csr_indptr, J* csr_indices, S* csr_data);

// --- N:M compressed ----------------------------------------------------------------------
//
// n of every m consecutive elements of a row are stored: values is (rows, cols / m * n), and
// the position (0 .. m-1) of each stored value within its group is packed into bits_per_index
// bits (1, 2, 4 or 8) of a uint8 row of ceil(cols / m * n * bits / 8) bytes, least significant
// bits first: index j of a row sits in byte j * bits / 8 at bit (j * bits) % 8.

// Bits used per in-group position for groups of m (1 <= m <= 256).
int nm_index_bits(int m);

// Bytes of a packed row of positions: cols / m groups of n positions of nm_index_bits(m) bits.
inline Index nm_row_bytes(Index cols, int n, int m) {
  return (cols / m * n * nm_index_bits(m) + 7) / 8;
}

// Compresses x (every group of m holding at most n non-zeros; a group with fewer is padded
// with explicit zeros at its lowest free positions). Returns -1, or the flat index
// (row * groups_per_row + group) of the first group holding more than n non-zeros, in which
// case nothing useful was written.
template <class S>
std::int64_t dense_to_nm(ConstMatrixView<S> x, int n, int m, MatrixView<S> values,
                         MatrixView<std::uint8_t> packed);

// Checks packed positions: each < m and strictly increasing within a group, unused bits zero.
// Returns -1 or the first offending row.
std::int64_t check_nm(ConstMatrixView<std::uint8_t> packed, Index cols, int n, int m);

// out (rows x cols, overwritten) = the dense matrix of a valid N:M matrix.
template <class S>
void nm_to_dense(ConstMatrixView<S> values, ConstMatrixView<std::uint8_t> packed, int n, int m,
                 MatrixView<S> out);

// --- Bitmask (mask row i = np.packbits(x[i] != 0): MSB first, padding bits zero) ----------

// Bytes of a mask row of `cols` bits (the last one padded with zero bits).
inline Index bitmask_row_bytes(Index cols) { return (cols + 7) / 8; }

// counts[i] = set bits of mask row i; returns -1 or the first row whose padding bits are set.
std::int64_t bitmask_row_counts(ConstMatrixView<std::uint8_t> mask, Index cols,
                                std::int64_t* counts);

// mask (rows x ceil(cols / 8)) and data (the non-zeros in row-major order, at offsets[i] for
// row i, offsets from count_row_nonzeros) of x.
template <class S>
void dense_to_bitmask(ConstMatrixView<S> x, const std::int64_t* offsets,
                      MatrixView<std::uint8_t> mask, S* data);

// out (overwritten) = the dense matrix of a bitmask; offsets from bitmask_row_counts.
template <class S>
void bitmask_to_dense(ConstMatrixView<std::uint8_t> mask, const std::int64_t* offsets,
                      const S* data, MatrixView<S> out);

// Column indices of a bitmask as CSR (indptr from bitmask_row_counts); data is shared.
template <class I>
void bitmask_to_csr_indices(ConstMatrixView<std::uint8_t> mask, Index cols, const I* indptr,
                            I* indices);

// mask of the CSR pattern (rows x ceil(cols / 8), overwritten).
template <class I>
void csr_to_bitmask(const I* indptr, const I* indices, Index rows, MatrixView<std::uint8_t> mask);

// --- checks of arrays handed over from outside ------------------------------------------
//
// Each throws std::invalid_argument with the message a user sees, so that no call can make a
// kernel read or write out of bounds.

// indptr (rows + 1 entries) starts at 0, ends at nnz and never decreases.
template <class I>
void check_indptr(const I* indptr, Index rows, Index nnz);

// Every column index of `indices` (nnz entries) is in [0, cols).
template <class I>
void check_columns(const I* indices, Index nnz, Index cols);

// Every row i has indptr[i + 1] - indptr[i] entries, the set bits of its mask row; `message`
// otherwise.
template <class I>
void check_mask_counts(ConstMatrixView<std::uint8_t> mask, const I* indptr, const char* message);

// --- sparse x dense matmul: y (rows x k) = A (rows x cols) x (cols x k) ---------------------
//
// Computed in V::Compute (float32 for 16-bit values, decoded one stored value at a time, or
// float64), over row ranges in parallel, register-blocked over the k columns of x. Each
// output element is a sum over the row's stored values in storage order.

// csr_matmul checks each row's column indices as it goes and returns false (y unspecified)
// if one is out of range: the arrays may have been changed since they were validated.
template <class V, class I>
bool csr_matmul(const I* indptr, const I* indices, const typename V::Storage* data,
                ConstMatrixView<typename V::Compute> x, MatrixView<typename V::Compute> y);

template <class V, class I>
void bsr_matmul(const I* indptr, const I* indices, const typename V::Storage* blocks, Index h,
                Index w, ConstMatrixView<typename V::Compute> x, MatrixView<typename V::Compute> y);

template <class V>
void nm_matmul(ConstMatrixView<typename V::Storage> values, ConstMatrixView<std::uint8_t> packed,
               int n, int m, ConstMatrixView<typename V::Compute> x,
               MatrixView<typename V::Compute> y);

}  // namespace fastprune::formats

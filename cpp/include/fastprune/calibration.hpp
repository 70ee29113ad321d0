// Streaming calibration statistics: the running sum S = Σ_t x_t x_tᵀ over activation tokens.
//
// A calibration object keeps only S (features x features, its lower triangle) and the token
// count N, so memory is O(features²) however many tokens stream through. The Hessian of the
// layer-wise reconstruction loss is H = 2 S / N, and Wanda's per-feature statistic
// Σ_t x_tj² is the diagonal of S.
#pragma once

#include <cstdint>

#include "fastprune/common.hpp"

namespace fastprune::calibration {

// A (tokens x features) matrix of activations: x(t, j) = data[t * token_stride +
// j * feature_stride]. Either the features of a token are contiguous (feature_stride == 1,
// a C-ordered batch) or the tokens of a feature are (token_stride == 1, Fortran order).
template <class T>
struct TokenMatrix {
  const T* data = nullptr;
  Index tokens = 0;
  Index features = 0;
  Index token_stride = 0;
  Index feature_stride = 1;
};

// True when every element of x is finite (no NaN or Inf).
template <class T>
bool all_finite(const TokenMatrix<T>& x);

// out = x on every thread, and true when every element of x is finite (the copy is made either
// way): one pass where a check followed by a copy would read x twice. Same shapes, no overlap.
template <class T>
bool copy_finite(ConstMatrixView<T> x, MatrixView<T> out);

// 16-bit floats, as their bits: IEEE half precision (float16) or bfloat16 (`brain`).
// True when every element of x is finite (an exponent field short of all ones).
bool halves_finite(const TokenMatrix<std::uint16_t>& x, bool brain);

// out = x widened to float32 exactly, on every thread, and true when every element of x is
// finite (the copy is made either way). Same shapes, no overlap.
bool widen_finite(ConstMatrixView<std::uint16_t> x, bool brain, MatrixView<float> out);

// gram(i, j) += Σ_t x(t, i) x(t, j) for every i >= j: a symmetric rank-k update of the lower
// triangle (the strict upper triangle is not touched). gram is features x features.
// With a loaded BLAS (blas.hpp) this is its SYRK, fed C-ordered batches in place and other
// layouts through a bounded buffer. On Eigen alone the features are split into fixed blocks
// that depend only on their number, one serial product per block pair on all threads, so the
// result does not depend on the thread count.
template <class T>
void add_gram_lower(MatrixView<T> gram, const TokenMatrix<T>& x);

// add_gram_lower when every element of x is finite; otherwise gram is left as it was and the
// result is false. Where the update is computed apart from gram anyway (a long, narrow batch: see
// blas::syrk_lower_add_split_if_finite), a NaN or an infinity in x shows on its diagonal (the
// sums of squares), and x is scanned only when that diagonal is not finite (finite values whose
// squares overflow are then added, as add_gram_lower adds them); elsewhere x is scanned first.
template <class T>
bool add_gram_lower_if_finite(MatrixView<T> gram, const TokenMatrix<T>& x);

// add_gram_lower of x (tokens x features, 16-bit floats as their bits: float16, or bfloat16
// when `brain`) widened exactly to float32, when every element of x is finite; otherwise gram is
// left as it was and the result is false. x is widened a bounded chunk of tokens at a time into
// memory-cache memory that is reused between calls; a batch of one chunk is checked as it is
// widened, a longer one is scanned first.
bool add_gram_lower_widened(MatrixView<float> gram, ConstMatrixView<std::uint16_t> x, bool brain);

// out = scale * (L + Lᵀ - diag(L)) with L the lower triangle of gram: the full symmetric
// matrix that gram's lower triangle describes, scaled. out may not alias gram.
template <class T>
void symmetric_from_lower(ConstMatrixView<T> gram, T scale, MatrixView<T> out);

}  // namespace fastprune::calibration

// Importance scores of the weights of one layer, an (out_features, in_features) matrix.
//
// Every kernel writes one score per weight or per group of weights; a larger score means a
// more important weight. Sums run in double in a fixed order, so a score is the same on every
// instruction-set level and every thread count. Inputs must be finite (checked by callers).
#pragma once

#include "fastprune/common.hpp"

namespace fastprune::importance {

enum class Norm { L1, L2, Linf };

// out(i, j) = |w(i, j)| for L1 and Linf, w(i, j)² for L2. `out` has w's shape.
template <class T>
void magnitude(ConstMatrixView<T> w, Norm norm, MatrixView<T> out);

// The norm of every block of `block_rows` x `block_cols` weights: out(a, b) is the L1 (Σ|w|),
// L2 (sqrt Σ w²) or Linf (max |w|) norm of w[a*block_rows:(a+1)*block_rows,
// b*block_cols:(b+1)*block_cols]. Row norms are blocks of 1 x cols, column norms rows x 1.
// The block shape must divide w's shape; `out` is (rows / block_rows, cols / block_cols).
template <class T>
void block_norms(ConstMatrixView<T> w, Index block_rows, Index block_cols, Norm norm,
                 MatrixView<T> out);

// Wanda: out(i, j) = |w(i, j)| * sqrt(act_sq[j]), act_sq[j] = Σ over calibration tokens of
// x_j² (length cols, >= 0).
template <class T>
void wanda(ConstMatrixView<T> w, const T* act_sq, MatrixView<T> out);

// First-order Taylor: out(i, j) = |w(i, j) * g(i, j)|, g the gradient (w's shape).
template <class T>
void taylor(ConstMatrixView<T> w, ConstMatrixView<T> g, MatrixView<T> out);

// Taylor per output channel (row): out[i] = Σ_j |w(i, j) g(i, j)|, or |Σ_j w(i, j) g(i, j)|
// when `multivariable`.
template <class T>
void taylor_channels(ConstMatrixView<T> w, ConstMatrixView<T> g, bool multivariable, T* out);

}  // namespace fastprune::importance

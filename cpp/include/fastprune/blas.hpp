// Dense linear algebra for the solver and the calibration statistics.
//
// Every routine splits its output into tiles of a fixed size, shares the tiles among the
// threads and computes each tile with one single-threaded call: the results are the same for
// every thread count, and there is one thread team (ours) instead of two competing ones. The
// single-threaded calls run on Eigen by default. When an external OpenBLAS has been loaded with
// `load_openblas` (the Python package loads the one the scipy-openblas32 wheel ships, which picks
// its kernels for the CPU at run time), they go to it instead, held at one thread: on the CPUs
// we measured its SGEMM kernel is about a third faster than Eigen's. All matrices are row-major
// views (see common.hpp).
#pragma once

#include <string>

#include "fastprune/common.hpp"

namespace fastprune::blas {

// Loads OpenBLAS from the shared library at `path` (symbols prefixed `prefix`, e.g.
// "scipy_"). Throws std::invalid_argument if it cannot be opened or lacks a routine.
void load_openblas(const std::string& path, const std::string& prefix);
// Goes back to Eigen for everything.
void unload();
// "eigen" or the OpenBLAS configuration string.
std::string backend();

// C = alpha * op(A) * op(B) + beta * C, op(X) = X or X^T.
template <class T>
void gemm(bool trans_a, bool trans_b, T alpha, ConstMatrixView<T> a, ConstMatrixView<T> b, T beta,
          MatrixView<T> c);

// Lower triangle of C = alpha * op(A) * op(A)^T + beta * C with op(A) = A^T when `a_t_a` (A is
// k x n: C = alpha A^T A + beta C) and op(A) = A otherwise (A is n x k). The strict upper triangle
// of C is left untouched.
template <class T>
void syrk_lower(bool a_t_a, T alpha, ConstMatrixView<T> a, T beta, MatrixView<T> c);

// C += alpha op(A) op(A)^T on the lower triangle, as syrk_lower with beta 1, where syrk_lower
// would split the update along k into two whole SYRKs in buffers beside C (a long, narrow A with
// a loaded BLAS): the update is then apart from C until it is added, and it is added only when
// every element of its diagonal is finite. Returns whether it was added; C is unchanged if not.
template <class T>
bool syrk_lower_add_split_if_finite(bool a_t_a, T alpha, ConstMatrixView<T> a, MatrixView<T> c);

// In place: the lower triangle of A becomes L with A = L L^T (the strict upper triangle is not
// referenced). Returns false, leaving A partly overwritten, when A is not positive definite.
template <class T>
bool cholesky_lower(MatrixView<T> a);

// In place: the lower-triangular (non-unit) L becomes L^-1 (the strict upper triangle is not
// referenced).
template <class T>
void invert_lower(MatrixView<T> a);

// In place: B = B · U, U upper triangular (the strict lower triangle is not referenced).
template <class T>
void multiply_upper_right(ConstMatrixView<T> u, MatrixView<T> b);

}  // namespace fastprune::blas

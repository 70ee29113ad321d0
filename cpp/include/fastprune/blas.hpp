// Dense linear algebra for the solver and the calibration statistics.
//
// Every routine runs on Eigen by default. When an external OpenBLAS has been loaded with
// `load_openblas` (the Python package loads the one the scipy-openblas32 wheel ships, which
// picks its kernels for the CPU at run time), the large GEMM / SYRK / POTRF / TRTRI calls go to
// it instead: on the CPUs we measured its SGEMM is about a third faster than Eigen's and its
// Cholesky is multithreaded. All matrices are row-major views (see common.hpp).
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
// Forwards the thread count to the external library, if one is loaded.
void set_num_threads(int n);

// C = alpha * op(A) * op(B) + beta * C, op(X) = X or X^T.
template <class T>
void gemm(bool trans_a, bool trans_b, T alpha, ConstMatrixView<T> a, ConstMatrixView<T> b, T beta,
          MatrixView<T> c);

// Lower triangle of C = alpha * A^T * A + beta * C (A is k x n, C is n x n). The strict upper
// triangle of C is left untouched.
template <class T>
void syrk_lower_at_a(T alpha, ConstMatrixView<T> a, T beta, MatrixView<T> c);

// In place: the lower triangle of A becomes L with A = L L^T (the strict upper triangle is not
// referenced). Returns false, leaving A partly overwritten, when A is not positive definite.
template <class T>
bool cholesky_lower(MatrixView<T> a);

// In place: the lower-triangular (non-unit) L becomes L^-1 (the strict upper triangle is not
// referenced).
template <class T>
void invert_lower(MatrixView<T> a);

}  // namespace fastprune::blas

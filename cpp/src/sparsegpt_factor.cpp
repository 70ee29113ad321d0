// The factors of the damped Hessian (sparsegpt.hpp): loading J·H·J with its damping, the
// blocked Cholesky factorisation and triangular inverse, and the damping's escalation.
#include <omp.h>

#include <cmath>
#include <iomanip>
#include <sstream>
#include <string>

#include "fastprune/blas.hpp"
#include "fastprune/sparsegpt.hpp"
#include "sparsegpt_internal.hpp"

namespace fastprune::sparsegpt {
namespace {

using detail::kCopyGrain;

// Side of the square tiles in which the Hessian is walked (both the tile and its mirror image
// stay cached).
constexpr Index kTile = 128;

std::string number(double x) {
  std::ostringstream s;
  s << std::setprecision(6) << x;
  return s.str();
}

// --- T = J · chol(J·H·J) · J and U = T⁻¹ ---------------------------------------------

// Lower triangle of a = J · (H + Hᵀ)/2 · J, with dead diagonal entries set to 1 and `shift` added
// to the diagonal (the upper triangle of `a` is left as it was), and the largest |H_ij| and
// |H_ij − H_ji| met on the way. Rows of square tiles in parallel; a tile and its mirror image stay
// cached.
template <class T>
void load_reversed(ConstMatrixView<T> h, const bool* dead, double shift, MatrixView<T> a,
                   double& largest, double& defect) {
  const Index c = h.rows, tiles = (c + kTile - 1) / kTile;
  double big = 0.0, worst = 0.0;
#pragma omp parallel for schedule(dynamic, 1) reduction(max : big, worst) \
    num_threads(threads_for(double(c) * double(c) / 2.0, kCopyGrain))
  for (Index t = 0; t < tiles; ++t) {
    const Index i0 = (tiles - 1 - t) * kTile;  // the longest rows of tiles first
    for (Index j0 = 0; j0 <= i0; j0 += kTile) {
      for (Index i = i0; i < std::min(i0 + kTile, c); ++i) {
        for (Index j = j0; j < std::min(j0 + kTile, i + 1); ++j) {
          const Index hi = c - 1 - i, hj = c - 1 - j;
          const T x = h(hi, hj), y = h(hj, hi);
          a(i, j) = (x + y) / T(2);
          big = std::max({big, std::abs(double(x)), std::abs(double(y))});
          worst = std::max(worst, std::abs(double(x) - double(y)));
        }
      }
    }
  }
  largest = big;
  defect = worst;
  for (Index i = 0; i < c; ++i) {
    const Index hi = c - 1 - i;
    a(i, i) = static_cast<T>((dead[hi] ? 1.0 : static_cast<double>(a(i, i))) + shift);
  }
}

// a = J · a · J: element (i, j) trades places with (c−1−i, c−1−j), so that a lower triangle
// becomes an upper one and the other way round.
template <class T>
void half_turn(MatrixView<T> a) {
  const Index c = a.rows;
#pragma omp parallel for schedule(static) \
    num_threads(threads_for(double(c) * double(c), kCopyGrain))
  for (Index i = 0; i < c / 2; ++i) {
    T* top = a.row(i);
    T* bottom = a.row(c - 1 - i);
    std::swap_ranges(top, top + c, std::reverse_iterator<T*>(bottom + c));
  }
  if (c % 2 == 1) std::reverse(a.row(c / 2), a.row(c / 2) + c);
}

// Zeroes the strict lower triangle of `a`; false when its upper triangle is not finite with a
// positive diagonal.
template <class T>
bool zero_below_and_check(MatrixView<T> a) {
  const Index c = a.rows;
  bool ok = true;
#pragma omp parallel for schedule(static) reduction(&& : ok) \
    num_threads(threads_for(double(c) * double(c), kCopyGrain))
  for (Index i = 0; i < c; ++i) {
    T* r = a.row(i);
    std::fill(r, r + i, T(0));
    ok = ok && r[i] > T(0);
    for (Index j = i; j < c; ++j) ok = ok && std::isfinite(r[j]);
  }
  return ok;
}

// The factor J · a · J in the upper triangle of `a` (its lower triangle the factor until now,
// the rest zeroed); false when it is not finite with a positive diagonal.
template <class T>
bool reverse_into_upper(MatrixView<T> a) {
  half_turn(a);
  return zero_below_and_check(a);
}

// Which factor `factorise` writes: T, or U = T⁻¹ (one triangular inverse more). Loading, the
// symmetry check and the damping loop are the same for both.
enum class Factor { kUpper, kInverse };

template <class T>
double factorise(ConstMatrixView<T> hessian, double damp, int max_tries, Factor kind,
                 MatrixView<T> out, bool* dead) {
  const Index c = hessian.rows;
  if (hessian.cols != c) invalid("hessian: expected a square matrix");
  if (out.rows != c || out.cols != c) invalid("factor: expected the shape of the hessian");
  if (max_tries < 1) invalid("max_tries: must be >= 1");
  if (!(damp >= 0.0) || !std::isfinite(damp)) invalid("damp: must be a finite number >= 0");
  for (Index j = 0; j < c; ++j) dead[j] = hessian(j, j) == T(0);
  const double mean_diagonal = damped_mean_diagonal(hessian, dead);
  double relative = damp;
  for (int attempt = 0; attempt < max_tries; ++attempt) {
    if (attempt > 0) relative = relative > 0.0 ? relative * 10.0 : 1e-6;
    double largest = 0.0, defect = 0.0;
    load_reversed(hessian, dead, relative * mean_diagonal, out, largest, defect);
    if (defect > 1e-4 * largest) {
      invalid("hessian: not symmetric (largest |H - H^T| is " + number(defect) +
              ", more than 1e-4 of the largest |H| entry, " + number(largest) + ")");
    }
    if (!blas::cholesky_lower(out)) continue;
    if (kind == Factor::kInverse) blas::invert_lower(out);
    if (!reverse_into_upper(out)) continue;
    if (kind == Factor::kInverse) return relative;
    // U's diagonal is 1 / T's: T is kept only when that is finite too.
    bool reciprocals_finite = true;
    for (Index j = 0; j < c; ++j) reciprocals_finite &= std::isfinite(T(1) / out(j, j));
    if (reciprocals_finite) return relative;
  }
  invalid("hessian: not positive definite even with damping " + number(relative) +
          " (relative to the mean diagonal " + number(mean_diagonal) + ", " +
          std::to_string(max_tries) + " tries)");
}

}  // namespace

template <class T>
double damped_mean_diagonal(ConstMatrixView<T> hessian, const bool* dead) {
  double sum = 0.0;
  for (Index j = 0; j < hessian.rows; ++j) {
    sum += dead[j] ? 1.0 : static_cast<double>(hessian(j, j));
  }
  return hessian.rows > 0 ? sum / static_cast<double>(hessian.rows) : 1.0;
}

template <class T>
double damped_hessian(ConstMatrixView<T> hessian, const bool* dead, double damp,
                      MatrixView<double> out) {
  const Index c = hessian.rows;
  if (hessian.cols != c) invalid("hessian: expected a square matrix");
  if (out.rows != c || out.cols != c) invalid("out: expected the shape of the hessian");
  if (!(damp >= 0.0) || !std::isfinite(damp)) invalid("damp: must be a finite number >= 0");
  const double shift = damp * damped_mean_diagonal(hessian, dead);
#pragma omp parallel for schedule(static) \
    num_threads(threads_for(double(c) * double(c), kCopyGrain))
  for (Index i = 0; i < c; ++i) {
    for (Index j = 0; j < c; ++j) out(i, j) = static_cast<double>(hessian(i, j));
    out(i, i) = (dead[i] ? 1.0 : out(i, i)) + shift;
  }
  return shift;
}

template <class T>
double inverse_hessian_factor(ConstMatrixView<T> hessian, double damp, int max_tries,
                              MatrixView<T> u, bool* dead) {
  return factorise(hessian, damp, max_tries, Factor::kInverse, u, dead);
}

template <class T>
double hessian_factor(ConstMatrixView<T> hessian, double damp, int max_tries, MatrixView<T> t,
                      bool* dead) {
  return factorise(hessian, damp, max_tries, Factor::kUpper, t, dead);
}

template <class T>
bool invert_factor(MatrixView<T> t) {
  if (t.cols != t.rows) invalid("factor: expected a square matrix");
  half_turn(t);  // J·T·J, lower triangular
  blas::invert_lower(t);
  half_turn(t);
  return zero_below_and_check(t);
}

#define FASTPRUNE_INSTANTIATE(T)                                                            \
  template double inverse_hessian_factor<T>(ConstMatrixView<T>, double, int, MatrixView<T>, \
                                            bool*);                                         \
  template double hessian_factor<T>(ConstMatrixView<T>, double, int, MatrixView<T>, bool*); \
  template bool invert_factor<T>(MatrixView<T>);                                            \
  template double damped_mean_diagonal<T>(ConstMatrixView<T>, const bool*);                 \
  template double damped_hessian<T>(ConstMatrixView<T>, const bool*, double, MatrixView<double>);
FASTPRUNE_INSTANTIATE(float)
FASTPRUNE_INSTANTIATE(double)
#undef FASTPRUNE_INSTANTIATE

}  // namespace fastprune::sparsegpt

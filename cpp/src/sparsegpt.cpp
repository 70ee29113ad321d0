#include "fastprune/sparsegpt.hpp"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <iterator>
#include <limits>
#include <memory>
#include <sstream>
#include <type_traits>
#include <vector>

#include "fastprune/masks.hpp"

namespace fastprune::sparsegpt {
namespace {

// Every blocked step below splits its work into tiles of this many rows (or columns); each tile
// is one sequential Eigen call, so the arithmetic never depends on the number of threads.
constexpr Index kTile = 128;

template <class T>
using Block = Eigen::Map<RowMajor<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

// An Eigen view of rows [row, row + rows) and columns [col, col + cols) of `a` (no copy).
template <class T>
auto block(const MatrixView<T>& a, Index row, Index col, Index rows, Index cols) {
  return eigen_map(MatrixView<T>{a.data + row * a.stride + col, rows, cols, a.stride});
}

// An Eigen view of `size` consecutive elements.
template <class T>
auto segment(T* data, Index size) {
  using Plain = Eigen::Matrix<std::remove_const_t<T>, 1, Eigen::Dynamic>;
  return Eigen::Map<std::conditional_t<std::is_const_v<T>, const Plain, Plain>>(data, size);
}

int tile_threads(Index tiles, double flops_per_tile) {
  return std::min(static_cast<int>(std::max<Index>(tiles, 1)),
                  threads_for(flops_per_tile * static_cast<double>(tiles), 1 << 20));
}

std::string number(double x) {
  std::ostringstream s;
  s << std::setprecision(6) << x;
  return s.str();
}

// --- U = J · chol(J·H·J)⁻¹ · J ----------------------------------------------------------

// Largest |H_ij| and largest |H_ij − H_ji| (walked in square tiles so both reads stay cached).
template <class T>
void symmetry_defect(ConstMatrixView<T> h, double& largest, double& defect) {
  largest = 0.0;
  defect = 0.0;
  const Index c = h.rows;
  for (Index i0 = 0; i0 < c; i0 += kTile) {
    for (Index j0 = 0; j0 <= i0; j0 += kTile) {
      for (Index i = i0; i < std::min(i0 + kTile, c); ++i) {
        for (Index j = j0; j < std::min(j0 + kTile, i + 1); ++j) {
          const double a = h(i, j), b = h(j, i);
          largest = std::max({largest, std::abs(a), std::abs(b)});
          defect = std::max(defect, std::abs(a - b));
        }
      }
    }
  }
}

// Lower triangle of a = J · (H + Hᵀ)/2 · J, with dead diagonal entries set to 1 and
// `shift` added to the diagonal. Returns nothing; the upper triangle of `a` is left as it was.
template <class T>
void load_reversed(ConstMatrixView<T> h, const bool* dead, double shift, MatrixView<T> a) {
  const Index c = h.rows;
  for (Index i0 = 0; i0 < c; i0 += kTile) {
    for (Index j0 = 0; j0 <= i0; j0 += kTile) {
      for (Index i = i0; i < std::min(i0 + kTile, c); ++i) {
        for (Index j = j0; j < std::min(j0 + kTile, i + 1); ++j) {
          const Index hi = c - 1 - i, hj = c - 1 - j;
          a(i, j) = (h(hi, hj) + h(hj, hi)) / T(2);
        }
      }
    }
  }
  for (Index i = 0; i < c; ++i) {
    const Index hi = c - 1 - i;
    a(i, i) = static_cast<T>((dead[hi] ? 1.0 : static_cast<double>(a(i, i))) + shift);
  }
}

// In-place Cholesky of a small diagonal block (lower triangle only). False when not positive
// definite.
template <class T>
bool cholesky_unblocked(Block<T> a) {
  const Index n = a.rows();
  for (Index j = 0; j < n; ++j) {
    const T pivot = a(j, j) - a.row(j).head(j).squaredNorm();
    if (!(pivot > T(0)) || !std::isfinite(pivot)) return false;
    const T d = std::sqrt(pivot);
    a(j, j) = d;
    for (Index i = j + 1; i < n; ++i) {
      a(i, j) = (a(i, j) - a.row(i).head(j).dot(a.row(j).head(j))) / d;
    }
  }
  return true;
}

// Right-looking blocked Cholesky, in place on the lower triangle: A = L·Lᵀ. The panel solve and
// the trailing update are GEMM-shaped and split into row tiles. The upper triangle is scratch.
template <class T>
bool cholesky_lower(MatrixView<T> a) {
  const Index c = a.rows;
  for (Index k = 0; k < c; k += kTile) {
    const Index kb = std::min(kTile, c - k), rest = k + kb;
    if (!cholesky_unblocked<T>(block(a, k, k, kb, kb))) return false;
    const Index tiles = (c - rest + kTile - 1) / kTile;
    const auto l11 = block(a, k, k, kb, kb);
#pragma omp parallel for schedule(dynamic, 1) \
    num_threads(tile_threads(tiles, double(kTile) * double(kb) * double(c - rest)))
    for (Index t = 0; t < tiles; ++t) {
      const Index i0 = rest + t * kTile, ib = std::min(kTile, c - i0);
      auto panel = block(a, i0, k, ib, kb);  // L21 := A21 · L11⁻ᵀ
      l11.transpose()
          .template triangularView<Eigen::Upper>()
          .template solveInPlace<Eigen::OnTheRight>(panel);
    }
#pragma omp parallel for schedule(dynamic, 1) \
    num_threads(tile_threads(tiles, double(kTile) * double(kb) * double(c - rest)))
    for (Index t = 0; t < tiles; ++t) {
      // A22 −= L21 · L21ᵀ on the rows of this tile, up to the end of its diagonal square.
      const Index i0 = rest + t * kTile, ib = std::min(kTile, c - i0);
      block(a, i0, rest, ib, i0 + ib - rest).noalias() -=
          block(a, i0, k, ib, kb) * block(a, rest, k, i0 + ib - rest, kb).transpose();
    }
  }
  return true;
}

// In place: the lower triangle of `a` (L) becomes L⁻¹. Blocked from the last diagonal block up:
// with the trailing part T22 = L22⁻¹ already inverted, L21 becomes −T22 · L21 · L11⁻¹.
template <class T>
void invert_lower(MatrixView<T> a) {
  const Index c = a.rows;
  const Index last = ((c - 1) / kTile) * kTile;
  std::vector<T> scratch(static_cast<size_t>(c * kTile));
  for (Index j = last; j >= 0; j -= kTile) {
    const Index jb = std::min(kTile, c - j), rest = j + jb;
    const auto l11 = block(a, j, j, jb, jb);
    if (rest < c) {
      const MatrixView<T> next{scratch.data(), c - rest, jb, jb};
      const Index tiles = (c - rest + kTile - 1) / kTile;
#pragma omp parallel for schedule(dynamic, 1) \
    num_threads(tile_threads(tiles, double(kTile) * double(jb) * double(c - rest) / 2))
      for (Index t = 0; t < tiles; ++t) {
        const Index i0 = rest + t * kTile, ib = std::min(kTile, c - i0);
        auto out = block(next, i0 - rest, 0, ib, jb);
        out.noalias() = block(a, i0, i0, ib, ib).template triangularView<Eigen::Lower>() *
                        block(a, i0, j, ib, jb);
        if (i0 > rest) {
          out.noalias() += block(a, i0, rest, ib, i0 - rest) * block(a, rest, j, i0 - rest, jb);
        }
        l11.template triangularView<Eigen::Lower>().template solveInPlace<Eigen::OnTheRight>(out);
      }
      block(a, rest, j, c - rest, jb) = -block(next, 0, 0, c - rest, jb);
    }
    RowMajor<T> inverse = RowMajor<T>::Identity(jb, jb);
    l11.template triangularView<Eigen::Lower>().solveInPlace(inverse);
    auto diagonal = block(a, j, j, jb, jb);
    diagonal.template triangularView<Eigen::Lower>() = inverse;
  }
}

// U = J · L⁻¹ · J: element (i, j) trades places with (c−1−i, c−1−j). The strict lower triangle
// (scratch until now) is zeroed. False when U is not finite with a positive diagonal.
template <class T>
bool reverse_into_upper(MatrixView<T> a) {
  const Index c = a.rows;
  for (Index i = 0; i < c / 2; ++i) {
    T* top = a.row(i);
    T* bottom = a.row(c - 1 - i);
    std::swap_ranges(top, top + c, std::reverse_iterator<T*>(bottom + c));
  }
  if (c % 2 == 1) std::reverse(a.row(c / 2), a.row(c / 2) + c);
  bool ok = true;
  for (Index i = 0; i < c; ++i) {
    T* r = a.row(i);
    std::fill(r, r + i, T(0));
    ok = ok && r[i] > T(0);
    for (Index j = i; j < c; ++j) ok = ok && std::isfinite(r[j]);
  }
  return ok;
}

// --- the pruning loop ---------------------------------------------------------------------

// One row's part of one block: choose (N:M) or read (unstructured) the mask column by column,
// zero the pruned weights, record err = (w − q) / U_jj and apply W[r, j+1:i2] −= err · U[j,
// j+1:i2].
template <class T>
double prune_row_in_block(T* w, bool* keep, const bool* allowed, T* err, ConstMatrixView<T> u,
                          Index i1, Index bc, const Options& options, T* group_scores) {
  double loss = 0.0;
  for (Index j = 0; j < bc; ++j) {
    const Index col = i1 + j;
    const T d = u(col, col);
    if (options.m > 0 && j % options.m == 0) {
      for (int g = 0; g < options.m; ++g) {
        const T s = w[j + g] * w[j + g] / (u(col + g, col + g) * u(col + g, col + g));
        group_scores[g] =
            allowed == nullptr || allowed[j + g] ? s : -std::numeric_limits<T>::infinity();
      }
      masks::keep_n_of_m(group_scores, options.m, options.n, options.m, keep + j);
      if (allowed != nullptr) {
        for (int g = 0; g < options.m; ++g) keep[j + g] = keep[j + g] && allowed[j + g];
      }
    }
    const T q = keep[j] ? w[j] : T(0);
    const T e = (w[j] - q) / d;
    err[j] = e;
    w[j] = q;
    if (e != T(0)) {
      const double scaled = static_cast<double>(e);
      loss += scaled * scaled;
      segment(w + j + 1, bc - j - 1) -= e * segment(u.row(col) + col + 1, bc - j - 1);
    }
  }
  return loss;
}

// Unstructured: the block's mask, one exact-count selection over all rows × block columns by
// saliency w² / U_jj²; weights that may not be kept are ranked below every other.
template <class T>
void select_block(MatrixView<T> weight, ConstMatrixView<T> u, ConstMatrixView<bool> allowed,
                  Index i1, Index bc, double sparsity, MatrixView<bool> mask, T* scores, T* scratch,
                  bool* keep) {
  const Index rows = weight.rows;
  Index forced = 0;
#pragma omp parallel for schedule(static) reduction(+ : forced) \
    num_threads(threads_for(double(rows) * double(bc)))
  for (Index r = 0; r < rows; ++r) {
    for (Index j = 0; j < bc; ++j) {
      const Index col = i1 + j;
      const T w = weight(r, col), d = u(col, col);
      const bool may_keep = allowed.data == nullptr || allowed(r, col);
      scores[r * bc + j] = may_keep ? w * w / (d * d) : -std::numeric_limits<T>::infinity();
      forced += !may_keep;
    }
  }
  const Index total = rows * bc;
  const auto budget = static_cast<Index>(static_cast<double>(total) * sparsity);
  masks::prune_smallest(scores, total, std::max(budget, forced), keep, scratch);
  for (Index r = 0; r < rows; ++r) std::copy(keep + r * bc, keep + (r + 1) * bc, mask.row(r) + i1);
}

}  // namespace

template <class T>
double inverse_hessian_factor(ConstMatrixView<T> hessian, double damp, int max_tries,
                              MatrixView<T> u, bool* dead) {
  const Index c = hessian.rows;
  if (hessian.cols != c) invalid("hessian: expected a square matrix");
  if (u.rows != c || u.cols != c) invalid("u: expected the shape of the hessian");
  if (max_tries < 1) invalid("max_tries: must be >= 1");
  if (!(damp >= 0.0) || !std::isfinite(damp)) invalid("damp: must be a finite number >= 0");
  double largest = 0.0, defect = 0.0;
  symmetry_defect(hessian, largest, defect);
  if (defect > 1e-4 * largest) {
    invalid("hessian: not symmetric (largest |H - H^T| is " + number(defect) +
            ", more than 1e-4 of the largest |H| entry, " + number(largest) + ")");
  }
  double diagonal_sum = 0.0;
  for (Index j = 0; j < c; ++j) {
    dead[j] = hessian(j, j) == T(0);
    diagonal_sum += dead[j] ? 1.0 : static_cast<double>(hessian(j, j));
  }
  const double mean_diagonal = c > 0 ? diagonal_sum / static_cast<double>(c) : 1.0;
  double relative = damp;
  for (int attempt = 0; attempt < max_tries; ++attempt) {
    if (attempt > 0) relative = relative > 0.0 ? relative * 10.0 : 1e-6;
    load_reversed(hessian, dead, relative * mean_diagonal, u);
    if (!cholesky_lower(u)) continue;
    invert_lower(u);
    if (reverse_into_upper(u)) return relative;
  }
  invalid("hessian: not positive definite even with damping " + number(relative) +
          " (relative to the mean diagonal " + number(mean_diagonal) + ", " +
          std::to_string(max_tries) + " tries)");
}

template <class T>
double prune(MatrixView<T> weight, ConstMatrixView<T> u, const bool* dead, const Options& options,
             ConstMatrixView<bool> allowed, MatrixView<bool> mask) {
  const Index rows = weight.rows, c = weight.cols;
  if (u.rows != c || u.cols != c) invalid("u: expected shape (in_features, in_features)");
  if (mask.rows != rows || mask.cols != c) invalid("mask: expected the shape of the weight");
  if (allowed.data != nullptr && (allowed.rows != rows || allowed.cols != c)) {
    invalid("keep_mask: expected the shape of the weight");
  }
  if (options.blocksize < 1) invalid("blocksize: must be a positive integer");
  if (options.m > 0) {
    if (options.n < 1 || options.n > options.m) invalid("pattern: need 1 <= n <= m");
    if (options.blocksize % options.m != 0) invalid("blocksize: must be a multiple of m");
    if (c % options.m != 0) invalid("pattern: in_features must be a multiple of m");
  } else if (!(options.sparsity >= 0.0 && options.sparsity < 1.0)) {
    invalid("sparsity: must be in [0, 1)");
  }
  const Index bmax = std::min(options.blocksize, std::max<Index>(c, 1));
  const auto buffer = static_cast<size_t>(rows * bmax);
  std::vector<T> errors(buffer);
  std::vector<T> scores(options.m > 0 ? 0 : buffer), scratch(options.m > 0 ? 0 : buffer);
  const auto keep = std::make_unique<bool[]>(options.m > 0 ? 0 : buffer);
  std::vector<double> row_loss(static_cast<size_t>(rows), 0.0);
  const Index tiles = (rows + kTile - 1) / kTile;

#pragma omp parallel for schedule(static) num_threads(threads_for(double(rows) * double(c)))
  for (Index r = 0; r < rows; ++r) {
    for (Index j = 0; j < c; ++j) {
      if (dead[j]) weight(r, j) = T(0);
    }
  }
  for (Index i1 = 0; i1 < c; i1 += options.blocksize) {
    const Index i2 = std::min(i1 + options.blocksize, c), bc = i2 - i1;
    if (options.m == 0) {
      select_block(weight, u, allowed, i1, bc, options.sparsity, mask, scores.data(),
                   scratch.data(), keep.get());
    }
    const MatrixView<T> err{errors.data(), rows, bc, bc};
    const double tile_flops = double(kTile) * double(bc) * (double(bc) + double(c - i2));
#pragma omp parallel num_threads(tile_threads(tiles, tile_flops))
    {
      std::vector<T> group_scores(static_cast<size_t>(std::max(options.m, 1)));
#pragma omp for schedule(static)
      for (Index t = 0; t < tiles; ++t) {
        const Index r0 = t * kTile, rb = std::min(kTile, rows - r0);
        for (Index r = r0; r < r0 + rb; ++r) {
          const bool* may_keep = allowed.data == nullptr ? nullptr : allowed.row(r) + i1;
          row_loss[r] += prune_row_in_block(weight.row(r) + i1, mask.row(r) + i1, may_keep,
                                            err.row(r), u, i1, bc, options, group_scores.data());
        }
        if (i2 < c) {  // the lazy update of the columns after the block: one GEMM per tile
          block(weight, r0, i2, rb, c - i2).noalias() -=
              block(err, r0, 0, rb, bc) * block(u, i1, i2, bc, c - i2);
        }
      }
    }
  }
  double loss = 0.0;
  for (const double l : row_loss) loss += l;
  return loss / 2.0;
}

template double inverse_hessian_factor<float>(ConstMatrixView<float>, double, int,
                                              MatrixView<float>, bool*);
template double inverse_hessian_factor<double>(ConstMatrixView<double>, double, int,
                                               MatrixView<double>, bool*);
template double prune<float>(MatrixView<float>, ConstMatrixView<float>, const bool*, const Options&,
                             ConstMatrixView<bool>, MatrixView<bool>);
template double prune<double>(MatrixView<double>, ConstMatrixView<double>, const bool*,
                              const Options&, ConstMatrixView<bool>, MatrixView<bool>);

}  // namespace fastprune::sparsegpt

#include "fastprune/importance.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

// No floating-point contraction in this file: a fused multiply-add on one instruction-set level
// and a separate multiply and add on another would round double sums differently.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace fastprune::importance {

namespace {

// Sums are taken in double over kLanes interleaved partial sums that are combined in one fixed
// order. The order does not depend on the vector width the compiler picks, and no product is
// fused into an addition, so every instruction-set level gives bit-identical scores.
constexpr int kLanes = 8;

template <class Term>
double fixed_order_sum(Index n, Term term) {
  double part[kLanes] = {};
  Index i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) part[l] += term(i + l);
  }
  for (int l = 0; i + l < n; ++l) part[l] += term(i + l);
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

// Σ|x| (L1) or Σx² (L2) over n consecutive values.
template <class T>
double segment_sum(const T* x, Index n, Norm norm) {
  if (norm == Norm::L1) {
    return fixed_order_sum(n, [x](Index i) { return std::abs(static_cast<double>(x[i])); });
  }
  return fixed_order_sum(n, [x](Index i) {
    const double v = x[i];
    return v * v;
  });
}

template <class T>
T segment_max_abs(const T* x, Index n) {
  T m = 0;
  for (Index i = 0; i < n; ++i) m = std::max(m, std::abs(x[i]));
  return m;
}

// Runs body(i) for every row i, split over threads by rows.
template <class Body>
void for_each_row(Index rows, Index cols, Body body) {
  const int threads = threads_for(static_cast<double>(rows) * static_cast<double>(cols));
#pragma omp parallel for schedule(static) num_threads(threads)
  for (Index i = 0; i < rows; ++i) body(i);
}

}  // namespace

template <class T>
void magnitude(ConstMatrixView<T> w, Norm norm, MatrixView<T> out) {
  for_each_row(w.rows, w.cols, [&](Index i) {
    const T* in = w.row(i);
    T* o = out.row(i);
    if (norm == Norm::L2) {
      for (Index j = 0; j < w.cols; ++j) o[j] = in[j] * in[j];
    } else {
      for (Index j = 0; j < w.cols; ++j) o[j] = std::abs(in[j]);
    }
  });
}

template <class T>
void block_norms(ConstMatrixView<T> w, Index block_rows, Index block_cols, Norm norm,
                 MatrixView<T> out) {
  if (block_rows < 1 || block_cols < 1 || w.rows % block_rows != 0 || w.cols % block_cols != 0) {
    invalid("block shape (" + std::to_string(block_rows) + ", " + std::to_string(block_cols) +
            ") does not divide the weight shape (" + std::to_string(w.rows) + ", " +
            std::to_string(w.cols) + ")");
  }
  const Index block_rows_count = w.rows / block_rows;
  const Index block_cols_count = w.cols / block_cols;
  // A task is one band of block rows times a tile of about kTileWidth columns, so that column
  // norms (one tall block per column) still split over threads. Each block is accumulated by
  // exactly one task, row after row in order.
  constexpr Index kTileWidth = 2048;
  const Index tile_blocks = std::max<Index>(1, kTileWidth / block_cols);
  const Index tiles = (block_cols_count + tile_blocks - 1) / tile_blocks;
  const Index tasks = block_rows_count * tiles;
  const int threads = threads_for(static_cast<double>(w.rows) * static_cast<double>(w.cols));

#pragma omp parallel num_threads(threads)
  {
    std::vector<double> sums(static_cast<std::size_t>(tile_blocks));
    std::vector<T> maxima(static_cast<std::size_t>(tile_blocks));
#pragma omp for schedule(static)
    for (Index task = 0; task < tasks; ++task) {
      const Index band = task / tiles;
      const Index first = (task % tiles) * tile_blocks;
      const Index count = std::min(tile_blocks, block_cols_count - first);
      std::fill(sums.begin(), sums.end(), 0.0);
      std::fill(maxima.begin(), maxima.end(), T(0));
      for (Index r = band * block_rows; r < (band + 1) * block_rows; ++r) {
        const T* row = w.row(r) + first * block_cols;
        if (norm == Norm::Linf) {
          for (Index b = 0; b < count; ++b) {
            maxima[b] = std::max(maxima[b], segment_max_abs(row + b * block_cols, block_cols));
          }
        } else if (block_cols == 1) {
          for (Index b = 0; b < count; ++b) {
            const double v = row[b];
            sums[b] += norm == Norm::L1 ? std::abs(v) : v * v;
          }
        } else {
          for (Index b = 0; b < count; ++b) {
            sums[b] += segment_sum(row + b * block_cols, block_cols, norm);
          }
        }
      }
      T* o = out.row(band) + first;
      for (Index b = 0; b < count; ++b) {
        if (norm == Norm::Linf) {
          o[b] = maxima[b];
        } else {
          o[b] = static_cast<T>(norm == Norm::L2 ? std::sqrt(sums[b]) : sums[b]);
        }
      }
    }
  }
}

template <class T>
void wanda(ConstMatrixView<T> w, const T* act_sq, MatrixView<T> out) {
  std::vector<double> column_norm(static_cast<std::size_t>(w.cols));
  for (Index j = 0; j < w.cols; ++j) column_norm[j] = std::sqrt(static_cast<double>(act_sq[j]));
  const double* norm = column_norm.data();
  for_each_row(w.rows, w.cols, [&](Index i) {
    const T* in = w.row(i);
    T* o = out.row(i);
    for (Index j = 0; j < w.cols; ++j) {
      o[j] = static_cast<T>(std::abs(static_cast<double>(in[j])) * norm[j]);
    }
  });
}

template <class T>
void taylor(ConstMatrixView<T> w, ConstMatrixView<T> g, MatrixView<T> out) {
  for_each_row(w.rows, w.cols, [&](Index i) {
    const T* a = w.row(i);
    const T* b = g.row(i);
    T* o = out.row(i);
    for (Index j = 0; j < w.cols; ++j) o[j] = std::abs(a[j] * b[j]);
  });
}

template <class T>
void taylor_channels(ConstMatrixView<T> w, ConstMatrixView<T> g, bool multivariable, T* out) {
  for_each_row(w.rows, w.cols, [&](Index i) {
    const T* a = w.row(i);
    const T* b = g.row(i);
    const auto product = [a, b](Index j) {
      return static_cast<double>(a[j]) * static_cast<double>(b[j]);
    };
    const double s = multivariable
                         ? std::abs(fixed_order_sum(w.cols, product))
                         : fixed_order_sum(w.cols, [&](Index j) { return std::abs(product(j)); });
    out[i] = static_cast<T>(s);
  });
}

#define FASTPRUNE_INSTANTIATE(T)                                                       \
  template void magnitude<T>(ConstMatrixView<T>, Norm, MatrixView<T>);                 \
  template void block_norms<T>(ConstMatrixView<T>, Index, Index, Norm, MatrixView<T>); \
  template void wanda<T>(ConstMatrixView<T>, const T*, MatrixView<T>);                 \
  template void taylor<T>(ConstMatrixView<T>, ConstMatrixView<T>, MatrixView<T>);      \
  template void taylor_channels<T>(ConstMatrixView<T>, ConstMatrixView<T>, bool, T*);
FASTPRUNE_INSTANTIATE(float)
FASTPRUNE_INSTANTIATE(double)
#undef FASTPRUNE_INSTANTIATE

}  // namespace fastprune::importance

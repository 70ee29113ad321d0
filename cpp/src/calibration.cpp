#include "fastprune/calibration.hpp"

#include <algorithm>

#include "fastprune/blas.hpp"

namespace fastprune::calibration {

namespace {

// Elements worth a thread of their own in the passes that only read or copy (finiteness scans):
// below about a million, waking a second thread costs more than it saves, and on a busy machine
// a parallel region can wait milliseconds for a thread that is not running.
constexpr double kScanGrain = double(1 << 20);

// Whether p[0, n) is free of NaN and Inf, copying it to out[0, n) on the way when `copy`:
// v * 0 is 0 for finite v and NaN for NaN or Inf, and a NaN survives every later addition.
// kLanes partial sums keep the loop vectorisable.
template <bool copy, class T>
bool finite_run(const T* p, Index n, T* out) {
  constexpr int kLanes = 16;
  T part[kLanes] = {};
  Index i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      if constexpr (copy) out[i + l] = p[i + l];
      part[l] += p[i + l] * T(0);
    }
  }
  for (; i < n; ++i) {
    if constexpr (copy) out[i] = p[i];
    part[0] += p[i] * T(0);
  }
  T sum = 0;
  for (int l = 0; l < kLanes; ++l) sum += part[l];
  return sum == T(0);
}

}  // namespace

template <class T>
bool all_finite(const TokenMatrix<T>& x) {
  // Along the contiguous direction.
  const bool by_token = x.feature_stride == 1;
  const Index outer = by_token ? x.tokens : x.features;
  const Index inner = by_token ? x.features : x.tokens;
  const Index outer_stride = by_token ? x.token_stride : x.feature_stride;
  const int threads =
      threads_for(static_cast<double>(outer) * static_cast<double>(inner), kScanGrain);
  bool finite = true;
#pragma omp parallel for schedule(static) num_threads(threads) reduction(&& : finite)
  for (Index o = 0; o < outer; ++o) {
    finite =
        finite_run<false>(x.data + o * outer_stride, inner, static_cast<T*>(nullptr)) && finite;
  }
  return finite;
}

template <class T>
bool copy_finite(ConstMatrixView<T> x, MatrixView<T> out) {
  if (out.rows != x.rows || out.cols != x.cols) invalid("out: expected the shape of x");
  const int threads =
      threads_for(static_cast<double>(x.rows) * static_cast<double>(x.cols), kScanGrain);
  bool finite = true;
#pragma omp parallel for schedule(static) num_threads(threads) reduction(&& : finite)
  for (Index r = 0; r < x.rows; ++r) {
    finite = finite_run<true>(x.row(r), x.cols, out.row(r)) && finite;
  }
  return finite;
}

template <class T>
void add_gram_lower(MatrixView<T> gram, const TokenMatrix<T>& x) {
  if (gram.rows != x.features || gram.cols != x.features) {
    invalid("gram: expected shape (" + std::to_string(x.features) + ", " +
            std::to_string(x.features) + "), got (" + std::to_string(gram.rows) + ", " +
            std::to_string(gram.cols) + ")");
  }
  if (x.tokens == 0 || x.features == 0) return;
  using Stride = Eigen::OuterStride<>;
  using ColMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
  using RowMap = Eigen::Map<const RowMajor<T>, Eigen::Unaligned, Stride>;
  using ColMap = Eigen::Map<const ColMajor, Eigen::Unaligned, Stride>;
  const bool by_token = x.feature_stride == 1;
  if (!by_token && x.token_stride != 1) {
    invalid("x: the features of a token or the tokens of a feature must be contiguous");
  }
  // A batch whose rows (tokens, C order) or columns (features, F order) are contiguous and do
  // not overlap is the A of C += AᵀA or of C += A·Aᵀ as it is; any other is copied to C order a
  // bounded chunk of tokens at a time first.
  if (by_token && x.token_stride >= x.features) {
    blas::syrk_lower<T>(true, T(1), {x.data, x.tokens, x.features, x.token_stride}, T(1), gram);
    return;
  }
  if (!by_token && x.feature_stride >= x.tokens) {
    blas::syrk_lower<T>(false, T(1), {x.data, x.features, x.tokens, x.feature_stride}, T(1), gram);
    return;
  }
  constexpr Index kChunkElements = Index(1) << 22;
  const Index chunk = std::min(x.tokens, std::max<Index>(1, kChunkElements / x.features));
  RowMajor<T> buffer(chunk, x.features);
  for (Index t0 = 0; t0 < x.tokens; t0 += chunk) {
    const Index n = std::min(chunk, x.tokens - t0);
    if (by_token) {
      buffer.topRows(n) =
          RowMap(x.data + t0 * x.token_stride, n, x.features, Stride(x.token_stride));
    } else {
      buffer.topRows(n) = ColMap(x.data + t0, n, x.features, Stride(x.feature_stride));
    }
    blas::syrk_lower<T>(true, T(1), {buffer.data(), n, x.features, x.features}, T(1), gram);
  }
}

template <class T>
void symmetric_from_lower(ConstMatrixView<T> gram, T scale, MatrixView<T> out) {
  // Tiles of kTile x kTile: the upper triangle is read from the lower one tile by tile, so the
  // transposed reads stay in cache.
  constexpr Index kTile = 64;
  const Index n = gram.rows;
  const Index tiles = (n + kTile - 1) / kTile;
  const int threads = threads_for(static_cast<double>(n) * static_cast<double>(n));
#pragma omp parallel for schedule(static) num_threads(threads)
  for (Index ti = 0; ti < tiles; ++ti) {
    const Index i_end = std::min(n, (ti + 1) * kTile);
    for (Index tj = 0; tj < tiles; ++tj) {
      const Index j_end = std::min(n, (tj + 1) * kTile);
      for (Index i = ti * kTile; i < i_end; ++i) {
        T* o = out.row(i);
        for (Index j = tj * kTile; j < j_end; ++j) {
          o[j] = scale * (j <= i ? gram(i, j) : gram(j, i));
        }
      }
    }
  }
}

#define FASTPRUNE_INSTANTIATE(T)                                         \
  template bool all_finite<T>(const TokenMatrix<T>&);                    \
  template bool copy_finite<T>(ConstMatrixView<T>, MatrixView<T>);       \
  template void add_gram_lower<T>(MatrixView<T>, const TokenMatrix<T>&); \
  template void symmetric_from_lower<T>(ConstMatrixView<T>, T, MatrixView<T>);
FASTPRUNE_INSTANTIATE(float)
FASTPRUNE_INSTANTIATE(double)
#undef FASTPRUNE_INSTANTIATE

}  // namespace fastprune::calibration

#include "fastprune/calibration.hpp"

#if defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "fastprune/blas.hpp"

namespace fastprune::calibration {

namespace {

// Elements worth a thread of their own in the passes that only read or copy (finiteness scans):
// below about a million, waking a second thread costs more than it saves, and on a busy machine
// a parallel region can wait milliseconds for a thread that is not running.
constexpr double kScanGrain = double(1 << 20);
// 16-bit floats widened at a time (elements): 32 MiB of float32, as the Python side converts.
constexpr Index kWidenChunkElements = Index(1) << 23;

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

// Whether no element of p[0, n) has an exponent field of all ones (Inf or NaN), for 16-bit
// floats whose exponent bits are `exponent`.
bool halves_finite_run(const std::uint16_t* p, Index n, std::uint16_t exponent) {
  unsigned bad = 0;
  for (Index i = 0; i < n; ++i) bad |= static_cast<unsigned>((p[i] & exponent) == exponent);
  return bad == 0;
}

std::uint16_t exponent_bits(bool brain) { return brain ? 0x7F80 : 0x7C00; }

// One IEEE half, exactly; Inf and NaN keep their sign and payload.
float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1Fu, mantissa = h & 0x3FFu;
  std::uint32_t bits = 0;
  if (exponent == 0x1F) {
    bits = sign | 0x7F800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else {  // zero or subnormal: mantissa · 2^-24, exact in float32
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    std::memcpy(&bits, &magnitude, sizeof bits);
    bits |= sign;
  }
  float f = 0.0f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// out[0, n) = p[0, n) widened: bfloat16 is the top half of a float32; IEEE halves go through
// the CPU's conversion instruction where the build has one.
void widen_run(const std::uint16_t* p, Index n, bool brain, float* out) {
  Index i = 0;
  if (brain) {
    for (; i < n; ++i) {
      const std::uint32_t bits = std::uint32_t(p[i]) << 16;
      std::memcpy(out + i, &bits, sizeof bits);
    }
    return;
  }
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i));
    _mm512_storeu_ps(out + i, _mm512_cvtph_ps(h));
  }
#elif defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i));
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(h));
  }
#endif
  for (; i < n; ++i) out[i] = half_to_float(p[i]);
}

// run(p, n) -> whether p[0, n) is finite, for every run of x along its contiguous direction,
// on every thread the size is worth; true when every run is.
template <class T, class Run>
bool scan_runs(const TokenMatrix<T>& x, Run run) {
  const bool by_token = x.feature_stride == 1;
  const Index outer = by_token ? x.tokens : x.features;
  const Index inner = by_token ? x.features : x.tokens;
  const Index outer_stride = by_token ? x.token_stride : x.feature_stride;
  const int threads =
      threads_for(static_cast<double>(outer) * static_cast<double>(inner), kScanGrain);
  bool finite = true;
#pragma omp parallel for schedule(static) num_threads(threads) reduction(&& : finite)
  for (Index o = 0; o < outer; ++o) finite = run(x.data + o * outer_stride, inner) && finite;
  return finite;
}

// row(r) -> whether row r is finite, after writing out's row r from x's, for every row on every
// thread the size is worth; true when every row is.
template <class S, class T, class Row>
bool copy_rows(ConstMatrixView<S> x, MatrixView<T> out, Row row) {
  if (out.rows != x.rows || out.cols != x.cols) invalid("out: expected the shape of x");
  const int threads =
      threads_for(static_cast<double>(x.rows) * static_cast<double>(x.cols), kScanGrain);
  bool finite = true;
#pragma omp parallel for schedule(static) num_threads(threads) reduction(&& : finite)
  for (Index r = 0; r < x.rows; ++r) finite = row(r) && finite;
  return finite;
}

}  // namespace

bool halves_finite(const TokenMatrix<std::uint16_t>& x, bool brain) {
  const std::uint16_t exponent = exponent_bits(brain);
  return scan_runs(
      x, [&](const std::uint16_t* p, Index n) { return halves_finite_run(p, n, exponent); });
}

bool widen_finite(ConstMatrixView<std::uint16_t> x, bool brain, MatrixView<float> out) {
  return copy_rows(x, out, [&](Index r) {
    widen_run(x.row(r), x.cols, brain, out.row(r));
    // The widened row is still cached: checking it costs less than a second look at x.
    return finite_run<false>(out.row(r), x.cols, static_cast<float*>(nullptr));
  });
}

template <class T>
bool all_finite(const TokenMatrix<T>& x) {
  return scan_runs(
      x, [](const T* p, Index n) { return finite_run<false>(p, n, static_cast<T*>(nullptr)); });
}

template <class T>
bool copy_finite(ConstMatrixView<T> x, MatrixView<T> out) {
  return copy_rows(x, out, [&](Index r) { return finite_run<true>(x.row(r), x.cols, out.row(r)); });
}

namespace {

template <class G, class T>
void check_shapes(MatrixView<G> gram, const TokenMatrix<T>& x) {
  if (gram.rows != x.features || gram.cols != x.features) {
    invalid("gram: expected shape (" + std::to_string(x.features) + ", " +
            std::to_string(x.features) + "), got (" + std::to_string(gram.rows) + ", " +
            std::to_string(gram.cols) + ")");
  }
  if (x.feature_stride != 1 && x.token_stride != 1) {
    invalid("x: the features of a token or the tokens of a feature must be contiguous");
  }
}

// x as the A of a SYRK, read as it is: a batch whose rows (tokens, C order) or columns
// (features, F order) are contiguous and do not overlap is the A of C += AᵀA (a_t_a) or of
// C += A·Aᵀ. Other layouts are not (`readable` is false).
template <class T>
struct SyrkOperand {
  bool readable = false;
  bool a_t_a = true;
  ConstMatrixView<T> a{};
};

template <class T>
SyrkOperand<T> syrk_operand(const TokenMatrix<T>& x) {
  if (x.feature_stride == 1 && x.token_stride >= x.features) {
    return {true, true, {x.data, x.tokens, x.features, x.token_stride}};
  }
  if (x.feature_stride != 1 && x.feature_stride >= x.tokens) {
    return {true, false, {x.data, x.features, x.tokens, x.feature_stride}};
  }
  return {};
}

}  // namespace

template <class T>
void add_gram_lower(MatrixView<T> gram, const TokenMatrix<T>& x) {
  check_shapes(gram, x);
  if (x.tokens == 0 || x.features == 0) return;
  if (const auto op = syrk_operand(x); op.readable) {
    blas::syrk_lower<T>(op.a_t_a, T(1), op.a, T(1), gram);
    return;
  }
  // Any other layout is copied to C order a bounded chunk of tokens at a time first.
  using Stride = Eigen::OuterStride<>;
  using ColMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
  using RowMap = Eigen::Map<const RowMajor<T>, Eigen::Unaligned, Stride>;
  using ColMap = Eigen::Map<const ColMajor, Eigen::Unaligned, Stride>;
  constexpr Index kChunkElements = Index(1) << 22;
  const Index chunk = std::min(x.tokens, std::max<Index>(1, kChunkElements / x.features));
  RowMajor<T> buffer(chunk, x.features);
  for (Index t0 = 0; t0 < x.tokens; t0 += chunk) {
    const Index n = std::min(chunk, x.tokens - t0);
    if (x.feature_stride == 1) {
      buffer.topRows(n) =
          RowMap(x.data + t0 * x.token_stride, n, x.features, Stride(x.token_stride));
    } else {
      buffer.topRows(n) = ColMap(x.data + t0, n, x.features, Stride(x.feature_stride));
    }
    blas::syrk_lower<T>(true, T(1), {buffer.data(), n, x.features, x.features}, T(1), gram);
  }
}

template <class T>
bool add_gram_lower_if_finite(MatrixView<T> gram, const TokenMatrix<T>& x) {
  check_shapes(gram, x);
  // A NaN or an infinity in x makes a sum of squares on the update's diagonal NaN or infinite,
  // so where the update is apart from gram before it is added, a finite diagonal spares the scan.
  if (const auto op = syrk_operand(x);
      op.readable && blas::syrk_lower_add_split_if_finite<T>(op.a_t_a, T(1), op.a, gram)) {
    return true;
  }
  if (!all_finite(x)) return false;
  add_gram_lower(gram, x);
  return true;
}

bool add_gram_lower_widened(MatrixView<float> gram, ConstMatrixView<std::uint16_t> x, bool brain) {
  const TokenMatrix<std::uint16_t> tokens{x.data, x.rows, x.cols, x.stride, 1};
  check_shapes(gram, tokens);
  if (x.rows == 0 || x.cols == 0) return true;
  const Index chunk = std::min(x.rows, std::max<Index>(1, kWidenChunkElements / x.cols));
  // Several chunks: all of x is checked before anything is added. A single chunk is checked as
  // it is widened.
  if (chunk < x.rows && !halves_finite(tokens, brain)) return false;
  CachedBuffer<float> buffer(static_cast<std::size_t>(chunk * x.cols));
  for (Index t0 = 0; t0 < x.rows; t0 += chunk) {
    const Index n = std::min(chunk, x.rows - t0);
    const MatrixView<float> widened{buffer.data(), n, x.cols, x.cols};
    if (!widen_finite({x.row(t0), n, x.cols, x.stride}, brain, widened)) return false;
    blas::syrk_lower<float>(true, 1.0F, {widened.data, n, x.cols, x.cols}, 1.0F, gram);
  }
  return true;
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

#define FASTPRUNE_INSTANTIATE(T)                                                   \
  template bool all_finite<T>(const TokenMatrix<T>&);                              \
  template bool copy_finite<T>(ConstMatrixView<T>, MatrixView<T>);                 \
  template void add_gram_lower<T>(MatrixView<T>, const TokenMatrix<T>&);           \
  template bool add_gram_lower_if_finite<T>(MatrixView<T>, const TokenMatrix<T>&); \
  template void symmetric_from_lower<T>(ConstMatrixView<T>, T, MatrixView<T>);
FASTPRUNE_INSTANTIATE(float)
FASTPRUNE_INSTANTIATE(double)
#undef FASTPRUNE_INSTANTIATE

}  // namespace fastprune::calibration

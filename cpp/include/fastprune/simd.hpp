// SIMD helpers: registers as GCC/Clang vector extensions (the same source becomes SSE2, AVX2 or
// AVX-512 code in each per-instruction-set build of the core), and 8 × 8 float transposes.
#pragma once

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <cstdint>
#include <cstring>

#include "fastprune/common.hpp"

namespace fastprune::simd {

// The widest register of the instruction-set level being compiled for, in bytes.
#if defined(__AVX512F__)
inline constexpr int kWidestBytes = 64;
#elif defined(__AVX__)
inline constexpr int kWidestBytes = 32;
#else
inline constexpr int kWidestBytes = 16;
#endif

// A register of Bytes / sizeof(T) lanes of T; arithmetic works lane by lane, and a scalar added
// to Vec{} fills every lane.
template <class T, int Bytes>
struct VectorOf {
  typedef T type __attribute__((vector_size(Bytes)));
};
template <class T, int Bytes>
using Vec = typename VectorOf<T, Bytes>::type;

// A whole register from (or to) memory with no alignment required.
template <int Bytes, class T>
inline Vec<T, Bytes> load(const T* p) {
  Vec<T, Bytes> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <class T, class V>
inline void store(T* p, const V& v) {
  std::memcpy(p, &v, sizeof v);
}

// 8 × 8 transposes of float tiles (dst(k, i) = src(i, k)): in AVX registers where the core is
// built for AVX2, element by element otherwise.
inline constexpr Index kSquare = 8;

#if defined(__AVX2__)
inline void transpose8(const float* src, Index src_stride, float* dst, Index dst_stride) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * src_stride);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * dst_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * dst_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}

// The mask of an 8 × 8 tile of column-major keep values (1 or 0) into row-major bools.
inline void transpose8_mask(const float* keep, Index keep_stride, bool* mask, Index mask_stride) {
  alignas(32) float tile[64];
  transpose8(keep, keep_stride, tile, 8);
  for (int i = 0; i < 8; ++i) {
    const auto bits = static_cast<unsigned>(_mm256_movemask_ps(
        _mm256_cmp_ps(_mm256_load_ps(tile + 8 * i), _mm256_setzero_ps(), _CMP_NEQ_UQ)));
    const std::uint64_t bytes = _pdep_u64(bits, 0x0101010101010101ULL);
    std::memcpy(mask + i * mask_stride, &bytes, 8);
  }
}
#else
inline void transpose8(const float* src, Index src_stride, float* dst, Index dst_stride) {
  for (Index i = 0; i < 8; ++i) {
    for (Index k = 0; k < 8; ++k) dst[k * dst_stride + i] = src[i * src_stride + k];
  }
}

inline void transpose8_mask(const float* keep, Index keep_stride, bool* mask, Index mask_stride) {
  for (Index i = 0; i < 8; ++i) {
    for (Index k = 0; k < 8; ++k) mask[i * mask_stride + k] = keep[k * keep_stride + i] != 0.0f;
  }
}
#endif

}  // namespace fastprune::simd

// SIMD registers as GCC/Clang vector extensions: the same source becomes SSE2, AVX2 or AVX-512
// code in each per-instruction-set build of the core.
#pragma once

#include <cstring>

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

}  // namespace fastprune::simd

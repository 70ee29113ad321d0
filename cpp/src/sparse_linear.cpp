// Kernels of sparse_linear.hpp.
//
// Everything is written against `Lanes`, sixteen float32 lanes: one AVX-512 register, two AVX2
// registers, or sixteen scalars on the baseline level, and the same lane-wise fused multiply-adds
// and the same reduction tree run on every level. A row of the bitmask layout is read in one of
// two ways (dot_rows):
// - in windows of 32 columns, its values in their packed order and x permuted to meet them: lane
//   l takes the window's l-th kept weight. Rows whose every mask byte keeps four columns (2:4,
//   4:8) are read so on every level (their columns from kQuads); other rows only on AVX-512
//   where the CPU has VBMI2 (their columns from vpcompressb; byte_compress()).
// - block by block (other rows elsewhere): a block's mask word expands its packed values into
//   the lanes under their columns (a permutation whose indices come from a 256-entry table per
//   byte: one masked vpermps on AVX-512, a vpermps and a blend per half on AVX2; a loop on the
//   baseline).
// So the levels give identical results, except for rows read in windows on one and block by
// block on another. The index layout gathers x at 16 columns (8-lane vgatherdps on AVX-512 and
// AVX2, a loop on the baseline) and then shares the accumulators, the fused multiply-adds and
// the reduction. A small batch of x rows is taken at once by the outer path (below), one
// multiply-add per kept weight and 16 rows of x.
#include "fastprune/sparse_linear.hpp"

#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "fastprune/blas.hpp"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace fastprune::sparse_linear {

namespace {

constexpr int kSets = 4;  // accumulator sets, taking consecutive blocks in turn

inline float bf16_to_float(std::uint16_t h) {
  const std::uint32_t bits = static_cast<std::uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline float value_of(float v) { return v; }
inline float value_of(std::uint16_t v) { return bf16_to_float(v); }

inline int popcount(std::uint32_t m) { return __builtin_popcount(m); }
inline int popcount64(std::uint64_t m) { return __builtin_popcountll(m); }
inline std::uint32_t field(std::uint64_t q, int j) {
  return static_cast<std::uint32_t>((q >> (16 * j)) & 0xffffu);
}

// Decoding one right-hand side is bound by how fast the packed weight streams in, and the
// hardware prefetcher alone keeps too few of its lines in flight for one sequential stream: the
// loops ask for the line kAhead bytes past the one they read (measured on AVX2 at one token:
// 10-25 % faster from 512 B to 2 KiB ahead).
constexpr std::ptrdiff_t kAhead = 2048;
constexpr std::ptrdiff_t kLine = 64;
// The lines holding [p, p + bytes), kAhead further on. The address is computed as an integer:
// it may lie past the end of the array (a prefetch never faults), where a pointer may not.
template <std::ptrdiff_t bytes>
inline void prefetch(const void* p) {
  const std::uintptr_t at = reinterpret_cast<std::uintptr_t>(p) + kAhead;
  for (std::ptrdiff_t o = 0; o < bytes; o += kLine) {
    __builtin_prefetch(reinterpret_cast<const void*>(at + static_cast<std::uintptr_t>(o)), 0, 3);
  }
}

// Rows whose every mask byte keeps four columns (2:4, 4:8; "halves" below) are read in windows
// of 32 columns, two mask words and sixteen values, and the values stay in their packed order:
// lane 4 q + r takes the r-th kept value of byte q, and the inputs are brought to it (x at
// column 8 q + byte r of kQuads.pos[byte q] of the window). One permutation of x then serves
// sixteen weights, where placing values under their columns costs one per block of eight.
struct QuadTable {
  std::uint32_t pos[256];  // byte r: where byte b's r-th set bit lies (bytes with four set)
};
constexpr QuadTable make_quads() {
  QuadTable t{};
  for (int b = 0; b < 256; ++b) {
    int r = 0;
    for (int l = 0; l < 8 && r < 4; ++l) {
      if ((b >> l) & 1) t.pos[b] |= static_cast<std::uint32_t>(l) << (8 * r++);
    }
  }
  return t;
}
constexpr QuadTable kQuads = make_quads();
// The eight columns that half `half` of a window's mask bits m keeps (its columns 0-15 or
// 16-31), as bytes counted from the start of that half: lane 4 q + r of the half at byte 4 q + r.
inline std::uint64_t quads(std::uint32_t m, int half) {
  const std::uint32_t h = m >> (16 * half);
  return static_cast<std::uint64_t>(kQuads.pos[h & 0xffu]) |
         static_cast<std::uint64_t>(kQuads.pos[(h >> 8) & 0xffu] + 0x08080808u) << 32;
}

#if defined(__AVX512F__) || defined(__AVX2__)

// perm[b][l] = which of the packed values lane l takes when mask byte b is set at l; lanes not
// set hold -1, whose sign bit selects zero in the blend (vpermps reads only the low 3 bits).
struct PermutationTable {
  alignas(32) std::int32_t perm[256][8];
};
constexpr PermutationTable make_table() {
  PermutationTable t{};
  for (int b = 0; b < 256; ++b) {
    int next = 0;
    for (int l = 0; l < 8; ++l) {
      t.perm[b][l] = (b >> l) & 1 ? next++ : -1;
    }
  }
  return t;
}
constexpr PermutationTable kTable = make_table();

// Eight bfloat16 values as float32.
inline __m256 widen(const std::uint16_t* p) {
  const __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
}

#endif

#if defined(__AVX512F__)

struct Lanes {
  __m512 v;
};
inline Lanes zero() { return {_mm512_setzero_ps()}; }
inline Lanes splat(float v) { return {_mm512_set1_ps(v)}; }
// A block's values go to the lanes its mask word sets by one permutation (vpermps) whose indices
// come from the byte tables, the lanes it does not set zeroed by the mask. vexpandps would do it
// in one instruction, but on AMD Zen 4 it takes about three times as long as the permutation
// and the two table loads together (1.5 ns against 0.57 ns per block, measured), and it bounded
// the whole product. The second byte's table entries are shifted by the first byte's count.
inline __m512 expand16(std::uint32_t m, __m512 packed) {
  const __m256i low = _mm256_load_si256(reinterpret_cast<const __m256i*>(kTable.perm[m & 0xffu]));
  const __m256i high =
      _mm256_add_epi32(_mm256_load_si256(reinterpret_cast<const __m256i*>(kTable.perm[m >> 8])),
                       _mm256_set1_epi32(popcount(m & 0xffu)));
  const __m512i sources = _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
  return _mm512_maskz_permutexvar_ps(static_cast<__mmask16>(m), sources, packed);
}
inline Lanes expand(std::uint32_t m, const float* p) { return {expand16(m, _mm512_loadu_ps(p))}; }
// Sixteen bfloat16 values as float32.
inline Lanes weights(const std::uint16_t* p) {
  const __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16))};
}
inline Lanes expand(std::uint32_t m, const std::uint16_t* p) { return {expand16(m, weights(p).v)}; }
// A window of halves (see kQuads): the columns its sixteen values lie at, and x at them from the
// window's 32 inputs by one two-source permutation. In a row of pairs (every four columns keep
// two: 2:4) lane 2 g + r takes the r-th kept column of nibble g, found without a table lookup:
// the mask word broadcast, each lane's nibble shifted down, and the nibble's first or second
// set bit read from a 32-entry table held in two registers (kPairs).
struct Sources {
  __m512i v;
};
struct PairTables {
  std::int32_t first[16], second[16];  // nibbles with two bits set: their lower and higher bit
};
constexpr PairTables make_pairs() {
  PairTables t{};
  for (int n = 0; n < 16; ++n) {
    int r = 0;
    for (int l = 0; l < 4; ++l) {
      if ((n >> l) & 1) (r++ == 0 ? t.first[n] : t.second[n]) = l;
    }
  }
  return t;
}
constexpr PairTables kPairs = make_pairs();
inline Sources window_sources(std::uint32_t m, bool pairs) {
  if (pairs) {
    const __m512i nibble_at =
        _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
    const __m512i shifted = _mm512_srlv_epi32(_mm512_set1_epi32(static_cast<int>(m)), nibble_at);
    const __m512i second =
        _mm512_setr_epi32(0, 16, 0, 16, 0, 16, 0, 16, 0, 16, 0, 16, 0, 16, 0, 16);
    // (shifted & 15) | second: the nibble, and which of its two bits the lane takes.
    const __m512i entry = _mm512_ternarylogic_epi32(shifted, _mm512_set1_epi32(15), second, 0xEA);
    const __m512i bit = _mm512_permutex2var_epi32(_mm512_loadu_si512(kPairs.first), entry,
                                                  _mm512_loadu_si512(kPairs.second));
    return {_mm512_add_epi32(bit, nibble_at)};
  }
  const __m128i bytes =
      _mm_set_epi64x(static_cast<long long>(quads(m, 1)), static_cast<long long>(quads(m, 0)));
  const __m512i half = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 16, 16, 16, 16, 16, 16, 16, 16);
  return {_mm512_add_epi32(_mm512_cvtepu8_epi32(bytes), half)};
}
inline Lanes window_x(const float* x, Sources s) {
  return {_mm512_permutex2var_ps(_mm512_loadu_ps(x), s.v, _mm512_loadu_ps(x + 16))};
}
// A general window (see dot_rows): the window columns (0-31: the low five bits of `at`) that
// its live lanes take, the lanes past them zero.
struct Picks {
  __m512i at;
  __mmask16 live;
};
inline __mmask16 live_lanes(int n) {
  return static_cast<__mmask16>(_bzhi_u32(0xffffu, static_cast<unsigned>(std::max(n, 0))));
}
inline Picks picks(const std::int32_t* columns, int n) {
  return {_mm512_loadu_si512(columns), live_lanes(n)};
}
inline Lanes pick_x(const float* x, const Picks& p) {
  return {_mm512_maskz_permutex2var_ps(p.live, _mm512_loadu_ps(x), p.at, _mm512_loadu_ps(x + 16))};
}
inline Lanes live_weights(const float* v, const Picks& p) {
  return {_mm512_maskz_loadu_ps(p.live, v)};
}
inline Lanes live_weights(const std::uint16_t* v, const Picks& p) {
  const __m256i half = _mm256_maskz_loadu_epi16(p.live, v);
  return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16))};
}
// With AVX-512 VBMI2 one vpcompressb lists a window's kept columns as bytes, in order. VBMI2 is
// not part of the x86-64-v4 level this file is built for: the instruction is written out here
// (a target attribute would keep the compiler from inlining around it) and runs only where
// byte_compress() found it.
inline __m256i kept_bytes(std::uint32_t m) {
  const __m256i columns =
      _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
                       22, 23, 24, 25, 26, 27, 28, 29, 30, 31);
  const __mmask32 keep = m;
  __m256i bytes;
  asm("vpcompressb %1, %0%{%2%}%{z%}" : "=v"(bytes) : "v"(columns), "Yk"(keep));
  return bytes;
}
inline Picks byte_picks(__m128i bytes, int n) {
  return {_mm512_cvtepu8_epi32(bytes), live_lanes(n)};
}
inline Lanes load(const float* p) { return {_mm512_loadu_ps(p)}; }
inline Lanes load_first(const float* p, Index n) {
  return {_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1u), p)};
}
inline Lanes fma(Lanes a, Lanes b, Lanes c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
inline Lanes add(Lanes a, Lanes b) { return {_mm512_add_ps(a.v, b.v)}; }
inline void store(float* p, Lanes a) { _mm512_storeu_ps(p, a.v); }
inline void store_first(float* p, Lanes a, Index n) {
  _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1u), a.v);
}
inline float reduce(Lanes a) {
  const __m256 lo = _mm512_castps512_ps256(a.v);
  const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a.v), 1));
  const __m256 r8 = _mm256_add_ps(lo, hi);
  const __m128 r4 = _mm_add_ps(_mm256_castps256_ps128(r8), _mm256_extractf128_ps(r8, 1));
  const __m128 r2 = _mm_add_ps(r4, _mm_movehl_ps(r4, r4));
  return _mm_cvtss_f32(_mm_add_ss(r2, _mm_shuffle_ps(r2, r2, 1)));
}
constexpr int kMaxTile = 4;  // right-hand sides per pass: 4 x 4 accumulators of 32 registers

// The 16 column indices at p widened to 32 bits and clamped to `last` (so that a gather stays
// inside x whatever the indices say); `seen` keeps the lane-wise maximum of the indices as read,
// for `beyond` to tell once per row whether any exceeded `last`.
struct Columns {
  __m512i v;
};
inline Columns columns(const std::uint16_t* p, std::uint32_t last, Columns& seen) {
  const __m512i c = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  seen.v = _mm512_max_epu32(seen.v, c);
  return {_mm512_min_epu32(c, _mm512_set1_epi32(static_cast<int>(last)))};
}
inline bool beyond(Columns seen, std::uint32_t last) {
  return _mm512_cmpgt_epu32_mask(seen.v, _mm512_set1_epi32(static_cast<int>(last))) != 0;
}
// The columns of block b that mask word m keeps, in order, stored as 16 int32 at out (the
// lanes past the count are garbage); returns the count.
inline int kept_in_block(std::uint32_t m, Index b, std::int32_t* out) {
  const __m512i columns =
      _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                       _mm512_set1_epi32(static_cast<int>(b * kBlock)));
  _mm512_storeu_si512(out, _mm512_maskz_compress_epi32(static_cast<__mmask16>(m), columns));
  return popcount(m);
}
// Two 8-lane gathers rather than one of 16: on AMD Zen 4 the 16-lane form takes about twice as
// long per element, and elsewhere the two cost about what the one does.
inline Lanes gather(const float* x, Columns c) {
  const __m256 lo = _mm256_i32gather_ps(x, _mm512_castsi512_si256(c.v), 4);
  const __m256 hi = _mm256_i32gather_ps(x, _mm512_extracti64x4_epi64(c.v, 1), 4);
  return {_mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1)};
}

#elif defined(__AVX2__)

struct Lanes {
  __m256 lo, hi;
};
inline Lanes zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
inline Lanes splat(float v) { return {_mm256_set1_ps(v), _mm256_set1_ps(v)}; }
inline __m256 expand8(std::uint32_t byte, __m256 packed) {
  const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(kTable.perm[byte]));
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(packed, perm), _mm256_setzero_ps(),
                          _mm256_castsi256_ps(perm));
}
inline Lanes expand(std::uint32_t m, const float* p) {
  const std::uint32_t low = m & 0xffu;
  return {expand8(low, _mm256_loadu_ps(p)), expand8(m >> 8, _mm256_loadu_ps(p + popcount(low)))};
}
inline Lanes expand(std::uint32_t m, const std::uint16_t* p) {
  const std::uint32_t low = m & 0xffu;
  return {expand8(low, widen(p)), expand8(m >> 8, widen(p + popcount(low)))};
}

// A window of halves (see kQuads): each half of the lanes takes x from its 16 columns by two
// vpermps and a blend on bit 3 of the column.
struct Sources {
  __m256i lo, hi, lo_high, hi_high;  // the columns, and bit 3 of each in the sign bit
};
inline Sources window_sources(std::uint32_t m, bool) {
  const __m256i lo = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<long long>(quads(m, 0))));
  const __m256i hi = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<long long>(quads(m, 1))));
  return {lo, hi, _mm256_slli_epi32(lo, 28), _mm256_slli_epi32(hi, 28)};
}
inline __m256 pick16(const float* x, __m256i columns, __m256i high) {
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(_mm256_loadu_ps(x), columns),
                          _mm256_permutevar8x32_ps(_mm256_loadu_ps(x + 8), columns),
                          _mm256_castsi256_ps(high));
}
inline Lanes window_x(const float* x, const Sources& s) {
  return {pick16(x, s.lo, s.lo_high), pick16(x + 16, s.hi, s.hi_high)};
}
inline Lanes load(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
inline __m256i first_lanes(Index n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline Lanes load_first(const float* p, Index n) {
  return {_mm256_maskload_ps(p, first_lanes(n)), _mm256_maskload_ps(p + 8, first_lanes(n - 8))};
}
// A general window (see dot_rows): the window columns (0-31) its live lanes take, each lane's x
// chosen among the window's four 8-column quarters by vpermps and blends on bits 3 and 4 of its
// column; the lanes past them zero.
struct Picks {
  __m256i lo, hi, live_lo, live_hi;
};
inline Picks picks(const std::int32_t* columns, int n) {
  return {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(columns)),
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(columns + 8)), first_lanes(n),
          first_lanes(n - 8)};
}
inline __m256 pick8(const __m256 (&x)[4], __m256i at, __m256i live) {
  const __m256 bit3 = _mm256_castsi256_ps(_mm256_slli_epi32(at, 28));
  const __m256 bit4 = _mm256_castsi256_ps(_mm256_slli_epi32(at, 27));
  const __m256 low = _mm256_blendv_ps(_mm256_permutevar8x32_ps(x[0], at),
                                      _mm256_permutevar8x32_ps(x[1], at), bit3);
  const __m256 high = _mm256_blendv_ps(_mm256_permutevar8x32_ps(x[2], at),
                                       _mm256_permutevar8x32_ps(x[3], at), bit3);
  return _mm256_and_ps(_mm256_blendv_ps(low, high, bit4), _mm256_castsi256_ps(live));
}
inline Lanes pick_x(const float* x, const Picks& p) {
  const __m256 quarters[4] = {_mm256_loadu_ps(x), _mm256_loadu_ps(x + 8), _mm256_loadu_ps(x + 16),
                              _mm256_loadu_ps(x + 24)};
  return {pick8(quarters, p.lo, p.live_lo), pick8(quarters, p.hi, p.live_hi)};
}
inline Lanes live_weights(const float* v, const Picks& p) {
  return {_mm256_maskload_ps(v, p.live_lo), _mm256_maskload_ps(v + 8, p.live_hi)};
}
// Reads 16 values from v whatever the count (the caller keeps them inside the kSlack).
inline Lanes live_weights(const std::uint16_t* v, const Picks& p) {
  return {_mm256_and_ps(widen(v), _mm256_castsi256_ps(p.live_lo)),
          _mm256_and_ps(widen(v + 8), _mm256_castsi256_ps(p.live_hi))};
}
inline Lanes fma(Lanes a, Lanes b, Lanes c) {
  return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
}
inline Lanes add(Lanes a, Lanes b) {
  return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)};
}
inline void store(float* p, Lanes a) {
  _mm256_storeu_ps(p, a.lo);
  _mm256_storeu_ps(p + 8, a.hi);
}
inline void store_first(float* p, Lanes a, Index n) {
  _mm256_maskstore_ps(p, first_lanes(n), a.lo);
  _mm256_maskstore_ps(p + 8, first_lanes(n - 8), a.hi);
}
inline float reduce(Lanes a) {
  const __m256 r8 = _mm256_add_ps(a.lo, a.hi);
  const __m128 r4 = _mm_add_ps(_mm256_castps256_ps128(r8), _mm256_extractf128_ps(r8, 1));
  const __m128 r2 = _mm_add_ps(r4, _mm_movehl_ps(r4, r4));
  return _mm_cvtss_f32(_mm_add_ss(r2, _mm_shuffle_ps(r2, r2, 1)));
}
constexpr int kMaxTile = 4;  // 4 x 4 x 2 accumulators: more than 16 registers, spilled to L1

struct Columns {
  __m256i lo, hi;
};
inline __m256i columns8(const std::uint16_t* p, __m256i limit, __m256i& seen) {
  const __m256i c = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  seen = _mm256_max_epu32(seen, c);
  return _mm256_min_epu32(c, limit);
}
inline Columns columns(const std::uint16_t* p, std::uint32_t last, Columns& seen) {
  const __m256i limit = _mm256_set1_epi32(static_cast<int>(last));
  return {columns8(p, limit, seen.lo), columns8(p + 8, limit, seen.hi)};
}
inline bool beyond(Columns seen, std::uint32_t last) {
  // Unsigned: `last` is 2^32 - 1 for a weight without columns (and then no index was read).
  const __m256i limit = _mm256_set1_epi32(static_cast<int>(last));
  const __m256i most = _mm256_max_epu32(_mm256_max_epu32(seen.lo, seen.hi), limit);
  return _mm256_movemask_epi8(_mm256_cmpeq_epi32(most, limit)) != -1;
}
inline Lanes gather(const float* x, Columns c) {
  return {_mm256_i32gather_ps(x, c.lo, 4), _mm256_i32gather_ps(x, c.hi, 4)};
}
// set[b] = the lanes byte b sets, in order, then zeros.
struct LaneTable {
  alignas(32) std::int32_t set[256][8];
};
constexpr LaneTable make_lane_table() {
  LaneTable t{};
  for (int b = 0; b < 256; ++b) {
    int n = 0;
    for (int l = 0; l < 8; ++l) {
      if ((b >> l) & 1) t.set[b][n++] = l;
    }
  }
  return t;
}
constexpr LaneTable kLanes = make_lane_table();
inline int kept_in_block(std::uint32_t m, Index b, std::int32_t* out) {
  const __m256i base = _mm256_set1_epi32(static_cast<int>(b * kBlock));
  const std::uint32_t low = m & 0xffu, high = m >> 8;
  const int n = popcount(low);
  _mm256_storeu_si256(
      reinterpret_cast<__m256i*>(out),
      _mm256_add_epi32(_mm256_load_si256(reinterpret_cast<const __m256i*>(kLanes.set[low])), base));
  _mm256_storeu_si256(
      reinterpret_cast<__m256i*>(out + n),
      _mm256_add_epi32(_mm256_load_si256(reinterpret_cast<const __m256i*>(kLanes.set[high])),
                       _mm256_add_epi32(base, _mm256_set1_epi32(8))));
  return n + popcount(high);
}
inline Lanes weights(const std::uint16_t* p) { return {widen(p), widen(p + 8)}; }

#else

struct Lanes {
  float v[16];
};
inline Lanes zero() { return {}; }
inline Lanes splat(float v) {
  Lanes r;
  std::fill(r.v, r.v + 16, v);
  return r;
}
template <class S>
inline Lanes expand(std::uint32_t m, const S* p) {
  Lanes r{};
  for (int l = 0; l < 16; ++l) {
    if ((m >> l) & 1u) r.v[l] = value_of(*p++);
  }
  return r;
}
inline Lanes load_first(const float* p, Index n) {
  Lanes r{};
  for (Index l = 0; l < n; ++l) r.v[l] = p[l];
  return r;
}
inline Lanes load(const float* p) { return load_first(p, 16); }
inline Lanes fma(Lanes a, Lanes b, Lanes c) {
  for (int l = 0; l < 16; ++l) c.v[l] = std::fma(a.v[l], b.v[l], c.v[l]);
  return c;
}
inline Lanes add(Lanes a, Lanes b) {
  for (int l = 0; l < 16; ++l) a.v[l] += b.v[l];
  return a;
}
inline void store_first(float* p, Lanes a, Index n) {
  for (Index l = 0; l < n; ++l) p[l] = a.v[l];
}
inline void store(float* p, Lanes a) { store_first(p, a, 16); }
inline float reduce(Lanes a) {
  for (int width = 8; width >= 1; width /= 2) {
    for (int l = 0; l < width; ++l) a.v[l] += a.v[l + width];
  }
  return a.v[0];
}
constexpr int kMaxTile = 1;

struct Columns {
  std::uint32_t v[16];
};
inline Columns columns(const std::uint16_t* p, std::uint32_t last, Columns& seen) {
  Columns c;
  for (int l = 0; l < 16; ++l) {
    const std::uint32_t i = p[l];
    seen.v[l] = std::max(seen.v[l], i);
    c.v[l] = std::min(i, last);
  }
  return c;
}
inline bool beyond(const Columns& seen, std::uint32_t last) {
  return std::any_of(seen.v, seen.v + 16, [last](std::uint32_t i) { return i > last; });
}
inline Lanes gather(const float* x, Columns c) {
  Lanes r;
  for (int l = 0; l < 16; ++l) r.v[l] = x[c.v[l]];
  return r;
}
inline Lanes weights(const std::uint16_t* p) {
  Lanes r;
  for (int l = 0; l < 16; ++l) r.v[l] = bf16_to_float(p[l]);
  return r;
}
inline int kept_in_block(std::uint32_t m, Index b, std::int32_t* out) {
  int n = 0;
  for (int l = 0; l < 16; ++l) {
    if ((m >> l) & 1u) out[n++] = static_cast<std::int32_t>(b * kBlock + l);
  }
  return n;
}
struct Sources {
  std::uint8_t v[16];  // the window column each lane takes x from
};
inline Sources window_sources(std::uint32_t m, bool) {
  Sources s;
  for (int half = 0; half < 2; ++half) {
    const std::uint64_t q = quads(m, half);
    for (int l = 0; l < 8; ++l) {
      s.v[8 * half + l] = static_cast<std::uint8_t>(16 * half + ((q >> (8 * l)) & 0xffu));
    }
  }
  return s;
}
inline Lanes window_x(const float* x, const Sources& s) {
  Lanes r;
  for (int l = 0; l < 16; ++l) r.v[l] = x[s.v[l]];
  return r;
}
struct Picks {
  std::int32_t at[16];  // the window column (0-31) of each live lane
  int live;
};
inline Picks picks(const std::int32_t* columns, int n) {
  Picks p{};
  p.live = std::min(n, 16);
  for (int l = 0; l < p.live; ++l) p.at[l] = columns[l] & 31;
  return p;
}
inline Lanes pick_x(const float* x, const Picks& p) {
  Lanes r{};
  for (int l = 0; l < p.live; ++l) r.v[l] = x[p.at[l]];
  return r;
}
template <class S>
inline Lanes live_weights(const S* v, const Picks& p) {
  Lanes r{};
  for (int l = 0; l < p.live; ++l) r.v[l] = value_of(v[l]);
  return r;
}

#endif

inline Lanes weights(const float* p) { return load(p); }

// What every mask byte of a row's whole blocks keeps: four columns (halves: 2:4, 4:8, ...),
// and among those two of every four (pairs: 2:4), or anything else (none).
enum class Quads { none, halves, pairs };

inline Quads quads_of(const std::uint16_t* m, Index n) {
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(m);
  const Index count = 2 * n;
  bool pairs = true;
  Index i = 0;
#if defined(__AVX2__)
  const __m256i nibbles = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1,
                                           2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low4 = _mm256_set1_epi8(0x0f), two = _mm256_set1_epi8(2),
                four = _mm256_set1_epi8(4);
  for (; i + 32 <= count; i += 32) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bytes + i));
    const __m256i low = _mm256_shuffle_epi8(nibbles, _mm256_and_si256(v, low4));
    const __m256i high =
        _mm256_shuffle_epi8(nibbles, _mm256_and_si256(_mm256_srli_epi16(v, 4), low4));
    if (_mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_add_epi8(low, high), four)) != -1) {
      return Quads::none;
    }
    pairs = pairs && _mm256_movemask_epi8(_mm256_cmpeq_epi8(low, two)) == -1;
  }
#endif
  for (; i < count; ++i) {
    if (popcount(bytes[i]) != 4) return Quads::none;
    pairs = pairs && popcount(bytes[i] & 0xfu) == 2;
  }
  return pairs ? Quads::pairs : Quads::halves;
}

}  // namespace

// Rows of no particular kind are read in windows (dot_rows) where this is true, and elsewhere
// block by block (dot_blocks): without vpcompressb, listing a window's columns (from byte tables
// in registers, or a list written first) cost more than the blocks, measured on AVX-512 and
// AVX2. The two orders of summation round differently.
bool byte_compress() {
#if defined(__AVX512F__)
  static const bool usable = [] {
    const char* disabled = std::getenv("FASTPRUNE_DISABLE_ISA");
    return __builtin_cpu_supports("avx512vbmi2") &&
           (disabled == nullptr || std::strstr(disabled, "avx512vbmi2") == nullptr);
  }();
  return usable;
#else
  return false;
#endif
}

namespace {

// a[t] += the window's kept weights at v times x[t * x_stride + its columns], for t < T: the
// first 16 kept (in column order) in lanes 0-15, then, when more than 16 are kept, the others
// (their Picks from rest()).
template <int T, class S, class Rest>
inline void take(Lanes* a, const float* x, Index x_stride, const S* v, const Picks& first, int kept,
                 Rest&& rest) {
  const Lanes w = live_weights(v, first);
  for (int t = 0; t < T; ++t) a[t] = fma(w, pick_x(x + t * x_stride, first), a[t]);
  if (kept > kBlock) {
    const Picks others = rest();
    const Lanes u = live_weights(v + kBlock, others);
    for (int t = 0; t < T; ++t) a[t] = fma(u, pick_x(x + t * x_stride, others), a[t]);
  }
}

// The two mask words of window w (its columns 32 w to 32 w + 31) of a row of `blocks` words.
inline std::uint32_t window_mask(const std::uint16_t* mask, Index w, Index blocks) {
  const std::uint32_t low = mask[2 * w];
  return 2 * w + 1 < blocks ? low | static_cast<std::uint32_t>(mask[2 * w + 1]) << 16 : low;
}

#if defined(__AVX512F__)
// Windows 0 .. windows - 1 of a row of no particular kind by vpcompressb (window w into set
// w % kSets), their values from pos on; returns where they end, or -1 when pos would pass
// `total` (the mask claims more weights than the values hold). Only where byte_compress().
template <int T, class S>
Index compressed_windows(const std::uint16_t* mask, Index windows, const float* x, Index x_stride,
                         const S* values, Index pos, Index total, Lanes (&acc)[kSets][T]) {
  // Copied in and out, so that no store through x or values can be taken to reach them.
  Lanes a0[T], a1[T], a2[T], a3[T];
  for (int t = 0; t < T; ++t) {
    a0[t] = acc[0][t];
    a1[t] = acc[1][t];
    a2[t] = acc[2][t];
    a3[t] = acc[3][t];
  }
  // Window w's weights from `at` on, times x; returns how many it keeps.
  auto window = [x, x_stride, values](Lanes* set, Index w, std::uint32_t m, Index at) {
    const int kept = popcount(m);
    const __m256i bytes = kept_bytes(m);
    take<T>(set, x + w * 2 * kBlock, x_stride, values + at,
            byte_picks(_mm256_castsi256_si128(bytes), kept), kept,
            [&] { return byte_picks(_mm256_extracti128_si256(bytes, 1), kept - kBlock); });
    return kept;
  };
  // Each group of four windows first checks that the weights it claims lie inside the values.
  Index w = 0;
  for (; w + kSets <= windows; w += kSets) {
    std::uint64_t q[2];
    std::memcpy(q, mask + 2 * w, sizeof q);
    if (pos + popcount64(q[0]) + popcount64(q[1]) > total) return -1;
    prefetch<2 * kLine>(values + pos);
    pos += window(a0, w, static_cast<std::uint32_t>(q[0]), pos);
    pos += window(a1, w + 1, static_cast<std::uint32_t>(q[0] >> 32), pos);
    pos += window(a2, w + 2, static_cast<std::uint32_t>(q[1]), pos);
    pos += window(a3, w + 3, static_cast<std::uint32_t>(q[1] >> 32), pos);
  }
  std::uint32_t m[3] = {};
  std::memcpy(m, mask + 2 * w, static_cast<std::size_t>(windows - w) * sizeof m[0]);
  if (pos + popcount(m[0]) + popcount(m[1]) + popcount(m[2]) > total) return -1;
  if (w < windows) pos += window(a0, w, m[0], pos);
  if (w + 1 < windows) pos += window(a1, w + 1, m[1], pos);
  if (w + 2 < windows) pos += window(a2, w + 2, m[2], pos);
  for (int t = 0; t < T; ++t) {
    acc[0][t] = a0[t];
    acc[1][t] = a1[t];
    acc[2][t] = a2[t];
    acc[3][t] = a3[t];
  }
  return pos;
}
#endif

// One row of the mask and where its values lie.
template <class S>
struct Row {
  const std::uint16_t* mask;
  const S* values;
  Index begin, end, total;

  bool valid() const { return 0 <= begin && begin <= end && end <= total; }
};

// As dot_rows, for a row of no particular kind where byte_compress() is false: its values placed
// under their columns, block by block (expand), block b into accumulator set b % kSets.
template <int T, class S>
bool dot_blocks(const Row<S>& row, Index cols, const float* x, Index x_stride, float* y,
                Index y_stride) {
  Lanes acc[kSets][T];
  for (auto& set : acc) {
    for (auto& a : set) a = zero();
  }
  const Index full = cols / kBlock, tail = cols % kBlock;
  const std::uint16_t* mask = row.mask;
  const S* values = row.values;
  Index pos = row.begin;
  // The set is a template argument so that the accumulators stay in registers (an index known
  // only at run time would put them in memory). Four blocks read at most 4 * 16 values from
  // pos: checking pos <= total before every four keeps every load inside the values and their
  // kSlack.
  auto block = [&](auto set, Index b, std::uint32_t m, int count, auto&& load_x) {
    const Lanes w = expand(m, values + pos);
    pos += count;
    Lanes* a = acc[decltype(set)::value];
    for (int t = 0; t < T; ++t) a[t] = fma(w, load_x(x + t * x_stride + b * kBlock), a[t]);
  };
  const std::integral_constant<int, 0> s0;
  const std::integral_constant<int, 1> s1;
  const std::integral_constant<int, 2> s2;
  const std::integral_constant<int, 3> s3;
  auto whole = [](const float* p) { return load(p); };
  Index b = 0;
  for (; b + kSets <= full; b += kSets) {
    if (pos > row.total) return false;
    prefetch<2 * kLine>(values + pos);  // a block of four at density 1/2 in float32
    // The four mask words in one 64-bit register, each counted in place: a 16-bit popcount
    // would merge into its destination register and chain every block to the one before.
    std::uint64_t q;
    std::memcpy(&q, mask + b, sizeof q);
    block(s0, b, field(q, 0), popcount64(q & 0xffffull), whole);
    block(s1, b + 1, field(q, 1), popcount64(q & 0xffff0000ull), whole);
    block(s2, b + 2, field(q, 2), popcount64(q & 0xffff00000000ull), whole);
    block(s3, b + 3, field(q, 3), popcount64(q & 0xffff000000000000ull), whole);
  }
  // At most three whole blocks and the tail are left.
  if (pos > row.total) return false;
  auto part = [tail](const float* p) { return load_first(p, tail); };
  const Index left = full - b + (tail != 0 ? 1 : 0);
  auto rest = [&](auto set, Index c) {
    const std::uint32_t m = mask[c];
    if (c < full) {
      block(set, c, m, popcount(m), whole);
    } else {
      block(set, c, m, popcount(m), part);
    }
  };
  if (left > 0) rest(s0, b);
  if (left > 1) rest(s1, b + 1);
  if (left > 2) rest(s2, b + 2);
  if (left > 3) rest(s3, b + 3);
  if (pos != row.end) return false;
  for (int t = 0; t < T; ++t) {
    y[t * y_stride] = reduce(add(add(acc[0][t], acc[1][t]), add(acc[2][t], acc[3][t])));
  }
  return true;
}

// y[t * y_stride] = row . x[t * x_stride + (0 .. cols)] for t < T. Returns false, y untouched,
// when the row's mask and offsets disagree. `kind`: what the mask bytes of the row's whole
// blocks keep (quads_of, checked once per row by the caller).
//
// The row is read in windows of 32 columns (two mask words), window w into accumulator set
// w % kSets, the values in their packed order: lane l takes the window's l-th kept weight and
// x at its column, and a window keeping more than 16 takes a second multiply-add for the rest.
// At 70 % sparsity a window keeps about ten, so one permutation of x and one multiply-add serve
// 32 columns, where placing values under their columns (dot_blocks) takes one per block of 16.
// The columns come from kQuads in rows of halves (on every level) and from vpcompressb in other
// rows (only where byte_compress() says so); the last window, when cols is not a multiple of
// 32, takes x from a zero-padded copy and its columns from kept_in_block.
template <int T, class S>
bool dot_rows(const Row<S>& row, Quads kind, Index cols, const float* x, Index x_stride, float* y,
              Index y_stride) {
  if (kind == Quads::none && !byte_compress()) {
    return dot_blocks<T>(row, cols, x, x_stride, y, y_stride);
  }
  Lanes acc[kSets][T];
  for (auto& set : acc) {
    for (auto& a : set) a = zero();
  }
  const Index blocks = blocks_for(cols), windows = cols / (2 * kBlock);
  const std::uint16_t* mask = row.mask;
  const S* values = row.values;
  Index pos = row.begin;
  // The set is a template argument so that the accumulators stay in registers (an index known
  // only at run time would put them in memory).
  const std::integral_constant<int, 0> s0;
  const std::integral_constant<int, 1> s1;
  const std::integral_constant<int, 2> s2;
  const std::integral_constant<int, 3> s3;
  if (kind != Quads::none) {
    const bool pairs = kind == Quads::pairs;
    // Every window keeps 16: four windows read 64 values from pos, which pos <= total keeps
    // inside the kSlack.
    auto window = [&](auto set, Index w) {
      std::uint32_t m;
      std::memcpy(&m, mask + 2 * w, sizeof m);
      const Sources sources = window_sources(m, pairs);
      const Lanes v = weights(values + pos + kBlock * (w % kSets));
      Lanes* a = acc[decltype(set)::value];
      for (int t = 0; t < T; ++t) {
        a[t] = fma(v, window_x(x + t * x_stride + w * 2 * kBlock, sources), a[t]);
      }
    };
    Index w = 0;
    for (; w + kSets <= windows; w += kSets, pos += kSets * kBlock) {
      if (pos > row.total) return false;
      prefetch<kSets * kBlock * sizeof(S)>(values + pos);
      window(s0, w);
      window(s1, w + 1);
      window(s2, w + 2);
      window(s3, w + 3);
    }
    if (pos > row.total) return false;
    if (w < windows) window(s0, w);
    if (w + 1 < windows) window(s1, w + 1);
    if (w + 2 < windows) window(s2, w + 2);
    pos += kBlock * (windows - w);
  } else {
#if defined(__AVX512F__)
    pos = compressed_windows<T>(mask, windows, x, x_stride, values, pos, row.total, acc);
    if (pos < 0) return false;
#endif
  }
  if (windows * 2 < blocks) {
    // The last window: its columns listed here, x copied with zeros past cols.
    if (pos > row.total) return false;
    const Index w = windows, width = cols - w * 2 * kBlock;
    const std::uint32_t m = window_mask(mask, w, blocks);
    alignas(64) std::int32_t columns[3 * kBlock];
    kept_in_block(m >> 16, 1, columns + kept_in_block(m & 0xffffu, 0, columns));
    const int kept = popcount(m);
    alignas(64) float padded[T][2 * kBlock] = {};
    for (int t = 0; t < T; ++t) std::copy_n(x + t * x_stride + w * 2 * kBlock, width, padded[t]);
    auto last = [&](auto set) {
      take<T>(acc[decltype(set)::value], padded[0], 2 * kBlock, values + pos, picks(columns, kept),
              kept, [&] { return picks(columns + kBlock, kept - kBlock); });
    };
    switch (w % kSets) {
      case 0:
        last(s0);
        break;
      case 1:
        last(s1);
        break;
      case 2:
        last(s2);
        break;
      default:
        last(s3);
        break;
    }
    pos += kept;
  }
  if (pos != row.end) return false;
  for (int t = 0; t < T; ++t) {
    y[t * y_stride] = reduce(add(add(acc[0][t], acc[1][t]), add(acc[2][t], acc[3][t])));
  }
  return true;
}

// out[0 .. cols) = the row as dense float32.
template <class S>
bool decode_row(const Row<S>& row, Index cols, float* out) {
  const Index full = cols / kBlock, tail = cols % kBlock;
  Index pos = row.begin;
  for (Index b = 0; b <= full; ++b) {
    const Index width = b < full ? kBlock : tail;
    if (width == 0) break;
    const std::uint32_t m = row.mask[b];
    if (pos > row.total) return false;
    const Lanes w = m == 0 ? zero() : expand(m, row.values + pos);
    pos += popcount(m);
    if (width == kBlock) {
      store(out + b * kBlock, w);
    } else {
      store_first(out + b * kBlock, w, width);
    }
  }
  return pos == row.end;
}

template <class S>
Row<S> row_of(ConstMatrixView<std::uint16_t> mask, const std::int64_t* offsets, const S* values,
              Index total, Index i) {
  return {mask.row(i), values, static_cast<Index>(offsets[i]), static_cast<Index>(offsets[i + 1]),
          total};
}

// One row of the index layout, its weights at [begin, end) of indices and values.
template <class S>
struct IndexedRow {
  const std::uint16_t* indices;
  const S* values;
  Index begin, end, total;

  bool valid(Index cols) const {
    return 0 <= begin && begin <= end && end <= total && (cols > 0 || begin == end);
  }
};

template <class S>
IndexedRow<S> indexed_row(const std::int64_t* offsets, const std::uint16_t* indices,
                          const S* values, Index total, Index i) {
  return {indices, values, static_cast<Index>(offsets[i]), static_cast<Index>(offsets[i + 1]),
          total};
}

// As dot_rows for a valid IndexedRow: weight j of the row goes to lane j % 16 of accumulator
// set (j / 16) % 4, a last group of fewer than 16 padded with zero weights at column 0. Returns
// false, y untouched, when an index is not below cols.
template <int T, class S>
bool gather_rows(const IndexedRow<S>& row, Index cols, const float* x, Index x_stride, float* y,
                 Index y_stride) {
  Lanes acc[kSets][T];
  for (auto& set : acc) {
    for (auto& a : set) a = zero();
  }
  const auto last = static_cast<std::uint32_t>(std::min<Index>(cols, Index{1} << 16) - 1);
  Columns seen{};
  auto group = [&](auto set, const std::uint16_t* columns_at, const S* values_at) {
    const Columns c = columns(columns_at, last, seen);
    const Lanes w = weights(values_at);
    Lanes* a = acc[decltype(set)::value];
    for (int t = 0; t < T; ++t) a[t] = fma(w, gather(x + t * x_stride, c), a[t]);
  };
  const std::integral_constant<int, 0> s0;
  const std::integral_constant<int, 1> s1;
  const std::integral_constant<int, 2> s2;
  const std::integral_constant<int, 3> s3;
  const std::uint16_t* idx = row.indices + row.begin;
  const S* val = row.values + row.begin;
  const Index n = row.end - row.begin, full = n / kBlock, tail = n % kBlock;
  Index g = 0;
  for (; g + kSets <= full; g += kSets) {
    prefetch<kSets * kBlock * sizeof(std::uint16_t)>(idx + g * kBlock);
    prefetch<kSets * kBlock * sizeof(S)>(val + g * kBlock);
    group(s0, idx + g * kBlock, val + g * kBlock);
    group(s1, idx + (g + 1) * kBlock, val + (g + 1) * kBlock);
    group(s2, idx + (g + 2) * kBlock, val + (g + 2) * kBlock);
    group(s3, idx + (g + 3) * kBlock, val + (g + 3) * kBlock);
  }
  // At most three whole groups and the tail are left: g % kSets == 0 here.
  std::uint16_t tail_columns[kBlock] = {};
  S tail_values[kBlock] = {};
  std::copy_n(idx + full * kBlock, tail, tail_columns);
  std::copy_n(val + full * kBlock, tail, tail_values);
  auto rest = [&](auto set, Index c) {
    if (c < full) {
      group(set, idx + c * kBlock, val + c * kBlock);
    } else {
      group(set, tail_columns, tail_values);
    }
  };
  const Index left = full - g + (tail != 0 ? 1 : 0);
  if (left > 0) rest(s0, g);
  if (left > 1) rest(s1, g + 1);
  if (left > 2) rest(s2, g + 2);
  if (left > 3) rest(s3, g + 3);
  if (beyond(seen, last)) return false;
  for (int t = 0; t < T; ++t) {
    y[t * y_stride] = reduce(add(add(acc[0][t], acc[1][t]), add(acc[2][t], acc[3][t])));
  }
  return true;
}

// out[0 .. cols) = the row as dense float32.
template <class S>
bool decode_indexed_row(const IndexedRow<S>& row, Index cols, float* out) {
  std::fill(out, out + cols, 0.0f);
  for (Index p = row.begin; p < row.end; ++p) {
    const Index c = row.indices[p];
    if (c >= cols) return false;
    out[c] = value_of(row.values[p]);
  }
  return true;
}

// The k right-hand sides of one row in passes of kMaxTile, 2 and 1: dot(width, t) computes
// width (a std::integral_constant) of them from t on.
template <class Dot>
bool in_passes(Index k, Dot&& dot) {
  Index t = 0;
  bool ok = true;
  auto pass = [&](auto width) {
    if constexpr (decltype(width)::value <= kMaxTile) {
      for (; ok && t + width <= k; t += width) ok = dot(width, t);
    }
  };
  pass(std::integral_constant<int, kMaxTile>{});
  pass(std::integral_constant<int, 2>{});
  pass(std::integral_constant<int, 1>{});
  return ok;
}

// --- The small-batch path: every right-hand side at once, one kept weight at a time ----------
// x is transposed into xt, column j of x as row j of xt, its k values padded with zeros to
// `width`, a multiple of 16 lanes. Kept weight w_ij then adds w_ij * xt[j] to row i's
// accumulators: one multiply-add per kept weight and 16 right-hand sides, where the streaming
// passes above pay one per block of 16 columns and right-hand side, and GEMM one per weight.
// Up to 48 right-hand sides weight p of a row goes to chain p % 4 of each group of 16, and the
// chains are summed ((0 + 1) + (2 + 3)); from 49 on each group is one chain: the same order on
// every level and thread count.

// The most right-hand sides the outer path takes (beyond, its transposed x outgrows the caches
// and the tiles' GEMM catches up).
constexpr Index kOuterMaxWidth = 8 * kBlock;

// Whether the outer path beats the other two for k right-hand sides, from the work each does
// (fitted on AMD Zen 4, one thread, 4096-wide weights): the outer path about 0.6 ns per kept
// weight and 16 right-hand sides, plus one such unit for listing the columns; the bitmask passes
// 0.7 ns per block and right-hand side, plus two; the index passes 0.43 ns per kept weight and
// right-hand side; the tiles' GEMM 0.03 ns per weight and right-hand side, kept or not, and
// never fewer than 32 right-hand sides' worth (below that the GEMM runs short of its best). Past
// 64 right-hand sides the transposed x of a 4096-wide weight no longer fits a 1 MiB L2, and the
// outer path's work costs about 1.6 times as much (0.97-0.99 ns a unit at 128 right-hand sides,
// 4096x4096 at 2:4 and at 70 %, where 2:4 then loses to the tiles by 10-15 %).
inline double outer_units(double kept, Index k) {
  return kept * static_cast<double>(1 + (k + kBlock - 1) / kBlock);
}
inline bool outer_beats_passes(double kept, double blocks, Index k) {
  return k >= 2 && k <= kOuterMaxWidth &&
         6.0 * outer_units(kept, k) < 7.0 * blocks * static_cast<double>(2 + k);
}
inline bool outer_beats_gathers(Index k) {
  return k >= 2 && k <= kOuterMaxWidth &&
         55.0 * outer_units(1.0, k) < 43.0 * static_cast<double>(k);
}
inline bool outer_beats_tiles(double kept, double weights, Index k) {
  const double spill = k > 4 * kBlock ? 1.6 : 1.0;
  return k <= kOuterMaxWidth && 20.0 * spill * outer_units(kept, k) <
                                    weights * static_cast<double>(std::max<Index>(k, 32));
}

// xt (rows_xt x width) = x^T padded with zeros (rows_xt >= cols, a multiple of kBlock).
inline void transpose_padded(ConstMatrixView<float> x, Index rows_xt, Index width, float* xt) {
  std::fill(xt, xt + rows_xt * width, 0.0f);
  for (Index t = 0; t < x.rows; ++t) {
    const float* row = x.row(t);
    for (Index j = 0; j < x.cols; ++j) xt[j * width + t] = row[j];
  }
}

// The wide form of outer_row, for N >= 4 groups of 16 right-hand sides: each kept weight, in
// order, feeds all N groups from one contiguous row of xt, one chain per group (N chains in
// flight hide the multiply-add's latency). Reading xt's rows whole keeps a transposed x that
// outgrows the L2 cache streaming.
template <int N, class S, class C>
void outer_row_wide(const S* val, const C* col, Index n, const float* xt, Lanes* acc) {
  Lanes a[N];
  for (auto& l : a) l = zero();
  for (Index p = 0; p < n; ++p) {
    const Lanes v = splat(value_of(val[p]));
    const float* x = xt + static_cast<Index>(col[p]) * (N * kBlock);
    for (int c = 0; c < N; ++c) a[c] = fma(v, load(x + c * kBlock), a[c]);
  }
  std::copy(a, a + N, acc);
}

// acc[c] (c < width / 16) = the row's kept weights (values val, columns col, n of them) times
// xt. Up to 3 groups of 16 right-hand sides: one group at a time, weight p into chain p % 4, the
// chains summed as (0 + 1) + (2 + 3); from 4 groups on, outer_row_wide.
template <class S, class C>
void outer_row(const S* val, const C* col, Index n, const float* xt, Index width, Lanes* acc) {
  switch (width / kBlock) {
    case 4:
      return outer_row_wide<4>(val, col, n, xt, acc);
    case 5:
      return outer_row_wide<5>(val, col, n, xt, acc);
    case 6:
      return outer_row_wide<6>(val, col, n, xt, acc);
    case 7:
      return outer_row_wide<7>(val, col, n, xt, acc);
    case 8:
      return outer_row_wide<8>(val, col, n, xt, acc);
    default:
      break;
  }
  auto term = [&](Index p, const float* x, Lanes a) {
    return fma(splat(value_of(val[p])), load(x + static_cast<Index>(col[p]) * width), a);
  };
  for (Index c = 0; c < width / kBlock; ++c) {
    const float* x = xt + c * kBlock;
    Lanes a0 = zero(), a1 = zero(), a2 = zero(), a3 = zero();
    Index p = 0;
    for (; p + 4 <= n; p += 4) {
      a0 = term(p, x, a0);
      a1 = term(p + 1, x, a1);
      a2 = term(p + 2, x, a2);
      a3 = term(p + 3, x, a3);
    }
    if (p < n) a0 = term(p, x, a0);
    if (p + 1 < n) a1 = term(p + 1, x, a1);
    if (p + 2 < n) a2 = term(p + 2, x, a2);
    acc[c] = add(add(a0, a1), add(a2, a3));
  }
}

// y = x W^T on the outer path: x transposed once, then rows spread over the threads (each
// output element by one thread). product(i, list, xt, width, acc) computes row i into acc, with
// `list` room for the row's columns (rows_xt + kBlock int32), and returns false when the row's
// arrays disagree.
template <class Product>
bool by_outer_rows(Index rows, Index cols, ConstMatrixView<float> x, MatrixView<float> y,
                   double work, Product&& product) {
  const Index k = x.rows, width = (k + kBlock - 1) / kBlock * kBlock;
  const Index rows_xt = blocks_for(cols) * kBlock;
  const int threads = threads_for(work, 1 << 17);
  CachedBuffer<float> xt(static_cast<std::size_t>(rows_xt * width));
  transpose_padded(x, rows_xt, width, xt.data());
  const Index room = rows_xt + kBlock;
  CachedBuffer<std::int32_t> lists(static_cast<std::size_t>(threads * room));
  bool ok = true;
#pragma omp parallel num_threads(threads) reduction(&& : ok)
  {
    std::int32_t* list = lists.data() + omp_get_thread_num() * room;
    Lanes acc[kOuterMaxWidth / kBlock];
    alignas(64) float lanes[kOuterMaxWidth];
#pragma omp for schedule(dynamic, 16)
    for (Index i = 0; i < rows; ++i) {
      if (!product(i, list, xt.data(), width, acc)) {
        ok = false;
        continue;
      }
      for (Index c = 0; c < width / kBlock; ++c) store(lanes + c * kBlock, acc[c]);
      for (Index t = 0; t < k; ++t) y.data[i + t * y.stride] = lanes[t];
    }
  }
  return ok;
}

constexpr Index kTileRows = 64;  // rows decoded per GEMM on the compute-bound path

// The compute-bound path: y = x W^T by tiles of kTileRows rows, decode(i, out) writing row i
// of W as dense float32 (false if its arrays disagree) and one single-threaded GEMM per tile.
template <class Decode>
bool by_tiles(Index rows, Index cols, ConstMatrixView<float> x, MatrixView<float> y,
              Decode&& decode) {
  const Index k = x.rows;
  const Index tiles = (rows + kTileRows - 1) / kTileRows;
  const int threads = static_cast<int>(
      std::min<Index>(tiles, threads_for(static_cast<double>(rows * cols * k), 1 << 20)));
  CachedBuffer<float> scratch(static_cast<std::size_t>(threads * kTileRows * cols));
  bool ok = true;
#pragma omp parallel num_threads(threads) reduction(&& : ok)
  {
    float* tile = scratch.data() + omp_get_thread_num() * kTileRows * cols;
#pragma omp for schedule(dynamic, 1)
    for (Index b = 0; b < tiles; ++b) {
      const Index r0 = b * kTileRows, n = std::min(kTileRows, rows - r0);
      bool tile_ok = true;
      for (Index r = 0; r < n && tile_ok; ++r) tile_ok = decode(r0 + r, tile + r * cols);
      if (!tile_ok) {
        ok = false;
        continue;
      }
      blas::gemm<float>(false, true, 1.0f, x, ConstMatrixView<float>{tile, n, cols, cols}, 0.0f,
                        MatrixView<float>{y.data + r0, k, n, y.stride});
    }
  }
  return ok;
}

// The bandwidth-bound path: product(i) computes every right-hand side of row i, rows spread
// over the threads (each output element by one thread).
template <class Product>
bool by_rows(Index rows, double work, Product&& product) {
  bool ok = true;
#pragma omp parallel for schedule(dynamic, 16) reduction(&& : ok) \
    num_threads(threads_for(work, 1 << 17))
  for (Index i = 0; i < rows; ++i) {
    if (!product(i)) ok = false;
  }
  return ok;
}

}  // namespace

std::int64_t check_layout(ConstMatrixView<std::uint16_t> mask, const std::int64_t* offsets,
                          Index cols) {
  if (offsets[0] != 0) return 0;
  const Index tail = cols % kBlock;
  const std::uint32_t padding = tail == 0 ? 0u : 0xffffu & ~((1u << tail) - 1u);
  for (Index i = 0; i < mask.rows; ++i) {
    const std::uint16_t* m = mask.row(i);
    std::int64_t count = 0;
    for (Index b = 0; b < mask.cols; ++b) count += popcount(m[b]);
    if (mask.cols > 0 && (m[mask.cols - 1] & padding) != 0) return i;
    if (offsets[i + 1] - offsets[i] != count) return i;
  }
  return -1;
}

template <class S>
bool linear(ConstMatrixView<std::uint16_t> mask, const std::int64_t* offsets, const S* values,
            Index total, Index cols, ConstMatrixView<float> x, MatrixView<float> y,
            Index gemm_from) {
  const Index rows = mask.rows, k = x.rows;
  const auto kept = static_cast<double>(total);
  const bool outer = k >= gemm_from
                         ? outer_beats_tiles(kept, static_cast<double>(rows * cols), k)
                         : outer_beats_passes(kept, static_cast<double>(rows * mask.cols), k);
  if (k >= gemm_from && cols > 0 && !outer) {
    return by_tiles(rows, cols, x, y, [&](Index i, float* out) {
      const Row<S> row = row_of(mask, offsets, values, total, i);
      return row.valid() && decode_row(row, cols, out);
    });
  }
  const double work =
      static_cast<double>(total) * static_cast<double>(k) + static_cast<double>(rows * mask.cols);
  if (outer) {
    return by_outer_rows(
        rows, cols, x, y, work,
        [&](Index i, std::int32_t* list, const float* xt, Index width, Lanes* acc) {
          const Row<S> row = row_of(mask, offsets, values, total, i);
          if (!row.valid()) return false;
          Index n = 0;
          for (Index b = 0; b < mask.cols; ++b) {
            n += kept_in_block(row.mask[b], b, list + n);
          }
          if (n != row.end - row.begin) return false;
          outer_row(row.values + row.begin, list, n, xt, width, acc);
          return true;
        });
  }
  return by_rows(rows, work, [&](Index i) {
    const Row<S> row = row_of(mask, offsets, values, total, i);
    const Quads kind = quads_of(row.mask, cols / kBlock);
    return row.valid() && in_passes(k, [&](auto width, Index t) {
             return dot_rows<decltype(width)::value>(row, kind, cols, x.row(t), x.stride,
                                                     y.data + i + t * y.stride, y.stride);
           });
  });
}

template <class S>
bool indexed_linear(const std::int64_t* offsets, const std::uint16_t* indices, const S* values,
                    Index rows, Index total, Index cols, ConstMatrixView<float> x,
                    MatrixView<float> y, Index gemm_from) {
  const Index k = x.rows;
  const bool outer = k >= gemm_from ? outer_beats_tiles(static_cast<double>(total),
                                                        static_cast<double>(rows * cols), k)
                                    : outer_beats_gathers(k);
  if (k >= gemm_from && cols > 0 && !outer) {
    return by_tiles(rows, cols, x, y, [&](Index i, float* out) {
      const IndexedRow<S> row = indexed_row(offsets, indices, values, total, i);
      return row.valid(cols) && decode_indexed_row(row, cols, out);
    });
  }
  const double work =
      static_cast<double>(total) * static_cast<double>(k) + static_cast<double>(rows);
  if (outer) {
    return by_outer_rows(rows, cols, x, y, work,
                         [&](Index i, std::int32_t*, const float* xt, Index width, Lanes* acc) {
                           const IndexedRow<S> row =
                               indexed_row(offsets, indices, values, total, i);
                           if (!row.valid(cols)) return false;
                           const std::uint16_t* col = row.indices + row.begin;
                           const Index n = row.end - row.begin;
                           std::uint16_t most = 0;
                           for (Index p = 0; p < n; ++p) most = std::max(most, col[p]);
                           if (n > 0 && most >= cols) return false;
                           outer_row(row.values + row.begin, col, n, xt, width, acc);
                           return true;
                         });
  }
  return by_rows(rows, work, [&](Index i) {
    const IndexedRow<S> row = indexed_row(offsets, indices, values, total, i);
    return row.valid(cols) && in_passes(k, [&](auto width, Index t) {
             return gather_rows<decltype(width)::value>(row, cols, x.row(t), x.stride,
                                                        y.data + i + t * y.stride, y.stride);
           });
  });
}

template <class S>
bool to_dense(ConstMatrixView<std::uint16_t> mask, const std::int64_t* offsets, const S* values,
              Index total, MatrixView<float> out) {
  bool ok = true;
#pragma omp parallel for schedule(static) reduction(&& : ok) \
    num_threads(threads_for(static_cast<double>(out.size())))
  for (Index i = 0; i < out.rows; ++i) {
    const Row<S> row = row_of(mask, offsets, values, total, i);
    if (!row.valid() || !decode_row(row, out.cols, out.row(i))) ok = false;
  }
  return ok;
}

template <class S>
bool indexed_to_dense(const std::int64_t* offsets, const std::uint16_t* indices, const S* values,
                      Index total, MatrixView<float> out) {
  bool ok = true;
#pragma omp parallel for schedule(static) reduction(&& : ok) \
    num_threads(threads_for(static_cast<double>(out.size())))
  for (Index i = 0; i < out.rows; ++i) {
    const IndexedRow<S> row = indexed_row(offsets, indices, values, total, i);
    if (!row.valid(out.cols) || !decode_indexed_row(row, out.cols, out.row(i))) ok = false;
  }
  return ok;
}

template bool linear<float>(ConstMatrixView<std::uint16_t>, const std::int64_t*, const float*,
                            Index, Index, ConstMatrixView<float>, MatrixView<float>, Index);
template bool linear<std::uint16_t>(ConstMatrixView<std::uint16_t>, const std::int64_t*,
                                    const std::uint16_t*, Index, Index, ConstMatrixView<float>,
                                    MatrixView<float>, Index);
template bool to_dense<float>(ConstMatrixView<std::uint16_t>, const std::int64_t*, const float*,
                              Index, MatrixView<float>);
template bool to_dense<std::uint16_t>(ConstMatrixView<std::uint16_t>, const std::int64_t*,
                                      const std::uint16_t*, Index, MatrixView<float>);
template bool indexed_linear<float>(const std::int64_t*, const std::uint16_t*, const float*, Index,
                                    Index, Index, ConstMatrixView<float>, MatrixView<float>, Index);
template bool indexed_linear<std::uint16_t>(const std::int64_t*, const std::uint16_t*,
                                            const std::uint16_t*, Index, Index, Index,
                                            ConstMatrixView<float>, MatrixView<float>, Index);
template bool indexed_to_dense<float>(const std::int64_t*, const std::uint16_t*, const float*,
                                      Index, MatrixView<float>);
template bool indexed_to_dense<std::uint16_t>(const std::int64_t*, const std::uint16_t*,
                                              const std::uint16_t*, Index, MatrixView<float>);

}  // namespace fastprune::sparse_linear

// y = x W^T with W stored compressed: the product of a linear layer whose weight is sparse.
//
// Layout ("packed bitmask"): the columns of W are cut into blocks of 16. mask (rows x blocks,
// uint16) has bit l of block b set when column 16 b + l of the row is kept; values holds the
// kept weights of every row in row-major order, row i from offsets[i] (rows + 1 entries). The
// values array carries kSlack (64) slack elements after the last kept weight so that vector loads
// of a block never read past it. Per kept weight this reads the value plus 1/density bits of mask:
// a 2:4 matrix costs exactly what 2-bit in-group positions would (0.125 B per weight), and an
// unstructured one needs no column indices. Values are float32 or bfloat16 (raw bits, uint16),
// computed in float32.
//
// Decoding reads each weight once: a block's mask expands its packed values into 16 lanes that
// multiply 16 consecutive inputs. Every output element is the sum over the row's blocks taken
// in order into four 16-lane accumulators (block b into accumulator b % 4), added lane by lane
// as (0 + 1) + (2 + 3) and then reduced by the fixed tree (l, l + 8), (l, l + 4), (l, l + 2),
// (l, l + 1), with fused multiply-adds on every instruction-set level (the baseline level
// through std::fma): the result depends neither on the level nor on the thread count.
//
// For a few right-hand sides (k from 2 to 128) of a sparse enough weight the kernel may instead
// take them all at once ("outer"): x transposed once, and each kept weight of a row, in order,
// adds its weight times its column of x^T, per group of 16 right-hand sides into one of four
// chains (weight p into chain p % 4, summed as (0 + 1) + (2 + 3)) when k <= 48, into one chain
// per group from 49 on, with fused multiply-adds: again independent of level and threads.
// For many right-hand sides (k >= gemm_from) of a dense-ish weight the product is compute bound
// and the kernel decodes fixed tiles of rows into dense scratch and multiplies each tile with one
// single-threaded GEMM (blas.hpp); results then still do not depend on the thread count. Which
// of the three runs is decided from k and the number of kept weights (a cost model in the .cpp).
//
// Layout ("indices", for high sparsity): row i keeps offsets[i + 1] - offsets[i] weights, their
// columns indices[offsets[i] ..] (uint16, strictly increasing, so cols <= 65536) and their values
// values[offsets[i] ..], without slack. Per kept weight this reads 2 bytes of index instead of
// 1/density bits of mask: fewer bytes below a density of 1/16, and a constant cost per kept
// weight rather than per block of 16 columns. The product gathers x at 16 columns at a time
// (vgatherdps on AVX-512 and AVX2, a loop on the baseline): kept weight j of a row (j counted
// from the row's start) goes to lane j % 16 of accumulator set (j / 16) % 4; a last group of
// fewer than 16 is padded with zero weights at column 0 (x is finite, so they add nothing),
// and the sets are reduced exactly as above: results depend neither on the level nor on the
// thread count. A few right-hand sides may take the outer path, and from gemm_from right-hand
// sides on rows may be decoded into tiles for GEMM, both as for the bitmask layout.
#pragma once

#include <cstdint>

#include "fastprune/common.hpp"

namespace fastprune::sparse_linear {

inline constexpr Index kBlock = 16;        // columns per mask word
inline constexpr Index kSlack = 64;        // values past the last kept weight loads may touch
inline constexpr Index kGemmColumns = 16;  // default gemm_from: tiles + GEMM may run from here on

inline Index blocks_for(Index cols) { return (cols + kBlock - 1) / kBlock; }

// Checks that offsets match the mask: offsets[0] == 0 and offsets[i + 1] - offsets[i] is the
// number of set bits of mask row i, and no bit at or beyond `cols` is set. Returns -1 or the
// first offending row.
std::int64_t check_layout(ConstMatrixView<std::uint16_t> mask, const std::int64_t* offsets,
                          Index cols);

// Whether linear() reads rows that are not N:M-like (every mask byte keeping four) in windows
// of 32 columns, their columns listed by vpcompressb: on AVX-512 with VBMI2, unless
// FASTPRUNE_DISABLE_ISA names avx512vbmi2. Such rows are summed in another order than on the
// levels without it (the same bound on the error, different roundings).
bool byte_compress();

// y (k x rows, overwritten) = x (k x cols) W^T for W in the layout above. `S` is float (float32
// values) or std::uint16_t (bfloat16 bits); values holds `total` kept weights plus kSlack. x must
// be finite (a pruned weight is skipped, not multiplied). Every row is checked against offsets
// and `total` as it is read (a few comparisons per block): returns false, y unspecified, if the
// arrays disagree (they may have been changed since check_layout passed).
template <class S>
bool linear(ConstMatrixView<std::uint16_t> mask, const std::int64_t* offsets, const S* values,
            Index total, Index cols, ConstMatrixView<float> x, MatrixView<float> y,
            Index gemm_from = kGemmColumns);

// out (rows x cols, overwritten) = W as a dense float32 matrix; false as for linear.
template <class S>
bool to_dense(ConstMatrixView<std::uint16_t> mask, const std::int64_t* offsets, const S* values,
              Index total, MatrixView<float> out);

// y (k x rows, overwritten) = x (k x cols) W^T for W in the index layout, `rows` rows. `S` as
// for linear; offsets[rows] == total. Indices must have been checked (formats::check_csr); each
// row's offsets and every index are checked again as they are read (an index beyond cols is
// never used to load): returns false, y unspecified, if the arrays have changed since.
template <class S>
bool indexed_linear(const std::int64_t* offsets, const std::uint16_t* indices, const S* values,
                    Index rows, Index total, Index cols, ConstMatrixView<float> x,
                    MatrixView<float> y, Index gemm_from = kGemmColumns);

// out (rows x cols, overwritten) = W in the index layout as dense float32; false as above.
template <class S>
bool indexed_to_dense(const std::int64_t* offsets, const std::uint16_t* indices, const S* values,
                      Index total, MatrixView<float> out);

}  // namespace fastprune::sparse_linear

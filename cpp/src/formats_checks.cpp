// Checks of the sparse formats' index arrays (see formats.hpp): the scans that stand between an
// array handed over from Python and the kernels that index memory with it.
#include <cstdint>

#include "fastprune/formats.hpp"

namespace fastprune::formats {

template <class I>
void check_indptr(const I* indptr, Index rows, Index nnz) {
  if (indptr[0] != 0 || indptr[rows] != nnz) {
    invalid("indptr: does not match the number of stored entries");
  }
  bool ascending = true;
  for (Index i = 0; i < rows; ++i) ascending &= indptr[i] <= indptr[i + 1];
  if (!ascending) invalid("indptr: must be non-decreasing");
}

template <class I>
void check_columns(const I* indices, Index nnz, Index cols) {
  bool ok = true;
  for (Index k = 0; k < nnz; ++k) ok &= indices[k] >= 0 && indices[k] < cols;
  if (!ok) invalid("indices: column index out of range");
}

template <class I>
void check_mask_counts(ConstMatrixView<std::uint8_t> mask, const I* indptr, const char* message) {
  for (Index i = 0; i < mask.rows; ++i) {
    std::int64_t c = 0;
    for (Index b = 0; b < mask.cols; ++b) c += __builtin_popcount(mask.row(i)[b]);
    if (indptr[i + 1] - indptr[i] != c) invalid(message);
  }
}

#define FASTPRUNE_FOR_INDEX(I)                            \
  template void check_indptr<I>(const I*, Index, Index);  \
  template void check_columns<I>(const I*, Index, Index); \
  template void check_mask_counts<I>(ConstMatrixView<std::uint8_t>, const I*, const char*);
FASTPRUNE_FOR_INDEX(std::int32_t)
FASTPRUNE_FOR_INDEX(std::int64_t)
#undef FASTPRUNE_FOR_INDEX

}  // namespace fastprune::formats

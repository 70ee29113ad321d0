// Shared vocabulary of the core: strided matrix views and the thread-count policy.
//
// The core never sees a Python object. A kernel takes views of row-major matrices whose
// elements are contiguous within a row (`stride` is the distance between rows, in elements),
// and reports bad arguments by throwing std::invalid_argument with a message a user can act on.
#pragma once

#include <Eigen/Core>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace fastprune {

using Index = std::ptrdiff_t;

template <class T>
struct MatrixView {
  T* data = nullptr;
  Index rows = 0;
  Index cols = 0;
  Index stride = 0;  // elements between the starts of consecutive rows

  T* row(Index i) const { return data + i * stride; }
  T& operator()(Index i, Index j) const { return data[i * stride + j]; }
  Index size() const { return rows * cols; }
};

template <class T>
using ConstMatrixView = MatrixView<const T>;

template <class T>
using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// An Eigen view of a MatrixView (no copy).
template <class T>
auto eigen_map(const MatrixView<T>& v) {
  using Plain = RowMajor<std::remove_const_t<T>>;
  using Mapped = std::conditional_t<std::is_const_v<T>, const Plain, Plain>;
  return Eigen::Map<Mapped, Eigen::Unaligned, Eigen::OuterStride<>>(v.data, v.rows, v.cols,
                                                                    Eigen::OuterStride<>(v.stride));
}

[[noreturn]] inline void invalid(const std::string& message) {
  throw std::invalid_argument(message);
}

// --- threads -------------------------------------------------------------------------
// Every kernel partitions its work so that each output element is computed by exactly one
// thread in a fixed order: results never depend on the number of threads.

void set_num_threads(int n);
int get_num_threads();

// Threads worth using for `work` units of roughly `grain` units each: small problems stay
// on one thread, where starting a team would cost more than it saves.
int threads_for(double work, double grain = 1 << 16);

// --- the memory cache -----------------------------------------------------------------------
// Uninitialised working memory for the large temporary arrays of a kernel (every element is
// written before it is read). Blocks of 2 MB and more are aligned to 2 MB and offered to the
// kernel for transparent huge pages: first touching them then costs a fault per 2 MB rather than
// one per 4 KB, and no thread zero-fills them first (together 25 ms a call for the 45 MB of an
// 11008-row SparseGPT solve). Throws std::bad_alloc when the memory is not there.
//
// Freed blocks of 2 MB and more are kept, up to a limit in all, and handed out again to requests
// of at least half their size: a model's layers repeat a few shapes, and memory fresh from the
// system costs a page fault per page on first touch (tens of milliseconds for the buffers of one
// large solve, and on shared machines often far more).
// A block of at least the bytes asked for; `bytes` is its whole size, which free_cached takes.
struct CachedBlock {
  void* data;
  std::size_t bytes;
};
CachedBlock allocate_cached(std::size_t bytes);
void free_cached(CachedBlock block) noexcept;

constexpr std::size_t kDefaultMemoryCacheLimit = std::size_t(1) << 30;
// Sets the most bytes of freed blocks kept (0 keeps none), freeing the oldest beyond it.
void set_memory_cache_limit(std::size_t bytes);
// Frees every kept block (the limit stays).
void release_memory_cache();
struct MemoryCacheUse {
  std::size_t held;
  std::size_t limit;
};
MemoryCacheUse memory_cache();

template <class T>
class CachedBuffer {
  static_assert(std::is_trivially_default_constructible_v<T> &&
                std::is_trivially_destructible_v<T>);

 public:
  explicit CachedBuffer(std::size_t size) : block_(allocate_cached(size * sizeof(T))) {}
  ~CachedBuffer() { free_cached(block_); }
  CachedBuffer(const CachedBuffer&) = delete;
  CachedBuffer& operator=(const CachedBuffer&) = delete;

  T* data() const { return static_cast<T*>(block_.data); }

 private:
  CachedBlock block_;
};

}  // namespace fastprune

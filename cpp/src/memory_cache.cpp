// The memory cache of common.hpp: large blocks aligned for huge pages, and freed ones kept for
// reuse up to a limit (fastprune.set_memory_cache_limit).
#include <sys/mman.h>

#include <cstdlib>
#include <list>
#include <mutex>
#include <new>

#include "fastprune/common.hpp"

namespace fastprune {
namespace {
constexpr std::size_t kHugePage = std::size_t(2) << 20;
constexpr std::size_t kLine = 64;

// Blocks of 2 MB and more are whole huge pages, smaller ones whole cache lines.
std::size_t alignment_of(std::size_t bytes) { return bytes >= kHugePage ? kHugePage : kLine; }

std::size_t rounded_size(std::size_t bytes) {
  const std::size_t alignment = alignment_of(bytes);
  return (bytes + alignment - 1) / alignment * alignment;
}

// Freed blocks of 2 MB and more, most recently freed first, at most `limit` bytes in all.
struct Cache {
  std::mutex mutex;
  std::list<CachedBlock> blocks;
  std::size_t held = 0;
  std::size_t limit = kDefaultMemoryCacheLimit;

  // Frees the least recently freed blocks until at most `keep` bytes are held.
  void trim(std::size_t keep) {
    while (held > keep) {
      held -= blocks.back().bytes;
      std::free(blocks.back().data);
      blocks.pop_back();
    }
  }
};

Cache& cache() {
  static Cache* instance = new Cache;  // never destroyed: freeing may run during exit
  return *instance;
}
}  // namespace

CachedBlock allocate_cached(std::size_t bytes) {
  if (bytes == 0) return {nullptr, 0};
  const std::size_t rounded = rounded_size(bytes);
  if (rounded >= kHugePage) {
    // The smallest cached block that fits, unless it is more than twice as large.
    Cache& c = cache();
    const std::lock_guard<std::mutex> guard(c.mutex);
    auto best = c.blocks.end();
    for (auto it = c.blocks.begin(); it != c.blocks.end(); ++it) {
      if (it->bytes >= rounded && it->bytes <= 2 * rounded &&
          (best == c.blocks.end() || it->bytes < best->bytes)) {
        best = it;
      }
    }
    if (best != c.blocks.end()) {
      const CachedBlock block = *best;
      c.held -= block.bytes;
      c.blocks.erase(best);
      return block;
    }
  }
  const std::size_t alignment = alignment_of(rounded);
  void* data = std::aligned_alloc(alignment, rounded);
  if (data == nullptr) throw std::bad_alloc();
  // Advice only: where the kernel declines, the memory works as well with small pages.
  if (alignment == kHugePage) madvise(data, rounded, MADV_HUGEPAGE);
  return {data, rounded};
}

void free_cached(CachedBlock block) noexcept {
  if (block.data == nullptr) return;
  Cache& c = cache();
  const std::lock_guard<std::mutex> guard(c.mutex);
  if (block.bytes < kHugePage || block.bytes > c.limit) {
    std::free(block.data);
    return;
  }
  c.trim(c.limit - block.bytes);
  try {
    c.blocks.push_front(block);
    c.held += block.bytes;
  } catch (...) {  // no memory for the list node: the block is not kept
    std::free(block.data);
  }
}

void set_memory_cache_limit(std::size_t bytes) {
  Cache& c = cache();
  const std::lock_guard<std::mutex> guard(c.mutex);
  c.limit = bytes;
  c.trim(bytes);
}

void release_memory_cache() {
  Cache& c = cache();
  const std::lock_guard<std::mutex> guard(c.mutex);
  c.trim(0);
}

MemoryCacheUse memory_cache() {
  Cache& c = cache();
  const std::lock_guard<std::mutex> guard(c.mutex);
  return {c.held, c.limit};
}

}  // namespace fastprune

#include <sys/mman.h>

#include <cstdlib>
#include <new>

#include "fastprune/common.hpp"

namespace fastprune {
namespace {
constexpr std::size_t kHugePage = std::size_t(2) << 20;
constexpr std::size_t kLine = 64;
}  // namespace

void* allocate_scratch(std::size_t bytes) {
  if (bytes == 0) return nullptr;
  const std::size_t alignment = bytes >= kHugePage ? kHugePage : kLine;
  const std::size_t rounded = (bytes + alignment - 1) / alignment * alignment;
  void* block = std::aligned_alloc(alignment, rounded);
  if (block == nullptr) throw std::bad_alloc();
  // Advice only: where the kernel declines, the memory works as well with small pages.
  if (alignment == kHugePage) madvise(block, rounded, MADV_HUGEPAGE);
  return block;
}

void free_scratch(void* block) noexcept { std::free(block); }

}  // namespace fastprune

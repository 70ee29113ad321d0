// Unit tests of the core without Python: each check compares a kernel with a plain reference
// written here (sorting, counting). Run by ctest (see CMakeLists.txt, FASTPRUNE_TESTS=ON).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "fastprune/formats.hpp"
#include "fastprune/masks.hpp"
#include "fastprune/order_key.hpp"

namespace {

int failures = 0;

void check(bool ok, const char* what, long long detail) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s (%lld)\n", what, detail);
    ++failures;
  }
}

// Values with many ties, both zeros, infinities and subnormals.
std::vector<float> awkward_values(std::mt19937& rng, std::size_t n) {
  const float specials[] = {0.0f,
                            -0.0f,
                            1.0f,
                            -1.0f,
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::denorm_min(),
                            -std::numeric_limits<float>::max()};
  std::uniform_int_distribution<int> pick(0, 11);
  std::normal_distribution<float> normal;
  std::vector<float> v(n);
  for (auto& x : v) {
    const int p = pick(rng);
    x = p < 8 ? specials[p] : (p < 10 ? std::round(normal(rng)) : normal(rng));
  }
  return v;
}

void test_order_key(std::mt19937& rng) {
  const auto v = awkward_values(rng, 2000);
  for (std::size_t i = 0; i + 1 < v.size(); ++i) {
    const float a = v[i], b = v[i + 1];
    check((fastprune::order_key(a) < fastprune::order_key(b)) == (a < b), "order_key(a) < key(b)",
          static_cast<long long>(i));
    check((fastprune::order_key(a) == fastprune::order_key(b)) == (a == b),
          "order_key(a) == key(b)", static_cast<long long>(i));
  }
  const double d[] = {-0.0, 0.0, -1e-300, 1e-300};
  check(fastprune::order_key(d[0]) == fastprune::order_key(d[1]), "-0 and +0 share a key", 0);
  check(fastprune::order_key(d[2]) < fastprune::order_key(d[0]), "-tiny < -0", 0);
  check(fastprune::order_key(d[1]) < fastprune::order_key(d[3]), "+0 < +tiny", 0);
}

void test_select_rank(std::mt19937& rng) {
  using Key = fastprune::KeyOf<float>;
  for (std::size_t n : {1u, 2u, 255u, 257u, 4096u, 70000u}) {
    const auto v = awkward_values(rng, n);
    std::vector<Key> keys(n);
    std::transform(v.begin(), v.end(), keys.begin(),
                   [](float x) { return fastprune::order_key(x); });
    std::vector<Key> sorted = keys;
    std::sort(sorted.begin(), sorted.end());
    for (std::size_t rank : {std::size_t(0), n / 3, n / 2, n - 1}) {
      std::vector<Key> work = keys;
      fastprune::Index below = 0, equal = 0;
      const Key lo = sorted.front(), hi = sorted.back();
      const Key got = fastprune::select_rank(
          work.data(), work.data() + n, static_cast<fastprune::Index>(rank), lo, hi, below, equal);
      const auto first = std::lower_bound(sorted.begin(), sorted.end(), got);
      const auto last = std::upper_bound(sorted.begin(), sorted.end(), got);
      check(got == sorted[rank], "select_rank key", static_cast<long long>(n));
      check(below == first - sorted.begin(), "select_rank below", static_cast<long long>(n));
      check(equal == last - first, "select_rank equal", static_cast<long long>(n));
    }
  }
}

// prune_smallest against a stable sort by (score, index).
void test_prune_smallest(std::mt19937& rng) {
  for (std::size_t n : {1u, 3u, 300u, 5000u}) {
    const auto v = awkward_values(rng, n);
    std::vector<std::size_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t a, std::size_t b) { return v[a] < v[b]; });
    std::vector<fastprune::KeyOf<float>> scratch(n);
    for (std::size_t k : {std::size_t(0), n / 2, n}) {
      std::vector<char> expected(n, 1);
      for (std::size_t i = 0; i < k; ++i) expected[order[i]] = 0;
      std::unique_ptr<bool[]> keep(new bool[n]);
      fastprune::masks::prune_smallest(v.data(), static_cast<fastprune::Index>(n),
                                       static_cast<fastprune::Index>(k), keep.get(),
                                       scratch.data());
      std::size_t wrong = 0;
      for (std::size_t i = 0; i < n; ++i) wrong += (keep[i] ? 1 : 0) != expected[i];
      check(wrong == 0, "prune_smallest keeps the right entries", static_cast<long long>(n));
    }
  }
}

// N:M masks: in every group the n largest by (score, index) are kept.
void test_n_of_m(std::mt19937& rng) {
  const int cases[][2] = {{2, 4}, {4, 8}, {1, 3}, {3, 3}};
  for (const auto& nm : cases) {
    const int n = nm[0], m = nm[1];
    const fastprune::Index rows = 7, cols = 24 * m;
    auto v = awkward_values(rng, static_cast<std::size_t>(rows * cols));
    for (auto& x : v) x = std::isinf(x) ? 0.5f : x;
    std::vector<char> keep_store(static_cast<std::size_t>(rows * cols));
    fastprune::ConstMatrixView<float> scores{v.data(), rows, cols, cols};
    fastprune::MatrixView<bool> keep{reinterpret_cast<bool*>(keep_store.data()), rows, cols, cols};
    fastprune::masks::mask_n_of_m(scores, n, m, keep);
    long long wrong = 0;
    for (fastprune::Index r = 0; r < rows; ++r) {
      for (fastprune::Index g = 0; g < cols; g += m) {
        for (int i = 0; i < m; ++i) {
          int before = 0;  // entries ranked below entry i: smaller score, or equal and earlier
          const float s = scores(r, g + i);
          for (int j = 0; j < m; ++j) {
            const float t = scores(r, g + j);
            before += (t < s) || (t == s && j < i);
          }
          wrong += keep(r, g + i) != (before >= m - n);
        }
      }
    }
    check(wrong == 0, "mask_n_of_m keeps the n largest of every group", n * 100 + m);
  }
}

// Dense -> CSR -> dense is exact, and the counts match a plain count.
void test_csr_round_trip(std::mt19937& rng) {
  const fastprune::Index rows = 37, cols = 53;
  auto v = awkward_values(rng, static_cast<std::size_t>(rows * cols));
  for (auto& x : v) x = std::isinf(x) ? 2.0f : x;
  fastprune::ConstMatrixView<float> x{v.data(), rows, cols, cols};
  std::vector<std::int64_t> counts(static_cast<std::size_t>(rows));
  fastprune::formats::count_row_nonzeros(x, counts.data());
  std::vector<std::int64_t> indptr(static_cast<std::size_t>(rows) + 1, 0);
  for (fastprune::Index r = 0; r < rows; ++r) {
    std::int64_t plain = 0;
    for (fastprune::Index c = 0; c < cols; ++c) plain += x(r, c) != 0.0f;
    check(counts[static_cast<std::size_t>(r)] == plain, "count_row_nonzeros", r);
    indptr[static_cast<std::size_t>(r) + 1] = indptr[static_cast<std::size_t>(r)] + plain;
  }
  const auto nnz = static_cast<std::size_t>(indptr.back());
  std::vector<std::int64_t> indices(nnz);
  std::vector<float> data(nnz), back(v.size(), 7.0f);
  fastprune::formats::dense_to_csr(x, indptr.data(), indices.data(), data.data());
  fastprune::MatrixView<float> out{back.data(), rows, cols, cols};
  fastprune::formats::csr_to_dense(indptr.data(), indices.data(), data.data(), out);
  long long differ = 0;
  for (std::size_t i = 0; i < v.size(); ++i) differ += v[i] != back[i];
  check(differ == 0, "CSR round trip is exact", differ);
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  test_order_key(rng);
  test_select_rank(rng);
  test_prune_smallest(rng);
  test_n_of_m(rng);
  test_csr_round_trip(rng);
  if (failures != 0) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return EXIT_FAILURE;
  }
  std::puts("all core checks passed");
  return EXIT_SUCCESS;
}

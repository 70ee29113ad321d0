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
#include <stdexcept>
#include <string>
#include <vector>

#include "fastprune/formats.hpp"
#include "fastprune/masks.hpp"
#include "fastprune/order_key.hpp"
#include "fastprune/simd.hpp"
#include "fastprune/sparsegpt.hpp"

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

// Whether f() throws std::invalid_argument whose message starts with `prefix`.
template <class F>
bool throws(F&& f, const std::string& prefix) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return std::string(e.what()).rfind(prefix, 0) == 0;
  }
  return false;
}

void test_index_checks() {
  namespace fmt = fastprune::formats;
  const std::int32_t good[] = {0, 2, 2, 5};
  const std::int32_t falling[] = {0, 3, 2, 5};
  check(!throws([&] { fmt::check_indptr(good, 3, 5); }, ""), "check_indptr accepts", 0);
  check(throws([&] { fmt::check_indptr(good, 3, 4); }, "indptr: does not match"),
        "check_indptr: wrong end", 0);
  check(throws([&] { fmt::check_indptr(falling, 3, 5); }, "indptr: must be non-decreasing"),
        "check_indptr: decreasing", 0);
  const std::int64_t columns[] = {0, 6, 3, -1};
  check(!throws([&] { fmt::check_columns(columns, 3, 7); }, ""), "check_columns accepts", 0);
  check(throws([&] { fmt::check_columns(columns, 3, 6); }, "indices: column index out of range"),
        "check_columns: too large", 0);
  check(throws([&] { fmt::check_columns(columns, 4, 7); }, "indices: column index out of range"),
        "check_columns: negative", 0);
  // two rows of 10 bits: 3 set, then 9 set
  const std::uint8_t mask[] = {0b10100000, 0b01000000, 0xff, 0b10000000};
  const fastprune::ConstMatrixView<std::uint8_t> m{mask, 2, 2, 2};
  const std::int64_t offsets[] = {0, 3, 12};
  const std::int64_t wrong[] = {0, 4, 12};
  check(!throws([&] { fmt::check_mask_counts(m, offsets, "x"); }, ""), "mask counts accepted", 0);
  check(throws([&] { fmt::check_mask_counts(m, wrong, "offsets: do not match the mask"); },
               "offsets: do not match the mask"),
        "mask counts refused", 0);
  check(fmt::bitmask_row_bytes(0) == 0 && fmt::bitmask_row_bytes(1) == 1 &&
            fmt::bitmask_row_bytes(8) == 1 && fmt::bitmask_row_bytes(9) == 2,
        "bitmask_row_bytes", 0);
}

void test_transpose8(std::mt19937& rng) {
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  std::vector<float> src(8 * 11), dst(8 * 13, 0.0f);
  for (auto& x : src) x = value(rng);
  src[3] = 0.0f;
  fastprune::simd::transpose8(src.data(), 11, dst.data(), 13);
  std::vector<char> bytes(8 * 9, 2);
  fastprune::simd::transpose8_mask(src.data(), 11, reinterpret_cast<bool*>(bytes.data()), 9);
  long long wrong = 0;
  for (int i = 0; i < 8; ++i) {
    for (int k = 0; k < 8; ++k) {
      wrong += dst[k * 13 + i] != src[i * 11 + k];
      wrong += bytes[i * 9 + k] != static_cast<char>(src[k * 11 + i] != 0.0f);
    }
  }
  check(wrong == 0, "8x8 transposes", wrong);
}

// 2/N X^T X of N random tokens (rank-deficient when N < c), the listed columns dead.
std::vector<double> gram(std::mt19937& rng, int c, int tokens, const std::vector<int>& dead) {
  std::normal_distribution<double> normal;
  std::vector<double> x(static_cast<std::size_t>(tokens * c));
  for (auto& v : x) v = normal(rng);
  for (const int j : dead) {
    for (int t = 0; t < tokens; ++t) x[static_cast<std::size_t>(t * c + j)] = 0.0;
  }
  std::vector<double> h(static_cast<std::size_t>(c * c), 0.0);
  for (int i = 0; i < c; ++i) {
    for (int j = 0; j < c; ++j) {
      double s = 0.0;
      for (int t = 0; t < tokens; ++t) s += x[t * c + i] * x[t * c + j];
      h[static_cast<std::size_t>(i * c + j)] = 2.0 * s / tokens;
    }
  }
  return h;
}

void test_damping(std::mt19937& rng) {
  namespace sg = fastprune::sparsegpt;
  const int c = 24;
  for (const int tokens : {60, 6}) {  // full rank, then escalated damping
    const std::vector<double> h = gram(rng, c, tokens, {3, 11});
    const fastprune::ConstMatrixView<double> hv{h.data(), c, c, c};
    std::vector<double> t(h.size()), damped(h.size());
    std::unique_ptr<bool[]> dead(new bool[c]);
    const double used =
        sg::hessian_factor(hv, tokens == 6 ? 0.0 : 0.01, 6, {t.data(), c, c, c}, dead.get());
    const double shift = sg::damped_hessian(hv, dead.get(), used, {damped.data(), c, c, c});
    // the rule written out: dead diagonal entries 1, then damp * their mean on the diagonal
    double mean = 0.0;
    for (int j = 0; j < c; ++j) mean += h[j * c + j] == 0.0 ? 1.0 : h[j * c + j];
    mean /= c;
    check(dead[3] && dead[11] && !dead[0], "dead columns marked", tokens);
    check(std::abs(shift - used * mean) <= 1e-14 * used * mean, "damping shift", tokens);
    check(tokens != 6 || used > 0.0, "escalated damping", tokens);
    double worst = 0.0, largest = 0.0;
    for (int i = 0; i < c; ++i) {
      for (int j = 0; j < c; ++j) {
        double expected = h[i * c + j];
        if (i == j) expected = (h[i * c + i] == 0.0 ? 1.0 : expected) + used * mean;
        worst = std::max(worst, std::abs(damped[i * c + j] - expected));
        double tt = 0.0;  // (T T^T)_ij: the factor is of the damped matrix
        for (int k = 0; k < c; ++k) tt += t[i * c + k] * t[j * c + k];
        worst = std::max(worst, std::abs(tt - expected));
        largest = std::max(largest, std::abs(expected));
      }
    }
    check(worst <= 1e-12 * largest, "damped Hessian is T T^T", tokens);
  }
}

// solve() from U, from T and in place agree; dead columns come back pruned.
void test_solve_routes(std::mt19937& rng) {
  namespace sg = fastprune::sparsegpt;
  const int rows = 19, c = 48;
  const std::vector<double> h = gram(rng, c, 120, {5});
  std::normal_distribution<double> normal;
  std::vector<double> w(static_cast<std::size_t>(rows * c));
  for (auto& v : w) v = normal(rng);
  const fastprune::ConstMatrixView<double> wv{w.data(), rows, c, c};
  sg::Source<double> source;
  source.hessian = {h.data(), c, c, c};
  source.damp = 0.01;
  source.max_tries = 6;
  const sg::Options options{0.5, 0, 0, 16};
  std::vector<std::vector<double>> outs;
  std::vector<std::unique_ptr<bool[]>> masks;
  for (const auto route : {sg::Route::from_u, sg::Route::from_t, sg::Route::automatic}) {
    outs.emplace_back(w.size());
    masks.emplace_back(new bool[w.size()]);
    const bool in_place = route == sg::Route::automatic;
    if (in_place) outs.back() = w;
    const fastprune::MatrixView<double> out{outs.back().data(), rows, c, c};
    const fastprune::ConstMatrixView<double> from =
        in_place ? fastprune::ConstMatrixView<double>{out.data, rows, c, c} : wv;
    sg::solve(from, source, options, route, {}, out, {masks.back().get(), rows, c, c}, true);
  }
  long long differ = 0, dead_kept = 0;
  double worst = 0.0;
  for (std::size_t k = 0; k < w.size(); ++k) {
    differ += masks[0][k] != masks[1][k] || masks[0][k] != masks[2][k];
    worst = std::max({worst, std::abs(outs[0][k] - outs[1][k]), std::abs(outs[0][k] - outs[2][k])});
    dead_kept += k % c == 5 && (masks[0][k] || outs[0][k] != 0.0);
  }
  check(differ == 0, "solve routes choose the same mask", differ);
  check(worst <= 1e-9, "solve routes give the same weights", static_cast<long long>(worst * 1e12));
  check(dead_kept == 0, "dead columns pruned and zero", dead_kept);
  // a NaN in the weight: found on either route when asked, and nothing pruned
  w[7 * c + 30] = std::numeric_limits<double>::quiet_NaN();
  for (const auto route : {sg::Route::from_u, sg::Route::from_t}) {
    std::vector<double> out(w.size(), 3.0);
    std::unique_ptr<bool[]> mask(new bool[w.size()]);
    const auto outcome = sg::solve(wv, source, options, route, {}, {out.data(), rows, c, c},
                                   {mask.get(), rows, c, c}, true);
    check(!outcome.weight_finite && outcome.loss == 0.0, "a NaN weight is refused",
          static_cast<long long>(route));
  }
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  test_order_key(rng);
  test_select_rank(rng);
  test_prune_smallest(rng);
  test_n_of_m(rng);
  test_csr_round_trip(rng);
  test_index_checks();
  test_transpose8(rng);
  test_damping(rng);
  test_solve_routes(rng);
  if (failures != 0) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return EXIT_FAILURE;
  }
  std::puts("all core checks passed");
  return EXIT_SUCCESS;
}

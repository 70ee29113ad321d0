#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>

#include "fastprune/common.hpp"

namespace fastprune {

namespace {
// The process's setting, read by every thread that calls a kernel. OpenMP's own setting belongs
// to the thread that makes it: set from one Python thread, it would not reach calls made from
// another. Starts at OpenMP's default for the thread that loads the core (OMP_NUM_THREADS, else
// the CPUs the process may use).
std::atomic<int> num_threads{omp_get_max_threads()};
}  // namespace

void set_num_threads(int n) {
  if (n < 1) invalid("num_threads must be >= 1, got " + std::to_string(n));
  num_threads.store(n, std::memory_order_relaxed);
  omp_set_num_threads(n);  // Eigen reads the calling thread's setting
}

int get_num_threads() { return num_threads.load(std::memory_order_relaxed); }

int threads_for(double work, double grain) {
  const double wanted = std::floor(work / std::max(grain, 1.0));
  return static_cast<int>(std::clamp(wanted, 1.0, static_cast<double>(get_num_threads())));
}

}  // namespace fastprune

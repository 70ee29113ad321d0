#include <omp.h>

#include <algorithm>
#include <cmath>

#include "fastprune/common.hpp"

namespace fastprune {

void set_num_threads(int n) {
  if (n < 1) invalid("num_threads must be >= 1, got " + std::to_string(n));
  omp_set_num_threads(n);
}

int get_num_threads() { return omp_get_max_threads(); }

int threads_for(double work, double grain) {
  const double wanted = std::floor(work / std::max(grain, 1.0));
  return static_cast<int>(std::clamp(wanted, 1.0, static_cast<double>(get_num_threads())));
}

}  // namespace fastprune

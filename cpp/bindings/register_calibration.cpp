#include "submodules.hpp"

namespace fastprune::bindings {

void register_calibration(pybind11::module_ /*m*/) {}

}  // namespace fastprune::bindings

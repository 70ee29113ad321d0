#include "submodules.hpp"

namespace fastprune::bindings {

void register_masks(pybind11::module_ /*m*/) {}

}  // namespace fastprune::bindings

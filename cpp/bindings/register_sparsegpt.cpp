#include "submodules.hpp"

namespace fastprune::bindings {

void register_sparsegpt(pybind11::module_ /*m*/) {}

}  // namespace fastprune::bindings

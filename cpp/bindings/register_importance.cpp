#include "submodules.hpp"

namespace fastprune::bindings {

void register_importance(pybind11::module_ /*m*/) {}

}  // namespace fastprune::bindings

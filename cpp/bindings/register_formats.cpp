#include "submodules.hpp"

namespace fastprune::bindings {

void register_formats(pybind11::module_ /*m*/) {}

}  // namespace fastprune::bindings

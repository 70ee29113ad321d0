// The binding functions of the core's submodules, one register_<name>.cpp each.
#pragma once

#include <pybind11/pybind11.h>

namespace fastprune::bindings {

void register_importance(pybind11::module_ m);
void register_masks(pybind11::module_ m);
void register_calibration(pybind11::module_ m);
void register_sparsegpt(pybind11::module_ m);
void register_formats(pybind11::module_ m);
void register_sparse_linear(pybind11::module_ m);

}  // namespace fastprune::bindings

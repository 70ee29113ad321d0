# Stubs for fastprune._core.calibration (the compiled kernels).

# Stubs for fastprune._core.masks (the compiled kernels).

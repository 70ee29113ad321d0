# Stubs for fastprune._core.sparsegpt (the compiled kernels).

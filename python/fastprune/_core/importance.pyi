# Stubs for fastprune._core.importance (the compiled kernels).

# Stubs for fastprune._core.formats (the compiled kernels).

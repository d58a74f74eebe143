"""Weight-only quantized execution on CPU: int4 and int8 grids, their kernels, and the transform."""

"""Pure array kernels (NumPy and CuPy alike): no dask, no distributed, no Zarr, no file I/O.

The stacking kernels are the public face of this package; the others serve the stages.
"""

from zdask.ops.stacking import (
    METHODS,
    StackResult,
    kappa_sigma,
    linear_fit_clip,
    mean,
    median,
    sum_stack,
    winsorized,
)

__all__ = [
    "METHODS", "StackResult", "kappa_sigma", "linear_fit_clip", "mean", "median", "sum_stack",
    "winsorized",
]

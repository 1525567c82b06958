"""CuPy path of the stacking kernels.

Runs the vectorised reference implementation (:mod:`zdask.ops.stacking_reference`,
which takes its array namespace from the input) on the GPU, over slices of
the pixel axis so that its temporaries stay bounded (about 40 bytes per
sample of the slice).  Same semantics as the CPU kernels; the rejection
masks can differ from the CPU ones only where a sample sits within float
rounding of a bound (CuPy reductions sum in a different order).

Imported only for CuPy inputs.
"""

from __future__ import annotations

import cupy as cp

from zdask.ops import stacking_reference
from zdask.ops._stacking_common import StackResult, stack_geometry

#: samples (N × pixels) per GPU slice
SLICE_SAMPLES = 1 << 25


def run(name: str, stack, **kw) -> StackResult:
    fn = stacking_reference.METHODS[name]
    n, c, out_shape = stack_geometry(stack.shape)
    x = cp.asarray(stack, dtype=cp.float32).reshape(n, -1)
    m = x.shape[1]
    step = max(c, (SLICE_SAMPLES // n) // c * c)
    parts = []
    for i in range(0, max(m, 1), step):
        block = x[:, i:i + step].reshape(n, -1, 1, c)
        parts.append(fn(block, **kw))
    fields = []
    for k in range(4):
        arrs = [p[k].reshape(-1) for p in parts]
        fields.append(cp.ascontiguousarray(cp.concatenate(arrs).reshape(out_shape)))
    return StackResult(*fields)

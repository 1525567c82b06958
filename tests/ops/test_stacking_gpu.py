"""CuPy path of the stacking kernels (skipped without CuPy and a CUDA device)."""

from __future__ import annotations

import numpy as np
import pytest

cp = pytest.importorskip("cupy")
try:
    if cp.cuda.runtime.getDeviceCount() < 1:
        pytest.skip("no CUDA device", allow_module_level=True)
except Exception:  # noqa: BLE001  (no driver / runtime)
    pytest.skip("no CUDA device", allow_module_level=True)

from zdask.ops import _stacking_cupy  # noqa: E402
from zdask.ops.stacking import METHODS  # noqa: E402

pytestmark = pytest.mark.gpu


def make_stack(n, shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(100.0, 5.0, (n, *shape)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    o = rng.random(x.shape) < 0.03
    x[o] += rng.uniform(50, 300, o.sum()).astype(np.float32)
    return x


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("shape", [(31, 17), (13, 11, 3)], ids=["mono", "rgb"])
def test_cupy_matches_cpu(method, shape):
    """Same semantics as the CPU kernels; CuPy reductions sum in another order, so a sample
    within float rounding of a bound may flip: allow a handful of such pixels."""
    rng = np.random.default_rng(1)
    for n in (2, 5, 30):
        x = make_stack(n, shape, seed=n)
        c = shape[-1] if len(shape) == 3 else 1
        kw = dict(weights=rng.uniform(0.5, 2, (n, c)), scale=rng.uniform(0.9, 1.1, (n, c)),
                  offset=rng.uniform(-2, 2, (n, c)))
        cpu = METHODS[method](x, **kw)
        gpu = METHODS[method](cp.asarray(x), **kw)
        assert isinstance(gpu.image, cp.ndarray) and gpu.image.dtype == cp.float32
        assert gpu.count.dtype == cp.int32 and gpu.image.shape == cpu.image.shape
        differ = np.zeros(cpu.image.shape, bool)
        for f in ("count", "rejected_low", "rejected_high"):
            differ |= cp.asnumpy(getattr(gpu, f)) != getattr(cpu, f)
        assert differ.mean() < 0.002, (method, n, differ.sum())
        img = cp.asnumpy(gpu.image)
        np.testing.assert_allclose(img[~differ], cpu.image[~differ], rtol=2e-5, atol=1e-3)
        np.testing.assert_array_equal(np.isnan(img), np.isnan(cpu.image))


def test_cupy_slices_are_seamless(monkeypatch):
    x = make_stack(12, (40, 30, 3), seed=4)
    whole = METHODS["kappa_sigma"](cp.asarray(x))
    monkeypatch.setattr(_stacking_cupy, "SLICE_SAMPLES", 12 * 3 * 7)
    sliced = METHODS["kappa_sigma"](cp.asarray(x))
    for a, b in zip(whole, sliced):
        cp.testing.assert_array_equal(a, b)


def test_cupy_dask_layer():
    dask = pytest.importorskip("dask")
    import dask.array as da

    from zdask.graph.stack import stack

    x = make_stack(10, (32, 24, 3), seed=5)
    src = da.from_array(cp.asarray(x), chunks=(10, 8, 24, 3), asarray=False)
    res = stack(src, "winsorized")
    with dask.config.set(scheduler="threads"):
        out = dask.compute(*res)
    cpu = METHODS["winsorized"](x)
    assert isinstance(out[0], cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(out[0]), cpu.image, rtol=2e-5, atol=1e-3)

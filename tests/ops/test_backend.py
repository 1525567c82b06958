"""Array-backend helpers: the one detector of NumPy or CuPy, and the (H, W, C) view."""

import numpy as np
import pytest

from zdask.ops.backend import array_module, as_hwc


def test_numpy_arrays_and_scalars_get_numpy():
    assert array_module(np.zeros(3, np.float32)) is np
    assert array_module(np.float32(1.0)) is np


def test_as_hwc_views_a_plane_as_one_channel_and_names_bad_input():
    plane = np.arange(6.0).reshape(2, 3)
    xp, img = as_hwc(plane)
    assert xp is np and img.shape == (2, 3, 1) and np.shares_memory(img, plane)
    cube = np.zeros((2, 3, 4))
    assert as_hwc(cube)[1] is cube
    with pytest.raises(ValueError, match=r"tile must be \(H, W, C\) or \(H, W\); got shape \(2, 3, 4, 1\)"):
        as_hwc(np.zeros((2, 3, 4, 1)), "tile")


def test_cupy_arrays_get_cupy():
    cp = pytest.importorskip("cupy")
    assert array_module(cp.zeros(3)) is cp
    xp, img = as_hwc(cp.zeros((2, 3)))
    assert xp is cp and img.shape == (2, 3, 1)

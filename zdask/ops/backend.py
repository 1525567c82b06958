"""Array-backend helpers: the kernels take their array module from the input (NumPy or CuPy)."""

from __future__ import annotations

import numpy as np


def array_module(array):
    """NumPy for NumPy arrays, CuPy for CuPy arrays (without importing CuPy otherwise)."""
    if type(array).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def as_hwc(image, name: str = "image"):
    """``(xp, image)`` with a 2-D image viewed as ``(H, W, 1)``; anything not 2-D or 3-D raises."""
    xp = array_module(image)
    img = xp.asarray(image)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3:
        raise ValueError(f"{name} must be (H, W, C) or (H, W); got shape {img.shape}")
    return xp, img


def convolve3x3(image, kernel: np.ndarray):
    """2-D correlation of a float32 image with a 3×3 kernel, borders reflected (…2 1 | 0 1 2…)."""
    xp = array_module(image)
    if xp is np:
        import cv2

        return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
    import cupyx.scipy.ndimage as ndi

    return ndi.correlate(image, xp.asarray(kernel), mode="mirror")

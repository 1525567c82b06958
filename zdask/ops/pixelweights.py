"""Stacking with a weight per frame AND pixel (the SDS global stack: mega-tiles weighted by their
coverage), on the kernels of :mod:`zdask.ops.stacking`. NumPy only.

The kernels take weights per frame and channel, ``(N, C)``, and treat every channel of a pixel
on its own: the same rejection test, then ``Σ w·x / Σ w`` over the kept samples. So a block
``(N, h, w, C)`` flattened to ``(N, 1, 1, h·w·C)`` is a stack of ONE pixel with ``h·w·C``
"channels", and a weight per "channel" is a weight per sample: the rejection and the mean are
exactly the kernel's, per pixel and channel, with the weight that pixel has in that frame. The
flattened block goes through the kernel a few hundred samples at a time (the kernel's own tile
width), so the per-sample weights, scales and offsets it needs stay small (``N`` × a tile).
"""

from __future__ import annotations

import numpy as np

from zdask.ops._stacking_common import StackResult, per_frame, tile_width
from zdask.ops.stacking import METHODS

__all__ = ["stack_pixel_weighted"]


def stack_pixel_weighted(stack: np.ndarray, weights: np.ndarray, method: str = "kappa_sigma", *,
                         scale=None, offset=None, **parameters) -> StackResult:
    """Stack ``stack (N, H, W, C)`` along the frame axis, sample ``[i, y, x, c]`` weighted by
    ``weights[i, y, x]``.

    Parameters
    ----------
    stack : numpy.ndarray
        ``(N, H, W, C)`` float32, NaN where a frame has no sample.
    weights : numpy.ndarray
        ``(N, H, W)``, finite and >= 0 where the sample is finite (NaN weights count as 0).
    method : str
        One of ``zdask.ops.stacking.METHODS``; every method but ``median`` uses the weights.
    scale, offset : ``(N,)`` or ``(N, C)``
        Per-frame normalisation ``x · scale + offset`` applied before the rejection.
    **parameters
        The method's own (``kappa``, ``iterations``, ``winsor``).

    Memory: the stack (unless it is already contiguous float32, a copy), a few boolean maps of
    one frame's weights while they are validated, the outputs, and ``N`` × a tile of float64.

    Returns
    -------
    StackResult
        ``image (H, W, C)`` float32, ``count``, ``rejected_low``, ``rejected_high`` int32,
        the kernel's semantics pixel by pixel (zero total weight: the unweighted mean).
    """
    if method not in METHODS:
        raise ValueError(f"unknown stacking method {method!r}; allowed: {', '.join(METHODS)}")
    x = np.asarray(stack, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"stack must be (N, H, W, C); got shape {x.shape}")
    n, h, w, c = x.shape
    wts = np.asarray(weights)
    if wts.shape != (n, h, w):
        raise ValueError(f"weights must have shape {(n, h, w)}; got {wts.shape}")
    # (validated as given, a frame at a time, and converted a tile at a time: neither boolean
    # maps nor a float64 copy of the whole block)
    for frame_weights in wts:
        if not np.all(np.isnan(frame_weights) | (np.isfinite(frame_weights) & (frame_weights >= 0))):
            raise ValueError("weights must be finite and >= 0")
    sc = per_frame(scale, n, c, "scale", np.float32, default=1.0)
    of = per_frame(offset, n, c, "offset", np.float32, default=0.0)
    flat = np.ascontiguousarray(x).reshape(n, h * w * c)
    wflat = wts.reshape(n, h * w)
    pixels = max(1, tile_width(n, 1) // c)  # per call: about the kernel's own tile of samples
    sc_t, of_t = np.tile(sc, (1, pixels)), np.tile(of, (1, pixels))
    out = [np.empty(h * w * c, dtype=np.float32)] + [np.empty(h * w * c, dtype=np.int32) for _ in range(3)]
    run = METHODS[method]
    for p0 in range(0, h * w, pixels):
        p1 = min(p0 + pixels, h * w)
        a, b = p0 * c, p1 * c
        tile_weights = np.repeat(np.nan_to_num(wflat[:, p0:p1].astype(np.float64), nan=0.0), c, axis=1)
        result = run(flat[:, a:b].reshape(n, 1, 1, b - a), weights=tile_weights,
                     scale=sc_t[:, :b - a], offset=of_t[:, :b - a], **parameters)
        for target, part in zip(out, result):
            target[a:b] = part.reshape(-1)
    return StackResult(*(o.reshape(h, w, c) for o in out))

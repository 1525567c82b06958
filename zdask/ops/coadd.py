"""The mosaic's coverage-weighted mean, accumulated tile by tile in one pass per tile.

A canvas block is the weighted mean of the tiles warped onto it, each corrected by its gain,
offset and sky surface. Written as NumPy expressions, every tile cost a dozen full-block
temporaries (the corrected image, the masks, the weights, the products) and as many passes
over memory; :func:`accumulate_tile` does the same arithmetic pixel by pixel in one pass, with
the same operations in the same order and precision, so the canvas is bit for bit what the
NumPy expressions gave:

- corrected = image · gain + offset − surface, each step rounded to float32;
- a sample counts where the corrected value is finite and its weight is > 0;
- total += float32(corrected · weight) in float64, weight sum += weight in float64;
- coverage += effective coverage in float32 (NaN as 0, as ``np.nan_to_num``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

JIT = dict(cache=True, nogil=True, fastmath=False, boundscheck=False, error_model="numpy")

_FMAX = np.float32(np.finfo(np.float32).max)


@njit(**JIT)
def _nan_to_num(v):
    if v != v:
        return np.float32(0.0)
    if v > _FMAX:
        return _FMAX
    if v < -_FMAX:
        return -_FMAX
    return v


@njit(**JIT)
def _accumulate(total, weight, coverage, image, aux, gain, offset, corrected, surface, subtract):
    h, w, channels = image.shape
    for y in range(h):
        for x in range(w):
            wt = _nan_to_num(aux[y, x, 0])
            coverage[y, x] += _nan_to_num(aux[y, x, 1])
            if not wt > 0:
                continue
            wt64 = np.float64(wt)
            for c in range(channels):
                v = image[y, x, c]
                if corrected:
                    v = v * gain[c] + offset[c]
                if subtract:
                    v = v - surface[y, x, c]
                if np.isfinite(v):
                    total[y, x, c] += np.float64(v * wt)
                    weight[y, x, c] += wt64


def accumulate_tile(total: np.ndarray, weight: np.ndarray, coverage: np.ndarray, image: np.ndarray,
                    aux: np.ndarray, gain=(), offset=(), surface: np.ndarray | None = None) -> None:
    """Add one warped tile into a block's sums, in place.

    ``total``, ``weight`` (h, w, C) float64 and ``coverage`` (h, w) float32 are the block's
    running sums; ``image`` (h, w, C) float32 the warped tile (NaN outside it); ``aux`` (h, w, 2)
    float32 its warped coadd weight and effective coverage (NaN outside). ``gain`` and
    ``offset`` (per channel, or empty for none) and ``surface`` (h, w, C) float32 (or None)
    correct the tile: corrected = image · gain + offset − surface.
    """
    channels = image.shape[-1]
    corrected = len(gain) > 0
    g = np.asarray(gain if corrected else np.ones(channels), dtype=np.float32)
    o = np.asarray(offset if corrected else np.zeros(channels), dtype=np.float32)
    subtract = surface is not None
    s = np.ascontiguousarray(surface, dtype=np.float32) if subtract else np.zeros((1, 1, channels), np.float32)
    _accumulate(total, weight, coverage, np.ascontiguousarray(image, dtype=np.float32),
                np.ascontiguousarray(aux, dtype=np.float32), g, o, corrected, s, subtract)


@njit(**JIT)
def _finish(total, weight, out):
    h, w, channels = total.shape
    for y in range(h):
        for x in range(w):
            for c in range(channels):
                wt = weight[y, x, c]
                out[y, x, c] = np.float32(total[y, x, c] / max(wt, 1e-30)) if wt > 0 else np.float32(np.nan)


def weighted_mean(total: np.ndarray, weight: np.ndarray, out: np.ndarray) -> None:
    """``out`` (h, w, C) float32 (a view is fine) = total / weight, NaN where the weight is 0."""
    _finish(total, weight, out)


def warm_up() -> None:
    """Compile (or load from numba's on-disk cache) the kernels: ~1 s of one core in a fresh
    environment, better spent in a background thread early in the run than in the first
    canvas block."""
    channels = 3
    accumulate_tile(np.zeros((1, 1, channels)), np.zeros((1, 1, channels)), np.zeros((1, 1), np.float32),
                    np.zeros((1, 1, channels), np.float32), np.zeros((1, 1, 2), np.float32),
                    (1.0,) * channels, (0.0,) * channels, np.zeros((1, 1, channels), np.float32))
    # A strided view, as the coadd passes (a 1-pixel one would count as contiguous: another compile).
    packed = np.empty((2, 2, channels + 1), np.float32)
    weighted_mean(np.zeros((2, 2, channels)), np.zeros((2, 2, channels)), packed[..., :channels])

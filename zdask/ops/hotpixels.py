"""Hot-pixel detection and correction on raw frames (before demosaicing).

A single frame cannot tell a hot pixel from an undersampled star: both are one bright pixel
above their same-colour neighbours. What separates them is time: a hot pixel sits at the same
sensor position in every frame, a star moves with pointing jitter, dithering and field
rotation. So detection has two steps: ``hot_pixel_candidates`` flags bright single pixels in
one frame, and ``hot_pixel_map`` keeps the positions flagged in most frames of one sensor.
"""

from __future__ import annotations

import numpy as np

from zdask.ops.robust import robust_sigma

# Same-colour neighbours: in a Bayer mosaic they are 2 px apart, so each of the four CFA
# sub-planes (rows r::2, columns c::2) is filtered on its own; mono and RGB planes are whole.


def _planes(raw: np.ndarray, layout: str) -> list[tuple[tuple, np.ndarray]]:
    """(index, view) of each plane whose pixels are same-colour neighbours of one another."""
    if layout == "bayer":
        return [((slice(r, None, 2), slice(c, None, 2)), raw[r::2, c::2]) for r in (0, 1) for c in (0, 1)]
    if layout == "mono":
        return [((slice(None), slice(None)), raw)]
    if layout == "rgb":
        return [((slice(None), slice(None), c), raw[..., c]) for c in range(raw.shape[-1])]
    raise ValueError(f"unknown frame layout {layout!r}; allowed: bayer, mono, rgb")


def _median3x3(plane: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.medianBlur(np.ascontiguousarray(plane, dtype=np.float32), 3)


def hot_pixel_candidates(raw: np.ndarray, layout: str, sigma: float) -> np.ndarray:
    """Flat indices (into ``raw``) of pixels exceeding their same-colour 3×3 median by ``sigma``·σ.

    ``raw`` is ``(H, W)`` for bayer/mono frames or ``(H, W, C)`` for RGB frames; σ is the robust
    noise of each plane's high-pass residual. Returns sorted int64 indices.
    """
    raw = np.asarray(raw, dtype=np.float32)
    flags = np.zeros(raw.shape, dtype=bool)
    for index, plane in _planes(raw, layout):
        residual = plane - _median3x3(plane)
        # A fixed stride keeps this deterministic and cheap on 2-megapixel planes.
        noise = robust_sigma(residual, max_samples=200_000)
        if noise <= 0:
            continue
        flags[index] = residual > sigma * noise
    return np.flatnonzero(flags)


def hot_pixel_map(candidate_lists: list[np.ndarray], min_fraction: float, min_frames: int = 3) -> np.ndarray:
    """Sorted flat indices flagged in at least ``min_fraction`` of the frames of one sensor.

    With fewer than ``min_frames`` frames nothing is declared hot: a star that did not move
    would be indistinguishable from a hot pixel.
    """
    n = len(candidate_lists)
    if n < min_frames:
        return np.zeros(0, dtype=np.int64)
    allidx = np.concatenate([np.unique(c) for c in candidate_lists]) if n else np.zeros(0, np.int64)
    values, counts = np.unique(allidx, return_counts=True)
    needed = max(2, int(np.ceil(min_fraction * n)))
    return values[counts >= needed].astype(np.int64)


def correct_hot_pixels(raw: np.ndarray, layout: str, hot_indices: np.ndarray) -> np.ndarray:
    """A float32 copy of ``raw`` with each hot pixel replaced by its same-colour 3×3 median."""
    out = np.array(raw, dtype=np.float32, copy=True)
    if hot_indices.size == 0:
        return out
    if layout in ("bayer", "mono"):
        # Positions straight from the indices (a frame has a few hundred): building a mask of
        # the whole frame and searching each plane for them cost more than the correction.
        ys, xs = np.divmod(np.unique(np.asarray(hot_indices, dtype=np.int64)), out.shape[1])
        for (rows, cols), plane in _planes(out, layout):
            r, c = rows.start or 0, cols.start or 0
            step = rows.step or 1
            on = (ys % step == r) & (xs % step == c)
            py, px = ys[on] // step, xs[on] // step
            if py.size:
                plane[py, px] = _median3x3_at(plane, py, px)
        return out
    hot = np.zeros(out.shape, dtype=bool)
    hot.ravel()[hot_indices] = True
    for index, plane in _planes(out, layout):
        ys, xs = np.nonzero(hot[index])
        if ys.size:
            plane[ys, xs] = _median3x3_at(plane, ys, xs)
    return out


def _median3x3_at(plane: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """:func:`_median3x3` of ``plane`` at (ys, xs) only (edges replicated, as cv2.medianBlur
    does): a frame has a few hundred hot pixels, and filtering whole planes for them cost
    more than the rest of the correction."""
    h, w = plane.shape
    offsets = np.arange(-1, 2)
    rows = np.clip(ys[:, None, None] + offsets[None, :, None], 0, h - 1)
    cols = np.clip(xs[:, None, None] + offsets[None, None, :], 0, w - 1)
    return np.median(plane[rows, cols].reshape(ys.size, 9), axis=1)

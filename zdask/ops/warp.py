"""Warping images between celestial pixel grids: interpolated pixel maps + ``cv2.remap``.

Evaluating a WCS on every pixel costs about a second per frame; evaluating it on a coarse grid
of nodes and interpolating bilinearly costs milliseconds, and for the smooth maps between two
gnomonic (TAN) grids a 32 px node spacing errs by far less than 0.01 px. ``cv2.remap`` then
resamples the source at those positions.

Pixel coordinates are 0-based and refer to pixel centres, as in NumPy and astropy's
``*_pix2world(..., 0)``: pixel (x, y) covers [x - 0.5, x + 0.5].
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np

PixelTransform = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

# Rows per cv2.remap call in :func:`remap` (each call covers the columns its strip needs).
_REMAP_STRIP = 64


def wcs_pixel_transform(src_wcs, dst_wcs) -> PixelTransform:
    """A function mapping destination pixel (x, y) arrays to source pixel (x, y) arrays."""

    def transform(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ra, dec = dst_wcs.all_pix2world(x, y, 0)
        sx, sy = src_wcs.all_world2pix(ra, dec, 0)
        return np.asarray(sx, dtype=np.float64), np.asarray(sy, dtype=np.float64)

    return transform


def _nodes(start: int, stop: int, step: int) -> np.ndarray:
    nodes = np.arange(start, stop, step, dtype=np.float64)
    if nodes[-1] != stop - 1:
        nodes = np.append(nodes, stop - 1)
    return nodes


@functools.lru_cache(maxsize=16)
def _interp_matrix(start: int, stop: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """The nodes of [start, stop) and the dense (n_targets, n_nodes) matrix of linear-interpolation
    weights, read only. Cached: every frame warped onto a block uses the same two (rebuilding
    them per frame cost as much as the WCS)."""
    nodes = _nodes(start, stop, step)
    targets = np.arange(start, stop, dtype=np.float64)
    weights = np.zeros((targets.size, nodes.size))
    if nodes.size == 1:
        weights[:, 0] = 1.0
    else:
        left = np.clip(np.searchsorted(nodes, targets, side="right") - 1, 0, nodes.size - 2)
        frac = (targets - nodes[left]) / (nodes[left + 1] - nodes[left])
        rows = np.arange(targets.size)
        weights[rows, left] = 1.0 - frac
        weights[rows, left + 1] = frac
    nodes.flags.writeable = weights.flags.writeable = False
    return nodes, weights


def pixel_map(
    transform: PixelTransform, rows: tuple[int, int], cols: tuple[int, int], step: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Source coordinates (map_x, map_y), float64 ``(r1 - r0, c1 - c0)``, of destination pixels.

    ``transform`` is evaluated exactly on nodes every ``step`` pixels (and on the last row and
    column) and interpolated bilinearly in between.
    """
    (r0, r1), (c0, c1) = rows, cols
    (ny, wy), (nx, wx) = _interp_matrix(r0, r1, step), _interp_matrix(c0, c1, step)
    gx, gy = np.meshgrid(nx, ny)
    sx, sy = transform(gx, gy)
    # Columns first: (ny, nx) @ (nx, w) is small, and the large product then has only ny
    # (not nx) terms per pixel (3× fewer operations than (wy @ sx) @ wx.T for wide blocks).
    return wy @ (sx @ wx.T), wy @ (sy @ wx.T)


def source_window(
    map_x: np.ndarray, map_y: np.ndarray, src_shape: tuple[int, int], pad: int = 2
) -> tuple[int, int, int, int] | None:
    """The (y0, y1, x0, x1) window of the source that the map samples, or None if it misses.

    May be a few pixels larger than needed, never smaller; None only when no destination
    pixel can sample the source.
    """
    # The maps are smooth: every 8th row and column (plus the last ones) bound the sampled
    # region to within 8 × the map's slope, which the extra padding covers.
    return window_of_samples(_every_eighth(map_x), _every_eighth(map_y), src_shape, pad)


def window_of_samples(
    sub_x: np.ndarray, sub_y: np.ndarray, src_shape: tuple[int, int], pad: int = 2
) -> tuple[int, int, int, int] | None:
    """:func:`source_window` from the map's every-eighth rows and columns (and last ones)."""
    h, w = src_shape
    slope = max(np.abs(np.diff(sub_x, axis=1)).max(initial=0), np.abs(np.diff(sub_y, axis=0)).max(initial=0),
                np.abs(np.diff(sub_x, axis=0)).max(initial=0), np.abs(np.diff(sub_y, axis=1)).max(initial=0))
    pad += int(np.ceil(slope))
    inside = (sub_x > -1 - slope) & (sub_x < w + slope) & (sub_y > -1 - slope) & (sub_y < h + slope)
    if not inside.any():
        return None
    xs, ys = sub_x[inside], sub_y[inside]
    x0 = max(0, int(np.floor(xs.min())) - pad)
    x1 = min(w, int(np.ceil(xs.max())) + pad + 1)
    y0 = max(0, int(np.floor(ys.min())) - pad)
    y1 = min(h, int(np.ceil(ys.max())) + pad + 1)
    return y0, y1, x0, x1


def _every_eighth(a: np.ndarray) -> np.ndarray:
    return a[np.ix_(_eighths(a.shape[0]), _eighths(a.shape[1]))]


def _eighths(n: int) -> np.ndarray:
    """0, 8, 16, ... and n - 1 (once), sorted."""
    idx = np.arange(0, n, 8)
    return idx if (n - 1) % 8 == 0 else np.append(idx, n - 1)


def footprint(map_x: np.ndarray, map_y: np.ndarray, src_shape: tuple[int, int]) -> np.ndarray:
    """Destination pixels whose centre maps inside the source's pixel-centre hull (bool).

    A 1e-6 px tolerance keeps pixels that map exactly onto the edge (through a WCS round trip
    that lands at -1e-10) inside.
    """
    h, w = src_shape
    eps = 1e-6
    return (map_x >= -eps) & (map_x <= w - 1 + eps) & (map_y >= -eps) & (map_y <= h - 1 + eps)


def remap(
    source: np.ndarray,
    map_x: np.ndarray,
    map_y: np.ndarray,
    origin: tuple[int, int] = (0, 0),
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Bilinear resampling of ``source`` ``(h, w[, C])`` float32 at (map_x, map_y).

    ``origin`` = (y0, x0) is the position of ``source[0, 0]`` in the coordinates of the map (a
    window read from a larger frame). Destination pixels outside the source's footprint are NaN:
    coverage comes from geometry, never from pixel values. ``out``, a C-contiguous float32
    array of the result's shape, receives the result (no copy; e.g. one frame of a block).
    """
    import cv2

    y0, x0 = origin
    # subtract in float64, round once into float32, without a float64 temporary
    mx = np.subtract(map_x, x0, out=np.empty(map_x.shape, np.float32))
    my = np.subtract(map_y, y0, out=np.empty(map_y.shape, np.float32))
    source = np.ascontiguousarray(source, dtype=np.float32)
    h, w = source.shape[:2]
    outside = ~footprint(mx, my, (h, w))
    res = np.empty(mx.shape + source.shape[2:], np.float32) if out is None else out
    # Strip by strip, only the columns the footprint reaches: a frame rotated on its tile's
    # grid covers about half of it, and remapping the rest only to blank it cost as much
    # again. Each pixel's value depends on its own map entry only, so strips change nothing.
    for r0 in range(0, mx.shape[0], _REMAP_STRIP):
        r1 = min(mx.shape[0], r0 + _REMAP_STRIP)
        cols = np.flatnonzero(~outside[r0:r1].all(axis=0))
        if cols.size == 0:
            continue
        c0, c1 = int(cols[0]), int(cols[-1]) + 1
        dst = res[r0:r1, c0:c1]
        # Replicated borders: a pixel centred exactly on the last column gets its zero-weight
        # neighbour from inside rather than NaN; the footprint decides what is outside.
        got = cv2.remap(source, mx[r0:r1, c0:c1], my[r0:r1, c0:c1], dst=dst,
                        interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if not np.shares_memory(got, res):  # OpenCV did not take ``dst``
            dst[...] = got.reshape(dst.shape)
    # One channel at a time: NumPy assigns through a 2-D mask 4-6x faster than through the
    # same mask broadcast over (h, w, C), which took as long as the remap itself.
    for c in range(res.shape[-1]) if res.ndim == 3 else (None,):
        (res if c is None else res[..., c])[outside] = np.nan
    return res


def bin_image(image: np.ndarray, factor: int) -> np.ndarray:
    """Block means of ``factor`` × ``factor`` pixels (NaN-aware); a ragged last row/column of
    blocks is dropped. ``(H, W[, C])`` → ``(H // factor, W // factor[, C])`` float32."""
    if factor == 1:
        return np.asarray(image, dtype=np.float32)
    h, w = image.shape[0] // factor * factor, image.shape[1] // factor * factor
    channels = image.shape[2] if image.ndim == 3 else 1
    if channels <= 4 and np.isfinite(image).all():
        import cv2

        # Area interpolation at an integer factor is exactly the block mean, 20× faster.
        out = cv2.resize(np.ascontiguousarray(image[:h, :w], dtype=np.float32),
                         (w // factor, h // factor), interpolation=cv2.INTER_AREA)
        return out.reshape(h // factor, w // factor, *image.shape[2:])
    blocks = image[:h, :w].reshape(h // factor, factor, w // factor, factor, *image.shape[2:])
    finite = np.isfinite(blocks)
    total = np.where(finite, blocks, 0.0).sum(axis=(1, 3), dtype=np.float64)
    count = finite.sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):  # all-NaN blocks stay NaN
        return np.where(count > 0, total / count, np.nan).astype(np.float32)


def binned_transform(transform: PixelTransform, src_factor: int, dst_factor: int) -> PixelTransform:
    """``transform`` between full-resolution grids, re-expressed between their binned versions.

    Binned pixel X of factor b has its centre at full-resolution coordinate b·X + (b − 1)/2.
    """

    def binned(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        half_d = (dst_factor - 1) / 2.0
        sx, sy = transform(dst_factor * x + half_d, dst_factor * y + half_d)
        half_s = (src_factor - 1) / 2.0
        return (sx - half_s) / src_factor, (sy - half_s) / src_factor

    return binned


def binned_extent(shape: tuple[int, int], factor: int, origin: tuple[int, int] = (0, 0)) -> tuple[float, float, float, float]:
    """(y_min, y_max, x_min, x_max) in full-resolution pixels of the centres of a binned grid."""
    half = (factor - 1) / 2.0
    y0, x0 = origin
    return (y0 * factor + half, (y0 + shape[0] - 1) * factor + half,
            x0 * factor + half, (x0 + shape[1] - 1) * factor + half)

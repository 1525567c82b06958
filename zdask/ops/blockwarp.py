"""Warping many frames onto one block of a grid, band by band, from each frame's map nodes.

A master tile's block task warps every frame of its group onto one band of rows of the tile
grid. Built with :func:`zdask.ops.warp.pixel_map` and :func:`zdask.ops.warp.remap`, each frame's
warp is six passes over the block: the float64 map (16 bytes a pixel), its float32 copy, the
footprint, ``cv2.remap``, the NaN fill and the sky subtraction; on the large blocks of small
groups they all went through memory, and on the small blocks of large groups the fixed cost of
each call (~0.5 ms a frame and block) outweighed the pixels. Here:

- the destination nodes (and their sky positions) are the same for every frame of a block
  (:class:`BlockGrid`, computed once per block);
- a frame's map is kept as its transform on the nodes, interpolated along the columns
  (:class:`BlockMap`: a few node rows × the block's width); the window of the source it
  samples comes from those values, and the read can stop at the rows the map reaches;
- each band of :data:`BAND` rows is expanded to float32 positions and footprint in one numba
  pass, remapped by ``cv2.remap`` and finished (NaN outside, sky subtracted) in a second, while it
  is in cache (:func:`warp_frame`).

The result is that of ``remap(window pixels, *pixel_map(...), origin=window[::2])`` minus the
sky surface: positions are rounded to float32 relative to the same window origin, with the
same footprint test, and a read narrower than the window is compensated by an integer shift of
the float32 rows, which is exact. The one difference is the row interpolation of the map, done
as the two non-zero terms of each row in float64 where ``pixel_map`` lets BLAS sum all node rows
(with or without fused multiply-adds): the float64 positions may differ in their last bit, which
changes a float32 position only when it lies within that bit of a float32 rounding boundary
(odds of order 1e-9 per position). No warped sample differed on the surveys compared (every
block of a 144-frame 3×3 survey and of a 144-frame one-group tile, three of a 540-frame one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from zdask.ops.background import Surface
from zdask.ops.bgmesh import MeshBackground, sample_background
from zdask.ops.warp import _eighths, _interp_matrix, _nodes, window_of_samples

# Rows of one band: maps, footprint and output of a band (~1 MB at 1141 columns) stay in L2.
BAND = 32
# The footprint tolerance of :func:`zdask.ops.warp.footprint`.
_EPS = 1e-6
JIT = dict(cache=True, nogil=True, fastmath=False, boundscheck=False, error_model="numpy")


@dataclass(frozen=True)
class BlockGrid:
    """The destination side of a block, shared by every frame warped onto it.

    ``node_x``, ``node_y``: destination pixel coordinates of the nodes ``(ny, nx)`` (every
    ``step`` rows and columns of the block, plus its last row and column), on which each frame's
    transform is evaluated; ``col_weights``: ``(w, nx)`` linear interpolation along the columns;
    per row of the block, ``left`` (the node row above it) and the weights ``w_left``,
    ``w_right`` of that node row and the next.
    """

    rows: tuple[int, int]
    cols: tuple[int, int]
    node_x: np.ndarray
    node_y: np.ndarray
    col_weights: np.ndarray
    left: np.ndarray
    w_left: np.ndarray
    w_right: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows[1] - self.rows[0], self.cols[1] - self.cols[0]


def block_grid(rows: tuple[int, int], cols: tuple[int, int], step: int) -> BlockGrid:
    """The :class:`BlockGrid` of destination rows ``[r0, r1)`` × columns ``[c0, c1)`` with
    nodes every ``step`` pixels (those of :func:`zdask.ops.warp.pixel_map`)."""
    (r0, r1), (c0, c1) = rows, cols
    ny = _nodes(r0, r1, step)
    nx, col_weights = _interp_matrix(c0, c1, step)
    node_x, node_y = np.meshgrid(nx, ny)
    targets = np.arange(r0, r1, dtype=np.float64)
    if ny.size == 1:  # one row: node row 0 with weight 1 (its "next" row is itself, weight 0)
        left = np.zeros(targets.size, dtype=np.int64)
        frac = np.zeros(targets.size)
    else:
        left = np.clip(np.searchsorted(ny, targets, side="right") - 1, 0, ny.size - 2)
        frac = (targets - ny[left]) / (ny[left + 1] - ny[left])
    return BlockGrid((r0, r1), (c0, c1), node_x, node_y, col_weights, left.astype(np.int64),
                     1.0 - frac, frac)


@dataclass(frozen=True)
class BlockMap:
    """One frame's source coordinates on a :class:`BlockGrid`: the transform at the node rows,
    interpolated along the block's columns (``x``, ``y``: ``(node rows, w)`` float64)."""

    grid: BlockGrid
    x: np.ndarray
    y: np.ndarray

    def rows_at(self, index: np.ndarray, cols: np.ndarray | slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """float64 source (x, y) of the block rows ``index`` (0-based in the block) × ``cols``."""
        g = self.grid
        k, p, q = g.left[index], g.w_left[index][:, None], g.w_right[index][:, None]
        xs, ys = self.x[:, cols], self.y[:, cols]
        return p * xs[k] + q * xs[k + 1], p * ys[k] + q * ys[k + 1]

    def window(self, src_shape: tuple[int, int], pad: int = 2) -> tuple[int, int, int, int] | None:
        """:func:`zdask.ops.warp.source_window` of the whole map: the same every-eighth samples
        (from the node rows, without the map) and the same rule, in one compiled pass."""
        h, w = self.grid.shape
        rows, cols = _eighths(h), _eighths(w)
        g = self.grid
        found, y0, y1, x0, x1 = _window(g.left[rows], g.w_left[rows], g.w_right[rows], self.x[:, cols],
                                        self.y[:, cols], src_shape[0], src_shape[1], pad)
        if found < 0:  # a non-finite position: the reference rule decides
            return window_of_samples(*self.rows_at(rows, cols), src_shape, pad)
        return (y0, y1, x0, x1) if found else None

    def rows_reached(self, window: tuple[int, int, int, int]) -> tuple[int, int] | None:
        """The rows ``[ya, yb)`` within ``window``'s that bilinear sampling at this map can
        touch; None when the map passes wholly above or below them (the window's padding can
        take in a frame whose edge lies a few pixels beyond the block: no pixel of the block is
        then inside its footprint).

        Each row of the map is a convex combination of the node rows, so no position lies
        beyond their extremes (a margin covers the float64 round-off, cv2's rounding of
        positions to 1/32 px, and the second row a bilinear sample reads).
        """
        y0, y1, _, _ = window
        lo, hi = float(self.y.min()), float(self.y.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            return y0, y1
        ya, yb = max(y0, int(np.floor(lo)) - 1), min(y1, int(np.floor(hi)) + 3)
        return (ya, yb) if ya < yb else None


def block_map(grid: BlockGrid, src_x: np.ndarray, src_y: np.ndarray) -> BlockMap:
    """A frame's :class:`BlockMap` from its transform on ``grid``'s nodes (``(ny, nx)`` each)."""
    cw = grid.col_weights
    x, y = src_x @ cw.T, src_y @ cw.T  # pixel_map's column interpolation, the same product
    if x.shape[0] == 1:
        x, y = np.repeat(x, 2, axis=0), np.repeat(y, 2, axis=0)
    return BlockMap(grid, x, y)


@njit(**JIT)
def _window(left, w_left, w_right, tx, ty, h, w, pad):
    """:func:`zdask.ops.warp.window_of_samples` of the samples ``w_left · t[left] + w_right ·
    t[left + 1]`` (``t``: ``tx``, ``ty`` at the sampled columns), the same float64 arithmetic.
    Returns (1, y0, y1, x0, x1), (0, ...) when no sample is inside, (-1, ...) on a NaN."""
    n, m = left.size, tx.shape[1]
    sx = np.empty((n, m))
    sy = np.empty((n, m))
    for i in range(n):
        k, p, q = left[i], w_left[i], w_right[i]
        for j in range(m):
            sx[i, j] = p * tx[k, j] + q * tx[k + 1, j]
            sy[i, j] = p * ty[k, j] + q * ty[k + 1, j]
            if np.isnan(sx[i, j]) or np.isnan(sy[i, j]):
                return -1, 0, 0, 0, 0
    slope = 0.0
    for i in range(n):
        for j in range(m):
            if j + 1 < m:
                slope = max(slope, abs(sx[i, j + 1] - sx[i, j]), abs(sy[i, j + 1] - sy[i, j]))
            if i + 1 < n:
                slope = max(slope, abs(sx[i + 1, j] - sx[i, j]), abs(sy[i + 1, j] - sy[i, j]))
    pad += int(np.ceil(slope))
    found = 0
    xmin, xmax, ymin, ymax = np.inf, -np.inf, np.inf, -np.inf
    for i in range(n):
        for j in range(m):
            x, y = sx[i, j], sy[i, j]
            if x > -1 - slope and x < w + slope and y > -1 - slope and y < h + slope:
                found = 1
                xmin, xmax = min(xmin, x), max(xmax, x)
                ymin, ymax = min(ymin, y), max(ymax, y)
    if not found:
        return 0, 0, 0, 0, 0
    return (1, max(0, int(np.floor(ymin)) - pad), min(h, int(np.ceil(ymax)) + pad + 1),
            max(0, int(np.floor(xmin)) - pad), min(w, int(np.ceil(xmax)) + pad + 1))


@njit(**JIT)
def _band_positions(left, w_left, w_right, tx, ty, a, b, x0, y0, shift, hi_x, hi_y, lo,
                    map_x, map_y, outside):
    """Rows ``[a, b)`` of the map as float32 positions relative to the window origin ``(x0,
    y0)``, the footprint test of :func:`zdask.ops.warp.footprint` on them, and ``shift`` taken
    off the rows (exact: a read that starts ``shift`` rows into the window). Returns the
    columns ``[first, last + 1)`` that hold a pixel inside the footprint (``(0, 0)`` if none)."""
    w = tx.shape[1]
    first, last = w, 0
    for r in range(b - a):
        k = left[a + r]
        p = w_left[a + r]
        q = w_right[a + r]
        for c in range(w):  # no branch: vectorised
            vx = np.float32(p * tx[k, c] + q * tx[k + 1, c] - x0)
            vy = np.float32(p * ty[k, c] + q * ty[k + 1, c] - y0)
            outside[r, c] = not ((vx >= lo) & (vx <= hi_x) & (vy >= lo) & (vy <= hi_y))
            map_x[r, c] = vx
            map_y[r, c] = vy - shift
        c = 0
        while c < first and outside[r, c]:
            c += 1
        first = min(first, c)
        c = w
        while c > last and outside[r, c - 1]:
            c -= 1
        last = max(last, c)
    if last <= first:
        return 0, 0
    return first, last


@njit(**JIT)
def _finish_band(out, outside, powers, factors, has_sky):
    """``out`` ``(rows, w · C)``: the sky ``powers @ factors`` subtracted (float32, see
    ``Surface.row_powers`` and ``row_factors``), then NaN where ``outside``. The surface is
    summed here, not built as an array first: that array's write and read cost a third of
    the warp itself."""
    channels = out.shape[1] // outside.shape[1]
    k = powers.shape[1]
    for r in range(out.shape[0]):
        # Orders 0-2 spelled out, so that the loop over the row vectorises (a loop over the
        # terms inside it does not); the same products and sums, in the same order.
        if has_sky and k == 1:
            p0 = powers[r, 0]
            for j in range(out.shape[1]):
                out[r, j] = out[r, j] - p0 * factors[0, j]
        elif has_sky and k == 2:
            p0, p1 = powers[r, 0], powers[r, 1]
            for j in range(out.shape[1]):
                out[r, j] = out[r, j] - (p0 * factors[0, j] + p1 * factors[1, j])
        elif has_sky and k == 3:
            p0, p1, p2 = powers[r, 0], powers[r, 1], powers[r, 2]
            for j in range(out.shape[1]):
                out[r, j] = out[r, j] - ((p0 * factors[0, j] + p1 * factors[1, j]) + p2 * factors[2, j])
        elif has_sky:
            for j in range(out.shape[1]):
                sky = powers[r, 0] * factors[0, j]
                for t in range(1, k):
                    sky += powers[r, t] * factors[t, j]
                out[r, j] = out[r, j] - sky
        for c in range(outside.shape[1]):
            if outside[r, c]:
                for ch in range(channels):
                    out[r, c * channels + ch] = np.nan


def warp_frame(
    pixels: np.ndarray, bmap: BlockMap, window: tuple[int, int, int, int], read_rows: tuple[int, int],
    out: np.ndarray, sky: Surface | None = None, band: int = BAND,
    background: MeshBackground | None = None,
) -> np.ndarray:
    """Bilinear warp of one frame onto its block, minus its sky surface, into ``out``.

    ``pixels`` ``(yb - ya, x1 - x0, C)`` float32 are the source rows ``read_rows = (ya, yb)``
    (within ``window``, e.g. :meth:`BlockMap.rows_reached`) of the columns of ``window =
    (y0, y1, x0, x1)`` (:meth:`BlockMap.window`); ``out`` ``(h, w, C)`` float32 receives the
    warp, NaN outside the frame's footprint; ``sky``, when given, is evaluated on the block
    (``grid.rows[0], grid.cols[0]`` its origin) and subtracted. ``background``, when given, is
    the frame's own background (:mod:`zdask.ops.bgmesh`, in the frame's pixels): it is sampled
    at each warped pixel's source position, the position the pixel itself was sampled at, and
    subtracted.
    """
    import cv2

    y0, y1, x0, x1 = window
    ya, yb = read_rows
    if not (y0 <= ya < yb <= y1) or pixels.shape[:2] != (yb - ya, x1 - x0):
        raise ValueError(f"pixels {pixels.shape} are not rows {read_rows} of window {window}")
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    g = bmap.grid
    h, w = g.shape
    if out.shape[:2] != (h, w) or out.dtype != np.float32 or out.ndim != 3 or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous float32 ({h}, {w}, C), got {out.dtype} {out.shape}")
    rows = min(band, h)
    map_x = np.empty((rows, w), np.float32)
    map_y = np.empty((rows, w), np.float32)
    outside = np.empty((rows, w), np.bool_)
    # numpy compares a float32 array with a Python float in float32 (the footprint's bounds)
    lo, hi_x, hi_y = np.float32(-_EPS), np.float32(x1 - x0 - 1 + _EPS), np.float32(y1 - y0 - 1 + _EPS)
    no_sky = np.zeros((0, 0), np.float32)
    factors = None if sky is None else sky.row_factors(w, g.cols[0])  # the same for every band
    upsampled = None if background is None else background.upsampled()
    for a in range(0, h, rows):
        b = min(h, a + rows)
        mx, my, off = map_x[:b - a], map_y[:b - a], outside[:b - a]
        c0, c1 = _band_positions(g.left, g.w_left, g.w_right, bmap.x, bmap.y, a, b, float(x0),
                                 float(y0), np.float32(ya - y0), hi_x, hi_y, lo, mx, my, off)
        dst = out[a:b]
        if c1 > c0:
            # Replicated borders, as in remap: the footprint decides what is outside
            got = cv2.remap(pixels, mx[:, c0:c1], my[:, c0:c1], dst=dst[:, c0:c1],
                            interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            if not np.shares_memory(got, dst):  # OpenCV did not take ``dst``
                dst[:, c0:c1] = got.reshape(dst[:, c0:c1].shape)
            if upsampled is not None:
                # The band's positions are relative to the window's columns and the read rows.
                dst[:, c0:c1] -= sample_background(upsampled, mx[:, c0:c1], my[:, c0:c1], x0, ya)
        powers = no_sky if sky is None else sky.row_powers(b - a, g.rows[0] + a)
        # NaN minus the sky is NaN: subtracting before blanking changes no value
        _finish_band(dst.reshape(b - a, -1), off, powers, no_sky if sky is None else factors, sky is not None)
    return out

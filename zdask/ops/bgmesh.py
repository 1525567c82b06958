"""A local background per frame (SExtractor / SWarp style): the flattest sky, extended emission lost.

The default sky model of zdask (:mod:`zdask.ops.background`, :mod:`zdask.ops.skymatch`) fits
low-order surfaces to what differs between frames and tiles, so emission fixed on the sky is
kept. This module is the opposite trade-off, for users who want the flattest sky: each frame's
background is estimated on its own, as SExtractor and SWarp do, and subtracted. The frame is cut
into cells of ``mesh`` pixels; each cell's value is a clipped estimate of its sky (stars and
other compact sources clipped); the cell grid is median-filtered 3 × 3 (a cell on a bright star
or a galaxy core takes its neighbours' value) and interpolated bicubically. Anything smoother
than a cell that is not a star goes with it, emission included: galaxy halos and nebulae larger
than about the mesh are removed.

Kernels: :func:`mesh_background` (the cell grid of a frame, from its binned image) and
:class:`MeshBackground` (the grid as a value, and its evaluation on any frame positions, cheap
enough to call per band of a warp: :meth:`MeshBackground.upsampled` once per frame, then
:func:`sample_background` per band). NumPy and OpenCV; no I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from zdask.ops.robust import mad_sigma

__all__ = ["MIN_MESH", "MeshBackground", "UpsampledBackground", "cells_across", "mesh_background",
           "sample_background"]

MIN_MESH = 32  # pixels: smaller cells follow the wings of bright stars and the noise
# Clipping of a cell's samples: SExtractor's κ = 3 around the median, until no sample moves.
CLIP_KAPPA = 3.0
CLIP_ROUNDS = 8
# SExtractor's mode estimate 2.5·median − 1.5·mean holds for a mildly skewed sky; when the
# clipped samples are skewed more than this (in σ), a source crowds the cell: the median is used.
MODE_SKEW_LIMIT = 0.3
# A cell needs this fraction of finite samples (the rest is off the frame or NaN).
MIN_FILLED = 0.5
# The cell grid is upsampled bicubically to a sample every SAMPLE_PX frame pixels (2 to 8 a cell),
# then sampled bilinearly: on a surface smooth over a cell, the bilinear step is far below the
# noise, and the upsampled grid of a 1080 × 1920 frame stays under 0.5 MB (it is made again for
# every block a frame is warped onto: ~3 ms).
SAMPLE_PX = 8
PAD = 3  # cells of linear extrapolation around the grid (see MeshBackground.upsampled)


@dataclass(frozen=True)
class MeshBackground:
    """One frame's background as a grid of cell values.

    Attributes
    ----------
    values : numpy.ndarray
        ``(ny, nx, C)`` float32: the background at the cell centres (median-filtered 3 × 3).
    origin : tuple of float
        ``(y, x)`` full-resolution frame pixel position of the grid's corner (the top-left
        edge of cell (0, 0), in pixel-edge coordinates: pixel ``i`` spans ``[i, i + 1)``).
    cell : tuple of float
        ``(height, width)`` of a cell in full-resolution frame pixels. Cell ``(j, i)`` is centred
        on pixel ``origin + (j + 0.5, i + 0.5)·cell − 0.5``.
    """

    values: np.ndarray
    origin: tuple[float, float]
    cell: tuple[float, float]

    def digest(self) -> str:
        """A short hash of the grid (for task keys)."""
        h = hashlib.sha256(np.ascontiguousarray(self.values, dtype=np.float32).tobytes())
        h.update(repr((self.values.shape, self.origin, self.cell)).encode())
        return h.hexdigest()[:16]

    def upsampled(self) -> "UpsampledBackground":
        """The bicubic surface through the cell centres, sampled every ~``SAMPLE_PX`` pixels.

        Beyond the outer cell centres (half a cell, plus what the grid leaves at the frame's
        edges), the surface continues the slope of the last two cells: a flat continuation
        would leave the frame's gradient in its border.
        """
        grid = np.asarray(self.values, dtype=np.float64)
        # PAD cells of linear extrapolation on every side (a single cell stays a constant): the
        # frame reaches less than two cells beyond the outer centres (half a cell, half the
        # cells' leftover, the ragged bin), and the cubic kernel there, two nodes further,
        # then reads extrapolated cells only.
        for _ in range(PAD):
            grid = _extend(_extend(grid, axis=0), axis=1)
        ny, nx = grid.shape[:2]
        per_cell = int(np.clip(round(min(self.cell) / SAMPLE_PX), 2, 8))
        rows, cols = _cubic_matrix(ny, per_cell), _cubic_matrix(nx, per_cell)
        image = np.einsum("yj,jic,xi->yxc", rows, grid, cols, optimize=True).astype(np.float32)
        # Frame position p → cell index j = (p + 0.5 − origin) / cell − 0.5 → padded index
        # j + PAD → sample (j + PAD + 0.5)·per_cell − 0.5 of the upsampled grid (see _cubic_matrix).
        (oy, ox), (cy, cx) = self.origin, self.cell
        ay, ax = per_cell / cy, per_cell / cx
        by = ((0.5 - oy) / cy + PAD) * per_cell - 0.5
        bx = ((0.5 - ox) / cx + PAD) * per_cell - 0.5
        return UpsampledBackground(np.ascontiguousarray(image), (ay, by), (ax, bx))

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The background at frame positions ``x``, ``y`` (same shape ``(h, w)``): ``(h, w, C)``
        float32, as the warp subtracts it."""
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y, dtype=np.float32)
        return sample_background(self.upsampled(), x, y)


@dataclass(frozen=True)
class UpsampledBackground:
    """:meth:`MeshBackground.upsampled`: ``image`` ``(h, w, C)`` float32, and per axis the map
    ``sample = a · frame position + b`` (``y_map``, ``x_map``)."""

    image: np.ndarray
    y_map: tuple[float, float]
    x_map: tuple[float, float]


def sample_background(bg: UpsampledBackground, x: np.ndarray, y: np.ndarray,
                      x_shift: float = 0.0, y_shift: float = 0.0) -> np.ndarray:
    """The background at frame positions ``x + x_shift``, ``y + y_shift`` (float32 ``(h, w)``
    each, e.g. a warp's band of positions relative to its window): ``(h, w, C)`` float32.

    Bilinear on the upsampled grid (``cv2.remap``), its border replicated beyond the extension.
    """
    import cv2

    (ay, by), (ax, bx) = bg.y_map, bg.x_map
    u = x * np.float32(ax) + np.float32(ax * x_shift + bx)
    v = y * np.float32(ay) + np.float32(ay * y_shift + by)
    out = cv2.remap(bg.image, u, v, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(*x.shape, bg.image.shape[2])


def _cubic_matrix(n: int, per_cell: int) -> np.ndarray:
    """``(n · per_cell, n)`` weights of the Catmull-Rom cubic (Keys, a = −0.5) at samples
    ``(k + 0.5) / per_cell − 0.5`` of a grid of ``n`` nodes, nodes beyond the ends clamped.

    Keys' a = −0.5 reproduces quadratics exactly; OpenCV's INTER_CUBIC (a = −0.75) does not
    even reproduce a plane (±5 % of a cell's step between the nodes).
    """
    pos = (np.arange(n * per_cell) + 0.5) / per_cell - 0.5
    base = np.floor(pos).astype(np.int64)
    t = pos - base
    weights = np.stack([(-t ** 3 + 2 * t ** 2 - t) / 2, (3 * t ** 3 - 5 * t ** 2 + 2) / 2,
                        (-3 * t ** 3 + 4 * t ** 2 + t) / 2, (t ** 3 - t ** 2) / 2], axis=1)
    out = np.zeros((pos.size, n))
    for k in range(4):
        np.add.at(out, (np.arange(pos.size), np.clip(base + k - 1, 0, n - 1)), weights[:, k])
    return out


def _extend(grid: np.ndarray, axis: int) -> np.ndarray:
    """``grid`` with one more cell at both ends of ``axis``, continuing the end cells' slope
    (repeating the end cell where there is one cell)."""
    first, last = np.take(grid, [0], axis=axis), np.take(grid, [-1], axis=axis)
    if grid.shape[axis] >= 2:
        first = 2 * first - np.take(grid, [1], axis=axis)
        last = 2 * last - np.take(grid, [-2], axis=axis)
    return np.concatenate([first, grid, last], axis=axis)


def cells_across(binned_shape: tuple[int, int], factor: int, mesh: int) -> tuple[int, int]:
    """The cells ``(ny, nx)`` :func:`mesh_background` makes of a frame binned to
    ``binned_shape`` by ``factor``: with fewer than 2 along an axis, the background is flat
    along it and the frame's gradient stays."""
    side = max(1, int(round(mesh / factor)))
    h, w = binned_shape
    return max(1, h // min(side, h)), max(1, w // min(side, w))


def mesh_background(binned: np.ndarray, factor: int, mesh: int) -> MeshBackground:
    """The background of a frame from its image binned by ``factor`` (block means, as
    :func:`zdask.ops.warp.bin_image` gives: binned pixel ``i`` is frame pixels ``[i·factor,
    (i + 1)·factor)``), on cells of about ``mesh`` frame pixels.

    Cells are ``round(mesh / factor)`` binned pixels square (the frame's size at most), as many
    as fit, centred on the frame. Per cell and channel: κσ clipping around the median (κ = 3,
    until stable), then SExtractor's mode 2.5·median − 1.5·mean of the survivors, or their median
    when they are skewed by more than 0.3 σ; a cell with less than half its samples finite gets
    its neighbours' value. The grid is then median-filtered 3 × 3.

    Parameters
    ----------
    binned : numpy.ndarray
        ``(h, w, C)`` or ``(h, w)``; NaN where there is no data.
    factor : int
        Frame pixels per binned pixel (per side), >= 1.
    mesh : int
        Cell size in frame pixels, >= ``MIN_MESH``.
    """
    img = np.asarray(binned, dtype=np.float32)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"binned must be (h, w, C) or (h, w); got shape {np.shape(binned)}")
    if int(factor) != factor or factor < 1:
        raise ValueError(f"factor must be an integer >= 1; got {factor!r}")
    if int(mesh) != mesh or mesh < MIN_MESH:
        raise ValueError(f"mesh must be an integer >= {MIN_MESH} (pixels); got {mesh!r}")
    h, w, channels = img.shape
    ny, nx = cells_across((h, w), factor, mesh)
    side = max(1, int(round(mesh / factor)))
    ch, cw = min(side, h), min(side, w)
    y0, x0 = (h - ny * ch) // 2, (w - nx * cw) // 2
    cells = img[y0:y0 + ny * ch, x0:x0 + nx * cw].reshape(ny, ch, nx, cw, channels)
    samples = cells.transpose(0, 2, 4, 1, 3).reshape(ny, nx, channels, ch * cw).astype(np.float64)
    values = _clipped_mode(samples)
    values = _fill_missing(values)
    values = _median3(values)
    return MeshBackground(values.astype(np.float32), (float(y0 * factor), float(x0 * factor)),
                          (float(ch * factor), float(cw * factor)))


def _clipped_mode(samples: np.ndarray) -> np.ndarray:
    """Per cell and channel (leading axes), the clipped mode of the samples (last axis); NaN for
    a cell with too few finite samples."""
    keep = np.isfinite(samples)
    enough = keep.sum(axis=-1) >= max(1, int(np.ceil(MIN_FILLED * samples.shape[-1])))
    # Cells without enough samples are worked on as zeros and given NaN at the end: an all-NaN
    # median would warn, and silencing it is not thread-safe (worker threads share the filters).
    keep = np.where(enough[..., None], keep, True)
    data = np.where(keep, np.where(enough[..., None], samples, 0.0), np.nan)
    for _ in range(CLIP_ROUNDS):
        centre = _masked_median(data, keep)[..., None]
        sigma = _nanstd(data, keep)
        new = keep & (np.abs(data - centre) <= CLIP_KAPPA * sigma)
        # a cell whose spread is 0 (a constant) keeps its samples
        new |= keep & (sigma == 0)
        if (new == keep).all():
            break
        keep = new
    median = _masked_median(data, keep)
    mean = np.where(keep, data, 0.0).sum(axis=-1) / keep.sum(axis=-1)
    sigma = _nanstd(data, keep)[..., 0]
    skewed = np.abs(mean - median) >= MODE_SKEW_LIMIT * sigma
    mode = np.where(skewed | (sigma == 0), median, 2.5 * median - 1.5 * mean)
    return np.where(enough, mode, np.nan)


def _masked_median(data: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Median along the last axis of the samples where ``keep`` (at least one per row): one
    sort for all cells (np.nanmedian goes cell by cell on arrays like these)."""
    ordered = np.sort(np.where(keep, data, np.inf), axis=-1)
    n = keep.sum(axis=-1, keepdims=True)
    lo = np.take_along_axis(ordered, (n - 1) // 2, axis=-1)
    hi = np.take_along_axis(ordered, n // 2, axis=-1)
    return ((lo + hi) / 2)[..., 0]


def _nanstd(data: np.ndarray, keep: np.ndarray) -> np.ndarray:
    n = np.maximum(keep.sum(axis=-1, keepdims=True), 1)
    x = np.where(keep, data, 0.0)
    mean = x.sum(axis=-1, keepdims=True) / n
    return np.sqrt(np.where(keep, (data - mean) ** 2, 0.0).sum(axis=-1, keepdims=True) / n)


def _fill_missing(values: np.ndarray) -> np.ndarray:
    """Cells without a value get the mean of their valued neighbours, growing inwards; all
    missing: 0 (no correction)."""
    values = values.copy()
    for c in range(values.shape[2]):
        v = values[:, :, c]
        while np.isnan(v).any():
            if np.isnan(v).all():
                v[:] = 0.0
                break
            padded = np.pad(v, 1, constant_values=np.nan)
            stack = np.stack([padded[dy:dy + v.shape[0], dx:dx + v.shape[1]]
                              for dy in range(3) for dx in range(3)])
            finite = np.isfinite(stack)
            count = finite.sum(axis=0)
            mean = np.where(count > 0, np.where(finite, stack, 0.0).sum(axis=0) / np.maximum(count, 1), np.nan)
            v[:] = np.where(np.isnan(v), mean, v)
    return values


def _median3(values: np.ndarray) -> np.ndarray:
    """3 × 3 median filter of the cell grid, per channel, taken about the grid's best plane.

    A median filter with the edge cells repeated moves a sloped grid's edge and corner cells
    (a corner's window holds its own value four times); filtering what the plane leaves and
    adding the plane back keeps any plane exactly, edges included, and still replaces a cell
    that stands out from its neighbours (a bright star, a galaxy core).
    """
    from scipy.ndimage import median_filter

    ny, nx, channels = values.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    design = np.stack([np.ones(ny * nx), xx.ravel() - (nx - 1) / 2, yy.ravel() - (ny - 1) / 2], axis=1)
    flat = values.reshape(ny * nx, channels).astype(np.float64)
    plane = np.empty_like(flat)
    for c in range(channels):
        # Robust: the cells that stand out (what the filter is for) must not tilt the plane.
        use = np.ones(ny * nx, dtype=bool)
        for _ in range(3):
            beta = np.linalg.lstsq(design[use], flat[use, c], rcond=None)[0]
            residual = flat[:, c] - design @ beta
            spread = mad_sigma(residual[use], np.median(residual[use]))
            new = np.abs(residual) <= 3 * spread if spread > 0 else np.abs(residual) <= 1e-9 * (
                1 + np.abs(flat[:, c]))
            if new.sum() < 3 or (new == use).all():
                break
            use = new
        plane[:, c] = design @ beta
    plane = plane.reshape(ny, nx, channels)
    return plane + median_filter(values - plane, size=(3, 3, 1), mode="nearest")

"""The grid mode's frame skies: every frame's sky surface matched to the consensus of ALL the
frames that overlap it, once, on the binned canvas, less the curvature they all share.

Master tiles match their frames inside a group (frames that overlap almost entirely); a grid
cell holds frames of several pointings that overlap it in part, and each cell matching its own
frames would leave every cell its own consensus (steps where frames end inside a cell, and
surfaces extrapolated from thin overlaps). Here each frame, binned by ``match_bin`` and warped
onto its own window of the binned canvas, then averaged over blocks of :data:`SAMPLE_STEP`²
binned pixels (the sampled canvas), is one cut-out of
:func:`zdask.ops.skymatch.match_to_consensus`, whose cost is linear in the frames; compact
sources are masked from the mean of the warped frames.

The match fixes what differs between frames; a curvature that every frame carries in its own
pixels (a horizon glow) it leaves whole, a bowl as wide as the mosaic. As the classic mode does
for its tiles (:mod:`zdask.ops.skyshape`), it is the median of the frames' own curvatures
(each fitted on its window at the binned resolution, sources masked) and is taken out of every
frame. Measured on frames, whatever the size of the cells: a cell is a window of the canvas
that frames cover in part, not a frame, and on small cells its own curvature is mostly noise,
scaled by (canvas / cell)² on the canvas. The plane all frames share is left to the blend
(:mod:`zdask.graph.grid_blend`), fitted on the cells' mean.

The surfaces are in canvas pixels: a cell (a window of the canvas) takes them with its origin
subtracted (:func:`surface_on_cell`). Memory: the frames' sampled windows (1/256 of their pixels
at the default binning), one frame's binned window at a time, and the sampled canvas's sums.
"""

from __future__ import annotations

import numpy as np

from zdask.graph.geometry import Grid
from zdask.io import store
from zdask.io.chunkrows import read_rows
from zdask.io.fitsheader import wcs_from_header
from zdask.ops.background import star_mask
from zdask.ops.skymatch import CutOut, match_to_consensus
from zdask.ops.background import pad_order
from zdask.ops.skyshape import QUADRATIC_TERMS, common_curvature, tile_curvature
from zdask.ops.warp import (
    bin_image, binned_extent, binned_transform, pixel_map, remap, source_window, wcs_pixel_transform,
)

#: binned pixels between the samples the surfaces are fitted on
SAMPLE_STEP = 2
#: clipping rounds of the consensus match (as for a master tile's frames)
PASSES = 3
#: rows of a calibrated frame read at a time
READ_ROWS = 256
#: binned pixels of a frame's window below which its own curvature is not measured
MIN_CURVATURE_PIXELS = 60


def _binned_frame(src, factor: int) -> np.ndarray:
    frame = store.open_array(src.root, f"frames/{src.key}", src.token)
    height = frame.shape[0] // factor * factor
    rows = max(factor, READ_ROWS // factor * factor)
    return np.concatenate([bin_image(read_rows(frame, r, min(r + rows, height)), factor)
                           for r in range(0, height, rows)], axis=0)


def _frame_window(src, canvas: Grid, factor: int, shape_b: tuple[int, int]) -> CutOut | None:
    """The frame binned and warped onto its window of the binned canvas (None if off it); the
    window starts on a sample of the sampled canvas (a multiple of :data:`SAMPLE_STEP`)."""
    transform = binned_transform(wcs_pixel_transform(wcs_from_header(src.wcs_header), canvas.wcs()), factor, factor)
    # The window: the binned canvas pixels that the frame's corners bound.
    ra, dec = wcs_from_header(src.wcs_header).all_pix2world(
        np.array([-0.5, src.shape[1] - 0.5, src.shape[1] - 0.5, -0.5]),
        np.array([-0.5, -0.5, src.shape[0] - 0.5, src.shape[0] - 0.5]), 0)
    x, y = canvas.wcs().all_world2pix(ra, dec, 0)
    y0 = max(0, int(np.floor((y.min() + 0.5) / factor))) // SAMPLE_STEP * SAMPLE_STEP
    x0 = max(0, int(np.floor((x.min() + 0.5) / factor))) // SAMPLE_STEP * SAMPLE_STEP
    y1 = min(shape_b[0], int(np.ceil((y.max() + 0.5) / factor)) + 1)
    x1 = min(shape_b[1], int(np.ceil((x.max() + 0.5) / factor)) + 1)
    if y1 <= y0 or x1 <= x0:
        return None
    binned = _binned_frame(src, factor)
    mx, my = pixel_map(transform, (y0, y1), (x0, x1), step=8)
    if source_window(mx, my, binned.shape[:2]) is None:
        return None
    image = remap(binned, mx, my)
    weight = np.isfinite(image).all(axis=-1).astype(np.float32)
    return CutOut(image, weight, (y0, x0))


def _sampled(item: CutOut) -> CutOut:
    """A binned window (:func:`_frame_window`) on the sampled canvas: means of blocks of
    SAMPLE_STEP × SAMPLE_STEP binned pixels (every pixel counts: one in SAMPLE_STEP² alone
    would be that much noisier, and aliases compact sources), NaN where a block reaches off
    the frame (its mean would not sit at its centre). Sampled pixel s is centred on binned
    pixel s·SAMPLE_STEP + (SAMPLE_STEP − 1) / 2 (:func:`sampled_extent`)."""
    step = SAMPLE_STEP
    h, w, channels = item.image.shape
    padded = np.full((-(-h // step) * step, -(-w // step) * step, channels), np.nan, dtype=np.float32)
    padded[:h, :w] = item.image
    image = padded.reshape(padded.shape[0] // step, step, padded.shape[1] // step, step, channels).mean(axis=(1, 3))
    weight = np.isfinite(image).all(axis=-1).astype(np.float32)
    return CutOut(image.astype(np.float32), weight, (item.origin[0] // step, item.origin[1] // step))


def sampled_extent(extent_b: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """The extent in sampled pixels that gives surfaces the coefficients they have over
    ``extent_b`` in binned pixels: binned pixel b is sampled coordinate (b − (step − 1) / 2) / step."""
    half = (SAMPLE_STEP - 1) / 2.0
    return tuple((v - half) / SAMPLE_STEP for v in extent_b)


def frame_sky_on_canvas(sources: list, canvas: Grid, factor: int, order: int) -> dict:
    """Worker task: per frame, (coefficients (C, n_terms), order, extent) of its sky surface in
    full-resolution canvas pixels, matched to the consensus of every frame overlapping it, with
    the curvature every frame shares in it (order >= 1; see the module doc); None for a frame
    that does not reach the canvas. Returns ``{"surfaces": [...], "curvature": report}``."""
    shape_b = (max(1, canvas.shape[0] // factor), max(1, canvas.shape[1] // factor))
    shape_s = (-(-shape_b[0] // SAMPLE_STEP), -(-shape_b[1] // SAMPLE_STEP))
    extent_b = (0.0, float(shape_b[0] - 1), 0.0, float(shape_b[1] - 1))
    items, index, curvatures = [], [], []
    for k, src in enumerate(sources):
        binned = _frame_window(src, canvas, factor, shape_b)
        if binned is None:
            continue
        # The frame's own sky curvature, on its own pixels at the binned resolution: what a
        # horizon glow bends every frame by (a frame, whatever the cells' size).
        if order >= 1 and binned.weight.sum() >= MIN_CURVATURE_PIXELS:
            curvatures.append(tile_curvature(binned.image, binned.weight, binned.origin, extent_b))
        items.append(_sampled(binned))
        index.append(k)
    if not items:
        return {"surfaces": [None] * len(sources), "curvature": _curvature_report(None, 0)}
    channels = items[0].image.shape[-1]
    total, count = np.zeros((*shape_s, channels)), np.zeros(shape_s)
    for it in items:
        ys, xs = it.window()
        ok = it.weight > 0
        total[ys, xs][ok] += it.image[ok]
        count[ys, xs] += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count[..., None]
    fill = float(np.nanmedian(mean)) if np.isfinite(mean).any() else 0.0
    stars = star_mask(np.nan_to_num(mean, nan=fill).astype(np.float32))
    # the same coefficients as on the binned canvas over extent_b, hence as in full-resolution
    # pixels over binned_extent
    extent = sampled_extent(extent_b)
    match = match_to_consensus(items, shape_s, order=order, extent=extent, exclude=stars, passes=PASSES)
    coeffs = [np.asarray(c, dtype=np.float64) for c in match.coeffs]
    out_order, common = order, None
    if order >= 1 and len(items) > 1:
        common = common_curvature(curvatures) if curvatures else None
        if common is not None:
            coeffs, out_order = [pad_order(c, order, 2) + common.coeffs for c in coeffs], 2
    full_extent = list(binned_extent(shape_b, factor))
    surfaces: list[tuple | None] = [None] * len(sources)
    for k, c in zip(index, coeffs):
        surfaces[k] = (np.asarray(c).tolist(), out_order, full_extent)
    return {"surfaces": surfaces, "curvature": _curvature_report(common, len(curvatures))}


def _curvature_report(common, frames: int) -> dict:
    """The curvature taken out of every frame: the median of the frames' own, their spread."""
    if common is None:
        return {"determined": [], "undetermined": list(QUADRATIC_TERMS), "frames": frames}
    return {"determined": list(common.determined), "undetermined": list(common.undetermined),
            "surface": common.coeffs.tolist(), "frames": frames,
            "quadratic_from": "median of the frames' own sky curvatures (sources masked)",
            "curvature_spread": None if common.spread is None else np.asarray(common.spread).tolist()}


def surface_on_cell(sky: tuple | None, box: tuple[int, int, int, int]) -> tuple | None:
    """A canvas surface (coefficients, order, extent) re-expressed in the pixels of the cell
    whose window is ``box``: the same coefficients over the extent shifted by the cell's origin
    (the normalisation of the coordinates is linear)."""
    if sky is None:
        return None
    coeffs, order, (ey0, ey1, ex0, ex1) = sky
    y0, x0 = box[0], box[2]
    return (coeffs, order, [ey0 - y0, ey1 - y0, ex0 - x0, ex1 - x0])

"""The grid mode's frame skies: every frame's sky surface matched to the consensus of ALL the
frames that overlap it, once, on the binned canvas.

Master tiles match their frames inside a group (frames that overlap almost entirely); a grid
cell holds frames of several pointings that overlap it in part, and each cell matching its own
frames would leave every cell its own consensus (steps where frames end inside a cell, and
surfaces extrapolated from thin overlaps). Here each frame, binned by ``match_bin`` and warped
onto its own window of the binned canvas (sampled every :data:`SAMPLE_STEP` binned pixels), is
one cut-out of :func:`zdask.ops.skymatch.match_to_consensus`, whose cost is linear in the frames;
compact sources are masked from the mean of the warped frames. The surfaces are in canvas
pixels: a cell (a window of the canvas) takes them with its origin subtracted
(:func:`surface_on_cell`). Memory: the frames' sampled windows (1/256 of their pixels at the
default binning) and the sampled canvas's sums.
"""

from __future__ import annotations

import numpy as np

from zdask.graph.geometry import Grid
from zdask.io import store
from zdask.io.chunkrows import read_rows
from zdask.io.fitsheader import wcs_from_header
from zdask.ops.background import star_mask
from zdask.ops.skymatch import CutOut, match_to_consensus
from zdask.ops.warp import (
    bin_image, binned_extent, binned_transform, pixel_map, remap, source_window, wcs_pixel_transform,
)

#: binned pixels between the samples the surfaces are fitted on
SAMPLE_STEP = 2
#: clipping rounds of the consensus match (as for a master tile's frames)
PASSES = 3
#: rows of a calibrated frame read at a time
READ_ROWS = 256


def _binned_frame(src, factor: int) -> np.ndarray:
    frame = store.open_array(src.root, f"frames/{src.key}", src.token)
    height = frame.shape[0] // factor * factor
    rows = max(factor, READ_ROWS // factor * factor)
    return np.concatenate([bin_image(read_rows(frame, r, min(r + rows, height)), factor)
                           for r in range(0, height, rows)], axis=0)


def _sampled_window(src, canvas: Grid, factor: int, shape_s: tuple[int, int]) -> CutOut | None:
    """The frame binned and warped onto its window of the sampled binned canvas (None if off it)."""
    step = SAMPLE_STEP
    transform = binned_transform(wcs_pixel_transform(wcs_from_header(src.wcs_header), canvas.wcs()),
                                 factor, factor * step)
    binned = _binned_frame(src, factor)
    # The window: the sampled canvas pixels that the frame's corners bound.
    ra, dec = wcs_from_header(src.wcs_header).all_pix2world(
        np.array([-0.5, src.shape[1] - 0.5, src.shape[1] - 0.5, -0.5]),
        np.array([-0.5, -0.5, src.shape[0] - 0.5, src.shape[0] - 0.5]), 0)
    x, y = canvas.wcs().all_world2pix(ra, dec, 0)
    scale = factor * step
    y0, y1 = max(0, int(np.floor((y.min() + 0.5) / scale))), min(shape_s[0], int(np.ceil((y.max() + 0.5) / scale)) + 1)
    x0, x1 = max(0, int(np.floor((x.min() + 0.5) / scale))), min(shape_s[1], int(np.ceil((x.max() + 0.5) / scale)) + 1)
    if y1 <= y0 or x1 <= x0:
        return None
    mx, my = pixel_map(transform, (y0, y1), (x0, x1), step=8)
    if source_window(mx, my, binned.shape[:2]) is None:
        return None
    image = remap(binned, mx, my)
    weight = np.isfinite(image).all(axis=-1).astype(np.float32)
    return CutOut(image, weight, (y0, x0))


def frame_sky_on_canvas(sources: list, canvas: Grid, factor: int, order: int) -> list[tuple | None]:
    """Worker task: per frame, (coefficients (C, n_terms), order, extent) of its sky surface in
    full-resolution canvas pixels, matched to the consensus of every frame overlapping it; None
    for a frame that does not reach the canvas."""
    shape_b = (max(1, canvas.shape[0] // factor), max(1, canvas.shape[1] // factor))
    shape_s = (-(-shape_b[0] // SAMPLE_STEP), -(-shape_b[1] // SAMPLE_STEP))
    items, index = [], []
    for k, src in enumerate(sources):
        item = _sampled_window(src, canvas, factor, shape_s)
        if item is not None:
            items.append(item)
            index.append(k)
    if not items:
        return [None] * len(sources)
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
    # sampled pixel s is binned pixel s·step: the same coefficients as on the binned canvas over
    # (0, H_b − 1, 0, W_b − 1), hence as in full-resolution pixels over binned_extent
    extent = (0.0, (shape_b[0] - 1) / SAMPLE_STEP, 0.0, (shape_b[1] - 1) / SAMPLE_STEP)
    match = match_to_consensus(items, shape_s, order=order, extent=extent, exclude=stars, passes=PASSES)
    full_extent = list(binned_extent(shape_b, factor))
    out: list[tuple | None] = [None] * len(sources)
    for k, coeffs in zip(index, match.coeffs):
        out[k] = (np.asarray(coeffs).tolist(), order, full_extent)
    return out


def surface_on_cell(sky: tuple | None, box: tuple[int, int, int, int]) -> tuple | None:
    """A canvas surface (coefficients, order, extent) re-expressed in the pixels of the cell
    whose window is ``box``: the same coefficients over the extent shifted by the cell's origin
    (the normalisation of the coordinates is linear)."""
    if sky is None:
        return None
    coeffs, order, (ey0, ey1, ex0, ex1) = sky
    y0, x0 = box[0], box[2]
    return (coeffs, order, [ey0 - y0, ey1 - y0, ex0 - x0, ex1 - x0])

"""Sky and photometric matching, planned on binned images before the full-resolution passes.

Frames inside a group and tiles inside the mosaic are matched on images binned by
``config.match_bin`` (8 × 8 = 64 times fewer pixels): the per-frame sky surfaces of a group come
from one worker task that warps the group's binned frames onto the binned tile grid; the tiles'
gains, offsets and surfaces come from binned cut-outs on a binned canvas. The results are a few
numbers per frame or tile, which the full-resolution warp and coadd tasks then apply.
"""

from __future__ import annotations

import numpy as np

from zdask.graph.geometry import Grid, wcs_from_header
from zdask.io import store
from zdask.ops.background import Surface, star_mask
from zdask.ops.photometry import fit_source_gain, solve_tile_photometry
from zdask.ops.seams import seam_metric
from zdask.ops.skymatch import CutOut, accumulate, fit_common_sky, match_surfaces
from zdask.ops.warp import (
    bin_image, binned_extent, binned_transform, pixel_map, remap, wcs_pixel_transform,
)


def binned_shape(shape: tuple[int, int], factor: int) -> tuple[int, int]:
    return max(1, shape[0] // factor), max(1, shape[1] // factor)


def _warp_binned(image: np.ndarray, src_header: dict, dst_header: dict, dst_shape_b: tuple[int, int],
                 factor: int, origin_b: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Bin ``image`` and warp it onto the binned destination grid (a window at ``origin_b``)."""
    transform = binned_transform(
        wcs_pixel_transform(wcs_from_header(src_header), wcs_from_header(dst_header)), factor, factor)
    y0, x0 = origin_b
    mx, my = pixel_map(transform, (y0, y0 + dst_shape_b[0]), (x0, x0 + dst_shape_b[1]), step=8)
    return remap(bin_image(image, factor), mx, my)


# --- frames inside a master tile ---------------------------------------------------------------------

def frame_sky_surfaces(sources: list, grid: Grid, factor: int, order: int) -> list[tuple]:
    """Worker task: per frame, (coefficients (C, n_terms), order, extent) of its sky surface in
    full-resolution tile-grid pixels.

    Each frame's surface is fitted against the other frames of the group (see
    ``zdask.ops.skymatch``); subtracting it removes the frame's own gradient and offset.
    """
    shape_b = binned_shape(grid.shape, factor)
    items = []
    for src in sources:
        frame = np.asarray(store.open_array(src.root, f"frames/{src.key}", src.token)[:])
        warped = _warp_binned(frame, src.wcs_header, grid.wcs_header, shape_b, factor)
        items.append(CutOut(warped, np.isfinite(warped).all(axis=-1).astype(np.float32), (0, 0)))
    stars = _stars_of([it.image for it in items])
    # Frames of a group overlap almost entirely: three passes on every other binned pixel
    # converge (the mosaic's tiles, chained by partial overlaps, keep the default five).
    coeffs = match_surfaces(items, shape_b, order=order, extent=_binned_grid_extent(shape_b), exclude=stars,
                            passes=3, step=2)
    extent = list(binned_extent(shape_b, factor))
    return [(c.tolist(), order, extent) for c in coeffs]


def _binned_grid_extent(shape_b: tuple[int, int]) -> tuple[float, float, float, float]:
    # Surfaces are fitted in binned pixel coordinates over this extent; the same coefficients
    # describe the same surface in full-resolution coordinates over binned_extent(shape_b, f),
    # because the coordinate normalisation is linear.
    return (0.0, float(shape_b[0] - 1), 0.0, float(shape_b[1] - 1))


def _stars_of(images: list[np.ndarray]) -> np.ndarray:
    """Compact sources of the images' median (stars sit still on the sky, gradients do not)."""
    # Only where some image has a sample: an all-NaN column would warn, and silencing that
    # with warnings.catch_warnings is not thread-safe (the worker's threads share the filters).
    stack = np.stack(images)
    some = np.isfinite(stack).any(axis=0)
    median = np.full(stack.shape[1:], np.nan, dtype=np.float32)
    median[some] = np.nanmedian(stack[:, some], axis=0)
    return star_mask(np.nan_to_num(median, nan=float(np.nanmedian(median)) if np.isfinite(median).any() else 0.0))


# --- tiles inside the mosaic -----------------------------------------------------------------------

def tile_cutout(root: str, name: str, token: str, grid: Grid, canvas: Grid, factor: int,
                bbox: tuple[int, int, int, int]) -> CutOut:
    """Worker task: a tile's image and weight binned onto the binned canvas, within its bbox."""
    image = np.asarray(store.open_array(root, f"{name}/image", token)[:])
    weight = np.asarray(store.open_array(root, f"{name}/weight", token)[:])
    image = np.where((weight > 0)[..., None], image, np.nan)
    y0, y1, x0, x1 = bbox
    origin = (y0 // factor, x0 // factor)
    shape_b = (max(1, -(-y1 // factor) - origin[0]), max(1, -(-x1 // factor) - origin[1]))
    canvas_b = binned_shape(canvas.shape, factor)
    shape_b = (min(shape_b[0], canvas_b[0] - origin[0]), min(shape_b[1], canvas_b[1] - origin[1]))
    warped = _warp_binned(image, grid.wcs_header, canvas.wcs_header, shape_b, factor, origin)
    wts = _warp_binned(weight[..., None], grid.wcs_header, canvas.wcs_header, shape_b, factor, origin)[..., 0]
    wts = np.where(np.isfinite(wts) & np.isfinite(warped).all(axis=-1), wts, 0.0).astype(np.float32)
    return CutOut(warped, wts, origin)


def overlap_medians(items: list[CutOut], shape: tuple[int, int]) -> list[np.ndarray | None]:
    """Per tile, the per-channel median of its pixels that another tile also covers."""
    count = np.zeros(shape, dtype=np.int32)
    for it in items:
        ys, xs = it.window()
        count[ys, xs] += it.weight > 0
    out = []
    for it in items:
        ys, xs = it.window()
        shared = (it.weight > 0) & (count[ys, xs] >= 2)
        out.append(np.nanmedian(it.image[shared], axis=0) if shared.sum() >= 10 else None)
    return out


def plan_tile_photometry(items: list[CutOut], shape_b: tuple[int, int], factor: int, *, harmonize: bool,
                         order: int) -> dict:
    """Gains, offsets and sky surfaces per tile, and the seam metric before and after.

    Pairs are fitted on the overlap of their binned cut-outs (both weights above half their
    maxima, so thin low-coverage edges stay out); the solve fixes the anchor tile (the one with
    the most overlap) at gain 1, offset 0.
    """
    n = len(items)
    channels = items[0].image.shape[-1] if items else 1
    before = seam_metric(overlap_medians(items, shape_b))
    gains = np.ones((n, channels))
    offsets = np.zeros((n, channels))
    pairs, overlap_px = [], np.zeros(n)
    if harmonize and n > 1:
        for i in range(n):
            for j in range(i + 1, n):
                ref, tgt, mask = _pair_overlap(items[i], items[j])
                if mask is None:
                    continue
                # Gains from sources: transparency scales the astronomical signal only, and
                # on sky a gain cannot be told from an offset or a gradient.
                fit = fit_source_gain(ref, tgt, mask=mask)
                if fit.n_pixels > 0:
                    pairs.append((i, j, fit.gain, fit.offset, float(fit.n_pixels)))
                    overlap_px[[i, j]] += fit.n_pixels
        anchor = int(np.argmax(overlap_px)) if pairs else 0
        solved = solve_tile_photometry(n, pairs, anchor=anchor, n_channels=channels)
        gains, offsets = solved.gains, solved.offsets
    corrected = [CutOut(it.image * gains[k] + offsets[k], it.weight, it.origin) for k, it in enumerate(items)]
    surfaces = [None] * n
    if order >= 0 and n > 1:
        extent_b = _binned_grid_extent(shape_b)
        coeffs = match_surfaces(corrected, shape_b, order=order, extent=extent_b)
        corrected = [
            CutOut(it.image - Surface(c, order, extent_b, np.zeros(channels)).evaluate(
                it.image.shape[:2], offset=it.origin), it.weight, it.origin)
            for it, c in zip(corrected, coeffs)
        ]
        # What all tiles share (light pollution on the same side of every frame) is left by
        # the matching; fit it on the assembled binned mosaic, sources excluded, and take it
        # out of every tile.
        common = fit_common_sky(*_assemble(corrected, shape_b), order=order, extent=extent_b)
        surfaces = [(np.asarray(c) + common).tolist() if c is not None else common.tolist()
                    for c in coeffs]
        surfaces = [(c, order, list(binned_extent(shape_b, factor))) for c in surfaces]
        corrected = [
            CutOut(it.image - Surface(common, order, extent_b, np.zeros(channels)).evaluate(
                it.image.shape[:2], offset=it.origin), it.weight, it.origin)
            for it in corrected
        ]
    after = seam_metric(overlap_medians(corrected, shape_b))
    return {"gains": gains, "offsets": offsets, "surfaces": surfaces,
            "seam_before": np.asarray(before).tolist(), "seam_after": np.asarray(after).tolist(),
            "pair_seam_before": pair_seam_metric(items).tolist(),
            "pair_seam_after": pair_seam_metric(corrected).tolist(), "pairs": len(pairs)}


def _assemble(items: list[CutOut], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean image and weight sum of cut-outs on their common grid."""
    total, wsum = accumulate(items, [it.image for it in items], shape, items[0].image.shape[-1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return (total / wsum[..., None]).astype(np.float32), wsum.astype(np.float32)


def pair_seam_metric(items: list[CutOut]) -> np.ndarray:
    """Per channel, the RMS over overlapping tile pairs of median(T_i − T_j) on their shared
    pixels: the step a seam shows, zero when tiles agree where they overlap (unlike the
    spread of per-tile medians, it has no floor from the sky's own structure)."""
    channels = items[0].image.shape[-1] if items else 1
    steps = []
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            a, b, mask = _pair_overlap(items[i], items[j])
            if mask is not None:
                steps.append(np.median(a[mask] - b[mask], axis=0))
    if not steps:
        return np.zeros(channels)
    return np.sqrt(np.mean(np.square(steps), axis=0))


def _pair_overlap(a: CutOut, b: CutOut):
    """(a's pixels, b's pixels, mask) on the intersection of two cut-outs, or Nones."""
    ay, ax = a.origin
    by, bx = b.origin
    y0, x0 = max(ay, by), max(ax, bx)
    y1 = min(ay + a.image.shape[0], by + b.image.shape[0])
    x1 = min(ax + a.image.shape[1], bx + b.image.shape[1])
    if y1 - y0 < 2 or x1 - x0 < 2:
        return None, None, None
    sa = (slice(y0 - ay, y1 - ay), slice(x0 - ax, x1 - ax))
    sb = (slice(y0 - by, y1 - by), slice(x0 - bx, x1 - bx))
    wa, wb = a.weight[sa], b.weight[sb]
    mask = (wa >= 0.5 * max(a.weight.max(), 1e-9)) & (wb >= 0.5 * max(b.weight.max(), 1e-9))
    if mask.sum() < 50:
        return None, None, None
    return a.image[sa], b.image[sb], mask

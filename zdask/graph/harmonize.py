"""Sky and photometric matching, planned on binned images before the full-resolution passes.

Frames inside a group and tiles inside the mosaic are matched on images binned by
``config.match_bin`` (8 × 8 = 64 times fewer pixels): the per-frame sky surfaces of a group come
from one worker task that warps the group's binned frames onto the binned tile grid; the tiles'
gains, offsets and surfaces come from binned cut-outs on a binned canvas. The results are a few
numbers per frame or tile, which the full-resolution warp and coadd tasks then apply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from zdask.graph.geometry import Grid
from zdask.graph.plan import spread_evenly
from zdask.io import store
from zdask.io.chunkrows import read_rows, read_whole
from zdask.io.fitsheader import wcs_from_header
from zdask.ops.background import Surface, pad_order, star_mask
from zdask.ops.bgmesh import MeshBackground, mesh_background
from zdask.ops.photometry import fit_source_gain, solve_tile_photometry
from zdask.ops.seams import seam_metric
from zdask.ops.skymatch import CutOut, accumulate, fit_common_sky, match_surfaces, match_to_consensus
from zdask.ops.skyshape import (
    GlowCurvature, axis_multiple, common_curvature, glow_axis_shape, glow_curvature, plane_and_shape, tile_curvature,
)
from zdask.ops.warp import (
    bin_image, binned_extent, binned_transform, pixel_map, remap, wcs_pixel_transform,
)


def binned_shape(shape: tuple[int, int], factor: int) -> tuple[int, int]:
    return max(1, shape[0] // factor), max(1, shape[1] // factor)


def _warp_binned(image: np.ndarray, src_header: dict, dst_header: dict, dst_shape_b: tuple[int, int],
                 factor: int, origin_b: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Bin ``image`` and warp it onto the binned destination grid (a window at ``origin_b``)."""
    return _warp_prebinned(bin_image(image, factor), src_header, dst_header, dst_shape_b, factor, origin_b)


def _warp_prebinned(binned: np.ndarray, src_header: dict, dst_header: dict, dst_shape_b: tuple[int, int],
                    factor: int, origin_b: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Warp an image already binned by ``factor`` onto the binned destination grid."""
    transform = binned_transform(
        wcs_pixel_transform(wcs_from_header(src_header), wcs_from_header(dst_header)), factor, factor)
    y0, x0 = origin_b
    mx, my = pixel_map(transform, (y0, y0 + dst_shape_b[0]), (x0, x0 + dst_shape_b[1]), step=8)
    return remap(binned, mx, my)


# --- frames inside a master tile ---------------------------------------------------------------------

# Frames of a group overlap almost entirely: every other binned pixel is plenty to match them,
# and three clipping rounds converge (the mosaic's tiles, chained by partial overlaps, keep five).
FRAME_MATCH_STEP = 2
FRAME_MATCH_PASSES = 3
# The star mask is made from the median of at most this many frames, spread evenly over the
# group: stars sit still on the sky, so a few dozen binned frames find them as well as all of
# them would, at a time and memory that do not grow with the group.
STAR_MASK_FRAMES = 32
# Rows of a calibrated frame read (and binned) at a time: a few MB, not the whole frame.
READ_ROWS = 256
# Rows of the binned stack whose median is taken at a time.
MEDIAN_ROWS = 16


def group_sky(sources: list, grid: Grid, factor: int, order: int) -> list:
    """Worker task: the group's sources carrying their frames' sky surfaces
    (:func:`frame_sky_surfaces`)."""
    surfaces = frame_sky_surfaces(sources, grid, factor, order)
    return [dataclasses.replace(s, sky=tuple(sky)) for s, sky in zip(sources, surfaces)]


def frame_sky_surfaces(sources: list, grid: Grid, factor: int, order: int) -> list[tuple]:
    """Worker task: per frame, (coefficients (C, n_terms), order, extent) of its sky surface in
    full-resolution tile-grid pixels.

    Each frame's surface is fitted against the other frames of the group, matched to their
    consensus (see ``zdask.ops.skymatch.match_to_consensus``); subtracting it removes the
    frame's own gradient and offset. Time and memory are linear in the number of frames: each
    frame is read once, block by block, and only its binned image sampled every
    ``FRAME_MATCH_STEP`` binned pixels is kept (1 / (64·4) of the frame at the default
    ``match_bin`` 8), plus the ``STAR_MASK_FRAMES`` binned images the star mask is made of.
    """
    shape_b = binned_shape(grid.shape, factor)
    step = FRAME_MATCH_STEP
    if not sources:
        return []
    for_mask = spread_evenly(len(sources), STAR_MASK_FRAMES)
    sampled = mask_stack = None
    for k, src in enumerate(sources):
        warped = _warp_prebinned(_read_binned(src, factor), src.wcs_header, grid.wcs_header, shape_b, factor)
        if sampled is None:
            sampled = np.empty((len(sources), *warped[::step, ::step].shape), dtype=np.float32)
            mask_stack = np.empty((len(for_mask), *warped.shape), dtype=np.float32)
        sampled[k] = warped[::step, ::step]
        if k in for_mask:
            mask_stack[np.searchsorted(for_mask, k)] = warped
    stars = _stars_of(mask_stack)[::step, ::step]
    del mask_stack
    ones = np.ones(sampled.shape[1:3], dtype=np.float32)  # the data are where the samples are finite
    items = [CutOut(image, ones, (0, 0)) for image in sampled]
    # Sample s of the sampled grid is binned pixel s·step: the same normalised coordinates, hence
    # the same coefficients, as on the binned grid over _binned_grid_extent(shape_b).
    y0, y1, x0, x1 = _binned_grid_extent(shape_b)
    extent = (y0 / step, y1 / step, x0 / step, x1 / step)
    match = match_to_consensus(items, sampled.shape[1:3], order=order, extent=extent, exclude=stars,
                               passes=FRAME_MATCH_PASSES)
    full_extent = list(binned_extent(shape_b, factor))
    return [(c.tolist(), order, full_extent) for c in match.coeffs]


def frame_backgrounds(sources: list, factor: int, mesh: int) -> list[MeshBackground]:
    """Worker task: per frame of a group, its own local background on cells of ``mesh`` frame
    pixels (:func:`zdask.ops.bgmesh.mesh_background`), from the frame binned by ``factor`` as
    the sky fits read it. Each frame is read once, a few MB of rows at a time; a result is a
    few thousand numbers."""
    return [mesh_background(_read_binned(src, factor), factor, mesh) for src in sources]


def _read_binned(src, factor: int) -> np.ndarray:
    """A calibrated frame binned by ``factor``, read a few MB of rows at a time (decompressing
    in this thread, so that the sky fits of two groups run in parallel)."""
    frame = store.open_array(src.root, f"frames/{src.key}", src.token)
    height = frame.shape[0] // factor * factor
    if height == 0:  # smaller than one bin: as bin_image has it
        return bin_image(np.asarray(frame[:]), factor)
    rows = max(factor, READ_ROWS // factor * factor)
    return np.concatenate([bin_image(read_rows(frame, r, min(r + rows, height)), factor)
                           for r in range(0, height, rows)], axis=0)


def _binned_grid_extent(shape_b: tuple[int, int]) -> tuple[float, float, float, float]:
    # Surfaces are fitted in binned pixel coordinates over this extent; the same coefficients
    # describe the same surface in full-resolution coordinates over binned_extent(shape_b, f),
    # because the coordinate normalisation is linear.
    return (0.0, float(shape_b[0] - 1), 0.0, float(shape_b[1] - 1))


def _stars_of(stack: np.ndarray) -> np.ndarray:
    """Compact sources of the median of ``stack`` (N, h, w, C) (stars sit still on the sky,
    gradients do not)."""
    # Only where some image has a sample: an all-NaN column would warn, and silencing that
    # with warnings.catch_warnings is not thread-safe (the worker's threads share the filters).
    # A few rows at a time: np.nanmedian's copies of the stack stay small.
    median = np.full(stack.shape[1:], np.nan, dtype=np.float32)
    for r in range(0, stack.shape[1], MEDIAN_ROWS):
        block = stack[:, r:r + MEDIAN_ROWS]
        some = np.isfinite(block).any(axis=0)
        median[r:r + MEDIAN_ROWS][some] = np.nanmedian(block[:, some], axis=0)
    return star_mask(np.nan_to_num(median, nan=float(np.nanmedian(median)) if np.isfinite(median).any() else 0.0))


# --- tiles inside the mosaic -----------------------------------------------------------------------

def tile_cutout(root: str, name: str, token: str, grid: Grid, canvas: Grid, factor: int,
                bbox: tuple[int, int, int, int]) -> CutOut:
    """Worker task: a tile's image and weight binned onto the binned canvas, within its bbox."""
    # (decompressed in this thread: the cut-outs of two tiles run in parallel)
    image, weight = (read_whole(store.open_array(root, f"{name}/{key}", token)) for key in ("image", "weight"))
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
                         order: int, map_pairs: Callable = map) -> dict:
    """Gains, offsets and sky surfaces per tile, and the seam metric before and after.

    Pairs are fitted on the overlap of their binned cut-outs (both weights above half their
    maxima, so thin low-coverage edges stay out); the solve fixes the anchor tile (the one with
    the most overlap) at gain 1, offset 0. ``map_pairs(fn, pairs)`` runs the independent pair
    fits (a thread pool's ``map``: their median filters release the GIL); same result either way.
    """
    n = len(items)
    channels = items[0].image.shape[-1] if items else 1
    before = seam_metric(overlap_medians(items, shape_b))
    gains = np.ones((n, channels))
    offsets = np.zeros((n, channels))
    pairs, overlap_px = [], np.zeros(n)
    if harmonize and n > 1:
        def fit_pair(ij: tuple[int, int]):
            ref, tgt, mask = _pair_overlap(items[ij[0]], items[ij[1]])
            # Gains from sources: transparency scales the astronomical signal only, and on sky
            # a gain cannot be told from an offset or a gradient.
            return None if mask is None else fit_source_gain(ref, tgt, mask=mask)

        candidates = [(i, j) for i in range(n) for j in range(i + 1, n)]
        for (i, j), fit in zip(candidates, map_pairs(fit_pair, candidates)):
            if fit is not None and fit.n_pixels > 0:
                pairs.append((i, j, fit.gain, fit.offset, float(fit.n_pixels)))
                overlap_px[[i, j]] += fit.n_pixels
        anchor = int(np.argmax(overlap_px)) if pairs else 0
        solved = solve_tile_photometry(n, pairs, anchor=anchor, n_channels=channels)
        gains, offsets = solved.gains, solved.offsets
    corrected = [CutOut(it.image * gains[k] + offsets[k], it.weight, it.origin) for k, it in enumerate(items)]
    surfaces = [None] * n
    report = _common_report(None)
    if order >= 0 and n > 1:
        extent_b = _binned_grid_extent(shape_b)
        # The matching fixes what differs between tiles; the surface they all share is free.
        # Their curvature is taken out BEFORE the matching, so that the matching does not
        # chain it into a bowl as wide as the mosaic (zdask.ops.skyshape): with planes, each
        # tile's glow curvature along its own gradient; with quadratics, the median of the
        # tiles' own curvatures. What is left to all tiles is fitted below on the mosaic.
        shapes = glow = common = None
        curvatures = [tile_curvature(it.image, it.weight, it.origin, extent_b) for it in corrected] \
            if order >= 1 else []
        taken = None  # per tile, the curvature taken out before the matching
        if order == 1:  # planes, after each tile's glow curvature along its own gradient
            shapes = [glow_axis_shape(it.image, it.weight, it.origin, extent_b) for it in corrected]
            glow = _glow_curvature(corrected, curvatures, shapes, shape_b, extent_b)
            taken = [m[:, None] * e[None, :] for m, e in zip(glow.multiples, shapes)]
        elif order == 2:  # free quadratics, after the one curvature all tiles share
            common = common_curvature(curvatures)
            taken = [common.coeffs] * n
        matched_on = corrected if taken is None else [_minus_surface(it, t, extent_b)
                                                      for it, t in zip(corrected, taken)]
        coeffs = match_surfaces(matched_on, shape_b, order=order, extent=extent_b)
        out_order = order
        if order >= 1:
            coeffs, out_order = [pad_order(c, order, 2) + t for c, t in zip(coeffs, taken)], 2
            # What the tiles share and the overlaps cannot see is fitted on the assembled
            # mosaic, sources masked, as if the sky were flat, and reported as assumed: its
            # plane, and with glow shapes its glow curvature along the mosaic's gradient. The
            # tiles' own skies fix that curvature's level only to what one tile shows: an
            # error e in it is e·(mosaic / tile)² across the mosaic, a bowl. Only emission
            # larger than the mosaic loses its curvature along that one direction with it.
            flat = [_minus_surface(it, c, extent_b) for it, c in zip(corrected, coeffs)]
            axis = None if shapes is None else glow_axis_shape(*_assemble(corrected, shape_b), (0, 0), extent_b)
            plane = fit_common_sky(*_assemble(flat, shape_b), order=2 if axis is not None else 1, extent=extent_b,
                                   basis=None if axis is None else plane_and_shape(axis))
            plane = pad_order(plane, 2 if axis is not None else 1, 2)
            coeffs = [c + plane for c in coeffs]
            report = _common_report(plane, common, glow, axis)
        surfaces = [(np.asarray(c).tolist(), out_order, list(binned_extent(shape_b, factor))) for c in coeffs]
        corrected = [_minus_surface(it, np.asarray(c), extent_b, out_order) for it, c in zip(corrected, coeffs)]
    after = seam_metric(overlap_medians(corrected, shape_b))
    return {"gains": gains, "offsets": offsets, "surfaces": surfaces,
            "seam_before": np.asarray(before).tolist(), "seam_after": np.asarray(after).tolist(),
            "pair_seam_before": pair_seam_metric(items).tolist(),
            "pair_seam_after": pair_seam_metric(corrected).tolist(), "pairs": len(pairs),
            "common_surface": report}


def _glow_curvature(tiles: list[CutOut], curvatures: list[np.ndarray], shapes: list[np.ndarray],
                    shape_b: tuple[int, int], extent_b) -> GlowCurvature:
    """Each tile's glow curvature along its own gradient (zdask.ops.skyshape.glow_curvature):
    the differences the overlaps fix, matched with each tile's multiple of its shape free after
    the median of the tiles' own is taken out of all (the matching then solves small
    differences; a level common to all tiles, which the overlaps barely see, stays near that
    median), confirmed by and levelled on the tiles' own curvatures."""
    own = np.array([axis_multiple(c, e) for c, e in zip(curvatures, shapes)])
    base = np.median(own, axis=0)
    flat = [_minus_surface(it, base[:, None] * e[None, :], extent_b) for it, e in zip(tiles, shapes)]
    found = match_surfaces(flat, shape_b, order=1, extent=extent_b, shapes=shapes)
    return glow_curvature(own, base + np.array([axis_multiple(c, e) for c, e in zip(found, shapes)]))


def _minus_surface(item: CutOut, coeffs: np.ndarray, extent, order: int = 2) -> CutOut:
    """The cut-out with the surface ``coeffs`` (on the grid ``extent`` normalises) taken out."""
    surface = Surface(coeffs, order, extent, np.zeros(item.image.shape[-1]))
    return CutOut(item.image - surface.evaluate(item.image.shape[:2], offset=item.origin), item.weight, item.origin)


def _common_report(plane: np.ndarray | None, common=None, glow=None, axis=None) -> dict:
    """How much of the surface all tiles share the data fixed, and how much was assumed."""
    if plane is None:
        return {"determined": [], "undetermined": ["all (no tile surfaces)"], "quadratic": []}
    out = {"assumed_flat": ["1", "u", "v"], "plane": np.asarray(plane).tolist()}
    if common is not None:  # sky_surface_order 2
        return {**out, "determined": list(common.determined), "undetermined": list(common.undetermined),
                "surface": (common.coeffs + plane).tolist(),
                "quadratic_from": "median of the tiles' own sky curvatures (sources masked)",
                "curvature_spread": None if common.spread is None else np.asarray(common.spread).tolist()}
    level = ["glow curvature level"] if glow.determined else []
    return {**out, "assumed_flat": ["1", "u", "v", "glow curvature along the mosaic's gradient"],
            "determined": level + ["glow curvature per tile"],
            "undetermined": [] if glow.determined else ["glow curvature level"],
            "mosaic_glow_curvature": None if axis is None else axis_multiple(plane, axis).tolist(),
            "glow_curvature_level": glow.level.tolist(),
            "glow_curvature_level_from": "median over tiles of each tile's own sky curvature along its "
                                         "own gradient (sources masked), less what the overlaps fixed",
            "glow_curvature_spread": None if glow.spread is None else glow.spread.tolist(),
            "glow_curvature_confirmed": None if glow.confirmed is None else glow.confirmed.tolist(),
            "glow_curvature_per_tile": glow.multiples.tolist(),
            "glow_curvature_per_tile_from": "the overlaps fix the differences between tiles, the level "
                                            "adds to every tile"}


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


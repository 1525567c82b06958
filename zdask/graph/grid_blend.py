"""The grid mode's photometric match and blend: cells scaled against a reference cell on their
coverage overlaps, their skies matched, then the feathered coadd on the canvas.

Works on the binned cells (``match_bin``) that the cell stage stored: each is a window of the
binned canvas, so overlaps are intersections of windows. In order:

1. RGB equalisation per cell (its gains, measured by the cell stage, folded into its gain);
2. photometric scaling (:mod:`zdask.ops.cellscale`): reference = the first healthy cell,
   per-pair gain and offset on coverage masks, one least-squares solve;
3. the sky: the frames' skies were matched over the survey before stacking, less the
   curvature they share (:mod:`zdask.graph.grid_sky`), so cells agree on their overlaps; their
   levels are matched (:func:`zdask.graph.harmonize.plan_tile_photometry`, order 0, gains left
   at 1) and the plane they all share is fitted on their mean, sources masked, and taken out
   of every cell (also of a single cell);
4. autocrop, and the coadd of :func:`zdask.graph.mosaic.mosaic_arrays`: per canvas block the
   weighted mean of the corrected cells with weights coverage × the cells' partition of unity
   (smooth to ~0 at each shared edge), so no cell boundary shows and the mosaic's coverage is
   the frames' own (the cells' alphas sum to 1).

``inter_cell_median_std`` (the ancestor's "Inter-tile median stddev") is the standard deviation
across cells of each cell's median, per channel, before scaling and after.
"""

from __future__ import annotations

import numpy as np

from zdask.graph.canvas import Canvas
from zdask.graph.errors import RunError
from zdask.graph.harmonize import binned_shape, plan_tile_photometry
from zdask.graph.mosaic import PlacedTile, crop_grid
from zdask.graph.mosaic_stage import coadd_into_store
from zdask.io import store
from zdask.ops.background import Surface
from zdask.ops.cellscale import apply_cell_scaling, cell_stats, reference_cell, scale_cells
from zdask.ops.colour import TileHealth
from zdask.ops.crop import autocrop_box
from zdask.ops.seams import seam_metric
from zdask.ops.skymatch import CutOut, accumulate, fit_common_sky
from zdask.ops.background import pad_order
from zdask.ops.warp import binned_extent

#: console lines of pair masks at most (every pair is in report.json)
PAIR_LINES = 40


def neighbour_pairs(cells, side: int, step: int) -> list[tuple[int, int]]:
    """Index pairs (i < j, into ``cells``) of raster neighbours whose windows can overlap:
    rows and columns less than side / step apart. Linear in the cells."""
    reach = max(1, -(-side // step) - 1)
    at = {(c.row, c.col): k for k, c in enumerate(cells)}
    pairs = []
    for k, c in enumerate(cells):
        for di in range(0, reach + 1):
            for dj in range(-reach, reach + 1):
                if (di, dj) <= (0, 0):
                    continue
                other = at.get((c.row + di, c.col + dj))
                if other is not None:
                    pairs.append((min(k, other), max(k, other)))
    return pairs


def _binned(root: str, cell) -> tuple[np.ndarray, np.ndarray]:
    group = store.open_group(root, cell.name)
    return group["binned_image"][...], group["binned_coverage"][...]


def blend_cells(cells, places, side: int, step: int, canvas: Canvas, channels: int, config, client,
                work) -> tuple[dict, dict]:
    """Match and blend the stacked ``cells`` (:class:`zdask.graph.grid_cells.StackedCell`; their
    places in the raster are ``places``, :class:`zdask.graph.grid_plan.Cell`, cells ``side``
    and ``step`` px) into ``grid/mosaic/{image, coverage}`` (or reuse it).
    Returns (the cropped canvas's WCS cards, the report's ``grid_photometry`` and ``mosaic``)."""
    factor = config.match_bin
    say = work.say
    binned = [_binned(work.root, c) for c in cells]
    origins = [(c.box[0] // factor, c.box[2] // factor) for c in cells]
    health = [TileHealth(bool(c.summary["healthy"]), c.summary["health_reason"], 0.0, 0.0) for c in cells]
    for c in cells:
        if channels == 1:
            say(f"cell {c.id}: mono, RGB equalisation skipped")
        elif c.summary["rgb_equalised"]:
            say(f"cell {c.id}: RGB equalised, gains {np.round(c.summary['rgb_gains'], 4).tolist()}")
    rgb = [np.asarray(c.summary["rgb_gains"], dtype=np.float64) for c in cells]
    images = [apply_cell_scaling(img, g, 0.0) for (img, _), g in zip(binned, rgb)]
    coverages = [cov for _, cov in binned]
    reference, skipped = reference_cell(health)
    for k, reason in skipped:
        say(f"cell {cells[k].id}: not a reference candidate ({reason}); trying the next")
    if reference is None:
        raise RunError("grid mode: no healthy cell (every cell is empty or flat)")
    say(f"grid reference cell {cells[reference].id}")
    lines = []
    scaling = scale_cells(images, coverages, origins, [h.ok for h in health],
                          neighbour_pairs(places, side, step), reference=reference,
                          min_fraction=config.grid.overlap_min_coverage, erosion_px=config.grid.overlap_erosion_px,
                          say=lines.append)
    for text in lines[:PAIR_LINES]:
        say(text.replace("cells ", "grid pair ", 1) if text.startswith("cells ") else text)
    if len(lines) > PAIR_LINES:
        say(f"... {len(lines) - PAIR_LINES} more pair/cell lines (report.json lists every pair)")
    scaled = [apply_cell_scaling(img, g, o) for img, g, o in zip(images, scaling.gains, scaling.offsets)]
    shape_b = binned_shape(canvas.grid.shape, factor)
    keep = [k for k, h in enumerate(health) if h.ok]
    meshed = config.background_mesh > 0
    items = [CutOut(scaled[k], np.where(np.isfinite(scaled[k]).all(axis=-1), coverages[k], 0).astype(np.float32),
                    origins[k]) for k in keep]
    # The frames' skies were matched over the whole survey, and the curvature they all share
    # (the median of the frames' own) taken out, before the cells were stacked
    # (zdask.graph.grid_sky): the cells agree on their overlaps already, and what is left to
    # match between them is a level at most. Not planes, and no curvature of the cells' own: a
    # cell is a window of the canvas, not a frame, and the curvature of its sky is no glow's
    # (measured on small cells it is mostly noise, scaled by (canvas / cell)² on the canvas).
    sky = plan_tile_photometry(items, shape_b, factor, harmonize=False,
                               order=-1 if meshed else min(config.sky_surface_order, 0))
    surfaces = [None] * len(cells)
    for k, surface in zip(keep, sky["surfaces"]):
        surfaces[k] = surface
    plane = None
    if not meshed and config.sky_surface_order >= 1:
        # The plane all cells share (as the classic mode's tiles): fitted on their mean, sources
        # masked, whatever the number of cells (one cell has no neighbour to be matched to).
        levelled = [CutOut(_minus_surface(scaled[k], surfaces[k], origins[k], shape_b), items[n].weight, origins[k])
                    for n, k in enumerate(keep)]
        plane = _common_plane(levelled, shape_b)
        surfaces = [None if k not in keep else _plus_plane(surfaces[k], plane, shape_b, factor)
                    for k in range(len(cells))]
    flattened = [_minus_surface(img, s, origins[k], shape_b) for k, (img, s) in enumerate(zip(scaled, surfaces))]
    valid = [cov > 0 for cov in coverages]
    stats_before = [cell_stats(img, v) for img, v in zip(images, valid)]
    stats_after = [cell_stats(img, v) for img, v in zip(flattened, valid)]
    metric = {
        "before": _median_std([s for s, h in zip(stats_before, health) if h.ok]),
        "after_scaling": _median_std([cell_stats(img, v) for img, v, h in zip(scaled, valid, health) if h.ok]),
        "after": _median_std([s for s, h in zip(stats_after, health) if h.ok]),
    }
    for c, name in enumerate(("R", "G", "B") if channels == 3 else ("mono",)):
        say(f"[GRID][METRICS] Inter-cell median stddev (channel {name}): before {metric['before'][c]:.3f}, "
            f"after {metric['after'][c]:.3f} ADU")

    # Autocrop on the binned coverage, then the coadd of the healthy cells.
    box = (0, canvas.grid.shape[0], 0, canvas.grid.shape[1])
    if config.autocrop:
        covered = np.zeros(shape_b, dtype=np.float32)
        for k in keep:
            (y, x), cov = origins[k], coverages[k]
            window = covered[y:y + cov.shape[0], x:x + cov.shape[1]]
            np.maximum(window, cov[:window.shape[0], :window.shape[1]], out=window)
        found = autocrop_box(covered, min_coverage=1e-6)
        if found is not None:
            y0, y1, x0, x1 = found
            h, w = canvas.grid.shape
            box = (y0 * factor, min(h, y1 * factor), x0 * factor, min(w, x1 * factor))
    cropped = crop_grid(canvas.grid, box)
    gains = [scaling.gains[k] * rgb[k] for k in range(len(cells))]
    placed = []
    for k in keep:
        c = cells[k]
        y0, y1, x0, x1 = c.box
        bbox = (max(0, y0 - box[0]), min(cropped.shape[0], y1 - box[0]),
                max(0, x0 - box[2]), min(cropped.shape[1], x1 - box[2]))
        if bbox[0] < bbox[1] and bbox[2] < bbox[3]:
            placed.append(PlacedTile(work.root, c.name, c.fp, c.grid, bbox, tuple(float(v) for v in gains[k]),
                                     tuple(float(v) for v in scaling.offsets[k]), surfaces[k]))
    fp = store.fingerprint([p.token for p in placed], [p.gain for p in placed], [p.offset for p in placed],
                           [p.surface for p in placed], cropped.to_json(), config.stage_digest("mosaic"))
    reused = store.is_complete(work.root, "grid/mosaic", fp)
    if not reused:
        coadd_into_store(placed, cropped, (box[0], box[2]), channels, config, client, work, "grid/mosaic", fp)
        store.mark_complete(work.root, "grid/mosaic", fp)
    per_cell = {c.id: {"gain": [float(v) for v in gains[k]], "offset": [float(v) for v in scaling.offsets[k]],
                       "scaling_gain": [float(v) for v in scaling.gains[k]],
                       "surface": surfaces[k], "healthy": health[k].ok, "health_reason": health[k].reason,
                       "scaling_disabled": k in scaling.disabled, "before": stats_before[k], "after": stats_after[k]}
                for k, c in enumerate(cells)}
    photometry = {
        "reference": cells[reference].id, "reference_skipped": [cells[k].id for k, _ in skipped],
        "pairs": [{"cells": [cells[p.i].id, cells[p.j].id], "mask_pixels": p.n_pixels, "gain": list(p.gain),
                   "offset": list(p.offset), "gain_fitted": list(p.fitted)} for p in scaling.pairs],
        "scaling_disabled": [cells[k].id for k in scaling.disabled],
        "sky": {"seam_before": sky["seam_before"], "seam_after": sky["seam_after"],
                "pair_seam_before": sky["pair_seam_before"], "pair_seam_after": sky["pair_seam_after"],
                "common_surface": _common_report(plane, cells[0].summary.get("sky_curvature"))},
    }
    mosaic = {"shape": list(cropped.shape), "scale_arcsec": canvas.scale_arcsec, "channels": channels,
              "crop_box": list(box), "reused": reused}
    return cropped.wcs_header, {"per_cell": per_cell, "photometry": photometry, "metric": metric, "mosaic": mosaic}


def _common_plane(items: list[CutOut], shape_b: tuple[int, int]) -> np.ndarray:
    """(C, 3): the plane of the cells' coverage-weighted mean on the binned canvas, sources
    masked (:func:`zdask.ops.skymatch.fit_common_sky`); coefficients over (0, H_b − 1, 0, W_b − 1)."""
    total, wsum = accumulate(items, [it.image for it in items], shape_b, items[0].image.shape[-1])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (total / wsum[..., None]).astype(np.float32)
    return fit_common_sky(mean, wsum.astype(np.float32), order=1,
                          extent=(0.0, float(shape_b[0] - 1), 0.0, float(shape_b[1] - 1)))


def _plus_plane(surface, plane: np.ndarray, shape_b: tuple[int, int], factor: int) -> tuple:
    """A cell's surface (coefficients, order, extent; None = nothing) with ``plane`` added, in
    full-resolution canvas pixels (the same coefficients: the normalisation is linear)."""
    coeffs, order = (np.zeros((plane.shape[0], 1)), 0) if surface is None else (np.asarray(surface[0]), surface[1])
    top = max(order, 1)
    total = pad_order(coeffs, order, top) + pad_order(plane, 1, top)
    return (total.tolist(), top, list(binned_extent(shape_b, factor)))


def _common_report(plane: np.ndarray | None, curvature: dict | None) -> dict:
    """The surface every frame and cell shares that was taken out, and what fixed it."""
    if plane is None:
        return {"determined": [], "undetermined": ["all (sky_surface_order < 1 or background_mesh)"]}
    return {"determined": ["1", "u", "v", *((curvature or {}).get("determined") or [])],
            "undetermined": list((curvature or {}).get("undetermined") or []),
            "plane": np.asarray(plane).tolist(), "plane_from": "the cells' mean, sources masked",
            "curvature": curvature}


def _median_std(stats: list[dict]) -> list[float | None]:
    """Standard deviation across cells of their per-channel medians (:func:`zdask.ops.seams.seam_metric`)."""
    medians = [np.array([np.nan if v is None else v for v in s["median"]]) for s in stats]
    return [None if not np.isfinite(v) else float(v) for v in seam_metric(medians)]


def _minus_surface(image: np.ndarray, surface, origin_b: tuple[int, int], shape_b: tuple[int, int]) -> np.ndarray:
    """The binned cell with its sky surface taken out. The surface's coefficients describe it
    in full-resolution canvas pixels over its extent, and equally in binned canvas pixels over
    the binned canvas (the normalisation is linear: as :mod:`zdask.graph.harmonize` fits them)."""
    if surface is None:
        return image
    coeffs, order, _extent = surface
    binned = Surface(np.asarray(coeffs), order, (0.0, float(shape_b[0] - 1), 0.0, float(shape_b[1] - 1)),
                     np.zeros(0))
    return (image - binned.evaluate(image.shape[:2], offset=origin_b)).astype(np.float32)

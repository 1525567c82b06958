"""The grid mode: a regular raster of overlapping cells over the canvas, each stacked from the
frames that touch it, photometrically matched on the coverage overlaps, and blended.

For wide surveys whose frames do not cluster into panels (drift scans, scattered pointings over
many nights) and for canvases too large for master tiles. :func:`plan` is pure
(:mod:`zdask.graph.grid_plan`): the cells and their frames, placed by each frame's own celestial
WCS (grid mode places frames by their WCS; a frame without one is left out with that reason).
:func:`build` stacks the cells (:mod:`zdask.graph.grid_cells`), then matches and blends them
(:mod:`zdask.graph.grid_blend`). A ``stack_plan.csv`` in an input folder names the frames
(:func:`resolve_inputs`, :mod:`zdask.io.stackplan`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from zdask.graph.canvas import Canvas
from zdask.graph.errors import RunError
from zdask.graph.geometry import footprint_outline
from zdask.graph.grid_blend import blend_cells
from zdask.graph.grid_cells import cell_job, stack_cells
from zdask.graph.grid_plan import GridLayout, blend_profile, plan_grid
from zdask.graph.modes.base import ModeResult
from zdask.graph.mosaic import crop_grid
from zdask.io import store
from zdask.io.fitsheader import wcs_from_header
from zdask.io.scan import RejectedFile
from zdask.io.stackplan import expand_stack_plans

INPUT = "frames"

#: why a frame without a celestial WCS of its own is not stacked in grid mode
REASON_NO_OWN_WCS = "no celestial WCS: grid mode places frames by their own WCS (it does not align by stars)"


@dataclass(frozen=True)
class GridPlan:
    """The cells (every cell of the raster; a cell's frames index the front's frames) and the
    frames the plan leaves out, with their reasons."""

    layout: GridLayout
    excluded: tuple[tuple[str, str], ...]


def resolve_inputs(inputs, say) -> tuple[list[str], list[RejectedFile]]:
    """The inputs with every folder holding a ``stack_plan.csv`` replaced by the frames it names;
    and its rows that are left out (missing files, unreadable rows), each reported."""
    try:
        expanded, plans = expand_stack_plans(list(inputs))
    except (OSError, UnicodeDecodeError) as exc:
        raise RunError(f"{getattr(exc, 'filename', None) or 'stack_plan.csv'}: cannot read the stack plan "
                       f"({getattr(exc, 'strerror', None) or exc})") from None
    left_out = []
    for plan in plans:
        say(f"{plan.file}: {len(plan.rows)} frame(s) listed for stacking")
        for where, reason in plan.problems:
            say(f"skipped {where}: {reason}")
            left_out.append(RejectedFile(where, f"stack plan row: {reason}"))
        if not plan.rows:
            raise RunError(f"{plan.file}: no row names an existing frame")
    return expanded, left_out


def frame_footprints(front, canvas: Canvas) -> tuple[list[np.ndarray], list[float], list[tuple[str, str]]]:
    """Per frame of the front: its corners in canvas pixels (NaN for a frame not stacked), its
    field of view (larger side) in canvas pixels, and the frames left out for want of a WCS."""
    canvas_wcs = canvas.grid.wcs()
    corners, fov, excluded = [], [], []
    nan = np.full((4, 2), np.nan)
    for f in front.frames:
        if f.path in front.excluded:
            corners.append(nan), fov.append(np.nan)
            continue
        if not f.wcs_header:  # registered by star matching only: grid mode needs the frame's own WCS
            excluded.append((f.path, REASON_NO_OWN_WCS))
            corners.append(nan), fov.append(np.nan)
            continue
        ra, dec = footprint_outline(wcs_from_header(front.wcs_of(f)), (f.height, f.width), per_side=1)
        x, y = canvas_wcs.all_world2pix(ra, dec, 0)
        corners.append(np.stack([x, y], axis=-1))
        fov.append(max(f.fov_deg) * 3600.0 / canvas.scale_arcsec)
    return corners, fov, excluded


def plan(front, canvas: Canvas, config) -> GridPlan:
    """The grid of cells over the canvas and the frames of each cell. Pure."""
    corners, fov, excluded = frame_footprints(front, canvas)
    grid = config.grid
    layout = plan_grid(corners, fov, canvas.grid.shape, cell_fov_factor=grid.cell_fov_factor,
                       cell_overlap=grid.cell_overlap, max_cells=grid.max_cells, align=config.match_bin)
    return GridPlan(layout, tuple(excluded))


def summarize(plan: GridPlan) -> str:
    """The plan in a few lines (``zdask plan --mode grid``)."""
    s = plan.layout.summary()
    per = s["frames_per_cell"]
    lines = [f"grid: {s['cells']} cells ({s['raster'][0]} x {s['raster'][1]}) of {s['side_px']} px, step "
             f"{s['step_px']} px (overlap {s['overlap_px']} px); median frame field {s['fov_px']:.0f} px",
             f"frames per cell: min {per['min']} / median {per['median']:g} / max {per['max']} "
             f"(over {s['occupied_cells']} cells with frames); empty cells: {s['empty_cells']}"]
    lines += [f"left out {path}: {reason}" for path, reason in plan.excluded]
    return "\n".join(lines)


def build(plan: GridPlan, front, canvas: Canvas, config, client, work) -> ModeResult:
    """Stack (or reuse) every cell with frames, then match and blend them on the canvas."""
    layout = plan.layout
    summary = layout.summary()
    work.say(f"grid: {summary['cells']} cells of {layout.side} px ({summary['occupied_cells']} with frames, "
             f"{summary['empty_cells']} empty), frames per cell {summary['frames_per_cell']}")
    rows = blend_profile(layout.rows, layout.canvas_shape[0])
    cols = blend_profile(layout.cols, layout.canvas_shape[1])
    places = layout.occupied()
    if not places:
        raise RunError("grid mode: no cell holds a frame")
    used = sorted({i for c in places for i in c.frames})
    survey = store.fingerprint([front.calibrated[front.frames[i].path][1] for i in used],
                               [front.wcs_of(front.frames[i]) for i in used], canvas.grid.to_json())
    jobs = [cell_job(c.id, crop_grid(canvas.grid, c.box), c.box, rows[c.row], cols[c.col],
                     [front.frames[i] for i in c.frames], front, work.root, survey, config) for c in places]
    timings = {}
    t = time.perf_counter()
    cells = stack_cells(jobs, front.channels, canvas.grid, config, client, work)
    timings["cells"] = time.perf_counter() - t
    t = time.perf_counter()
    header, blended = blend_cells(cells, places, layout.side, layout.step, canvas, front.channels, config, client,
                                  work)
    timings["blend"] = time.perf_counter() - t
    for path, reason in plan.excluded:
        work.say(f"excluded {path}: {reason}")
    healthy = [c for c in cells if blended["per_cell"][c.id]["healthy"]]
    warnings = [f"cell {c.id} excluded from the mosaic: {c.summary['health_reason']}"
                for c in cells if not blended["per_cell"][c.id]["healthy"]]
    for text in warnings:
        work.say(f"warning: {text}")
    entries = []
    for place, cell in zip(places, cells):
        per = blended["per_cell"][cell.id]
        entries.append({"id": cell.id, "row": place.row, "col": place.col, "box": list(place.box),
                        "frames": [front.frames[i].path for i in place.frames], "n_frames": cell.n_frames,
                        "gain": per["gain"], "offset": per["offset"], "scaling_gain": per["scaling_gain"],
                        "healthy": per["healthy"], "health_reason": per["health_reason"],
                        "rgb_equalised": cell.summary["rgb_equalised"], "rgb_gains": cell.summary["rgb_gains"],
                        "scaling_disabled": per["scaling_disabled"], "surface": per["surface"],
                        "before": per["before"], "after": per["after"],
                        "rejected_fraction": cell.summary["rejected_fraction"], "zarr": cell.name,
                        "reused": cell.reused})
    metric = blended["metric"]
    report = {"grid": {**summary, "cell_fov_factor": config.grid.cell_fov_factor,
                       "cell_overlap": config.grid.cell_overlap},
              "cells": entries,
              "inter_cell_median_std": {"before": metric["before"], "after": metric["after"],
                                        "after_scaling": metric["after_scaling"]},
              "grid_photometry": blended["photometry"],
              "cells_reused": [c.id for c in cells if c.reused],
              "cells_computed": [c.id for c in cells if not c.reused],
              "mosaic": blended["mosaic"],
              "frames_excluded": front.exclusions() + [{"path": p, "reason": r} for p, r in plan.excluded]}
    return ModeResult("grid/mosaic", header, len(healthy), len(used), report, tuple(warnings), timings)

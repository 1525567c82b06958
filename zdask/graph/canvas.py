"""The mosaic's canvas, planned up front: every mode builds its image on it.

The canvas is the north-up TAN grid at the frames' median pixel scale that covers every master
tile's grid (each the frames' footprints of one group plus ``tile_margin``): planned from the
frame front (headers and alignment, no pixels) before anything is stacked. A mode may crop it
(autocrop) and says so in its result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.wcs.utils import proj_plane_pixel_scales

from zdask.graph.errors import RunError
from zdask.graph.field import canvas_size_problem
from zdask.graph.geometry import Grid
from zdask.graph.mosaic import canvas_grid
from zdask.graph.tiles import tile_grid


@dataclass(frozen=True)
class Canvas:
    """The uncropped mosaic grid and its pixel scale (arcsec per pixel)."""

    grid: Grid
    scale_arcsec: float


def group_grids(front, margin: int) -> tuple[Grid | None, ...]:
    """Per alignment group of ``front``: the master-tile grid covering its frames that are not
    excluded (placed by their aligned WCS), None for a group left without frames. Pure."""
    grids = []
    for group in front.groups:
        frames = front.group_frames(group)
        grids.append(tile_grid(frames, margin, [front.wcs_of(f) for f in frames]) if frames else None)
    return tuple(grids)


def canvas_of_grids(grids: list[Grid], scale_arcsec: float, max_pixels: int, what: str) -> Canvas:
    """The canvas covering ``grids`` at ``scale_arcsec``; RunError when it cannot be made or is
    larger than ``max_pixels``."""
    if not grids:
        raise RunError(f"no usable master tile: every {what} was empty or could not be aligned")
    try:
        grid = canvas_grid(grids, scale_arcsec)
    except ValueError as exc:  # tiles from opposite sides of the sky
        raise RunError(f"the {what}s cannot share one mosaic canvas: {exc}") from None
    problem = canvas_size_problem(grid.shape, max_pixels)
    if problem:
        raise RunError(problem)
    return Canvas(grid, scale_arcsec)


def frames_canvas(front, config) -> Canvas:
    """The canvas of a frame front: covering every group's tile grid, at the median scale of
    the frames not excluded (an excluded frame must not move the scale)."""
    used = front.used_frames()
    scale = float(np.nanmedian([f.scale_arcsec for f in used])) if used else float("nan")
    grids = [g for g in group_grids(front, config.tile_margin) if g is not None]
    return canvas_of_grids(grids, scale, config.max_canvas_pixels, "tile")


def tiles_canvas(grids: list[Grid], config) -> Canvas:
    """The canvas of existing master tiles, at their own median pixel scale."""
    scale = float(np.median([proj_plane_pixel_scales(g.wcs()).mean() * 3600 for g in grids])) if grids else 0.0
    return canvas_of_grids(grids, scale, config.max_canvas_pixels, "tile")

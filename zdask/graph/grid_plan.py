"""The grid mode's planner: a regular raster of overlapping square cells over the canvas, and
the frames each cell stacks. Pure (plain values in, a frozen plan out; no dask, no pixels).

A cell is a window of the canvas (north-up TAN at the frames' median scale), so a frame warped
onto a cell is already on the mosaic's grid: assembling the cells needs no second warp. Cell
side = ``cell_fov_factor`` × the median frame field of view (the larger side of a frame, in
canvas pixels), at least :data:`MIN_CELL_PX`; neighbours overlap by ``cell_overlap`` of the
side. Sides and steps are multiples of ``align`` (the binning of the photometric match), so a
binned cell is a window of the binned canvas too.

Frames are assigned to cells through the raster itself as a spatial index: a frame's footprint
(a convex quadrilateral in canvas pixels) gives, by arithmetic on its bounding box, the ranges of
cell rows and columns it can touch; only those candidates are tested exactly (separating axes,
vectorised). The cost grows with frames × cells touched, never with cells × frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from zdask.graph.errors import RunError

#: smallest cell side (canvas pixels)
MIN_CELL_PX = 32


@dataclass(frozen=True)
class Cell:
    """One cell: its place in the raster, its window of the canvas (y0, y1, x0, x1; ends
    exclusive) and the frames whose footprints intersect it (indices into the planner's list)."""

    id: int
    row: int
    col: int
    box: tuple[int, int, int, int]
    frames: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, int]:
        return self.box[1] - self.box[0], self.box[3] - self.box[2]


@dataclass(frozen=True)
class GridLayout:
    """The raster: cell side and step (pixels), the row and column intervals of the canvas the
    cells cover, and every cell (row-major, empty ones included)."""

    canvas_shape: tuple[int, int]
    fov_px: float
    side: int
    step: int
    rows: tuple[tuple[int, int], ...]
    cols: tuple[tuple[int, int], ...]
    cells: tuple[Cell, ...]

    @property
    def overlap_px(self) -> int:
        return self.side - self.step

    def occupied(self) -> list[Cell]:
        return [c for c in self.cells if c.frames]

    def summary(self) -> dict:
        """Cell count, frames per occupied cell (min / median / max), empty cells."""
        counts = [len(c.frames) for c in self.occupied()]
        return {"cells": len(self.cells), "raster": [len(self.rows), len(self.cols)], "side_px": self.side,
                "step_px": self.step, "overlap_px": self.overlap_px, "fov_px": self.fov_px,
                "occupied_cells": len(counts), "empty_cells": len(self.cells) - len(counts),
                "frames_per_cell": {"min": min(counts, default=0),
                                    "median": float(np.median(counts)) if counts else 0.0,
                                    "max": max(counts, default=0)}}


def cell_size(fov_px: float, cell_fov_factor: float, cell_overlap: float, align: int = 1) -> tuple[int, int]:
    """(side, step) in pixels: side = factor × FOV (>= MIN_CELL_PX), step = side × (1 − overlap),
    both multiples of ``align`` (the step at least ``align``, below the side)."""
    align = max(1, int(align))
    side = max(MIN_CELL_PX, int(round(cell_fov_factor * fov_px)))
    side = -(-side // align) * align
    step = int(round(side * (1.0 - cell_overlap) / align)) * align
    step = min(max(align, step), max(align, side - align))
    return side, step


def intervals(length: int, side: int, step: int) -> tuple[tuple[int, int], ...]:
    """The cells' [start, end) along an axis of ``length`` pixels: starts 0, step, 2·step, ...
    until a cell reaches the end (the last one clipped to ``length``)."""
    count = 1 + max(0, -(-(length - side) // step))
    return tuple((k * step, min(k * step + side, length)) for k in range(count))


def _candidates(lo: float, hi: float, count: int, side: int, step: int) -> range:
    """Indices of the raster's intervals along an axis that may meet the range (lo, hi) of pixel
    edge coordinates (pixel k covers [k − ½, k + ½]): a superset by at most one on each side,
    from arithmetic on the regular raster; :func:`_touching` tests them exactly."""
    first = max(0, int(math.floor((lo + 0.5 - side) / step)))
    last = min(count - 1, int(math.ceil((hi + 0.5) / step)))
    return range(first, last + 1)


def _touching(quad: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Which axis-aligned pixel boxes (M, 4: y0, y1, x0, x1) share area with the convex
    quadrilateral ``quad`` (4, 2: x, y corners in order): separating-axis test on the boxes'
    axes and the quad's edge normals."""
    x0, x1 = boxes[:, 2] - 0.5, boxes[:, 3] - 0.5
    y0, y1 = boxes[:, 0] - 0.5, boxes[:, 1] - 0.5
    qx, qy = quad[:, 0], quad[:, 1]
    ok = (x0 < qx.max()) & (x1 > qx.min()) & (y0 < qy.max()) & (y1 > qy.min())
    corners = np.stack([np.stack([x0, y0], -1), np.stack([x1, y0], -1),
                        np.stack([x1, y1], -1), np.stack([x0, y1], -1)], axis=1)  # (M, 4, 2)
    edges = np.roll(quad, -1, axis=0) - quad
    normals = np.stack([-edges[:, 1], edges[:, 0]], axis=-1)                       # (4, 2)
    box_proj = corners @ normals.T                                                   # (M, 4, 4)
    quad_proj = quad @ normals.T                                                     # (4, 4)
    eps = 1e-9 * max(1.0, float(np.abs(quad).max()))
    ok &= np.all(box_proj.max(axis=1) > quad_proj.min(axis=0) + eps, axis=-1)
    ok &= np.all(box_proj.min(axis=1) < quad_proj.max(axis=0) - eps, axis=-1)
    return ok


def plan_grid(footprints: list[np.ndarray], fov_px: list[float], canvas_shape: tuple[int, int], *,
              cell_fov_factor: float, cell_overlap: float, max_cells: int, align: int = 1) -> GridLayout:
    """The grid of cells over ``canvas_shape`` and the frames each one stacks.

    Parameters
    ----------
    footprints : list of (4, 2) arrays
        Each frame's corners (x, y) in canvas pixels, pixel edges outermost, in order around it.
    fov_px : list of float
        Each frame's field of view (its larger side) in canvas pixels; NaN ones are ignored.
    canvas_shape : (height, width)
    cell_fov_factor, cell_overlap, max_cells : as the ``[grid]`` configuration has them.
    align : int
        Sides and steps are multiples of it (the photometric match's binning).

    Raises RunError (naming ``grid.max_cells``) when the raster has more than ``max_cells`` cells;
    checked before any frame is assigned.
    """
    finite = [v for v in fov_px if np.isfinite(v) and v > 0]
    if not finite:
        raise RunError("grid mode: no frame with a celestial WCS to size the cells")
    fov = float(np.median(finite))
    side, step = cell_size(fov, cell_fov_factor, cell_overlap, align)
    h, w = (int(v) for v in canvas_shape)
    rows, cols = intervals(h, side, step), intervals(w, side, step)
    count = len(rows) * len(cols)
    if count > max_cells:
        raise RunError(f"grid plan of {count} cells ({len(rows)} x {len(cols)} of {side} px) exceeds "
                       f"grid.max_cells = {max_cells}; raise --grid-max-cells or --grid-cell-fov-factor")
    row_spans, col_spans = np.array(rows), np.array(cols)
    members: list[list[int]] = [[] for _ in range(count)]
    for f, quad in enumerate(footprints):
        quad = np.asarray(quad, dtype=np.float64)
        if quad.shape != (4, 2) or not np.isfinite(quad).all():
            continue
        rr = _candidates(quad[:, 1].min(), quad[:, 1].max(), len(rows), side, step)
        cc = _candidates(quad[:, 0].min(), quad[:, 0].max(), len(cols), side, step)
        if not rr or not cc:
            continue
        ii, jj = np.meshgrid(np.asarray(rr), np.asarray(cc), indexing="ij")
        ii, jj = ii.ravel(), jj.ravel()
        boxes = np.concatenate([row_spans[ii], col_spans[jj]], axis=1)
        for k in np.flatnonzero(_touching(quad, boxes)):
            members[int(ii[k]) * len(cols) + int(jj[k])].append(f)
    cells = tuple(Cell(i * len(cols) + j, i, j, (*rows[i], *cols[j]), tuple(members[i * len(cols) + j]))
                  for i in range(len(rows)) for j in range(len(cols)))
    return GridLayout((h, w), fov, side, step, rows, cols, cells)


def blend_profile(spans: tuple[tuple[int, int], ...], length: int) -> list[np.ndarray]:
    """Per interval along one axis, its blending weight on its own pixels: a smooth ramp (0 → 1
    across the overlap with each neighbour, never exactly 0) divided by the sum of all the
    intervals' ramps, so the weights of the cells covering any pixel sum to exactly 1 (and a
    cell's weight falls smoothly to ~0 at an edge it shares with a neighbour).

    Cell (i, j) weighs ``profile_rows[i][y] · profile_cols[j][x]``: a partition of unity in 2-D."""
    ramps = []
    for k, (a, b) in enumerate(spans):
        x = np.arange(a, b, dtype=np.float64)
        ramp = np.ones(b - a)
        if k > 0 and spans[k - 1][1] > a:         # overlap with the previous interval
            ramp *= _smooth((x - a + 0.5) / (spans[k - 1][1] - a))
        if k + 1 < len(spans) and spans[k + 1][0] < b:  # with the next one
            ramp *= _smooth((b - x - 0.5) / (b - spans[k + 1][0]))
        ramps.append(ramp)
    total = np.zeros(length)
    for (a, b), ramp in zip(spans, ramps):
        total[a:b] += ramp
    return [(ramp / total[a:b]).astype(np.float32) for (a, b), ramp in zip(spans, ramps)]


def _smooth(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)

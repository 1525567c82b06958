"""SDS lot planner: frames in input (time) order cut into lots that each cover the field.

A pure function of the frames, their (aligned) WCS and the canvas: no I/O, no dask.

Each frame's footprint is rasterised on a coarse grid of the canvas (square cells, at most
:data:`MAX_CELLS` × :data:`MAX_CELLS`; a cell belongs to a footprint when its centre lies inside
the footprint's outline). Frames are taken in the order given; a lot closes as soon as it holds
``min_lot_size`` frames or more AND covers ``lot_coverage`` or more of the cells its survey
covers, or when it reaches ``target_lot_size`` frames. A last lot of fewer than
``min_lot_size`` frames joins the lot before it.

Lots never mix mount modes: the frames of each mode (``Frame.mount``, as
:func:`zdask.graph.plan.infer_group_mode` names a group's) are cut into lots of their own, and
"the survey" a lot's coverage is measured against is the cells covered by the frames of its
mode (an alt-az session covering half the field would otherwise never close a lot on coverage).
Lot ids follow the input position of each lot's first frame.

Memory and time: a footprint is rasterised by scanlines (cell rows × outline edges, about a
millisecond a frame), and the planner holds a few coarse grids (at most 512 × 512 booleans each:
a mode's survey, the open lot, the last closed one) whatever the number of frames; each frame is
rasterised twice (the survey, then the lots) rather than kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from zdask.graph.geometry import Grid, footprint_outline
from zdask.io.fitsheader import wcs_from_header
from zdask.graph.plan import infer_group_mode
from zdask.io.scan import Frame

__all__ = ["Lot", "MAX_CELLS", "footprint_mask", "footprint_cells", "plan_lots", "lots_json", "summarize_lots"]

#: the coarse grid of the canvas has at most this many cells along each side
MAX_CELLS = 512


@dataclass(frozen=True)
class Lot:
    """One SDS lot: its frames (indices into the planner's frame sequence, input order)."""

    id: int
    mode: str
    frames: tuple[int, ...]
    coverage: float  # fraction of its survey's coarse cells the lot's footprints cover


def _cell_size(shape: tuple[int, int], max_cells: int) -> int:
    return max(1, -(-max(shape) // max_cells))


def _cell_grid(shape: tuple[int, int], max_cells: int) -> tuple[int, int]:
    """(rows, cols) of the coarse grid of a canvas of ``shape``."""
    s = _cell_size(shape, max_cells)
    return -(-shape[0] // s), -(-shape[1] // s)


def footprint_mask(wcs_header: dict, frame_shape: tuple[int, int], canvas: Grid,
                   max_cells: int = MAX_CELLS) -> np.ndarray:
    """The coarse canvas cells whose centre lies inside the frame's footprint, as a boolean
    (rows, cols) grid.

    Cells are squares of ``ceil(max(H, W) / max_cells)`` canvas pixels; cell (i, j) has its
    centre at canvas pixel ((j + 0.5)·s − 0.5, (i + 0.5)·s − 0.5). The footprint is the
    frame's outline (:func:`zdask.graph.geometry.footprint_outline`) on the canvas, tested by
    the even-odd rule. A footprint that does not project onto the canvas covers no cell.
    """
    s = _cell_size(canvas.shape, max_cells)
    rows, cols = _cell_grid(canvas.shape, max_cells)
    mask = np.zeros((rows, cols), dtype=bool)
    ra, dec = footprint_outline(wcs_from_header(wcs_header), frame_shape)
    x, y = canvas.wcs().all_world2pix(ra, dec, 0)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return mask
    u, v = (x + 0.5) / s - 0.5, (y + 0.5) / s - 0.5  # outline in cell-centre coordinates
    i0, i1 = max(0, int(np.ceil(v.min()))), min(rows - 1, int(np.floor(v.max())))
    if i0 > i1:
        return mask
    # Scanlines: on the centre line of cell row i, a cell j is inside when an odd number of the
    # outline's edges cross that line at x <= j, i.e. at ceil(x) <= j. Each crossing toggles
    # the parity from column ceil(x) on (rows × edges work, not cells × edges).
    ua, va, ub, vb = u, v, np.roll(u, 1), np.roll(v, 1)  # edge k joins point k-1 to point k
    edge = va != vb
    ua, va, ub, vb = ua[edge], va[edge], ub[edge], vb[edge]
    ii = np.arange(i0, i1 + 1, dtype=np.float64)[:, None]
    crosses = (va > ii) != (vb > ii)
    at = ua + (ii - va) * (ub - ua) / (vb - va)
    row, k = np.nonzero(crosses)
    first = np.clip(np.ceil(at[row, k]), 0, cols).astype(np.int64)
    toggles = np.zeros((ii.shape[0], cols + 1), dtype=np.uint8)  # (wraps at 256: the parity stays)
    np.add.at(toggles, (row, first), 1)
    mask[i0:i1 + 1] = np.bitwise_xor.accumulate(toggles[:, :cols], axis=1) & 1
    return mask


def footprint_cells(wcs_header: dict, frame_shape: tuple[int, int], canvas: Grid,
                    max_cells: int = MAX_CELLS) -> np.ndarray:
    """Flat indices (row-major) of the cells of :func:`footprint_mask`."""
    return np.flatnonzero(footprint_mask(wcs_header, frame_shape, canvas, max_cells))


def plan_lots(
    frames: Sequence[Frame], canvas: Grid, *, min_lot_size: int = 5, lot_coverage: float = 0.92,
    target_lot_size: int = 10, wcs_headers: Sequence[dict] | None = None, max_cells: int = MAX_CELLS,
) -> tuple[Lot, ...]:
    """The SDS lots of ``frames`` (in the order given) on ``canvas``.

    Parameters
    ----------
    frames : sequence of Frame
        In input (time) order; ``mount``, ``height``, ``width`` and (unless ``wcs_headers``)
        ``wcs_header`` are used.
    canvas : Grid
        The mosaic canvas.
    min_lot_size : int
        Frames a lot needs before it may close on coverage, >= 1.
    lot_coverage : float
        Fraction of the survey's cells a lot must cover to close, in (0, 1].
    target_lot_size : int
        A lot closes at this many frames whatever it covers, >= ``min_lot_size``.
    wcs_headers : sequence of dict, optional
        The frames' aligned WCS cards (default: each frame's own).
    max_cells : int
        Cells along the longer side of the coarse grid, >= 1.

    Returns
    -------
    tuple of Lot
        Ids 0, 1, … in the input order of each lot's first frame; every frame in exactly one lot.
    """
    if isinstance(min_lot_size, bool) or int(min_lot_size) != min_lot_size or min_lot_size < 1:
        raise ValueError(f"min_lot_size must be an integer >= 1; got {min_lot_size!r}")
    if isinstance(target_lot_size, bool) or int(target_lot_size) != target_lot_size \
            or target_lot_size < min_lot_size:
        raise ValueError(f"target_lot_size must be an integer >= min_lot_size ({min_lot_size}); "
                         f"got {target_lot_size!r}")
    if not 0.0 < float(lot_coverage) <= 1.0:
        raise ValueError(f"lot_coverage must be in (0, 1]; got {lot_coverage!r}")
    headers = list(wcs_headers) if wcs_headers is not None else [f.wcs_header for f in frames]
    if len(headers) != len(frames):
        raise ValueError(f"wcs_headers: {len(headers)} for {len(frames)} frames")

    def mask(i: int) -> np.ndarray:
        return footprint_mask(headers[i], (frames[i].height, frames[i].width), canvas, max_cells)

    by_mode: dict[str, list[int]] = {}
    for i, f in enumerate(frames):
        by_mode.setdefault(infer_group_mode([f]), []).append(i)
    # Two passes over the frames, one coarse grid per mode and one per open lot in memory
    # whatever the number of frames: each frame's cells are rasterised again in the second
    # pass rather than kept (about a millisecond a frame, against 128 KiB a frame kept).
    found: list[tuple[str, list[int], float]] = []
    for mode, members in by_mode.items():
        survey = np.zeros(_cell_grid(canvas.shape, max_cells), dtype=bool)
        for i in members:
            survey |= mask(i)
        survey_cells = int(survey.sum())
        lots: list[tuple[list[int], int]] = []   # (frames, cells covered) per closed lot
        last_covered = None                       # the last closed lot's cells (for the tail merge)
        current: list[int] = []
        covered = np.zeros_like(survey)
        for i in members:
            current.append(i)
            covered |= mask(i)
            enough = survey_cells > 0 and int(covered.sum()) >= lot_coverage * survey_cells
            if len(current) >= target_lot_size or (len(current) >= min_lot_size and enough):
                lots.append((current, int(covered.sum())))
                last_covered, current, covered = covered, [], np.zeros_like(survey)
        if current:
            if lots and len(current) < min_lot_size:  # a short tail joins the lot before it
                current, covered = lots.pop()[0] + current, last_covered | covered
            lots.append((current, int(covered.sum())))
        for members_of_lot, cells_of_lot in lots:
            found.append((mode, members_of_lot, cells_of_lot / survey_cells if survey_cells else 0.0))
    found.sort(key=lambda lot: lot[1][0])
    return tuple(Lot(k, mode, tuple(members), fraction) for k, (mode, members, fraction) in enumerate(found))


def lots_json(lots: Sequence[Lot], frames: Sequence[Frame]) -> dict:
    """``{"lots": [{"id", "mode", "frames": [paths], "coverage"}, …]}`` (``zdask plan --mode sds --json``)."""
    return {"lots": [{"id": lot.id, "mode": lot.mode, "frames": [frames[i].path for i in lot.frames],
                      "coverage": round(lot.coverage, 4)} for lot in lots]}


def summarize_lots(lots: Sequence[Lot], frames: Sequence[Frame], *, max_lines: int = 40) -> str:
    """Short human-readable summary of the lots (``zdask plan --mode sds``)."""
    n_frames = sum(len(lot.frames) for lot in lots)
    lines = [f"{n_frames} frames -> {len(lots)} SDS lots"]
    for lot in lots[:max_lines]:
        exposure = sum(frames[i].exptime_s or 0.0 for i in lot.frames)
        lines.append(f"  lot {lot.id:>4}  {lot.mode:<7} {len(lot.frames):>4} frames  "
                     f"covers {100 * lot.coverage:5.1f} % of the field  exposure {exposure:8.1f} s")
    if len(lots) > max_lines:
        lines.append(f"  ... {len(lots) - max_lines} more lots")
    return "\n".join(lines)

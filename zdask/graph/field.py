"""The main field of a run and the canvas it needs, planned from the frames' headers only.

A mislabelled frame (a CRVAL from another target, a wrong sign of Dec) must not size the
canvas: the run keeps the *main field*, the largest set of frames linked by overlapping
footprints, and excludes every frame that overlaps none of it. The canvas that field needs is
then checked against ``Config.max_canvas_pixels`` before any pixel is read.

Overlap is tested on each footprint's circumscribed circle (centre ``ra_deg``/``dec_deg``,
radius half the diagonal of ``fov_deg``): two frames are linked when their centres are closer
than twice the largest such radius. Every pair of overlapping frames is linked (no frame of
the field is ever excluded); frames that come that close without overlapping are linked too,
which at worst keeps a near neighbour of the field. Components come from the same exact single
linkage as the master-tile groups (:func:`zdask.graph.plan.linked_components`), O(n log n).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from zdask.graph.geometry import Grid, covering_grid, footprint_outline
from zdask.graph.plan import linked_components, unit_vectors
from zdask.io.fitsheader import wcs_from_header
from zdask.io.scan import Frame

__all__ = ["OFF_FIELD_REASON", "main_field", "field_canvas", "canvas_size_problem", "field_canvas_problem"]

OFF_FIELD_REASON = "does not overlap the main field"


def main_field(frames: Sequence[Frame]) -> np.ndarray:
    """Boolean mask of the frames in the main field (see module doc). Pure.

    The main field is the connected component of the footprint-overlap graph with the most
    frames; a tie goes to the component holding the earliest frame in input order. Frames
    without a finite centre (no WCS) are outside it.
    """
    n = len(frames)
    mask = np.zeros(n, dtype=bool)
    ra = np.array([f.ra_deg for f in frames], dtype=float)
    dec = np.array([f.dec_deg for f in frames], dtype=float)
    radius = np.array([0.5 * math.hypot(*f.fov_deg) for f in frames], dtype=float)
    placed = np.flatnonzero(np.isfinite(ra) & np.isfinite(dec) & np.isfinite(radius))
    if not len(placed):
        return mask
    link_deg = min(2.0 * float(radius[placed].max()), 180.0)
    chord = 2.0 * math.sin(math.radians(link_deg) / 2.0)
    labels = linked_components(unit_vectors(ra[placed], dec[placed]), chord)
    counts = np.bincount(labels)
    best = counts.max()
    # placed is in input order, so the first member of a largest component decides ties
    winner = next(label for label in labels if counts[label] == best)
    mask[placed[labels == winner]] = True
    return mask


def split_main_field(frames: Sequence[Frame]) -> tuple[list[Frame], list[Frame]]:
    """(frames in the main field, frames outside it), each in input order. Pure."""
    in_field = main_field(frames)
    return ([f for f, keep in zip(frames, in_field) if keep],
            [f for f, keep in zip(frames, in_field) if not keep])


def field_canvas(frames: Sequence[Frame], margin: int = 0) -> Grid:
    """The north-up TAN grid at the frames' median scale covering their footprints (+ margin
    px): the size the mosaic canvas will have, from the headers alone. Raises ValueError when
    the footprints cannot share one TAN grid (see :func:`zdask.graph.geometry.covering_grid`)."""
    # Corners and edge midpoints: the canvas is sized, not drawn, here.
    outlines = [footprint_outline(wcs_from_header(f.wcs_header), (f.height, f.width), per_side=2)
                for f in frames]
    scale = float(np.nanmedian([f.scale_arcsec for f in frames]))
    return covering_grid(outlines, scale, margin=margin)


def canvas_size_problem(shape: tuple[int, int], limit: int) -> str | None:
    """The one-line refusal of a canvas of ``shape`` (height, width) above ``limit`` pixels
    (``Config.max_canvas_pixels``); None when it is within the limit."""
    h, w = shape
    if h * w > limit:
        return (f"the mosaic canvas would be {w} x {h} pixels ({h * w:,}), above max_canvas_pixels = "
                f"{limit:,}; raise max_canvas_pixels in the config if the field really is that large")
    return None


def field_canvas_problem(frames: Sequence[Frame], margin: int, limit: int) -> str | None:
    """Why the frames' canvas cannot be made (too large, or no common TAN grid); None if it can."""
    try:
        grid = field_canvas(frames, margin)
    except ValueError as exc:
        return f"the frames cannot share one mosaic canvas: {exc}"
    return canvas_size_problem(grid.shape, limit)

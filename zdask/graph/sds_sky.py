"""The skies of an SDS lot's frames, matched before the lot is stacked (what the classic mode
does for a group: :func:`zdask.graph.harmonize.frame_sky_surfaces`, or each frame's own local
background with ``background_mesh``).

A lot's frames are matched on the window of the canvas their footprints touch (a grid of its
own, :func:`lot_window`), binned by :func:`sky_bin`; the surfaces are then moved onto the
canvas's pixel coordinates (:func:`on_canvas`), where the mega-tile's warp evaluates them.

Memory of one lot's fit (one worker task): the sky fit keeps ``min(N, STAR_MASK_FRAMES)``
binned images of the window for its star mask and every frame's binned image sampled every
``FRAME_MATCH_STEP`` binned pixels, so about ``(min(N, 32) + N / 4 + SKY_FIT_COPIES) × (h / f) ×
(w / f) × C × 4`` bytes for a window of h × w canvas pixels binned by f. :func:`sky_bin` bins
more than ``match_bin`` where that would exceed the stacking budget: a lot spanning a large
canvas is matched on coarser pixels (its surfaces are low-order polynomials: a few thousand
binned pixels determine them), so the fit never holds more than about one budget.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from zdask.graph.geometry import Grid, grid_bbox_of
from zdask.graph.harmonize import FRAME_MATCH_STEP, STAR_MASK_FRAMES, frame_backgrounds, frame_sky_surfaces
from zdask.graph.mosaic import crop_grid
from zdask.graph.stack import budget_bytes

#: binned-window-sized arrays the fit holds besides its stacks (a frame's warp, the star mask's
#: median and its filter's copies)
SKY_FIT_COPIES = 4


def lot_window(headers: Sequence[dict], shapes: Sequence[tuple[int, int]], canvas: Grid
               ) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) of the canvas box holding every footprint of a lot's frames (their WCS
    ``headers``, their ``shapes``); None when none lies on the canvas. Pure."""
    boxes = [b for b in (grid_bbox_of(Grid(h, tuple(s)), canvas) for h, s in zip(headers, shapes)) if b is not None]
    if not boxes:
        return None
    return (min(b[0] for b in boxes), max(b[1] for b in boxes), min(b[2] for b in boxes), max(b[3] for b in boxes))


def sky_fit_bytes(window: tuple[int, int], n_frames: int, channels: int, factor: int) -> int:
    """The sky fit's memory (module doc) for a window (h, w) binned by ``factor``."""
    pixels = -(-window[0] // factor) * -(-window[1] // factor)
    per_pixel = min(n_frames, STAR_MASK_FRAMES) + n_frames / FRAME_MATCH_STEP ** 2 + SKY_FIT_COPIES
    return int(per_pixel * pixels * channels * 4)


def sky_bin(window: tuple[int, int], n_frames: int, channels: int, match_bin: int, budget) -> int:
    """The binning of a lot's sky fit: ``match_bin``, or the smallest multiple of it whose fit
    (:func:`sky_fit_bytes`) fits ``budget``. Pure."""
    limit = budget_bytes(budget)
    factor = match_bin
    # (never coarser than a quarter of the window's short side: a surface needs a few samples)
    while sky_fit_bytes(window, n_frames, channels, factor) > limit and factor * 4 < min(window):
        factor += match_bin
    return factor


def on_canvas(surface: tuple, origin: tuple[int, int]) -> tuple:
    """A sky surface (coefficients, order, extent) fitted on a window of the canvas, as the same
    surface in canvas pixels: the extent moved by the window's ``origin`` (y0, x0) (the
    coordinates are normalised linearly over the extent, so the coefficients stay)."""
    coeffs, order, (y0, y1, x0, x1) = surface
    oy, ox = origin
    return coeffs, order, [y0 + oy, y1 + oy, x0 + ox, x1 + ox]


def lot_skies(sources: list, canvas: Grid, window: tuple[int, int, int, int], factor: int, order: int) -> list:
    """Worker task: the lot's sources carrying their sky surfaces on the canvas, matched to the
    lot's consensus on its ``window`` binned by ``factor``."""
    y0, y1, x0, x1 = window
    surfaces = frame_sky_surfaces(sources, crop_grid(canvas, window), factor, order)
    return [dataclasses.replace(s, sky=tuple(on_canvas(sky, (y0, x0)))) for s, sky in zip(sources, surfaces)]


def lot_backgrounds(sources: list, factor: int, mesh: int) -> list:
    """Worker task: the lot's sources carrying each frame's own local background (cells of
    ``mesh`` frame pixels), as master tiles' frames get them."""
    return [dataclasses.replace(s, background=b) for s, b in zip(sources, frame_backgrounds(sources, factor, mesh))]

"""Photometric scaling between grid cells (the grid mode's answer to the ancestor's checkerboard).

Cells are windows of one canvas, so two cells' overlap is a plain intersection of windows (no
warp). The overlap's pixels are chosen from coverage, never from brightness alone: both cells
cover them at least ``min_fraction`` of their peak coverage, the mask eroded by ``erosion_px``
(noisy coverage edges out), finite in both. Each overlapping pair gets a per-channel gain and
offset (:func:`zdask.ops.photometry.fit_source_gain`: the gain from sources, the offset a
median), and one least-squares solve over the overlap graph
(:func:`zdask.ops.photometry.solve_tile_photometry`) gives every cell its correction, the
reference cell fixed at gain 1, offset 0. Gains and offsets are always finite: a cell without a
valid overlap pixel keeps gain 1, offset 0 (``disabled``).

NumPy only, no I/O; the cells are ``(h, w, C)`` images (the grid mode passes binned ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from zdask.ops.colour import TileHealth, tile_health
from zdask.ops.photometry import fit_source_gain, solve_tile_photometry

__all__ = ["PairOverlap", "CellScaling", "cell_health", "reference_cell", "overlap_mask", "scale_cells",
           "apply_cell_scaling", "cell_stats"]

#: fewest mask pixels a pair's fit is made on
MIN_OVERLAP_PIXELS = 20
#: relative weight in the solve of a pair whose gain could not be measured (offset only)
UNFITTED_WEIGHT = 1e-6


def cell_health(image: np.ndarray, coverage: np.ndarray) -> TileHealth:
    """Healthy: some pixel with coverage > 0 and finite in every channel, and a non-zero
    dynamic range (:func:`zdask.ops.colour.tile_health`: ``empty`` or ``flat`` otherwise)."""
    return tile_health(image, coverage)


def reference_cell(health: Sequence[TileHealth]) -> tuple[int | None, list[tuple[int, str]]]:
    """The first healthy cell, and the unhealthy candidates skipped before it (index, reason)."""
    skipped = []
    for k, verdict in enumerate(health):
        if verdict.ok:
            return k, skipped
        skipped.append((k, verdict.reason or "unhealthy"))
    return None, skipped


def overlap_mask(image_a: np.ndarray, coverage_a: np.ndarray, image_b: np.ndarray, coverage_b: np.ndarray, *,
                 min_fraction: float, erosion_px: int) -> np.ndarray:
    """Pixels of two aligned windows (the cells' overlap) that both cells cover well: coverage
    >= ``min_fraction`` × each cell's peak coverage in the overlap (and > 0), finite in both
    images, eroded by ``erosion_px`` pixels (the window's own border is not an edge: the cells
    go on beyond it). The peak is the overlap's, not the whole cell's: a cell holding a deep
    patch elsewhere must not empty its thinner overlaps."""
    from scipy.ndimage import binary_erosion

    cov_a = np.nan_to_num(np.asarray(coverage_a, dtype=np.float64))
    cov_b = np.nan_to_num(np.asarray(coverage_b, dtype=np.float64))
    peak_a, peak_b = cov_a.max(initial=0.0), cov_b.max(initial=0.0)
    mask = (cov_a > 0) & (cov_b > 0) & (cov_a >= min_fraction * peak_a) & (cov_b >= min_fraction * peak_b)
    mask &= np.isfinite(image_a).reshape(*mask.shape, -1).all(axis=-1)
    mask &= np.isfinite(image_b).reshape(*mask.shape, -1).all(axis=-1)
    if erosion_px > 0 and mask.any():
        mask = binary_erosion(mask, iterations=int(erosion_px), border_value=1)
    return mask


@dataclass(frozen=True)
class PairOverlap:
    """One overlapping pair's fit: ``gain · cell j + offset ≈ cell i`` on ``n_pixels`` mask pixels."""

    i: int
    j: int
    n_pixels: int
    gain: tuple[float, ...]
    offset: tuple[float, ...]
    fitted: tuple[bool, ...]


@dataclass(frozen=True)
class CellScaling:
    """Per cell ``gains``, ``offsets`` (n, C) float64, finite: corrected = gain · cell + offset.

    ``reference``: the cell held at the identity (None: no healthy cell); ``pairs``: the pair
    fits used; ``disabled``: healthy cells without any valid overlap pixel (identity kept);
    ``connected``: cells in the reference's component of the overlap graph."""

    gains: np.ndarray
    offsets: np.ndarray
    reference: int | None
    pairs: tuple[PairOverlap, ...]
    disabled: tuple[int, ...]
    connected: np.ndarray


def _window(origin_a, shape_a, origin_b, shape_b):
    """Slices of a and of b on the intersection of two windows (None when it is empty)."""
    y0, x0 = max(origin_a[0], origin_b[0]), max(origin_a[1], origin_b[1])
    y1 = min(origin_a[0] + shape_a[0], origin_b[0] + shape_b[0])
    x1 = min(origin_a[1] + shape_a[1], origin_b[1] + shape_b[1])
    if y1 <= y0 or x1 <= x0:
        return None
    return ((slice(y0 - origin_a[0], y1 - origin_a[0]), slice(x0 - origin_a[1], x1 - origin_a[1])),
            (slice(y0 - origin_b[0], y1 - origin_b[0]), slice(x0 - origin_b[1], x1 - origin_b[1])))


def scale_cells(images: Sequence[np.ndarray], coverages: Sequence[np.ndarray], origins: Sequence[tuple[int, int]],
                healthy: Sequence[bool], candidate_pairs: Sequence[tuple[int, int]], *, reference: int | None,
                min_fraction: float = 0.5, erosion_px: int = 1, say=lambda text: None) -> CellScaling:
    """Gains and offsets of the cells (module doc).

    Parameters
    ----------
    images, coverages : sequences of (h, w, C) and (h, w) arrays
        The cells (on one pixel grid: cell k's pixel (0, 0) is the grid's ``origins[k]``).
    healthy : sequence of bool
        Unhealthy cells take no part and keep the identity.
    candidate_pairs : sequence of (i, j)
        The pairs that may overlap (the raster's neighbours); i < j.
    reference : int or None
        The cell fixed at gain 1, offset 0 (see :func:`reference_cell`).
    say : callable
        Gets one line per pair (its mask's pixel count) and per disabled cell.
    """
    n = len(images)
    channels = images[0].shape[-1] if n and images[0].ndim == 3 else 1
    pairs: list[PairOverlap] = []
    for i, j in candidate_pairs:
        if not (healthy[i] and healthy[j]):
            continue
        found = _window(origins[i], images[i].shape[:2], origins[j], images[j].shape[:2])
        if found is None:
            continue
        si, sj = found
        a, b = images[i][si], images[j][sj]
        mask = overlap_mask(a, coverages[i][si], b, coverages[j][sj], min_fraction=min_fraction,
                            erosion_px=erosion_px)
        count = int(mask.sum())
        say(f"cells {i} & {j}: overlap mask {count} px")
        if count < MIN_OVERLAP_PIXELS:
            continue
        fit = fit_source_gain(a, b, mask=mask)
        pairs.append(PairOverlap(i, j, count, tuple(float(v) for v in fit.gain),
                                 tuple(float(v) for v in fit.offset), tuple(bool(v) for v in fit.fitted)))
    gains, offsets = np.ones((n, channels)), np.zeros((n, channels))
    connected = np.zeros(n, dtype=bool)
    if reference is not None and n:
        # A pair whose gain fell back to 1 (too few source pixels in some channel) still links
        # its cells, but must not pull the gains of those that have measured ones: it weighs
        # UNFITTED_WEIGHT of its pixels.
        solved = solve_tile_photometry(n, [(p.i, p.j, np.array(p.gain), np.array(p.offset),
                                            float(p.n_pixels) * (1.0 if all(p.fitted) else UNFITTED_WEIGHT))
                                           for p in pairs], anchor=reference, n_channels=channels)
        gains, offsets, connected = solved.gains, solved.offsets, solved.connected
    linked = {p.i for p in pairs} | {p.j for p in pairs}
    disabled = tuple(k for k in range(n) if healthy[k] and k not in linked and k != reference)
    for k in range(n):
        bad = not (np.isfinite(gains[k]).all() and np.isfinite(offsets[k]).all())
        if k in disabled or not healthy[k] or bad:
            gains[k], offsets[k] = 1.0, 0.0
        if k in disabled:
            say(f"cell {k}: no valid pixels, scaling disabled (gain 1, offset 0)")
    return CellScaling(gains, offsets, reference, tuple(pairs), disabled, connected)


def apply_cell_scaling(image: np.ndarray, gain, offset) -> np.ndarray:
    """A new float32 array ``gain · image + offset`` (per channel); ``image`` is not modified."""
    img = np.asarray(image, dtype=np.float32)
    g = np.asarray(gain, dtype=np.float32)
    o = np.asarray(offset, dtype=np.float32)
    return (img * g + o).astype(np.float32, copy=False)


def cell_stats(image: np.ndarray, valid: np.ndarray) -> dict:
    """Per channel min / median / max of the finite pixels where ``valid`` (None when none)."""
    img = np.asarray(image)
    img = img.reshape(*img.shape[:2], -1)
    out = {"min": [], "median": [], "max": []}
    for c in range(img.shape[-1]):
        values = img[..., c][np.asarray(valid, dtype=bool)]
        values = values[np.isfinite(values)]
        for key, fn in (("min", np.min), ("median", np.median), ("max", np.max)):
            out[key].append(float(fn(values)) if values.size else None)
    return out

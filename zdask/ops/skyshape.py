"""The curvature every frame's sky shares, measured on the tiles' own skies, and taken out before
the tiles are matched.

Light pollution is tied to the horizon: every frame carries (nearly) the same glow *in its own
pixels*, a gradient with a quadratic part. Matching overlapping tiles with planes
(:func:`zdask.ops.skymatch.match_surfaces`) takes out what differs between them, but a quadratic
``q`` that every tile carries about its own centre is, seen through the overlaps, a slope that
changes from tile to tile: the matching chains those slopes into a bowl as wide as the mosaic,
``q·p²``, which no plane fitted afterwards removes, and a quadratic fitted on the assembled
mosaic takes out any emission larger than the mosaic with it.

Measured where it is small against the glow: over one tile, the curvature of a galaxy's halo or
a nebula that fills the mosaic is a fraction ``(tile / mosaic)²`` of its curvature over the
mosaic, while the glow's is whole. Each tile's own sky curvature is fitted on its own pixels
with sources masked (:func:`tile_curvature`), and the curvature taken out of every tile is the
MEDIAN over tiles of those (:func:`common_curvature`): a tile that a bright galaxy fills gives a
curvature of its own and does not move the median. Taking the median rather than each tile's own
curvature keeps the smooth part of an object at tile scale too, and needs no alt-az frames.

Pure NumPy; surfaces are coefficient arrays in :func:`zdask.ops.background.poly_terms` order
(``1, u, v, u², u·v, v²``) on coordinates normalised to [-1, 1] over one extent; the quadratic
coefficients of a surface do not change when the surface is moved, so tiles at different places
compare directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zdask.ops.background import n_terms
from zdask.ops.robust import robust_sigma
from zdask.ops.skymatch import fit_common_sky

QUADRATIC_TERMS = ("u^2", "u*v", "v^2")
# Tiles whose own curvature fixes the common one: with fewer, one tile that an object fills
# would be half the evidence; the curvature is then left alone (reported as undetermined).
MIN_TILES = 3
# Binned pixels by which each pass of a tile's curvature fit widens the sources it masks: the
# faint wings of a galaxy's halo bend a tile's quadratic, and the median over tiles only
# rejects the tiles an object fills, not the many it reaches into. On full-size kit fields,
# 1 px took M31's seams from 0.32 to 0.27 sigma and kept a faint nebula's extended light
# (IC 1396: 0.69); 2 px flattened M31 a little more but took IC 1396's down to 0.49.
SOURCE_GROW = 1


@dataclass(frozen=True)
class CommonSurface:
    """The surface added to every tile's correction, and what fixed it."""

    coeffs: np.ndarray             # (C, 6): the surface P added to every tile's correction
    determined: tuple[str, ...]    # terms the data fixed
    undetermined: tuple[str, ...]  # terms left alone (P = 0 there)
    spread: np.ndarray | None = None  # (C, 3) robust spread of the tiles' own curvatures, or None


def pad_order(coeffs: np.ndarray, order: int, to_order: int) -> np.ndarray:
    """Coefficients ``(C, n_terms(order))`` as ``(C, n_terms(to_order))`` (the same surface):
    the terms are ordered by total degree, so the lower orders are a prefix."""
    coeffs = np.atleast_2d(np.asarray(coeffs, dtype=np.float64))
    out = np.zeros((coeffs.shape[0], n_terms(to_order)))
    out[:, :n_terms(order)] = coeffs
    return out


def tile_curvature(image: np.ndarray, weight: np.ndarray, origin: tuple[int, int], extent) -> np.ndarray:
    """(C, 6): the quadratic part of the sky of one tile's cut-out ``image`` (h, w, C) with
    ``weight`` (h, w), whose pixel (0, 0) is at ``origin`` on the grid ``extent`` normalises;
    fitted on its own pixels with sources masked and widened by :data:`SOURCE_GROW`
    (:func:`zdask.ops.skymatch.fit_common_sky`).
    The constant and linear terms are zero: those the matching fixes."""
    y0, y1, x0, x1 = extent
    oy, ox = origin
    coeffs = fit_common_sky(image, weight, order=2, extent=(y0 - oy, y1 - oy, x0 - ox, x1 - ox),
                            source_grow=SOURCE_GROW)
    coeffs[:, :3] = 0.0
    return coeffs


def common_curvature(curvatures: list[np.ndarray]) -> CommonSurface:
    """The curvature to take out of every tile: per channel and term, the median of the tiles'
    own (:func:`tile_curvature`, each (C, 6)), with the spread of those (1.4826·MAD) for the
    report. With fewer than :data:`MIN_TILES` tiles it is left at zero and undetermined."""
    stack = np.stack([np.asarray(c, dtype=np.float64) for c in curvatures])   # (n, C, 6)
    out = np.zeros(stack.shape[1:])
    if len(curvatures) < MIN_TILES:
        return CommonSurface(out, (), QUADRATIC_TERMS)
    out[:, 3:] = np.median(stack[:, :, 3:], axis=0)
    spread = np.array([[robust_sigma(stack[:, ch, t]) for t in range(3, 6)] for ch in range(stack.shape[1])])
    return CommonSurface(out, QUADRATIC_TERMS, (), spread)

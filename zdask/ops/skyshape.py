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

The median leaves each tile the difference between its own glow curvature and the median, and
those differ: a tile's glow is the mean of its frames', whose curvature changes from exposure
to exposure. With plane matching (sky_surface_order 1) each tile's curvature is therefore
modelled along its own gradient (:func:`glow_axis_shape`, where a horizon glow curves), its
differences fixed through the overlaps and checked against the tiles' own, its level on their
median (:func:`glow_curvature`).

Pure NumPy; surfaces are coefficient arrays in :func:`zdask.ops.background.poly_terms` order
(``1, u, v, u², u·v, v²``) on coordinates normalised to [-1, 1] over one extent; the quadratic
coefficients of a surface do not change when the surface is moved, so tiles at different places
compare directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zdask.ops.robust import robust_sigma
from zdask.ops.skymatch import fit_common_sky

QUADRATIC_TERMS = ("u^2", "u*v", "v^2")
# Tiles whose own curvature fixes the common one: with fewer, one tile that an object fills
# would be half the evidence; the curvature is then left alone (reported as undetermined).
MIN_TILES = 3
# Robust sigmas beyond which a tile's own glow curvature is taken to be an object's, not the
# glow's, when judging how far the tiles confirm the overlaps' differences.
OUTLIER_KAPPA = 3.0
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


# --- the glow's curvature along its own gradient ------------------------------------------------------

@dataclass(frozen=True)
class GlowCurvature:
    """Each tile's glow curvature along its own gradient: the overlaps fix the differences,
    the tiles' own skies the level (:func:`glow_curvature`)."""

    multiples: np.ndarray      # (n, C): per tile and channel, the multiple of its glow-axis shape
    level: np.ndarray          # (C,): what the tiles' own skies added to the overlaps' differences
    determined: bool           # False: too few tiles, the level is left where the overlaps put it
    spread: np.ndarray | None = None  # (C,) robust spread of the tiles' own estimates of the level
    confirmed: np.ndarray | None = None  # (C,) part of the overlaps' differences the tiles' own confirm


def glow_axis_shape(image: np.ndarray, weight: np.ndarray, origin: tuple[int, int], extent) -> np.ndarray:
    """(6,): the shape ``s²`` of one tile's glow curvature, ``s`` the distance from the tile's
    centre along its own sky gradient in units of the grid's half-diagonal, as coefficients on
    the grid ``extent`` normalises (zero when the tile's sky has no gradient).

    Light pollution brightens towards the horizon: across a field of a degree or two its
    curvature lies along its gradient, and it outshines the faint emission its gradient could
    be confused with. Each tile's glow curvature is the mean of its frames', which vary from
    frame to frame, so the tiles' differ: one curvature taken out of every tile leaves each
    its difference, a seam at each panel's edge and a bump or a dip at its centre. One number
    per tile, its multiple of this shape, is what the overlaps then fix
    (:func:`zdask.ops.skymatch.match_surfaces`): the long overlap strips fix it, where three
    free curvature terms per tile also depend on the strips' narrow widths and fit their
    noise. The shape follows each tile's own gradient, which turns between panels of an
    alt-az mount."""
    y0, y1, x0, x1 = extent
    oy, ox = origin
    h, w = image.shape[:2]
    local = (y0 - oy, y1 - oy, x0 - ox, x1 - ox)
    plane = fit_common_sky(image, weight, order=1, extent=local, source_grow=SOURCE_GROW).sum(axis=0)
    sy, sx = (y1 - y0) / 2.0, (x1 - x0) / 2.0       # pixels per normalised unit
    grad = np.array([plane[1] / sx, plane[2] / sy])  # d(sky)/dx, d(sky)/dy per pixel
    norm = float(np.hypot(*grad))
    # No gradient beyond rounding (a sky already flat): no direction to follow.
    if not np.isfinite(norm) or norm * np.hypot(h, w) <= 1e-9 * max(abs(float(plane[0])), 1.0):
        return np.zeros(6)
    dx, dy = grad / norm
    # One length for every tile (the grid's half-diagonal): the same multiple is then the same
    # curvature in every tile, whatever the size of its cut-out (an alt-az tile's is larger).
    radius = float(np.hypot(sx, sy))
    # s = (dx·(x − xc) + dy·(y − yc)) / radius with x = (x0 + x1)/2 + sx·u, y = (y0 + y1)/2 + sy·v
    xc, yc = ox + (w - 1) / 2.0, oy + (h - 1) / 2.0
    a, b = dx * sx / radius, dy * sy / radius
    c = (dx * ((x0 + x1) / 2.0 - xc) + dy * ((y0 + y1) / 2.0 - yc)) / radius
    return np.array([c * c, 2 * a * c, 2 * b * c, a * a, 2 * a * b, b * b])


def axis_multiple(coeffs: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """(C,): per channel, the multiple of ``shape`` (6,) that is nearest the quadratic part of
    ``coeffs`` (C, 6); zero for a zero shape."""
    quad = np.asarray(shape, dtype=np.float64)[3:]
    norm = float(quad @ quad)
    coeffs = np.atleast_2d(np.asarray(coeffs, dtype=np.float64))
    return coeffs[:, 3:] @ quad / norm if norm > 0 else np.zeros(coeffs.shape[0])


def glow_curvature(own: np.ndarray, relative: np.ndarray) -> GlowCurvature:
    """Each tile's glow curvature, from its ``relative`` multiple (n, C) that the overlaps fixed
    (:func:`zdask.ops.skymatch.match_surfaces` with the tiles' glow-axis shapes, up to a level
    common to all) and its ``own`` (n, C), measured on its own sky with sources masked
    (:func:`tile_curvature` along :func:`glow_axis_shape`, by :func:`axis_multiple`).

    Two estimates of the tiles' differences, with errors of their own: the overlaps' from the
    strips' noise and from what the shapes miss, the tiles' own from the emission each tile
    holds. Where both see the same differences, the overlaps' are kept whole; where the own
    ones do not follow them, the overlaps fitted their errors, and their differences shrink
    towards the median by the regression factor ``cov(own, relative) / var(relative)`` (in
    [0, 1]; per channel): the part of the overlaps' differences the tiles confirm. The level
    is then the median over tiles of ``own − relative``, so that a tile that a galaxy or a
    nebula fills (its own curvature is the object's too) does not move it. With fewer than
    :data:`MIN_TILES` tiles the differences stay as the overlaps fixed them and the level at
    their median (undetermined)."""
    own, relative = np.atleast_2d(own), np.atleast_2d(relative)
    centre = np.median(relative, axis=0)
    if len(own) < MIN_TILES:
        return GlowCurvature(relative, centre, False)
    d_rel, d_own = relative - centre, own - np.median(own, axis=0)
    # Tiles whose own curvature an object bends (far off what the overlaps say) are left out.
    off = d_own - d_rel
    off_sigma = np.array([robust_sigma(off[:, ch]) for ch in range(off.shape[1])])
    usable = np.abs(off - np.median(off, axis=0)) <= OUTLIER_KAPPA * np.maximum(off_sigma, 1e-12)
    power = np.sum(np.where(usable, d_rel * d_rel, 0.0), axis=0)
    agree = np.sum(np.where(usable, d_own * d_rel, 0.0), axis=0)
    confirmed = np.clip(agree / np.where(power > 0, power, 1.0), 0.0, 1.0)
    shrunk = centre + confirmed * d_rel
    estimates = own - shrunk
    spread = np.array([robust_sigma(estimates[:, ch]) for ch in range(own.shape[1])])
    level = np.median(estimates, axis=0)
    return GlowCurvature(shrunk + level, level, True, spread, confirmed)


def plane_and_shape(shape: np.ndarray) -> np.ndarray:
    """(6, 4): the basis of the surfaces ``plane + b·shape`` (for
    :func:`zdask.ops.background.fit_surface`'s ``basis``)."""
    basis = np.zeros((6, 4))
    basis[:3, :3] = np.eye(3)
    basis[:, 3] = shape
    return basis

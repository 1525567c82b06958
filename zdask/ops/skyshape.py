"""The mosaic-wide sky surface that matching cannot see, fixed by the shape of each tile's own sky.

Matching overlapping tiles (:func:`zdask.ops.skymatch.match_surfaces`) determines everything
that differs between them; a surface ``P`` common to all of them is left free (adding ``P`` to
every tile's correction fits the overlaps as well). Fixing it as "the mosaic is flat" takes
out any emission larger than the mosaic; leaving it at "the corrections sum to zero" keeps
whatever every frame shares *on the sky*. Neither is what light pollution does: it is tied
to the horizon, so every frame carries (nearly) the same gradient *in its own pixels*, and a
quadratic part of it, seen by tiles at different places, becomes a mosaic-wide bowl
``q·p²`` (the tiles' corrections chain its slopes across the mosaic, and the curvature is the
frame's over a span several frames wide).

What fixes the quadratic part of ``P`` instead: a quadratic common to the tiles shifts each
tile's local slope by ``2·Q·c_k`` (``c_k`` its centre), so of all the ``P`` the overlaps
allow, the right one leaves the tiles' skies *alike in their own coordinates* (equal local
slopes). That is a small least-squares problem in the three quadratic coefficients of ``P``;
directions the tile centres do not span (tiles in one row say nothing about the curvature
across it) are left at zero and reported. The linear part of ``P`` shifts every local slope
alike, so this says nothing about it: it stays as the matching left it, and is reported as
undetermined.

Pure NumPy; surfaces are coefficient arrays in :func:`zdask.ops.background.poly_terms` order
(``1, u, v, u², u·v, v²``) on coordinates normalised to [-1, 1] over one extent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zdask.ops.background import n_terms

QUADRATIC_TERMS = ("u^2", "u*v", "v^2")
# A quadratic direction is determined when the tile centres span it: its singular value must
# be at least this fraction of the largest (a 3 x 3 mosaic spans all three by far).
MIN_RELATIVE_SINGULAR = 0.05
# The common curvature is used only where it explains this much of the spread of the tiles'
# local slopes (at most this fraction left over).
MAX_UNEXPLAINED = 0.25
# Fewer tiles than this leave too few slopes to tell a curvature from a glow that turned
# between panels (a 2 x 2 mosaic: 8 slopes for 3 unknowns): the curvature is left alone.
MIN_TILES = 6


@dataclass(frozen=True)
class CommonSurface:
    """What :func:`common_quadratic` found."""

    coeffs: np.ndarray          # (C, 6): the common surface P to add to every tile's correction
    determined: tuple[str, ...]    # quadratic directions the tile centres fixed
    undetermined: tuple[str, ...]  # directions left as the matching left them (P = 0 there)


def pad_order(coeffs: np.ndarray, order: int, to_order: int) -> np.ndarray:
    """Coefficients ``(C, n_terms(order))`` as ``(C, n_terms(to_order))`` (the same surface):
    the terms are ordered by total degree, so the lower orders are a prefix."""
    coeffs = np.atleast_2d(np.asarray(coeffs, dtype=np.float64))
    out = np.zeros((coeffs.shape[0], n_terms(to_order)))
    out[:, :n_terms(order)] = coeffs
    return out


def local_slopes(coeffs: np.ndarray, centre: tuple[float, float]) -> np.ndarray:
    """(C, 2): the gradient (d/du, d/dv) of order-2 surfaces ``coeffs`` (C, 6) at ``centre`` (u, v)."""
    u, v = centre
    c = np.asarray(coeffs, dtype=np.float64)
    return np.stack([c[:, 1] + 2 * c[:, 3] * u + c[:, 4] * v,
                     c[:, 2] + c[:, 4] * u + 2 * c[:, 5] * v], axis=1)


def common_quadratic(coeffs: list[np.ndarray], centres: np.ndarray, weights: np.ndarray) -> CommonSurface:
    """The common quadratic ``P`` that makes the tiles' corrections alike in their own coordinates.

    ``coeffs``: per tile its correction from matching, order 2 ``(C, 6)`` (:func:`pad_order`);
    ``centres``: (n, 2) tile centres (u, v) in the normalised coordinates; ``weights``: (n,)
    how much each tile counts (its area). Minimises the weighted spread over tiles of the local
    slopes of ``coeffs[k] + P`` (see the module doc string); returns ``P`` with zero constant
    and linear terms.
    """
    coeffs = [np.asarray(c, dtype=np.float64) for c in coeffs]
    channels = coeffs[0].shape[0]
    out = np.zeros((channels, n_terms(2)))
    n = len(coeffs)
    if n < MIN_TILES:
        return CommonSurface(out, (), QUADRATIC_TERMS)
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    c = np.asarray(centres, dtype=np.float64)
    d = c - (w[:, None] * c).sum(axis=0)  # centres about their weighted mean
    # Local slope shift of P = (2·Quu·u + Quv·v, Quv·u + 2·Qvv·v); the spread is about the mean.
    zero = np.zeros(n)
    design = np.concatenate([np.stack([2 * d[:, 0], d[:, 1], zero], axis=1),
                             np.stack([zero, d[:, 0], 2 * d[:, 1]], axis=1)])
    root_w = np.sqrt(np.concatenate([w, w]))
    a = design * root_w[:, None]
    left, sing, right_t = np.linalg.svd(a, full_matrices=False)
    keep = sing >= MIN_RELATIVE_SINGULAR * max(sing.max(), 1e-300)
    # Which of the three quadratic terms the kept directions reach (for the report).
    reach = np.abs(right_t[keep]).max(axis=0) if keep.any() else np.zeros(3)
    for ch in range(channels):
        slopes = np.stack([local_slopes(cf, ck)[ch] for cf, ck in zip(coeffs, c)])
        centred = slopes - (w[:, None] * slopes).sum(axis=0)
        target = -np.concatenate([centred[:, 0], centred[:, 1]]) * root_w
        q = right_t[keep].T @ ((left[:, keep].T @ target) / sing[keep])
        # Only a curvature that explains the tiles' slopes: when they differ for another
        # reason (the glow turned between panels, alt-az and equatorial tiles side by side)
        # a fitted curvature would invent the bowl it is meant to remove; leave it alone.
        before, after = np.sum(target ** 2), np.sum((target - a @ q) ** 2)
        if after > MAX_UNEXPLAINED * before:
            continue
        out[ch, 3:] = q
    determined = tuple(t for t, r in zip(QUADRATIC_TERMS, reach) if r > 0.5)
    undetermined = tuple(t for t in QUADRATIC_TERMS if t not in determined)
    return CommonSurface(out, determined, undetermined)


# --- the glow a tile still carries, from the field rotation of its frames ----------------------------

# The frames' rotation must spread by at least this much (RMS about the mean, radians; 1°) for
# their sky corrections to tell the glow's gradient apart from noise.
MIN_ROTATION_RMS = np.deg2rad(1.0)
# ... and the glow fixed in the frame must explain this much of the corrections' spread (the
# rest: a glow that changed or turned with the horizon during the panel).
MIN_EXPLAINED = 0.5
# Rounds of the alternating solve of glow_from_rotation (it settles in a few).
ALTERNATING_ROUNDS = 20


@dataclass(frozen=True)
class RotationGlow:
    """What :func:`glow_from_rotation` found for one tile."""

    gradient: np.ndarray | None  # (C, 2) d/dx, d/dy per tile pixel of the glow the tile still carries; None = undetermined
    rotation_rms_deg: float      # spread of the frames' rotation on the tile grid
    explained: float             # part of the corrections' spread a glow fixed in the frame explains


def glow_from_rotation(slopes: np.ndarray, jacobians: np.ndarray) -> RotationGlow:
    """The light-pollution gradient that the frames of one tile share, fixed by their rotation.

    Matching a tile's frames to one another (:func:`zdask.ops.skymatch.match_to_consensus`)
    removes what differs between them and leaves their mean gradient in the tile. A glow tied
    to the horizon stays fixed in the frame of an alt-az mount while the sky (and the tile grid)
    turns: frame ``k``'s gradient on the tile grid is ``(1 + e_k) B_k g`` with ``B_k = A_k^-T``
    (``A_k`` its frame-to-tile Jacobian), ``g`` the one gradient in frame pixels and ``e_k`` the
    frame's own brightening or fading of the glow (sky brightness changes from frame to frame),
    so its correction is ``d_k = (B_k − mean B) g + e_k mean(B) g`` (to first order). The
    rotation fixes ``g`` through the corrections ACROSS the glow (the ``e_k`` take whatever lies
    along it: a glow that fades says nothing of its direction), hence the gradient the tile
    still carries, ``mean(B) g``. Without rotation (an equatorial mount), or when that model
    explains less than :data:`MIN_EXPLAINED` of the corrections across the glow, it is
    undetermined.

    ``slopes``: (n, C, 2) per frame the gradient (d/dx, d/dy, per tile pixel) of its sky
    correction; ``jacobians``: (n, 2, 2) frame pixel offsets (x, y) to tile pixel offsets.
    Solved per channel by alternating least squares (``g`` given the ``e_k``, then the ``e_k``
    given ``g``), from ``e = 0``.
    """
    slopes = np.asarray(slopes, dtype=np.float64)
    n, channels = slopes.shape[:2]
    b = np.linalg.inv(np.asarray(jacobians, dtype=np.float64)).transpose(0, 2, 1)
    mean_b = b.mean(axis=0)
    moved = b - mean_b
    angles = np.arctan2(b[:, 1, 0] - b[:, 0, 1], b[:, 0, 0] + b[:, 1, 1])
    spread = float(np.rad2deg(np.sqrt(np.mean((angles - np.angle(np.mean(np.exp(1j * angles)))) ** 2)))) if n else 0.0
    sing = np.linalg.svd(moved.reshape(2 * n, 2), compute_uv=False) if n >= 3 else np.zeros(1)
    size = np.sqrt(np.mean(np.sum(b ** 2, axis=(1, 2))) / 2) if n else 1.0
    if n < 3 or sing.min() < MIN_ROTATION_RMS * np.sqrt(n) * size:
        return RotationGlow(None, spread, 0.0)
    out = np.zeros((channels, 2))
    explained = []
    for ch in range(channels):
        d = slopes[:, ch, :]                                            # (n, 2)
        e = np.zeros(n)
        for _ in range(ALTERNATING_ROUNDS):
            design = (moved + e[:, None, None] * mean_b).reshape(2 * n, 2)
            g = np.linalg.lstsq(design, d.reshape(2 * n), rcond=None)[0]
            carried = mean_b @ g
            norm = float(carried @ carried)
            if norm <= 0:
                break
            e = ((d - moved @ g) @ carried) / norm
        # How much of the corrections ACROSS the glow the rotation explains.
        across = np.array([-carried[1], carried[0]]) / max(np.sqrt(norm), 1e-300)
        seen = d @ across
        left = seen - (moved @ g + e[:, None] * carried) @ across
        total = float(seen @ seen)
        explained.append(1.0 - float(left @ left) / total if total > 0 else 0.0)
        out[ch] = carried
    worst = float(min(explained))
    if worst < MIN_EXPLAINED:
        return RotationGlow(None, spread, worst)
    return RotationGlow(out, spread, worst)


# --- the common curvature, from the glows that alt-az tiles' field rotation fixed ------------------

# Tiles whose glow is known needed to fix the common curvature (2 slopes each for 2 linear and
# 3 quadratic unknowns: 4 tiles leave 3 slopes to spare against one tile's error).
MIN_GLOW_TILES = 4


@dataclass(frozen=True)
class GlowCurvature:
    """What :func:`curvature_from_glows` found."""

    quadratic: np.ndarray | None  # (C, 3) u², u·v, v² of P; None = the known glows do not fix it
    tiles: int                    # tiles whose known glow took part
    misfit: float                 # RMS of the slopes left over / RMS of the wanted slopes (worst channel)


def curvature_from_glows(coeffs: list[np.ndarray], centres: np.ndarray, weights: np.ndarray,
                         wanted: list[np.ndarray | None]) -> GlowCurvature:
    """The quadratic part of ``P`` that gives the tiles whose glow is known that glow as their
    correction's local slope.

    A tile's correction must take out the glow it still carries; where the field rotation of an
    alt-az tile fixed that glow (:func:`glow_from_rotation`), the local slope of
    ``coeffs[k] + P`` at the tile's centre must be ``wanted[k]`` (C, 2), per unit of the
    normalised coordinates (None where unknown). Unlike :func:`common_quadratic` this holds
    when the glow's amplitude drifted between panels (each tile's own glow is measured, not
    assumed alike). ``P``'s linear part is fitted with it (the tiles' slopes share an unknown
    plane) but not returned: one tile's error moves it more than the curvature, so the plane
    stays the caller's to choose. Returns None unless :data:`MIN_GLOW_TILES` tiles are known
    and their centres span all five unknowns.
    """
    known = [k for k, g in enumerate(wanted) if g is not None]
    if len(known) < MIN_GLOW_TILES:
        return GlowCurvature(None, len(known), 0.0)
    c = np.asarray(centres, dtype=np.float64)[known]
    w = np.asarray(weights, dtype=np.float64)[known]
    w = w / w.sum()
    # Local slope shift of P = (a_u + 2·Quu·u + Quv·v, a_v + Quv·u + 2·Qvv·v).
    one, zero = np.ones(len(known)), np.zeros(len(known))
    design = np.concatenate([np.stack([one, zero, 2 * c[:, 0], c[:, 1], zero], axis=1),
                             np.stack([zero, one, zero, c[:, 0], 2 * c[:, 1]], axis=1)])
    root_w = np.sqrt(np.concatenate([w, w]))
    a = design * root_w[:, None]
    sing = np.linalg.svd(a, compute_uv=False)
    if sing.min() < MIN_RELATIVE_SINGULAR * sing.max():
        return GlowCurvature(None, len(known), 0.0)
    channels = np.asarray(coeffs[0]).shape[0]
    out, misfit = np.zeros((channels, 3)), 0.0
    for ch in range(channels):
        have = np.stack([local_slopes(coeffs[k], c_k)[ch] for k, c_k in zip(known, c)])
        want = np.stack([np.asarray(wanted[k], dtype=np.float64)[ch] for k in known])
        target = np.concatenate([(want - have)[:, 0], (want - have)[:, 1]]) * root_w
        p = np.linalg.lstsq(a, target, rcond=None)[0]
        out[ch] = p[2:]
        scale = float(np.sqrt(np.sum((np.concatenate([want[:, 0], want[:, 1]]) * root_w) ** 2)))
        misfit = max(misfit, float(np.sqrt(np.sum((target - a @ p) ** 2))) / max(scale, 1e-300))
    return GlowCurvature(out, len(known), misfit)

"""Alignment stage: refine each calibrated frame's WCS against its group's reference frame.

Worker functions take plain records (:class:`AlignSource`, a catalogue dict) and do their own
I/O; the lead maps them with ``client.map``:

1. :func:`zdask.graph.align_reference.reference_index` picks the group's reference (client side, pure);
2. :func:`reference_catalogue` detects the reference's stars once (worker task);
3. :func:`align_frame` aligns every frame of the group, the reference included (worker task).

How :func:`align_frame` decides (``tol`` = ``tolerance_px``, by default
:func:`default_tolerance`: max(10 px, 1 % of the frame diagonal)):

* The reference catalogue's sky positions are projected into the frame with the frame's header
  WCS (the *prediction*). Detections found at the same raw pixel in the frame and in the
  reference although the prediction says the sky moved there by more than 2 px are fixed
  pattern (hot/warm pixels that survived detection's spike test) and are dropped from both
  lists. The frame's stars (green channel, or the only one) are matched to the
  prediction by astroalign; if astroalign fails or its transform moves a corner or the centre
  of the frame by ``tol`` or more, a vote over the star-to-prediction displacements shorter than
  ``tol`` gets a second chance (:func:`zdask.ops.register.match_by_offset_vote`). Every
  transform is then refit on all mutual nearest neighbours (:func:`refine_matches`).
* A match counts only with at least ``min_matches`` pairs and when it *agrees with the WCS
  prediction* (``transform_agrees(T, shape, tol)``). This is what defeats fixed-pattern sources:
  hot/warm pixels sit at the same pixel of every frame, so between two dithered frames they
  agree on the *dither* — a transform far from the WCS prediction (the real stars being within
  the header error of it) — and such a match is refused; wild mismatches are refused the same
  way. So three defences stand in a row: detection drops single-pixel spikes
  (:mod:`zdask.ops.stars`), coincident raw positions are dropped, the gate refuses the rest.
* Residual of the header WCS = median |T(p) − p| over the matched stars p. At most
  ``wcs_threshold_px`` → status ``"wcs"``, header kept. Otherwise status ``"stars"``: the WCS
  becomes header ∘ T, written as a plain TAN WCS (CRVAL kept, CRPIX and CD moved; exact for a
  TAN header; a SIP or non-TAN header is replaced by a TAN fit to the matched stars).
* Star matching failed: phase correlation between the frame and the reference warped onto the
  frame's grid by the two header WCS. Accepted when the shift is below ``tol`` and OpenCV's
  response is at least :data:`PHASE_MIN_RESPONSE`; CRPIX is shifted → ``"phase"``. Otherwise
  ``"excluded"`` with the reason.
* A frame without WCS (``wcs_header`` None or empty) is matched to the reference catalogue's
  pixel positions directly by astroalign (no prediction, so no agreement test); the match counts
  with ≥ ``min_matches`` pairs and a scale within :data:`UNSOLVED_SCALE_TOLERANCE` of 1 (same
  camera), and its WCS is reference ∘ T → ``"stars"``; otherwise ``"excluded"``.

The absolute sky position of a group is the reference's header WCS: frames are registered to
the reference, not to a star catalogue.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields

import numpy as np

from zdask.graph.align_reference import reference_index
from zdask.graph.calibrate import stored_stars
from zdask.io import store
from zdask.io.fitsheader import wcs_from_header
from zdask.io.scan import Frame
from zdask.ops.framestats import STAR_COUNT_LIMIT, star_channel
from zdask.ops.register import (
    apply_transform,
    match_by_offset_vote,
    match_stars,
    max_displacement,
    phase_correlation_shift,
    refine_matches,
    residuals,
    similarity_parameters,
    transform_agrees,
    translation,
)
from zdask.ops.stars import detect_stars

__all__ = [
    "STATUS_WCS", "STATUS_STARS", "STATUS_PHASE", "STATUS_REFERENCE", "STATUS_EXCLUDED",
    "PHASE_MIN_RESPONSE", "UNSOLVED_SCALE_TOLERANCE", "MAX_STARS", "AlignSource", "AlignResult",
    "default_tolerance", "reference_index", "reference_catalogue", "align_frame",
    "attach_unsolved", "read_green", "compose_tan",
]

STATUS_WCS, STATUS_STARS, STATUS_PHASE = "wcs", "stars", "phase"
STATUS_REFERENCE, STATUS_EXCLUDED = "reference", "excluded"

#: smallest ``cv2.phaseCorrelate`` response accepted. Measured: 0.9–1.1 between overlapping
#: star fields (simulated 270×480 and 540×960 frames, and synthetic fields of only 2–5 stars);
#: 0.02–0.18 between a star field and pure noise or an unrelated star field.
PHASE_MIN_RESPONSE = 0.3
#: a frame without WCS must match the reference with a similarity scale within 5 % of 1
UNSOLVED_SCALE_TOLERANCE = 0.05
#: stars detected per frame (astroalign uses the brightest 50, the refit all of them): as many
#: as the calibration keeps with each frame, so that alignment can use those
MAX_STARS = STAR_COUNT_LIMIT
#: the reference warped onto the frame must cover this fraction of it for phase correlation
MIN_PHASE_OVERLAP = 0.25
#: a detection at the same raw pixel (within this radius) of the frame and of the reference,
#: although the WCS says the sky moved by more than FIXED_PATTERN_MIN_MOTION_PX there, is
#: dropped as fixed pattern before matching
FIXED_PATTERN_RADIUS_PX = 0.75
FIXED_PATTERN_MIN_MOTION_PX = 2.0
_MATCH_RADIUS_PX = 2.0


@dataclass(frozen=True)
class AlignSource:
    """A calibrated frame as the alignment sees it: where its pixels are and its header WCS."""

    path: str
    root: str
    key: str
    token: str
    wcs_header: dict | None
    shape: tuple[int, int]

    def __hash__(self) -> int:  # wcs_header is a dict
        return hash((self.path, self.root, self.key, self.token))


@dataclass(frozen=True)
class AlignResult:
    path: str
    status: str  # wcs | stars | phase | reference | excluded
    wcs_header: dict | None  # the WCS to use; None when excluded
    residual_px: float | None  # median residual of the header WCS against matched stars
    n_matches: int
    reason: str | None  # why excluded / why the phase fallback / how a second try matched

    def __hash__(self) -> int:
        return hash((self.path, self.status, self.n_matches))

    def to_json(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.wcs_header is not None:
            out["wcs_header"] = dict(self.wcs_header)
        return out

    @classmethod
    def from_json(cls, data: dict) -> AlignResult:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


def default_tolerance(shape: tuple[int, int]) -> float:
    """How far (px) a match may move a corner or the centre away from the WCS prediction.

    max(10 px, 1 % of the frame diagonal): 22 px on a 1080×1920 frame. Several times the header
    WCS error of plate-solved frames (a few px), so right matches pass; a match on fixed-pattern
    pixels lands a whole dither (tens of px) from the prediction, and a wrong asterism match
    usually much farther, so they fail. It admits a scale error up to 2 % or a rotation up to
    about 1.1° (a corner is half a diagonal from the centre).
    """
    h, w = shape[:2]
    return max(10.0, 0.01 * math.hypot(h, w))


# ------------------------------------------------------------------------------ reference
def _has_wcs(cards: dict | None) -> bool:
    return bool(cards)


def read_green(src: AlignSource) -> np.ndarray:
    """The calibrated frame's green channel (channel 1) or its only channel, float32 (H, W)."""
    return _green(store.open_array(src.root, f"frames/{src.key}", src.token))


def _green(arr) -> np.ndarray:
    return np.asarray(arr[:, :, star_channel(arr.shape[-1])], dtype=np.float32)


def source_stars(src: AlignSource) -> np.ndarray:
    """The frame's stars, (N, 3) x, y, flux brightest first: those the calibration found and
    kept with the frame (the same detection on the same pixels), else found in its green
    channel now (a frame stored by other code)."""
    arr = store.open_array(src.root, f"frames/{src.key}", src.token)
    kept = stored_stars(arr.attrs)
    return kept if kept is not None else detect_stars(_green(arr), max_stars=MAX_STARS)


def reference_catalogue(ref: AlignSource) -> dict:
    """Worker task: the reference's stars, brightest first.

    ``{"xy": (N, 2) pixels, "flux": (N,), "sky": (N, 2) RA/Dec degrees via the reference WCS,
    "shape": (H, W), "path": ref.path}``.
    """
    if not _has_wcs(ref.wcs_header):
        raise ValueError(f"reference frame {ref.path} has no celestial WCS")
    stars = source_stars(ref)
    xy = stars[:, :2].copy()
    if len(xy):
        ra, dec = wcs_from_header(ref.wcs_header).all_pix2world(xy[:, 0], xy[:, 1], 0)
        sky = np.stack([np.asarray(ra) % 360.0, np.asarray(dec)], axis=1)
    else:
        sky = np.zeros((0, 2))
    return {"xy": xy, "flux": stars[:, 2].copy(), "sky": sky, "shape": tuple(ref.shape), "path": ref.path}


# --------------------------------------------------------------------------------- WCS cards
_TAN_CTYPES = ("RA---TAN", "DEC--TAN")


def _is_plain_tan(cards: dict) -> bool:
    ctypes = (str(cards.get("CTYPE1", "")).strip(), str(cards.get("CTYPE2", "")).strip())
    if ctypes != _TAN_CTYPES:
        return False
    return not any(str(k).startswith(("A_", "B_", "AP_", "BP_", "PV")) for k in cards)


def _tan_cards(crval, crpix0, cd, cards: dict) -> dict:
    """Plain TAN cards (CRPIX 1-based from 0-based ``crpix0``), frame keywords copied."""
    out = {
        "CTYPE1": _TAN_CTYPES[0], "CTYPE2": _TAN_CTYPES[1], "CUNIT1": "deg", "CUNIT2": "deg",
        "CRVAL1": float(crval[0]), "CRVAL2": float(crval[1]),
        "CRPIX1": float(crpix0[0]) + 1.0, "CRPIX2": float(crpix0[1]) + 1.0,
        "CD1_1": float(cd[0, 0]), "CD1_2": float(cd[0, 1]),
        "CD2_1": float(cd[1, 0]), "CD2_2": float(cd[1, 1]),
    }
    for key in ("RADESYS", "EQUINOX", "LONPOLE"):
        if key in cards:
            out[key] = cards[key]
    out.setdefault("RADESYS", "ICRS")
    return out


def compose_tan(cards: dict, transform) -> dict:
    """Plain TAN cards of ``world(p) = header(T(p))`` for a TAN header and a similarity T.

    With ``q = A p + t``: CD' = CD·A, CRPIX' = A⁻¹(CRPIX − t) (0-based), CRVAL unchanged.
    """
    m = np.asarray(getattr(transform, "params", transform), dtype=np.float64)
    wcs = wcs_from_header(cards)
    cd = np.asarray(wcs.pixel_scale_matrix, dtype=np.float64)
    a, t = m[:2, :2], m[:2, 2]
    crpix0 = np.linalg.solve(a, np.asarray(wcs.wcs.crpix, dtype=np.float64) - 1.0 - t)
    return _tan_cards(wcs.wcs.crval, crpix0, cd @ a, cards)


def _fit_tan(xy: np.ndarray, sky: np.ndarray, cards: dict) -> dict:
    """Plain TAN cards fitted to pixel positions and their RA/Dec (for non-TAN references)."""
    from astropy.coordinates import SkyCoord
    from astropy.wcs.utils import fit_wcs_from_points

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = fit_wcs_from_points((xy[:, 0], xy[:, 1]), SkyCoord(sky[:, 0], sky[:, 1], unit="deg"),
                                     projection="TAN")
    cd = np.asarray(fitted.pixel_scale_matrix, dtype=np.float64)
    return _tan_cards(fitted.wcs.crval, np.asarray(fitted.wcs.crpix) - 1.0, cd, cards)


def _refined_cards(cards: dict, transform, frame_xy: np.ndarray, sky: np.ndarray) -> dict:
    if _is_plain_tan(cards):
        return compose_tan(cards, transform)
    return _fit_tan(frame_xy, sky, cards)


# ---------------------------------------------------------------------------------- matching
@dataclass
class _Match:
    transform: np.ndarray
    src_index: np.ndarray  # into the frame's stars
    dst_index: np.ndarray  # into the target list
    how: str


def _try_astroalign(stars_xy, target_xy, tol=None):
    found = match_stars(stars_xy, target_xy)
    if found is None:
        return None
    m, si, di = refine_matches(stars_xy, target_xy, found[0], radius=_MATCH_RADIUS_PX)
    return _Match(m, si, di, "astroalign")


def _try_vote(stars_xy, target_xy, tol):
    found = match_by_offset_vote(stars_xy, target_xy, max_shift=tol)
    if found is None:
        return None
    m, si, di = refine_matches(stars_xy, target_xy, found[0], radius=_MATCH_RADIUS_PX)
    return _Match(m, si, di, "offset vote")


_MATCHERS = (("astroalign", _try_astroalign), ("offset vote", _try_vote))


def _fixed_pattern(stars_xy, ref_xy, pred_xy, radius=FIXED_PATTERN_RADIUS_PX,
                   min_motion=FIXED_PATTERN_MIN_MOTION_PX):
    """Masks (frame detections, reference detections) of fixed-pattern sources.

    A detection at the same raw pixel (within ``radius``) in the frame and in the reference,
    where the WCS says the sky moved by more than ``min_motion`` px between them, is a hot or
    warm pixel (or another sensor artefact), not a star. ``ref_xy`` are the reference's pixel
    positions, ``pred_xy`` the same stars predicted in the frame.
    """
    star_fixed = np.zeros(len(stars_xy), dtype=bool)
    ref_fixed = np.zeros(len(ref_xy), dtype=bool)
    moved = np.flatnonzero(np.hypot(*(pred_xy - ref_xy).T) > min_motion) if len(ref_xy) else []
    if len(moved) == 0 or len(stars_xy) == 0:
        return star_fixed, ref_fixed
    from scipy.spatial import cKDTree

    dist, j = cKDTree(ref_xy[moved]).query(stars_xy, distance_upper_bound=radius)
    star_fixed = np.isfinite(dist)
    ref_fixed[moved[j[star_fixed]]] = True
    return star_fixed, ref_fixed


def _excluded(src: AlignSource, reason: str, n_matches: int = 0, residual=None) -> AlignResult:
    return AlignResult(src.path, STATUS_EXCLUDED, None, residual, int(n_matches), reason)


def align_frame(
    src: AlignSource, ref: AlignSource, catalogue: dict, *, wcs_threshold_px: float = 0.15,
    tolerance_px: float | None = None, min_matches: int = 8,
) -> AlignResult:
    """Worker task: the WCS to use for one frame of a group (see the module docstring)."""
    if src.path == ref.path:
        return AlignResult(src.path, STATUS_REFERENCE, dict(ref.wcs_header), 0.0,
                           int(len(catalogue["xy"])), None)
    shape = tuple(src.shape[:2])
    tol = float(tolerance_px) if tolerance_px is not None else default_tolerance(shape)
    stars_xy = source_stars(src)[:, :2]
    if not _has_wcs(src.wcs_header):
        return _align_unsolved(src, ref, catalogue, stars_xy, min_matches)

    cards = dict(src.wcs_header)
    wcs = wcs_from_header(cards)
    cat_sky = np.asarray(catalogue["sky"], dtype=np.float64).reshape(-1, 2)
    if len(cat_sky):
        px, py = wcs.all_world2pix(cat_sky[:, 0], cat_sky[:, 1], 0)
        pred = np.stack([px, py], axis=1)
    else:
        pred = np.zeros((0, 2))
    h, w = shape
    inside = (np.isfinite(pred).all(axis=1) & (pred[:, 0] > -tol) & (pred[:, 0] < w - 1 + tol)
              & (pred[:, 1] > -tol) & (pred[:, 1] < h - 1 + tol))
    finite = np.flatnonzero(np.isfinite(pred).all(axis=1))
    star_fixed, ref_fixed = _fixed_pattern(
        stars_xy, np.asarray(catalogue["xy"], dtype=np.float64).reshape(-1, 2)[finite], pred[finite])
    inside[finite[ref_fixed]] = False
    stars_xy = stars_xy[~star_fixed]
    pred_idx = np.flatnonzero(inside)  # brightest first, as the catalogue
    pred_xy = pred[pred_idx]

    notes = []
    if star_fixed.any():
        notes.append(f"ignored {int(star_fixed.sum())} fixed-pattern detections")
    confirmed = _header_confirmed(stars_xy, pred_xy, shape, tol, wcs_threshold_px, min_matches)
    if confirmed is not None:
        # Most frames: the header is already right to a fraction of a pixel; astroalign
        # (about 0.3 s a frame) runs only for the others.
        residual, n = confirmed
        return AlignResult(src.path, STATUS_WCS, cards, residual, n, "; ".join(notes) or None)
    best_n = 0
    for how, attempt in _MATCHERS:
        match = attempt(stars_xy, pred_xy, tol)
        if match is None:
            notes.append(f"{how} found no match")
            continue
        n = len(match.src_index)
        if not transform_agrees(match.transform, shape, tol):
            notes.append(f"{how}: transform moves the frame by "
                         f"{max_displacement(match.transform, shape):.1f} px from the WCS prediction "
                         f"(tolerance {tol:.1f} px)")
            continue
        best_n = max(best_n, n)
        if n < min_matches:
            notes.append(f"{how}: {n} star matches (< {min_matches})")
            continue
        p = stars_xy[match.src_index]
        residual = float(np.median(np.hypot(*(apply_transform(match.transform, p) - p).T)))
        note = f"{'; '.join(notes)}; matched by {match.how}" if notes else None
        if residual <= wcs_threshold_px:
            return AlignResult(src.path, STATUS_WCS, cards, residual, n, note)
        sky = cat_sky[pred_idx[match.dst_index]]
        new = _refined_cards(cards, match.transform, p, sky)
        return AlignResult(src.path, STATUS_STARS, new, residual, n, note)

    return _align_by_phase(src, ref, cards, shape, tol, best_n, "; ".join(notes))


def _header_confirmed(stars_xy, pred_xy, shape, tol, threshold, min_matches):
    """(residual, matches) when the stars sit where the header WCS predicts them to within
    ``threshold`` (median), found by nearest neighbours around the prediction; else None."""
    if len(stars_xy) < min_matches or len(pred_xy) < min_matches:
        return None
    transform, si, _ = refine_matches(stars_xy, pred_xy, np.eye(3), radius=_MATCH_RADIUS_PX)
    if len(si) < min_matches or not transform_agrees(transform, shape, tol):
        return None
    p = stars_xy[si]
    residual = float(np.median(np.hypot(*(apply_transform(transform, p) - p).T)))
    return (residual, len(si)) if residual <= threshold else None


def _align_by_phase(src, ref, cards, shape, tol, n_matches, notes) -> AlignResult:
    from zdask.ops.warp import pixel_map, remap, wcs_pixel_transform

    h, w = shape
    ref_wcs, src_wcs = wcs_from_header(ref.wcs_header), wcs_from_header(cards)
    map_x, map_y = pixel_map(wcs_pixel_transform(ref_wcs, src_wcs), (0, h), (0, w))
    warped = remap(read_green(ref), map_x, map_y)
    covered = np.isfinite(warped)
    if covered.mean() < MIN_PHASE_OVERLAP:
        return _excluded(src, f"alignment failed: {n_matches} star matches ({notes}); the reference "
                         f"covers {100 * covered.mean():.0f}% of the frame", n_matches)
    image = read_green(src)
    image = np.where(covered, image, np.nan)
    dx, dy, response = phase_correlation_shift(warped, image)
    shift = math.hypot(dx, dy)
    if response >= PHASE_MIN_RESPONSE and shift < tol:
        # A star the header WCS predicts at p sits at p + d: T(p) = p − d, CRPIX moves by +d.
        new = (compose_tan(cards, translation(-dx, -dy)) if _is_plain_tan(cards)
               else _shift_crpix(cards, dx, dy))
        reason = f"star matching failed ({notes}); phase correlation shift ({dx:.2f}, {dy:.2f}) px, " \
                 f"response {response:.2f}"
        return AlignResult(src.path, STATUS_PHASE, new, shift, int(n_matches), reason)
    extra = f", shift {shift:.1f} px (tolerance {tol:.1f})" if response >= PHASE_MIN_RESPONSE else ""
    return _excluded(src, f"alignment failed: {n_matches} star matches ({notes}), phase correlation "
                     f"response {response:.2f}{extra}", n_matches)


def _shift_crpix(cards: dict, dx: float, dy: float) -> dict:
    out = dict(cards)
    out["CRPIX1"] = float(out.get("CRPIX1", 0.0)) + dx
    out["CRPIX2"] = float(out.get("CRPIX2", 0.0)) + dy
    return out


def _align_unsolved(src, ref, catalogue, stars_xy, min_matches) -> AlignResult:
    cat_xy = np.asarray(catalogue["xy"], dtype=np.float64).reshape(-1, 2)
    cat_sky = np.asarray(catalogue["sky"], dtype=np.float64).reshape(-1, 2)
    match = _try_astroalign(stars_xy, cat_xy)
    if match is None:
        return _excluded(src, f"no celestial WCS and star matching failed ({len(stars_xy)} stars "
                         f"detected, {len(cat_xy)} in the reference)")
    n = len(match.src_index)
    scale = similarity_parameters(match.transform)[0]
    if n < min_matches or abs(scale - 1.0) > UNSOLVED_SCALE_TOLERANCE:
        return _excluded(src, f"no celestial WCS and star matching failed: {n} star matches "
                         f"(need {min_matches}), scale {scale:.3f} (need 1 ± {UNSOLVED_SCALE_TOLERANCE})", n)
    p = stars_xy[match.src_index]
    rms = float(np.sqrt(np.mean(residuals(match.transform, p, cat_xy[match.dst_index]) ** 2)))
    new = _refined_cards(dict(ref.wcs_header), match.transform, p, cat_sky[match.dst_index])
    return AlignResult(src.path, STATUS_STARS, new, None, n,
                       f"no celestial WCS: registered to {ref.path} by star matching "
                       f"(rms {rms:.2f} px)")


# ------------------------------------------------------------------------------ unsolved
def attach_unsolved(frames: list[Frame], unsolved: list[Frame]) -> dict[str, str | None]:
    """Each unsolved frame's path → the path of the solved frame nearest in time (pure).

    Only solved frames of the same layout, Bayer pattern and size qualify; ties go to the
    earlier frame, then the lower path. None when no frame qualifies or the unsolved frame has
    no time.
    """
    out: dict[str, str | None] = {}
    for u in unsolved:
        best = None
        if u.time_mjd is not None:
            same = [f for f in frames if f.time_mjd is not None and (f.layout, f.bayer, f.height, f.width)
                    == (u.layout, u.bayer, u.height, u.width) and f.path != u.path]
            if same:
                best = min(same, key=lambda f: (abs(f.time_mjd - u.time_mjd), f.time_mjd, f.path)).path
        out[u.path] = best
    return out

"""Survey geometry and per-frame observing conditions.

The observing model, kept deliberately simple but self-consistent:

* Panels sit on a grid of the survey plane (TAN at the survey centre),
  spaced by ``(1 - overlap)`` frames; each frame is offset from its panel
  centre by random pointing jitter.
* One parallactic angle ``q(t)`` (position angle of the zenith, east of
  north) changes linearly in time and is zero at the survey's mid-time.
  An alt-az camera keeps the zenith at +y, so its frames rotate on the sky
  (CROTA2-like angle ``-q``) while the horizon glow stays at -y. An
  equatorial camera keeps a constant angle on the sky, so the glow's
  direction turns in the frame as ``q`` changes.
* Transparency, seeing and sky level have a per-panel value (panels differ
  photometrically) plus small frame-to-frame variations.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from .spec import SurveySpec

__all__ = ["FramePlan", "plane_wcs", "frame_wcs", "wcs_cards", "plan_frames",
           "rotation_cd", "fits_float"]


@dataclass(frozen=True)
class FramePlan:
    """Everything decided about one frame before it is rendered."""

    index: int
    """Position in shooting order (0-based, over the whole survey)."""
    panel: int
    """Row-major panel index."""
    frame_in_panel: int
    """Position within the panel."""
    mode: str
    """``"EQ"`` or ``"ALT_AZ"``."""
    t_start_s: float
    """Exposure start, seconds after the survey start."""
    date_obs: str
    """Exposure start as ISO-8601 UTC with milliseconds."""
    crval: tuple[float, float]
    """True (RA, Dec) of the frame centre, degrees."""
    rotation_deg: float
    """CROTA2-like angle of the true WCS, degrees."""
    parallactic_deg: float
    """Parallactic angle at mid-exposure, degrees."""
    jitter_px: tuple[float, float]
    """Pointing offset from the panel centre, survey-plane pixels (x, y)."""
    header_crval: tuple[float, float]
    """CRVAL written to the header (true CRVAL plus the simulated error)."""
    psf_fwhm_px: float
    """PSF core FWHM, pixels."""
    transparency: float
    """Multiplier of the astronomical signal."""
    sky_level_adu: tuple[float, float, float]
    """(R, G, B) sky at the frame centre, ADU."""
    gradient_frac: tuple[float, float, float]
    """(R, G, B) relative sky change from centre to the farthest corner."""
    gradient_angle_deg: float
    """Direction (pixel frame, from +x towards +y) in which the sky brightens,
    i.e. towards the horizon."""
    gradient_quad: float = 0.0
    """Quadratic part of the gradient in green, as a fraction of the sky level
    (``SurveySpec.gradient_quad_frac`` with this frame's scatter)."""


def fits_float(value: float) -> float:
    """``value`` as it reads back from a FITS header card.

    Cards hold at most 20 characters of a float, so a header loses the last
    digits of e.g. a CD element. Rounding every WCS number this way up front
    makes the WCS used for rendering, the header and the manifest identical.
    """
    return float(fits.Card.fromstring(fits.Card("X", float(value)).image).value)


def plane_wcs(spec: SurveySpec, origin: tuple[float, float] = (0.0, 0.0)) -> WCS:
    """TAN WCS of the survey plane, north up, east left.

    Parameters
    ----------
    spec : SurveySpec
        Centre and pixel scale.
    origin : tuple of float
        Plane (x, y) that becomes 0-based pixel (0, 0); ``(0, 0)`` puts the
        survey centre at pixel (0, 0).
    """
    return frame_wcs(spec, (spec.ra_deg, spec.dec_deg),
                     (1.0 - origin[0], 1.0 - origin[1]), 0.0)


def rotation_cd(scale_deg: float, rotation_deg: float) -> np.ndarray:
    """CD matrix of an east-left image rotated by a CROTA2-like angle.

    Same as ``CDELT1 = -scale, CDELT2 = scale, CROTA2 = rotation_deg``; pixel
    +y then points to position angle ``-rotation_deg`` on the sky.
    """
    t = np.deg2rad(rotation_deg)
    c, s = np.cos(t), np.sin(t)
    # "+ 0.0" turns -0.0 into 0.0 so headers and JSON don't show "-0.0".
    return np.array([[-scale_deg * c, -scale_deg * s], [-scale_deg * s, scale_deg * c]]) + 0.0


def frame_wcs(spec: SurveySpec, crval: tuple[float, float], crpix: tuple[float, float],
              rotation_deg: float) -> WCS:
    """Celestial TAN WCS (``CRPIX`` is 1-based, FITS convention)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.crval = [fits_float(v) for v in crval]
    w.wcs.crpix = [fits_float(v) for v in crpix]
    cd = rotation_cd(spec.pixel_scale_arcsec / 3600.0, rotation_deg)
    w.wcs.cd = np.vectorize(fits_float)(cd)
    w.wcs.radesys = "ICRS"
    w.wcs.equinox = 2000.0
    w.wcs.set()
    return w


def wcs_cards(w: WCS) -> dict:
    """The WCS as plain header cards (JSON-friendly, CD-matrix form)."""
    cd = w.wcs.cd
    return {
        "CTYPE1": w.wcs.ctype[0], "CTYPE2": w.wcs.ctype[1],
        "CUNIT1": "deg", "CUNIT2": "deg",
        "CRVAL1": float(w.wcs.crval[0]), "CRVAL2": float(w.wcs.crval[1]),
        "CRPIX1": float(w.wcs.crpix[0]), "CRPIX2": float(w.wcs.crpix[1]),
        "CD1_1": float(cd[0, 0]), "CD1_2": float(cd[0, 1]),
        "CD2_1": float(cd[1, 0]), "CD2_2": float(cd[1, 1]),
        "RADESYS": "ICRS", "EQUINOX": 2000.0,
    }


def _horizon_angle(cd: np.ndarray, q_deg: float) -> float:
    """Frame-pixel direction (degrees from +x towards +y) of the horizon.

    The zenith lies at position angle ``q`` (east of north); the horizon
    glow brightens the opposite way. Intermediate world coordinates are
    (east, north), so the sky vector is mapped back through ``CD^-1``.
    """
    q = np.deg2rad(q_deg)
    d = np.linalg.solve(cd, [-np.sin(q), -np.cos(q)])
    return float(np.rad2deg(np.arctan2(d[1], d[0])))


def plan_frames(spec: SurveySpec, rng: np.random.Generator) -> list[FramePlan]:
    """Decide pointing, timing and conditions of every frame.

    Parameters
    ----------
    spec : SurveySpec
        The survey.
    rng : numpy.random.Generator
        Stream used for all per-panel and per-frame draws (in a fixed order,
        so the plan depends only on the spec).

    Returns
    -------
    list of FramePlan
        In shooting order (panel-major, row-major panels).
    """
    rows, cols = spec.panels
    w, h = spec.frame_size
    nf = spec.frames_per_panel
    scale = spec.pixel_scale_arcsec / 3600.0
    plane = plane_wcs(spec)
    crpix = ((w + 1) / 2.0, (h + 1) / 2.0)  # frame centre, 1-based
    panel_span = (nf - 1) * spec.interval_s + spec.exptime_s + spec.slew_s
    t0 = datetime.fromisoformat(spec.start_time)
    t_mid_survey = 0.5 * (spec.exptime_s + (spec.n_panels - 1) * panel_span
                          + (nf - 1) * spec.interval_s + spec.exptime_s)
    lo_f, hi_f = spec.psf_fwhm_range_px
    lo_t, hi_t = spec.transparency_range
    plans: list[FramePlan] = []
    for p in range(spec.n_panels):
        r, c = divmod(p, cols)
        # Row 0 north (+y), column 0 east (-x) of the plane.
        cx = (c - (cols - 1) / 2.0) * w * (1.0 - spec.overlap)
        cy = ((rows - 1) / 2.0 - r) * h * (1.0 - spec.overlap)
        altaz = spec.is_altaz(p)
        eq_rot = float(rng.normal(0.0, spec.eq_rotation_scatter_deg))
        fwhm_p = rng.uniform(lo_f + 0.15 * (hi_f - lo_f), lo_f + 0.6 * (hi_f - lo_f))
        transp_p = rng.uniform(lo_t + 0.25 * (hi_t - lo_t), hi_t - 0.05 * (hi_t - lo_t))
        sky_p = rng.uniform(0.85, 1.2)
        grad_p = rng.uniform(0.8, 1.2)
        for k in range(nf):
            t_start = p * panel_span + k * spec.interval_s
            q = spec.field_rotation_deg_per_min * (t_start + spec.exptime_s / 2 - t_mid_survey) / 60.0
            jit = np.clip(rng.normal(0.0, spec.jitter_px, 2), -3 * spec.jitter_px, 3 * spec.jitter_px)
            ra, dec = plane.wcs_pix2world([[cx + jit[0], cy + jit[1]]], 0)[0]
            rot = -q if altaz else eq_rot
            cd = rotation_cd(scale, rot)
            grad_angle = -90.0 if altaz else _horizon_angle(cd, q)
            fwhm = float(np.clip(fwhm_p + rng.normal(0.0, 0.08 * (hi_f - lo_f)), lo_f, hi_f))
            transp = float(np.clip(transp_p - abs(rng.normal(0.0, 0.03)), lo_t, hi_t))
            sky_g = spec.sky_adu_per_s * spec.exptime_s * sky_p * (1.0 + rng.normal(0.0, 0.02))
            # Header error: move the reference point by a random pixel offset
            # (RMS radial error wcs_error_px) and record that point's RA/Dec.
            err = rng.normal(0.0, spec.wcs_error_px / np.sqrt(2.0), 2)
            if spec.wcs_error_px > 0:
                fw = frame_wcs(spec, (ra, dec), crpix, rot)
                hra, hdec = fw.wcs_pix2world([[crpix[0] - 1 + err[0], crpix[1] - 1 + err[1]]], 0)[0]
            else:
                hra, hdec = ra, dec
            date = t0 + timedelta(seconds=t_start)
            # Drawn only when asked for, so that surveys without scatter stay as they were.
            quad = spec.gradient_quad_frac + (rng.uniform(-spec.gradient_quad_scatter, spec.gradient_quad_scatter)
                                              if spec.gradient_quad_scatter > 0 else 0.0)
            plans.append(FramePlan(
                index=p * nf + k, panel=p, frame_in_panel=k,
                mode="ALT_AZ" if altaz else "EQ",
                t_start_s=float(t_start),
                date_obs=date.isoformat(timespec="milliseconds"),
                crval=(float(ra), float(dec)),
                rotation_deg=float(rot), parallactic_deg=float(q),
                jitter_px=(float(jit[0]), float(jit[1])),
                header_crval=(float(hra), float(hdec)),
                psf_fwhm_px=fwhm, transparency=transp,
                sky_level_adu=tuple(float(sky_g * v) for v in spec.sky_color),
                gradient_frac=tuple(float(spec.gradient_frac * grad_p * v)
                                    for v in spec.gradient_color),
                gradient_angle_deg=grad_angle, gradient_quad=float(quad),
            ))
    return plans

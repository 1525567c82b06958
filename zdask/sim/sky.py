"""The astronomical sky: a star catalogue, a galaxy, and their noiseless image.

Everything here lives in the *survey plane*: the gnomonic (TAN) projection
centred on the survey centre, north up, east left, sampled at the frames'
pixel scale. The truth image is a rectangle of that plane, so positions in
truth pixels and plane pixels differ only by an integer offset.

Units: ADU collected by one pixel of a frame of ``exptime_s`` at
transparency 1, per colour channel, pedestal and sky removed -- i.e. what a
perfect debayer of a calibrated frame would show.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .psf import render_stars
from .spec import SurveySpec

__all__ = ["StarCatalog", "GalaxyModel", "make_star_catalog", "make_galaxy",
           "star_rgb_weights", "render_truth"]

# Effective wavelengths (nm) of the R, G, B filters of a consumer CMOS colour
# sensor; only used to turn a colour index into flux ratios.
_LAMBDA_RGB_NM = np.array([600.0, 530.0, 465.0])
_SUN_BV = 0.65


def _bv_to_teff(bv: np.ndarray) -> np.ndarray:
    """Effective temperature (K) from B-V (Ballesteros 2012)."""
    return 4600.0 * (1.0 / (0.92 * bv + 1.7) + 1.0 / (0.92 * bv + 0.62))


def _planck(lam_nm: np.ndarray, teff: np.ndarray) -> np.ndarray:
    # Only ratios are used, so constants other than hc/k drop out.
    x = 1.4388e7 / (lam_nm * teff)  # hc / (lambda k T) with lambda in nm
    return lam_nm**-5 / np.expm1(x)


def star_rgb_weights(bv: np.ndarray) -> np.ndarray:
    """(R, G, B) flux relative to green for stars of colour index ``bv``.

    A blackbody at the star's temperature seen through three narrow filters,
    normalised so that a Sun-coloured star (B-V = 0.65) is (1, 1, 1): the
    camera is white-balanced on G2 stars, so red stars come out red and hot
    stars blue.

    Parameters
    ----------
    bv : ndarray
        B-V colour index, shape (N,).

    Returns
    -------
    ndarray
        Shape (N, 3), column 1 (green) is exactly 1.
    """
    bv = np.atleast_1d(np.asarray(bv, dtype=np.float64))
    t = _bv_to_teff(bv)[:, None]
    b = _planck(_LAMBDA_RGB_NM[None, :], t)
    b /= b[:, 1:2]
    sun = _planck(_LAMBDA_RGB_NM, _bv_to_teff(np.array(_SUN_BV)))
    return b / (sun / sun[1])


@dataclass(frozen=True)
class StarCatalog:
    """Stars of the survey footprint.

    Attributes
    ----------
    x, y : ndarray
        0-based position in survey-plane pixels.
    ra, dec : ndarray
        ICRS coordinates in degrees (the ground truth other code must find).
    mag : ndarray
        Green (V-like) magnitude.
    bv : ndarray
        B-V colour index.
    flux : ndarray
        (N, 3) total (R, G, B) flux in ADU per frame at transparency 1.
    """

    x: np.ndarray
    y: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    mag: np.ndarray
    bv: np.ndarray
    flux: np.ndarray

    def __len__(self) -> int:
        return int(self.x.size)


def make_star_catalog(rng: np.random.Generator, spec: SurveySpec,
                      bounds: tuple[float, float, float, float], plane_wcs) -> StarCatalog:
    """Draw a random star field over a rectangle of the survey plane.

    Positions are uniform; magnitudes follow cumulative counts
    ``N(<m) ~ 10**(count_slope * m)`` between ``mag_bright`` and
    ``mag_limit`` (sampled by inverting that distribution); colours are a
    broad B-V distribution peaking at K-type stars, as in a Milky-Way field.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random stream.
    spec : SurveySpec
        Supplies density, magnitude range, zero point and exposure time.
    bounds : tuple of float
        (x0, x1, y0, y1) in survey-plane pixels.
    plane_wcs : astropy.wcs.WCS
        Survey-plane WCS (0-based pixels) used to attach RA/Dec.

    Returns
    -------
    StarCatalog
    """
    x0, x1, y0, y1 = bounds
    area_deg2 = (x1 - x0) * (y1 - y0) * (spec.pixel_scale_arcsec / 3600.0) ** 2
    n = int(rng.poisson(spec.star_density_deg2 * area_deg2))
    x = rng.uniform(x0, x1, n)
    y = rng.uniform(y0, y1, n)
    a = spec.count_slope
    lo, hi = 10.0 ** (a * spec.mag_bright), 10.0 ** (a * spec.mag_limit)
    mag = np.log10(lo + rng.uniform(size=n) * (hi - lo)) / a
    bv = np.clip(rng.normal(0.8, 0.35, n), -0.3, 2.0)
    flux_g = spec.exptime_s * 10.0 ** (-0.4 * (mag - spec.zero_point_mag))
    flux = flux_g[:, None] * star_rgb_weights(bv)
    ra, dec = plane_wcs.wcs_pix2world(x, y, 0)
    return StarCatalog(x=x, y=y, ra=np.asarray(ra), dec=np.asarray(dec), mag=mag, bv=bv, flux=flux)


@dataclass(frozen=True)
class GalaxyModel:
    """An inclined disk galaxy: Sersic bulge + exponential disk + faint halo.

    Lengths are survey-plane pixels, brightnesses ADU per pixel per frame at
    transparency 1 (green), colours (R, G, B) relative to green. The profile
    is smooth on scales much larger than the PSF (the bulge has a softened
    core), so it is used without PSF convolution.
    """

    x0: float
    """Centre, survey-plane x (pixels, 0-based)."""
    y0: float
    """Centre, survey-plane y (pixels, 0-based)."""
    pa_deg: float
    """Position angle of the major axis, degrees east of north."""
    disk_h: float
    """Disk exponential scale length along the major axis."""
    disk_q: float
    """Disk minor/major axis ratio (cos of the inclination, thick disk)."""
    disk_i0: float
    """Disk central brightness."""
    bulge_re: float
    """Bulge effective radius."""
    bulge_q: float
    """Bulge axis ratio."""
    bulge_i0: float
    """Bulge brightness at the (softened) centre."""
    bulge_core: float
    """Core softening radius of the bulge."""
    halo_h: float
    """Halo exponential scale length."""
    halo_q: float
    """Halo axis ratio."""
    halo_i0: float
    """Halo central brightness."""
    colors: tuple[tuple[float, float, float], ...] = ((1.3, 1.0, 0.65), (0.95, 1.0, 1.05),
                                                       (1.0, 1.0, 0.9))
    """(R, G, B) of bulge, disk and halo: old red bulge, bluer star-forming
    disk."""

    def image(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Evaluate the (R, G, B) surface brightness at plane pixels.

        Parameters
        ----------
        x, y : ndarray
            Broadcastable survey-plane pixel coordinates.

        Returns
        -------
        ndarray of float32
            Shape ``(3,) + broadcast(x, y).shape``.
        """
        dx = np.asarray(x, dtype=np.float32) - np.float32(self.x0)
        dy = np.asarray(y, dtype=np.float32) - np.float32(self.y0)
        pa = np.deg2rad(self.pa_deg)
        # North is +y and east is -x in the plane, so the major axis (PA
        # east of north) points along (-sin PA, cos PA).
        s, c = np.float32(np.sin(pa)), np.float32(np.cos(pa))
        a = -s * dx + c * dy
        b = c * dx + s * dy
        a2, b2 = a * a, b * b
        disk = self.disk_i0 * np.exp(-np.sqrt(a2 + b2 / self.disk_q**2) / self.disk_h)
        r_b = np.sqrt(a2 + b2 / self.bulge_q**2 + self.bulge_core**2)
        # Sersic n = 2 (b_n = 3.67): softer than de Vaucouleurs, no cusp.
        bulge = self.bulge_i0 * np.exp(-3.67 * (np.sqrt(r_b / self.bulge_re)
                                                - np.sqrt(self.bulge_core / self.bulge_re)))
        halo = self.halo_i0 * np.exp(-np.sqrt(a2 + b2 / self.halo_q**2) / self.halo_h)
        col = np.asarray(self.colors, dtype=np.float32)
        out = np.empty((3,) + disk.shape, dtype=np.float32)
        for ch in range(3):
            out[ch] = col[0, ch] * bulge + col[1, ch] * disk + col[2, ch] * halo
        return out

    def to_dict(self) -> dict:
        """JSON-friendly parameters."""
        return {k: (list(map(list, v)) if k == "colors" else float(v))
                for k, v in self.__dict__.items()}


def make_galaxy(spec: SurveySpec, x0: float = 0.0, y0: float = 0.0) -> GalaxyModel:
    """The survey's galaxy, scaled to the frame size.

    The disk diameter (to ``exp(-3.5)``, 3 % of the centre) is
    ``galaxy_major_axis_frac`` times a frame's longer side, so the galaxy
    always spans several panels whatever the frame size; it sits at the
    survey centre with an M31-like orientation and inclination.
    """
    diameter = spec.galaxy_major_axis_frac * max(spec.frame_size)
    h = diameter / 7.0
    t = spec.exptime_s
    return GalaxyModel(
        x0=x0, y0=y0, pa_deg=35.0,
        disk_h=h, disk_q=0.32, disk_i0=spec.galaxy_disk_adu_per_s * t,
        bulge_re=0.35 * h, bulge_q=0.75, bulge_i0=8.0 * spec.galaxy_disk_adu_per_s * t,
        bulge_core=3.0,
        halo_h=3.0 * h, halo_q=0.6, halo_i0=0.025 * spec.galaxy_disk_adu_per_s * t,
    )


NEBULA_COLOR = (1.4, 1.0, 0.8)  # (R, G, B) relative to green: H-alpha red, some H-beta / [O III]


def make_nebula(rng: np.random.Generator, shape: tuple[int, int], mean_adu: float) -> np.ndarray:
    """(3, H, W) float32 emission nebula filling the grid, mean ``mean_adu`` in green.

    A Gaussian random field with power spectrum ``k^-3`` (as much contrast per octave at every
    scale, the largest as large as the grid), exponentiated so it is positive and patchy, like
    emission nebulae are; it has no edge inside the grid.
    """
    h, w = shape
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.rfftfreq(w)[None, :]
    k = np.hypot(kx, ky)
    k[0, 0] = np.inf  # no mean term: the level is set below
    amplitude = np.maximum(k, 1.0 / max(h, w)) ** -1.5
    amplitude[0, 0] = 0.0
    noise = rng.normal(size=k.shape) + 1j * rng.normal(size=k.shape)
    field = np.fft.irfft2(noise * amplitude, s=(h, w))
    field = (field - field.mean()) / max(field.std(), 1e-12)
    green = np.exp(0.6 * field)
    green *= mean_adu / green.mean()
    return np.stack([c * green for c in NEBULA_COLOR]).astype(np.float32)


def render_truth(shape: tuple[int, int], origin: tuple[float, float], stars: StarCatalog,
                 galaxy: GalaxyModel, fwhm: float) -> tuple[np.ndarray, np.ndarray]:
    """Noiseless (R, G, B) sky on the truth grid.

    Parameters
    ----------
    shape : tuple of int
        Truth (height, width).
    origin : tuple of float
        Survey-plane (x, y) of truth pixel (0, 0).
    stars : StarCatalog
        Stars to draw (those off the grid are clipped naturally).
    galaxy : GalaxyModel
        The extended object.
    fwhm : float
        PSF core FWHM (pixels) of the stars.

    Returns
    -------
    sky, extended : ndarray of float32
        Both (3, H, W): stars + galaxy, and the galaxy alone.
    """
    h, w = shape
    ox, oy = origin
    extended = np.empty((3, h, w), dtype=np.float32)
    xs = np.arange(w, dtype=np.float32) + np.float32(ox)
    # Row blocks bound the float32 temporaries of the profile evaluation.
    for r0 in range(0, h, 512):
        ys = np.arange(r0, min(h, r0 + 512), dtype=np.float32) + np.float32(oy)
        extended[:, r0:r0 + ys.size] = galaxy.image(xs[None, :], ys[:, None])
    sky = extended.copy()
    for ch in range(3):
        sky[ch] += render_stars(shape, stars.x - ox, stars.y - oy, stars.flux[:, ch], fwhm)
    return sky, extended

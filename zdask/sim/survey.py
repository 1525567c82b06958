"""Top level: simulate a survey, write frames, truth and manifest.

Output layout of ``out_dir``::

    frames/Light_pPP_fFFF.fits   raw uint16 Bayer frames, names sort in time order
    truth.fits                   noiseless (3, H, W) sky + EXTENDED + STARS
    manifest.json                spec, per-frame ground truth, hot pixels

Random streams are ``numpy.random.default_rng([seed, k, ...])`` with a fixed
``k`` per purpose (plan, stars, noise of frame i, hot pixels, trails), so a
frame's content does not depend on the order or thread frames are rendered
in, and changing e.g. the number of trails leaves the star field alone.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.time import Time

from .camera import cfa_channels, digitise, frame_signal
from .layout import FramePlan, fits_float, frame_wcs, plan_frames, plane_wcs, wcs_cards
from .sky import make_galaxy, make_nebula, make_star_catalog, render_truth
from .spec import SurveySpec

__all__ = ["simulate_survey", "FRAME_PATTERN"]

FRAME_PATTERN = "Light_p{panel:02d}_f{frame:03d}.fits"
"""File name of a frame inside ``frames/``."""

_GRID_STEP_PX = 64   # coarse frame-to-truth grid spacing; the map is near affine
_TRUTH_MARGIN_PX = 32
_STAR_MARGIN_PX = 24  # stars this far off a frame still spill light onto it

_SEED_PLAN, _SEED_STARS, _SEED_NOISE, _SEED_HOT, _SEED_TRAILS, _SEED_NEBULA = range(6)


def _atomic_write_fits(hdul: fits.HDUList, path: Path) -> None:
    """Write to a temporary name in the same folder, then rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        hdul.writeto(f)
    os.replace(tmp, path)


def _atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _frame_corners(w: int, h: int) -> np.ndarray:
    return np.array([[-0.5, -0.5], [w - 0.5, -0.5], [-0.5, h - 0.5], [w - 0.5, h - 0.5]])


def _trails(spec: SurveySpec, rng: np.random.Generator) -> dict[int, dict]:
    """Frame index -> trail (endpoints on two different frame edges)."""
    w, h = spec.frame_size
    n = spec.n_trails_effective
    frames = np.sort(rng.choice(spec.n_frames, size=n, replace=False)) if n else []
    out = {}
    for i in frames:
        pts = []
        for edge in rng.choice(4, size=2, replace=False):
            u = rng.uniform(0.1, 0.9)
            pts.append([(0.0, u * (h - 1)), (w - 1.0, u * (h - 1)),
                        (u * (w - 1), 0.0), (u * (w - 1), h - 1.0)][edge])
        out[int(i)] = {"x0": pts[0][0], "y0": pts[0][1], "x1": pts[1][0], "y1": pts[1][1],
                       "width_px": float(rng.uniform(2.0, 4.0)),
                       "peak_adu": float(rng.uniform(3000.0, 20000.0))}
    return out


def _header(spec: SurveySpec, plan: FramePlan, cards: dict) -> fits.Header:
    hdr = fits.Header()
    hdr["OBJECT"] = ("zdask simulated field", "simulated by zdask.sim")
    hdr["IMAGETYP"] = "Light"
    hdr["INSTRUME"] = "Seestar S50"
    hdr["TELESCOP"] = "Seestar S50"
    hdr["FOCALLEN"] = (250.0, "[mm] focal length")
    hdr["XPIXSZ"] = (2.9, "[um] pixel size")
    hdr["YPIXSZ"] = (2.9, "[um] pixel size")
    hdr["DATE-OBS"] = (plan.date_obs, "UTC start of exposure")
    # MJD-OBS spares astropy's WCS its 'datfix' warning on every frame.
    hdr["MJD-OBS"] = (round(Time(plan.date_obs, scale="utc").mjd, 9), "[d] start of exposure")
    hdr["EXPTIME"] = (spec.exptime_s, "[s] exposure time")
    hdr["BAYERPAT"] = (spec.bayer, "colours of data[0,0], [0,1], [1,0], [1,1]")
    hdr["XBAYROFF"] = 0
    hdr["YBAYROFF"] = 0
    hdr["EQMODE"] = (0 if plan.mode == "ALT_AZ" else 1, "1 equatorial, 0 alt-az")
    hdr["EGAIN"] = (spec.gain_e_per_adu, "[e-/ADU] conversion gain")
    hdr["RDNOISE"] = (spec.read_noise_e, "[e-] read noise")
    hdr["PEDESTAL"] = (spec.pedestal_adu, "[ADU] bias offset")
    hdr["RA"] = (cards["CRVAL1"], "[deg] pointing")
    hdr["DEC"] = (cards["CRVAL2"], "[deg] pointing")
    hdr["PANEL"] = (plan.panel, "mosaic panel, row-major")
    hdr["FRAMENUM"] = (plan.frame_in_panel, "frame within panel")
    for k, v in cards.items():
        hdr[k] = v
    return hdr


def _render_one(spec, plan, cfa, truth_wcs, extended, stars, origin, hot_xy, hot_adu, trail,
                out_path):
    w, h = spec.frame_size
    crpix = ((w + 1) / 2.0, (h + 1) / 2.0)
    true_wcs = frame_wcs(spec, plan.crval, crpix, plan.rotation_deg)
    nodes_x = np.linspace(0.0, w - 1.0, int(np.ceil((w - 1) / _GRID_STEP_PX)) + 1)
    nodes_y = np.linspace(0.0, h - 1.0, int(np.ceil((h - 1) / _GRID_STEP_PX)) + 1)
    gx, gy = np.meshgrid(nodes_x, nodes_y)
    ra, dec = true_wcs.wcs_pix2world(gx.ravel(), gy.ravel(), 0)
    tx, ty = truth_wcs.wcs_world2pix(ra, dec, 0)
    grid_x, grid_y = tx.reshape(gx.shape), ty.reshape(gx.shape)
    # Cheap cull in truth pixels, then exact projection of the survivors.
    m = _STAR_MARGIN_PX + 8
    sx_t, sy_t = stars.x - origin[0], stars.y - origin[1]
    sel = np.nonzero((sx_t > grid_x.min() - m) & (sx_t < grid_x.max() + m)
                     & (sy_t > grid_y.min() - m) & (sy_t < grid_y.max() + m))[0]
    fx, fy = true_wcs.wcs_world2pix(stars.ra[sel], stars.dec[sel], 0)
    keep = ((fx > -_STAR_MARGIN_PX) & (fx < w + _STAR_MARGIN_PX)
            & (fy > -_STAR_MARGIN_PX) & (fy < h + _STAR_MARGIN_PX))
    signal = frame_signal((h, w), cfa, (nodes_x, nodes_y, grid_x, grid_y), extended,
                          (fx[keep], fy[keep]), stars.flux[sel[keep]], plan.psf_fwhm_px,
                          plan.transparency, plan.sky_level_adu, plan.gradient_frac,
                          plan.gradient_angle_deg, trail,
                          tuple(plan.gradient_quad * v for v in spec.gradient_color))
    rng = np.random.default_rng([spec.seed, _SEED_NOISE, plan.index])
    data = digitise(rng, signal, spec.gain_e_per_adu, spec.read_noise_e, spec.pedestal_adu,
                    hot_xy, hot_adu)
    true_cards = wcs_cards(true_wcs)
    hdr_cards = dict(true_cards, CRVAL1=fits_float(plan.header_crval[0]),
                     CRVAL2=fits_float(plan.header_crval[1]))
    _atomic_write_fits(fits.HDUList([fits.PrimaryHDU(data, _header(spec, plan, hdr_cards))]),
                       out_path)
    return true_cards, hdr_cards


def _truth_hdul(spec, truth, extended, twcs, stars, fwhm) -> fits.HDUList:
    cards = wcs_cards(twcs)
    hdr = fits.Header()
    for k, v in cards.items():
        hdr[k] = v
    # Axis 3 is the colour plane. Spelling it out (world value = plane index)
    # keeps astropy from "fixing" a missing CD3_3; use ``WCS(hdr).celestial``
    # for the sky part.
    hdr["CRPIX3"] = (1.0, "axis 3: colour plane, 0 R, 1 G, 2 B")
    hdr["CRVAL3"] = 0.0
    hdr["CD3_3"] = 1.0
    hdr["BUNIT"] = ("adu", "per pixel per frame of EXPTIME, transparency 1")
    hdr["EXPTIME"] = spec.exptime_s
    hdr["CHANNELS"] = ("RGB", "plane 0 R, 1 G, 2 B")
    hdr["PSFFWHM"] = (fwhm, "[px] core FWHM of the stars")
    ext_hdr = hdr.copy()
    ext_hdr["EXTNAME"] = "EXTENDED"
    cols = [fits.Column(name="ID", format="J", array=np.arange(len(stars), dtype=np.int32)),
            fits.Column(name="RA", format="D", unit="deg", array=stars.ra),
            fits.Column(name="DEC", format="D", unit="deg", array=stars.dec),
            fits.Column(name="MAG", format="E", array=stars.mag),
            fits.Column(name="BV", format="E", array=stars.bv)]
    cols += [fits.Column(name=f"FLUX_{c}", format="E", unit="adu", array=stars.flux[:, i])
             for i, c in enumerate("RGB")]
    star_hdu = fits.BinTableHDU.from_columns(cols, name="STARS")
    return fits.HDUList([fits.PrimaryHDU(truth, hdr), fits.ImageHDU(extended, ext_hdr), star_hdu])


def simulate_survey(out_dir: str | os.PathLike, spec: SurveySpec | None = None) -> dict:
    """Simulate a survey and write it to ``out_dir``.

    Parameters
    ----------
    out_dir : path-like
        Output folder (created if needed). Stale ``Light_p*_f*.fits`` files
        from an earlier, larger survey in ``frames/`` are removed so that a
        glob of the folder matches the manifest.
    spec : SurveySpec, optional
        The survey; defaults to ``SurveySpec()``.

    Returns
    -------
    dict
        The manifest, also written to ``out_dir/manifest.json``.
    """
    spec = spec or SurveySpec()
    out = Path(out_dir)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    w, h = spec.frame_size
    plans = plan_frames(spec, np.random.default_rng([spec.seed, _SEED_PLAN]))

    # Truth grid: the survey plane over every frame's footprint plus a margin.
    plane = plane_wcs(spec)
    corners = []
    for p in plans:
        fw = frame_wcs(spec, p.crval, ((w + 1) / 2.0, (h + 1) / 2.0), p.rotation_deg)
        corners.append(plane.wcs_world2pix(fw.wcs_pix2world(_frame_corners(w, h), 0), 0))
    corners = np.concatenate(corners)
    x0 = float(np.floor(corners[:, 0].min()) - _TRUTH_MARGIN_PX)
    y0 = float(np.floor(corners[:, 1].min()) - _TRUTH_MARGIN_PX)
    tw = int(np.ceil(corners[:, 0].max()) + _TRUTH_MARGIN_PX - x0) + 1
    th = int(np.ceil(corners[:, 1].max()) + _TRUTH_MARGIN_PX - y0) + 1
    twcs = plane_wcs(spec, origin=(x0, y0))

    sm = _STAR_MARGIN_PX
    stars = make_star_catalog(np.random.default_rng([spec.seed, _SEED_STARS]), spec,
                              (x0 - sm, x0 + tw + sm, y0 - sm, y0 + th + sm), plane)
    galaxy = make_galaxy(spec)
    fwhm_med = float(np.median([p.psf_fwhm_px for p in plans]))
    truth, extended = render_truth((th, tw), (x0, y0), stars, galaxy, fwhm_med)
    if spec.nebula_adu_per_s > 0:
        nebula = make_nebula(np.random.default_rng([spec.seed, _SEED_NEBULA]), (th, tw),
                             spec.nebula_adu_per_s * spec.exptime_s)
        truth += nebula
        extended += nebula

    rng_hot = np.random.default_rng([spec.seed, _SEED_HOT])
    n_hot = spec.n_hot_pixels_effective
    flat = np.sort(rng_hot.choice(w * h, size=n_hot, replace=False))
    hot_xy = np.stack([flat % w, flat // w], axis=1).astype(np.int64)
    hot_adu = rng_hot.uniform(3000.0, 40000.0, n_hot)
    trails = _trails(spec, np.random.default_rng([spec.seed, _SEED_TRAILS]))

    cfa = cfa_channels(spec.bayer)
    names = [FRAME_PATTERN.format(panel=p.panel, frame=p.frame_in_panel) for p in plans]
    for stale in (out / "frames").glob("Light_p*_f*.fits"):
        if stale.name not in names:
            stale.unlink()

    def job(i: int):
        return _render_one(spec, plans[i], cfa, twcs, extended, stars, (x0, y0), hot_xy,
                           hot_adu, trails.get(i), out / "frames" / names[i])

    # The heavy parts (numpy's random draws, cv2.remap, file output) release
    # the GIL, so threads help; each frame has its own noise stream, so the
    # result does not depend on scheduling.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        cards = list(pool.map(job, range(len(plans))))

    _atomic_write_fits(_truth_hdul(spec, truth, extended, twcs, stars, fwhm_med),
                       out / "truth.fits")
    manifest = _manifest(spec, plans, names, cards, trails, hot_xy, hot_adu, twcs, (th, tw),
                         fwhm_med, galaxy, len(stars), (x0, y0))
    _atomic_write_text(json.dumps(manifest, indent=1), out / "manifest.json")
    return manifest


def _manifest(spec, plans, names, cards, trails, hot_xy, hot_adu, twcs, tshape, fwhm, galaxy,
              n_stars, origin) -> dict:
    w, h = spec.frame_size
    frames = []
    for p, name, (true_cards, hdr_cards) in zip(plans, names, cards):
        frames.append({
            "file": f"frames/{name}", "index": p.index, "panel": p.panel,
            "panel_rc": list(divmod(p.panel, spec.panels[1])),
            "frame_in_panel": p.frame_in_panel, "mode": p.mode,
            "date_obs": p.date_obs, "t_start_s": p.t_start_s,
            "wcs_true": true_cards,
            "wcs_header": None if hdr_cards == true_cards else hdr_cards,
            "transparency": p.transparency, "psf_fwhm_px": p.psf_fwhm_px,
            "sky": {"level_adu": list(p.sky_level_adu), "gradient_frac": list(p.gradient_frac),
                    "gradient_angle_deg": p.gradient_angle_deg, "gradient_quad": p.gradient_quad,
                    "ref_px": [(w - 1) / 2.0, (h - 1) / 2.0], "norm_px": 0.5 * float(np.hypot(w, h))},
            "jitter_px": list(p.jitter_px), "rotation_deg": p.rotation_deg,
            "parallactic_angle_deg": p.parallactic_deg,
            "trail": trails.get(p.index),
        })
    return {
        "format": "zdask-sim/1",
        "spec": spec.to_dict(),
        "frame_shape": [h, w],
        "bayer": spec.bayer,
        "bayer_convention": "BAYERPAT letters are the colours of data[0,0], data[0,1], "
                            "data[1,0], data[1,1] of the array as stored (numpy row 0 = FITS row 1)",
        "channels": "RGB",
        "units": "ADU per pixel per frame of EXPTIME",
        "sky_model": "sky_c(x,y) = level_adu[c] * (1 + gradient_frac[c] * ((x-ref_x)*cos(a) + "
                     "(y-ref_y)*sin(a)) / norm_px + gradient_quad * g[c] * (s*s - 1/3)), "
                     "s = ((x-ref_x)*cos(a) + (y-ref_y)*sin(a)) / norm_px, g = gradient_color, "
                     "a = gradient_angle_deg, 0-based frame pixels",
        "truth": {"file": "truth.fits", "shape": [3, tshape[0], tshape[1]], "wcs": wcs_cards(twcs),
                  "psf_fwhm_px": fwhm, "n_stars": n_stars,
                  "plane_origin_px": list(origin), "extension_extended": "EXTENDED",
                  "extension_stars": "STARS"},
        "notes": {
            "hot_pixels": "value_adu is added to that data-array pixel in every frame",
            "trail": "x0,y0 / x1,y1: points on the frame border (0-based frame pixels) of "
                     "a line with a Gaussian profile of FWHM width_px and peak_adu in all "
                     "channels",
            "rotation_deg": "CROTA2-like angle of wcs_true; parallactic_angle_deg is the "
                            "zenith's position angle, zero at the survey mid-time",
            "jitter_px": "pointing offset from the panel centre in truth/plane pixels",
            "stars": "catalogue in truth.fits extension STARS (RA, DEC, MAG, BV, FLUX_R/G/B "
                     "= total ADU per frame at transparency 1)",
        },
        "galaxy": galaxy.to_dict(),
        "hot_pixels": [{"x": int(x), "y": int(y), "value_adu": float(v)}
                       for (x, y), v in zip(hot_xy, hot_adu)],
        "frames": frames,
    }

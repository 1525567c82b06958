"""Tests of the survey simulator against its own ground truth."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from scipy.ndimage import map_coordinates

from zdask.sim import SurveySpec, cfa_channels, simulate_survey

SMALL = SurveySpec(panels=(2, 2), frames_per_panel=8, frame_size=(270, 480),
                   altaz_panels=(1, 3), seed=0)


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    out = tmp_path_factory.mktemp("survey")
    t0 = time.perf_counter()
    manifest = simulate_survey(out, SMALL)
    elapsed = time.perf_counter() - t0
    print(f"\nsmall 2x2x8 survey of 270x480 frames simulated in {elapsed:.2f} s")
    return out, manifest, elapsed


def _frame(out: Path, entry: dict):
    with fits.open(out / entry["file"]) as hdul:
        return hdul[0].data, hdul[0].header


def _truth(out: Path):
    with fits.open(out / "truth.fits") as hdul:
        return (hdul[0].data.astype(np.float64), hdul["EXTENDED"].data.astype(np.float64),
                WCS(hdul[0].header).celestial, hdul["STARS"].data)


def _centroid(img: np.ndarray, x: float, y: float, r: int = 5) -> tuple[float, float]:
    """Background-subtracted centroid in a (2r+1)^2 box around (x, y)."""
    ix, iy = int(round(x)), int(round(y))
    box = img[iy - r:iy + r + 1, ix - r:ix + r + 1].astype(np.float64)
    border = np.concatenate([box[0], box[-1], box[:, 0], box[:, -1]])
    box = np.clip(box - np.median(border), 0, None)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return ix + (box * xx).sum() / box.sum(), iy + (box * yy).sum() / box.sum()


def test_runs_fast_and_writes_everything(survey):
    out, manifest, elapsed = survey
    assert elapsed < 30.0  # budget is 5 s; loose to survive slow CI machines
    assert len(manifest["frames"]) == SMALL.n_frames
    for entry in manifest["frames"]:
        assert (out / entry["file"]).is_file()
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert not list(out.rglob("*.tmp"))  # atomic writes left nothing behind


def test_deterministic(survey, tmp_path):
    out, manifest, _ = survey
    again = simulate_survey(tmp_path / "again", SMALL)
    assert again == manifest
    for entry in manifest["frames"]:
        a, _ = _frame(out, entry)
        b, _ = _frame(tmp_path / "again", entry)
        assert np.array_equal(a, b)
        assert (out / entry["file"]).read_bytes() == (tmp_path / "again" / entry["file"]).read_bytes()
    assert (out / "truth.fits").read_bytes() == (tmp_path / "again" / "truth.fits").read_bytes()

    tiny = dict(panels=(1, 1), frames_per_panel=2, frame_size=(128, 96))
    m0 = simulate_survey(tmp_path / "s0", SurveySpec(seed=0, **tiny))
    m1 = simulate_survey(tmp_path / "s1", SurveySpec(seed=1, **tiny))
    f0, _ = _frame(tmp_path / "s0", m0["frames"][0])
    f1, _ = _frame(tmp_path / "s1", m1["frames"][0])
    assert not np.array_equal(f0, f1)
    assert m0["frames"][0]["wcs_true"] != m1["frames"][0]["wcs_true"]


def test_headers(survey):
    out, manifest, _ = survey
    w, h = SMALL.frame_size
    times = []
    for entry in manifest["frames"]:
        data, hdr = _frame(out, entry)
        assert data.dtype == np.uint16 and data.shape == (h, w)
        wcs = WCS(hdr)
        assert wcs.naxis == 2 and wcs.has_celestial
        assert list(wcs.wcs.ctype) == ["RA---TAN", "DEC--TAN"]
        assert hdr["BAYERPAT"] == "GRBG" and hdr["XBAYROFF"] == 0 and hdr["YBAYROFF"] == 0
        assert hdr["EXPTIME"] == SMALL.exptime_s
        assert hdr["INSTRUME"] == "Seestar S50"
        assert hdr["EQMODE"] == (1 if entry["mode"] == "EQ" else 0)
        assert entry["mode"] == ("ALT_AZ" if entry["panel"] in (1, 3) else "EQ")
        assert hdr["DATE-OBS"] == entry["date_obs"]
        times.append(datetime.fromisoformat(hdr["DATE-OBS"]))
        # No WCS error requested: header WCS is the true one.
        assert entry["wcs_header"] is None
        for key, value in entry["wcs_true"].items():
            assert hdr[key] == value
    assert all(b > a for a, b in zip(times, times[1:]))
    names = [e["file"] for e in manifest["frames"]]
    assert names == sorted(names)  # file names sort in shooting order


def test_wcs_error_goes_to_header_only(tmp_path):
    spec = SurveySpec(panels=(1, 1), frames_per_panel=6, frame_size=(128, 96), wcs_error_px=5.0)
    m = simulate_survey(tmp_path, spec)
    offsets = []
    for entry in m["frames"]:
        _, hdr = _frame(tmp_path, entry)
        true = WCS(fits.Header(entry["wcs_true"]))
        assert entry["wcs_header"] is not None and hdr["CRVAL1"] == entry["wcs_header"]["CRVAL1"]
        x, y = true.wcs_world2pix([[hdr["CRVAL1"], hdr["CRVAL2"]]], 0)[0]
        offsets.append(np.hypot(x - (hdr["CRPIX1"] - 1), y - (hdr["CRPIX2"] - 1)))
    assert 0.5 < np.sqrt(np.mean(np.square(offsets))) < 15.0


def test_truth_file(survey):
    out, manifest, _ = survey
    truth, extended, twcs, stars = _truth(out)
    assert truth.shape == extended.shape == tuple(manifest["truth"]["shape"])
    assert truth.shape[0] == 3 and list(twcs.wcs.ctype) == ["RA---TAN", "DEC--TAN"]
    assert np.all(truth >= extended - 1e-3)  # stars only add light
    assert extended.max() > 10 * SMALL.exptime_s  # a real galaxy is there
    assert len(stars) == manifest["truth"]["n_stars"] > 100
    # The galaxy is larger than a panel: its disk, down to 4 % of the central
    # disk brightness, spans more than 1.2 frame heights.
    g = extended[1]
    yy, xx = np.nonzero(g > 0.04 * SMALL.galaxy_disk_adu_per_s * SMALL.exptime_s)
    cy, cx = np.unravel_index(np.argmax(g), g.shape)
    assert 2 * np.hypot(xx - cx, yy - cy).max() > 1.2 * max(SMALL.frame_size)


def _isolated_bright_stars(stars, twcs):
    tx, ty = twcs.wcs_world2pix(stars["RA"], stars["DEC"], 0)
    flux = stars["FLUX_G"]
    w, h = twcs.pixel_shape
    inside = (tx > 15) & (tx < w - 15) & (ty > 15) & (ty < h - 15)
    good = []
    for i in np.nonzero((stars["MAG"] > 10.0) & (stars["MAG"] < 11.5) & inside)[0]:
        d = np.hypot(tx - tx[i], ty - ty[i])
        near = (d < 15) & (d > 0)
        if not np.any(flux[near] > 0.01 * flux[i]):
            good.append(i)
    return good, tx, ty


def test_stars_where_wcs_says(survey):
    out, manifest, _ = survey
    truth, extended, twcs, stars = _truth(out)
    picks, tx, ty = _isolated_bright_stars(stars, twcs)
    assert picks
    w, h = SMALL.frame_size
    checked = 0
    for i in picks:
        # Truth: position and flux.
        cx, cy = _centroid(truth[1] - extended[1], tx[i], ty[i])
        assert np.hypot(cx - tx[i], cy - ty[i]) < 0.2
        ix, iy = int(round(tx[i])), int(round(ty[i]))
        f = (truth[1] - extended[1])[iy - 12:iy + 13, ix - 12:ix + 13].sum()
        assert f == pytest.approx(stars["FLUX_G"][i], rel=0.03)
        # Frames: centroid of the raw Bayer data within 1 px of the header WCS.
        for entry in manifest["frames"]:
            _, hdr = _frame(out, entry)
            fx, fy = WCS(hdr).wcs_world2pix([[stars["RA"][i], stars["DEC"][i]]], 0)[0]
            if not (10 < fx < w - 10 and 10 < fy < h - 10) or entry["trail"]:
                continue
            data, _ = _frame(out, entry)
            mx, my = _centroid(data, fx, fy)
            assert np.hypot(mx - fx, my - fy) < 1.0, (i, entry["file"])
            checked += 1
    assert checked >= 4


def test_frame_matches_truth_plus_sky_model(survey):
    """Star-free pixels follow pedestal + sky model + T * galaxy, with the
    noise the camera model predicts (normalised residuals ~ N(0, 1))."""
    out, manifest, _ = survey
    truth, extended, twcs, _ = _truth(out)
    cfa = cfa_channels(SMALL.bayer)
    hot = {(p["x"], p["y"]) for p in manifest["hot_pixels"]}
    for entry in [e for e in manifest["frames"] if not e["trail"]][::5]:
        data, hdr = _frame(out, entry)
        yy, xx = np.mgrid[0:data.shape[0], 0:data.shape[1]]
        ra, dec = WCS(hdr).wcs_pix2world(xx.ravel(), yy.ravel(), 0)
        px, py = twcs.wcs_world2pix(ra, dec, 0)
        ch = cfa[yy % 2, xx % 2].ravel()
        gal, star = np.empty(ch.size), np.empty(ch.size)
        for c in range(3):
            s = ch == c
            gal[s] = map_coordinates(extended[c], [py[s], px[s]], order=1)
            star[s] = map_coordinates(truth[c], [py[s], px[s]], order=1) - gal[s]
        sky = entry["sky"]
        a = np.deg2rad(sky["gradient_angle_deg"])
        lin = ((xx.ravel() - sky["ref_px"][0]) * np.cos(a)
               + (yy.ravel() - sky["ref_px"][1]) * np.sin(a)) / sky["norm_px"]
        bg = np.array(sky["level_adu"])[ch] * (1 + np.array(sky["gradient_frac"])[ch] * lin)
        signal = bg + entry["transparency"] * gal
        g, rn = SMALL.gain_e_per_adu, SMALL.read_noise_e
        sigma = np.sqrt(signal / g + (rn / g) ** 2)
        z = (data.ravel() - SMALL.pedestal_adu - signal) / sigma
        ok = star < 0.5
        ok[[y * data.shape[1] + x for x, y in hot]] = False
        assert abs(z[ok].mean()) < 0.05
        assert 0.95 < z[ok].std() < 1.05


def test_rotation_only_on_altaz(survey):
    _, manifest, _ = survey
    for p in range(SMALL.n_panels):
        frames = [e for e in manifest["frames"] if e["panel"] == p]
        cds = np.array([[e["wcs_true"][k] for k in ("CD1_1", "CD1_2", "CD2_1", "CD2_2")]
                        for e in frames])
        angles = np.degrees(np.arctan2(-cds[:, 2], -cds[:, 0]))  # CROTA2 from the CD matrix
        if frames[0]["mode"] == "ALT_AZ":
            steps = np.diff(angles)
            assert np.all(steps != 0) and (np.all(steps > 0) or np.all(steps < 0))
            assert abs(angles[-1] - angles[0]) > 1.0
            assert {e["sky"]["gradient_angle_deg"] for e in frames} == {-90.0}
        else:
            assert np.all(cds == cds[0])
            assert len({e["sky"]["gradient_angle_deg"] for e in frames}) == len(frames)
        assert np.allclose(angles, [e["rotation_deg"] for e in frames])


def test_altaz_gradient_points_down(survey):
    """Alt-az frames brighten towards -y (the horizon) in every channel."""
    out, manifest, _ = survey
    entry = next(e for e in manifest["frames"] if e["mode"] == "ALT_AZ" and not e["trail"])
    data, _ = _frame(out, entry)
    h = data.shape[0]
    low, high = np.median(data[: h // 4, 0::2][::2]), np.median(data[-h // 4:, 0::2][::2])
    assert low > high + 0.1 * entry["sky"]["level_adu"][1]


def test_hot_pixels_fixed(survey):
    out, manifest, _ = survey
    hot = manifest["hot_pixels"]
    assert len(hot) == SMALL.n_hot_pixels_effective >= 3
    for entry in manifest["frames"]:
        data, _ = _frame(out, entry)
        med = np.median(data)
        for p in hot:
            assert data[p["y"], p["x"]] > med + 0.5 * p["value_adu"]


def test_trails(survey):
    out, manifest, _ = survey
    trails = [e for e in manifest["frames"] if e["trail"]]
    assert len(trails) == SMALL.n_trails_effective == 4
    for entry in trails:
        data, _ = _frame(out, entry)
        t = entry["trail"]
        s = np.linspace(0.05, 0.95, 200)
        x = np.rint(t["x0"] + s * (t["x1"] - t["x0"])).astype(int)
        y = np.rint(t["y0"] + s * (t["y1"] - t["y0"])).astype(int)
        # Rounding puts samples up to 0.7 px off the line centre.
        assert np.median(data[y, x]) - np.median(data) > 0.4 * t["peak_adu"]


def test_spec_normalises_and_validates():
    s = SurveySpec(altaz_panels=[3, 1, 1], panels=[2, 2], frame_size=[96, 128])
    assert s.altaz_panels == (1, 3) and s.panels == (2, 2) and hash(s)
    assert s.to_dict()["altaz_panels"] == [1, 3]
    with pytest.raises(ValueError):
        SurveySpec(frame_size=(101, 128))
    with pytest.raises(ValueError):
        SurveySpec(altaz_panels=(4,))
    with pytest.raises(ValueError):
        SurveySpec(bayer="RGBX")


def test_the_glow_s_curvature_scatters_from_frame_to_frame():
    from zdask.sim.layout import plan_frames

    base = dict(panels=(2, 2), frames_per_panel=5, frame_size=(96, 128), gradient_quad_frac=0.1)
    scattered = plan_frames(SurveySpec(**base, gradient_quad_scatter=0.05), np.random.default_rng(0))
    quads = np.array([p.gradient_quad for p in scattered])
    assert ((quads >= 0.05) & (quads <= 0.15)).all() and quads.std() > 0.01
    # without scatter every frame has the survey's, and nothing else of the plan moves
    alike = plan_frames(SurveySpec(**base), np.random.default_rng(0))
    assert all(p.gradient_quad == 0.1 for p in alike)
    with pytest.raises(ValueError):
        SurveySpec(gradient_quad_scatter=-0.1)

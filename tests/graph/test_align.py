"""Alignment stage on simulated frames: WCS refinement, hot-pixel trap, fallbacks, unsolved frames."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import astroalign
import numpy as np
import pytest
from astropy.io import fits

from zdask.graph import align
from zdask.graph.align import (
    STATUS_EXCLUDED,
    STATUS_PHASE,
    STATUS_REFERENCE,
    STATUS_STARS,
    STATUS_WCS,
    AlignResult,
    AlignSource,
    align_frame,
    attach_unsolved,
    compose_tan,
    default_tolerance,
    reference_catalogue,
    reference_index,
)
from zdask.graph.calibrate import FRAME_CHUNK_ROWS, calibrate_to_rgb
from zdask.graph.geometry import tan_header
from zdask.io import store
from zdask.io.fitsheader import wcs_from_header
from zdask.io.pixels import read_frame
from zdask.io.scan import REASON_NO_WCS, Frame, scan, with_wcs
from zdask.ops.framestats import frame_statistics
from zdask.ops.register import similarity_parameters, translation
from zdask.ops.stars import detect_stars
from zdask.sim import SurveySpec, simulate_survey

# 540×960 frames, one panel of 6; jitter 12 px puts frames 20–40 px apart.
SPEC = dict(panels=(1, 1), frames_per_panel=6, frame_size=(540, 960), jitter_px=12.0, seed=1)


def _store_image(root: str, key: str, image: np.ndarray) -> None:
    h, w, c = image.shape
    arr = store.create_array(store.open_store(root), f"frames/{key}", (h, w, c), "float32",
                             (FRAME_CHUNK_ROWS, w, c))
    arr[:] = image
    store.mark_complete(root, f"frames/{key}", key)


def _calibrate(root: str, frame: Frame, key: str | None = None) -> tuple[AlignSource, np.ndarray]:
    image = calibrate_to_rgb(read_frame(frame), frame, np.zeros(0, np.int64), 3)
    key = key or store.frame_key(frame.path)
    _store_image(root, key, image)
    cards = dict(frame.wcs_header) or None
    source = AlignSource(frame.path, root, key, key, cards, (frame.height, frame.width))
    return source, image


class Survey:
    def __init__(self, out, root, wcs_error_px):
        self.manifest = simulate_survey(out, SurveySpec(wcs_error_px=wcs_error_px, **SPEC))
        self.out, self.root = out, root
        self.table = scan([out / "frames"])
        self.sources, self.noise = [], []
        for frame in self.table.frames:
            source, image = _calibrate(root, frame)
            self.sources.append(source)
            self.noise.append(float(frame_statistics(image).noise[1]))
        self.truth = {e["file"].split("/")[-1]: e["wcs_true"] for e in self.manifest["frames"]}
        self.ref_index = reference_index(self.sources, self.noise)
        self.ref = self.sources[self.ref_index]
        self.catalogue = reference_catalogue(self.ref)

    def true_wcs(self, source):
        return wcs_from_header(self.truth[source.path.replace("\\", "/").split("/")[-1]])

    def placement_error(self, source, cards, ref=None):
        """|pixel of a sky point under ``cards`` − where the truth puts it| on a 16 px grid.

        The group's absolute position is the reference's header WCS (registration aligns to
        the reference, not to a catalogue): the expected sky position of frame pixel p is what
        the reference's header WCS says of the reference pixel that truly sees p's sky.
        """
        ref = ref or self.ref
        h, w = source.shape
        gy, gx = np.mgrid[0:h:16, 0:w:16]
        px, py = gx.ravel().astype(float), gy.ravel().astype(float)
        ra, dec = self.true_wcs(source).all_pix2world(px, py, 0)
        qx, qy = self.true_wcs(ref).all_world2pix(ra, dec, 0)
        ra2, dec2 = wcs_from_header(ref.wcs_header).all_pix2world(qx, qy, 0)
        x, y = wcs_from_header(cards).all_world2pix(ra2, dec2, 0)
        return np.hypot(x - px, y - py)


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    out = tmp_path_factory.mktemp("align3")
    return Survey(out, str(out / "work.zarr"), wcs_error_px=3.0)


@pytest.fixture(scope="module")
def results(survey):
    return [align_frame(s, survey.ref, survey.catalogue) for s in survey.sources]


# ------------------------------------------------------------------------ refinement
def test_header_errors_are_refined_to_a_tenth_of_a_pixel(survey, results):
    statuses = [r.status for r in results]
    assert statuses.count(STATUS_REFERENCE) == 1 and statuses[survey.ref_index] == STATUS_REFERENCE
    for source, result in zip(survey.sources, results):
        if result.status == STATUS_REFERENCE:
            assert result.wcs_header == survey.ref.wcs_header
            continue
        assert result.status == STATUS_STARS, result
        assert result.residual_px > 0.5 and result.n_matches >= 40
        before = survey.placement_error(source, source.wcs_header)
        after = survey.placement_error(source, result.wcs_header)
        assert np.median(before) > 1.0  # the header really was off
        # measured: median 0.02–0.05 px, max 0.05–0.1 px
        assert np.median(after) < 0.1 and after.max() < 0.3, (np.median(after), after.max())
        # a plain TAN WCS, no SIP
        cards = result.wcs_header
        assert (cards["CTYPE1"], cards["CTYPE2"]) == ("RA---TAN", "DEC--TAN")
        assert {"CRVAL1", "CRPIX1", "CD1_1", "CD2_2"} <= set(cards)
        assert not any(k.startswith(("A_", "B_", "PV")) for k in cards)
        json.dumps(result.to_json())


def test_sip_header_is_replaced_by_a_fitted_tan_wcs(survey):
    source = survey.sources[(survey.ref_index + 1) % len(survey.sources)]
    cards = dict(source.wcs_header, CTYPE1="RA---TAN-SIP", CTYPE2="DEC--TAN-SIP", A_ORDER=2, B_ORDER=2,
                 A_2_0=0.0, B_0_2=0.0)
    result = align_frame(dataclasses.replace(source, wcs_header=cards), survey.ref, survey.catalogue)
    assert result.status == STATUS_STARS and result.wcs_header["CTYPE1"] == "RA---TAN"
    assert not any(k.startswith(("A_", "B_")) for k in result.wcs_header)
    err = survey.placement_error(source, result.wcs_header)
    assert np.median(err) < 0.1 and err.max() < 0.3  # measured 0.06 / 0.10


def test_results_round_trip_through_json(results):
    for r in results:
        again = AlignResult.from_json(json.loads(json.dumps(r.to_json())))
        assert again == r


def test_correct_header_wcs_is_kept(tmp_path_factory):
    out = tmp_path_factory.mktemp("align0")
    survey = Survey(out, str(out / "work.zarr"), wcs_error_px=0.0)
    for source in survey.sources[:4]:
        result = align_frame(source, survey.ref, survey.catalogue)
        assert result.status in (STATUS_WCS, STATUS_REFERENCE), result
        if result.status == STATUS_WCS:
            assert result.wcs_header == source.wcs_header
            assert result.residual_px < 0.15 and result.n_matches >= 40


# -------------------------------------------------------------------- hot-pixel trap
def _contaminate(survey, source, ys, xs, values, suffix):
    arr = store.open_array(source.root, f"frames/{source.key}", source.token)
    image = np.asarray(arr[:])
    image[ys, xs, :] += values[:, None]
    key = f"{source.key}-{suffix}"
    _store_image(survey.root, key, image)
    return dataclasses.replace(source, key=key, token=key)


def test_warm_pixels_do_not_pull_registration_to_the_identity(survey, monkeypatch):
    # Two dithered frames sharing 300 fixed bright pixels (an uncalibrated sensor's warm
    # pixels): detected without spike rejection, astroalign matches the fixed pattern and
    # returns the identity although the frames are ~30 px apart.
    ref = survey.ref
    centre = survey.true_wcs(ref).all_pix2world([269.5], [479.5], 0)

    def true_offset(source):
        x, y = survey.true_wcs(source).all_world2pix(*centre, 0)
        return math.hypot(float(x[0]) - 269.5, float(y[0]) - 479.5)

    offsets = [true_offset(s) for s in survey.sources]
    moving = survey.sources[int(np.argmax(offsets))]
    assert max(offsets) > 20
    rng = np.random.default_rng(7)
    h, w = ref.shape
    ys, xs = rng.integers(0, h, 300), rng.integers(0, w, 300)
    values = rng.uniform(15000, 40000, 300).astype(np.float32)
    ref_hot = _contaminate(survey, ref, ys, xs, values, "hot")
    mov_hot = _contaminate(survey, moving, ys, xs, values, "hot")

    def stars_of(source, reject):
        return detect_stars(align.read_green(source), reject_spikes=reject, max_stars=500)[:, :2]

    trap, _ = astroalign.find_transform(stars_of(mov_hot, False), stars_of(ref_hot, False))
    scale, rot, tx, ty = similarity_parameters(trap)
    assert math.hypot(tx, ty) < 0.5 and abs(rot) < 0.01  # the trap: identity
    clean, _ = astroalign.find_transform(stars_of(mov_hot, True), stars_of(ref_hot, True))
    assert math.hypot(*similarity_parameters(clean)[2:]) == pytest.approx(max(offsets), abs=3.5)

    # align_frame with spike rejection: the true transform
    catalogue = reference_catalogue(ref_hot)
    result = align_frame(mov_hot, ref_hot, catalogue)
    assert result.status == STATUS_STARS, result
    err = survey.placement_error(moving, result.wcs_header, ref=ref)
    assert np.median(err) < 0.1 and err.max() < 0.3

    # ... with spike rejection switched off, the warm pixels are dropped as fixed pattern (same
    # raw pixel in both frames although the WCS says the sky moved ~30 px) ...
    real = align.detect_stars
    monkeypatch.setattr(align, "detect_stars", lambda image, **kw: real(image, reject_spikes=False, **kw))
    catalogue = reference_catalogue(ref_hot)
    assert len(catalogue["xy"]) > 250  # the warm pixels are in the catalogue now
    result = align_frame(mov_hot, ref_hot, catalogue)
    assert result.status == STATUS_STARS and "fixed-pattern detections" in result.reason, result
    err = survey.placement_error(moving, result.wcs_header, ref=ref)
    assert np.median(err) < 0.1 and err.max() < 0.3

    # ... and without that either, the WCS gate alone refuses astroalign's fixed-pattern match.
    def no_fixed_pattern(stars_xy, ref_xy, pred_xy, **kw):
        return np.zeros(len(stars_xy), bool), np.zeros(len(ref_xy), bool)

    monkeypatch.setattr(align, "_fixed_pattern", no_fixed_pattern)
    result = align_frame(mov_hot, ref_hot, catalogue)
    assert result.status in (STATUS_STARS, STATUS_PHASE, STATUS_EXCLUDED), result  # never "wcs"
    if result.status != STATUS_EXCLUDED:
        err = survey.placement_error(moving, result.wcs_header, ref=ref)
        assert np.median(err) < 0.3, result
    if result.status == STATUS_STARS:
        assert "from the WCS prediction" in result.reason  # astroalign's match was refused


# ------------------------------------------------------------------------- fallbacks
def test_frame_of_pure_noise_is_excluded_with_a_reason(survey):
    h, w = survey.ref.shape
    rng = np.random.default_rng(0)
    _store_image(survey.root, "noise", rng.normal(500, 15, (h, w, 3)).astype(np.float32))
    header = dict(survey.sources[0].wcs_header)
    source = AlignSource("noise.fits", survey.root, "noise", "noise", header, (h, w))
    result = align_frame(source, survey.ref, survey.catalogue)
    assert result.status == STATUS_EXCLUDED and result.wcs_header is None
    assert result.reason.startswith("alignment failed:") and "phase correlation response" in result.reason


def _synthetic_pair(root, n_stars, shift, seed=3, shape=(360, 480)):
    """A reference and a frame of ``n_stars`` stars; the frame's header says it points like the
    reference, but its content is shifted by ``shift`` px."""
    h, w = shape
    rng = np.random.default_rng(seed)
    xy = rng.uniform(40, [w - 40, h - 40], (n_stars, 2))
    yy, xx = np.mgrid[:h, :w]

    def render(offset, noise_seed):
        image = np.full(shape, 400.0) + np.random.default_rng(noise_seed).normal(0, 8, shape)
        for x, y in xy:
            image += 4000 * np.exp(-((xx - x - offset[0]) ** 2 + (yy - y - offset[1]) ** 2) / (2 * 1.1**2))
        return np.repeat(image.astype(np.float32)[..., None], 3, axis=2)

    header = tan_header(150.0, 20.0, 2.4, ((w + 1) / 2, (h + 1) / 2))
    _store_image(root, f"ref{n_stars}", render((0, 0), 1))
    _store_image(root, f"mov{n_stars}", render(shift, 2))
    ref = AlignSource(f"ref{n_stars}.fits", root, f"ref{n_stars}", "t", header, shape)
    mov = AlignSource(f"mov{n_stars}.fits", root, f"mov{n_stars}", "t", header, shape)
    return ref, mov


def test_too_few_stars_for_star_matching_are_aligned_by_phase_correlation(tmp_path):
    root = str(tmp_path / "work.zarr")
    ref, mov = _synthetic_pair(root, 5, (3.3, -2.1))
    catalogue = reference_catalogue(ref)
    assert len(catalogue["xy"]) == 5
    result = align_frame(mov, ref, catalogue)
    assert result.status == STATUS_PHASE, result
    assert "phase correlation shift" in result.reason
    assert result.residual_px == pytest.approx(math.hypot(3.3, -2.1), abs=0.25)
    # the refined WCS puts the reference's stars where they are in the frame
    x, y = wcs_from_header(result.wcs_header).all_world2pix(catalogue["sky"][:, 0], catalogue["sky"][:, 1], 0)
    err = np.hypot(x - catalogue["xy"][:, 0] - 3.3, y - catalogue["xy"][:, 1] + 2.1)
    assert err.max() < 0.25


def test_shift_beyond_tolerance_is_excluded(tmp_path):
    root = str(tmp_path / "work.zarr")
    ref, mov = _synthetic_pair(root, 5, (14.0, 9.0))
    result = align_frame(mov, ref, reference_catalogue(ref))
    assert result.status == STATUS_EXCLUDED and "tolerance" in result.reason


# -------------------------------------------------------------------------- unsolved
_WCS_KEYS = ("CTYPE", "CRVAL", "CRPIX", "CD1_", "CD2_", "CUNIT", "CDELT", "PC1_", "PC2_", "RADESYS",
             "EQUINOX", "LONPOLE", "LATPOLE", "WCSAXES")


def test_unsolved_frame_is_registered_by_star_matching(survey, tmp_path):
    # A copy of a simulated frame with its WCS cards removed.
    index = (survey.ref_index + 2) % len(survey.sources)
    original = survey.sources[index]
    folder = tmp_path / "in"
    folder.mkdir()
    for p in (survey.out / "frames").iterdir():
        shutil.copy2(p, folder / p.name)
    target = folder / original.path.replace("\\", "/").split("/")[-1]
    with fits.open(target, mode="update") as hdul:
        header = hdul[0].header
        for key in [k for k in header if k.startswith(_WCS_KEYS)]:
            del header[key]
    table = scan([folder])
    assert len(table.frames) == len(survey.sources) - 1
    assert [r.path for r in table.rejected] == [str(target)]
    assert table.rejected[0].kind == REASON_NO_WCS
    (unsolved,) = table.unsolved
    assert unsolved.path == str(target) and unsolved.wcs_header == {}
    assert all(math.isnan(v) for v in (unsolved.ra_deg, unsolved.scale_arcsec, unsolved.fov_deg[0]))
    again = type(table).from_json(json.loads(json.dumps(table.to_json())))
    assert [f.path for f in again.unsolved] == [unsolved.path]

    # its group: the solved frame nearest in time
    neighbour = attach_unsolved(table.frames, table.unsolved)[unsolved.path]
    times = {f.path: f.time_mjd for f in table.frames}
    assert neighbour in times
    gaps = [abs(t - unsolved.time_mjd) for t in times.values()]
    assert abs(times[neighbour] - unsolved.time_mjd) == min(gaps)

    source, _ = _calibrate(survey.root, unsolved, key="unsolved")
    assert source.wcs_header is None
    result = align_frame(source, survey.ref, survey.catalogue)
    assert result.status == STATUS_STARS, result
    assert result.n_matches >= 40 and result.residual_px is None
    err = survey.placement_error(original, result.wcs_header)
    assert np.median(err) < 0.2 and err.max() < 0.4, (np.median(err), err.max())

    solved = with_wcs(unsolved, result.wcs_header)
    assert solved.scale_arcsec == pytest.approx(2.4, rel=1e-3)
    truth = survey.true_wcs(original)
    ra, dec = truth.all_pix2world([(solved.width - 1) / 2], [(solved.height - 1) / 2], 0)
    assert abs(solved.dec_deg - dec[0]) * 3600 < 60
    assert solved.fov_deg[1] == pytest.approx(960 * 2.4 / 3600, rel=1e-3)
    assert solved.wcs() is not None and solved.path == unsolved.path


def test_unsolved_frame_of_another_field_is_excluded(survey, tmp_path):
    root = str(tmp_path / "work.zarr")
    ref, _ = _synthetic_pair(root, 40, (0, 0), seed=11, shape=survey.ref.shape)
    source = dataclasses.replace(survey.sources[0], wcs_header=None)
    result = align_frame(source, ref, reference_catalogue(ref))
    assert result.status == STATUS_EXCLUDED and "no celestial WCS" in result.reason


# ------------------------------------------------------------------------ pure helpers
def _frame(path, t, layout="bayer", size=(540, 960)):
    return Frame(path=path, hdu=0, height=size[1], width=size[0], layout=layout,
                 bayer="GRBG" if layout == "bayer" else None, dtype="uint16", wcs_header={},
                 scale_arcsec=math.nan, ra_deg=math.nan, dec_deg=math.nan, fov_deg=(math.nan, math.nan),
                 time_mjd=t, exptime_s=10.0, mount="EQ", size_bytes=1, mtime_ns=1)


def test_attach_unsolved_picks_the_nearest_solved_frame_of_the_same_sensor():
    frames = [_frame("a", 1.0), _frame("b", 2.0), _frame("c", 2.1, layout="mono"), _frame("d", 3.0)]
    unsolved = [_frame("u1", 2.2), _frame("u2", 2.5), _frame("u3", None), _frame("u4", 2.0, size=(100, 100))]
    assert attach_unsolved(frames, unsolved) == {"u1": "b", "u2": "b", "u3": None, "u4": None}
    assert attach_unsolved([], unsolved[:1]) == {"u1": None}


def test_compose_tan_is_the_header_after_the_transform():
    header = tan_header(10.0, 41.0, 2.4, (270.5, 480.5))
    t = np.array([[0.9999, -0.0087, 3.2], [0.0087, 0.9999, -1.7], [0, 0, 1.0]])
    cards = compose_tan(header, t)
    p = np.array([[0.0, 0.0], [539.0, 959.0], [100.0, 700.0]])
    q = p @ t[:2, :2].T + t[:2, 2]
    a = np.array(wcs_from_header(cards).all_pix2world(p[:, 0], p[:, 1], 0))
    b = np.array(wcs_from_header(header).all_pix2world(q[:, 0], q[:, 1], 0))
    assert np.allclose(a, b, atol=1e-10)
    assert compose_tan(header, translation(0, 0))["CRPIX1"] == pytest.approx(270.5)


def test_default_tolerance():
    assert default_tolerance((480, 270)) == 10.0
    assert default_tolerance((1920, 1080)) == pytest.approx(0.01 * math.hypot(1920, 1080))

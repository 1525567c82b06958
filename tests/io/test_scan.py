"""Header scan: accepted layouts, rejection reasons, header-only reading."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle

import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS

from zdask.io import fitsheader
from zdask.io.fitsheader import wcs_from_header
from zdask.io.scan import (
    MOUNT_ALTAZ,
    MOUNT_EQ,
    MOUNT_UNKNOWN,
    REASON_BAD_BAYER,
    REASON_BAD_DIMENSIONS,
    REASON_BAD_WCS,
    REASON_NO_IMAGE,
    REASON_NO_WCS,
    REASON_NOT_FITS,
    REASON_UNREADABLE,
    Frame,
    FrameTable,
    RejectedFile,
    parse_mount_mode,
    scan,
)

NOT_A_FITS_NAME = "not FITS: not a FITS file name (.fit, .fits, .fts, each also .gz; .fz)"

pytestmark = pytest.mark.filterwarnings(
    "ignore:Keyword name:astropy.io.fits.verify.VerifyWarning",  # HIERARCH MOUNT_MODE
    "ignore::astropy.wcs.FITSFixedWarning",
)


# ------------------------------------------------------------------ helpers
def wcs_cards(ra=150.0, dec=30.0, scale_arcsec=2.4, width=80, height=60, rot_deg=0.0):
    """TAN WCS whose centre pixel ((W-1)/2, (H-1)/2, 0-based) is at (ra, dec)."""
    s = scale_arcsec / 3600.0
    c, si = math.cos(math.radians(rot_deg)), math.sin(math.radians(rot_deg))
    return {
        "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": ra, "CRVAL2": dec,
        "CRPIX1": (width + 1) / 2.0, "CRPIX2": (height + 1) / 2.0,
        "CD1_1": -s * c, "CD1_2": s * si, "CD2_1": s * si, "CD2_2": s * c,
    }


def write_fits(path, data, **cards):
    hdu = fits.PrimaryHDU(data)
    for key, value in cards.items():
        hdu.header[key] = value
    hdu.writeto(path)
    return str(path)


def write_raw_fits(path, bitpix, shape_fits_order, raw: bytes, **cards):
    """Write header + raw data bytes by hand (full control over BZERO/BSCALE/size)."""
    header = fits.Header()
    header["SIMPLE"] = True
    header["BITPIX"] = bitpix
    header["NAXIS"] = len(shape_fits_order)
    for i, n in enumerate(shape_fits_order, start=1):
        header[f"NAXIS{i}"] = n
    for key, value in cards.items():
        header[key] = value
    blob = header.tostring().encode("ascii") + raw
    blob += b"\0" * (-len(blob) % 2880)
    with open(path, "wb") as fh:
        fh.write(blob)
    return str(path)


def seestar_cards(**extra):
    cards = dict(wcs_cards(), BAYERPAT="GRBG", XBAYROFF=0, YBAYROFF=0, EXPTIME=10.0)
    cards["DATE-OBS"] = "2024-03-01T21:33:12.5"
    cards.update(extra)
    return cards


def by_name(table: FrameTable):
    return {os.path.basename(f.path): f for f in table.frames}, {
        os.path.basename(r.path): r for r in table.rejected
    }


# ----------------------------------------------------------- accepted frames
def test_good_frames_bayer_mono_rgb(tmp_path):
    rng = np.random.default_rng(0)
    write_fits(tmp_path / "bayer.fit", rng.integers(0, 65535, (60, 80)).astype(np.uint16),
               **seestar_cards(MOUNT_MODE="EQ"))
    write_fits(tmp_path / "mono.fits", rng.random((50, 70)).astype(np.float32),
               **wcs_cards(ra=10.0, dec=-20.0, scale_arcsec=1.5, width=70, height=50, rot_deg=30.0),
               EXPOSURE=4.0, EQMODE=0, **{"MJD-OBS": 60000.25})
    write_fits(tmp_path / "rgb.fts", rng.integers(0, 255, (3, 40, 90)).astype(np.uint8),
               **wcs_cards(ra=359.9, dec=60.0, scale_arcsec=10.0, width=90, height=40))
    table = scan([tmp_path])
    assert table.rejected == []
    frames, _ = by_name(table)

    b = frames["bayer.fit"]
    assert (b.layout, b.bayer, b.height, b.width, b.dtype, b.hdu) == ("bayer", "GRBG", 60, 80, "uint16", 0)
    assert b.scale_arcsec == pytest.approx(2.4, rel=1e-9)
    assert (b.ra_deg, b.dec_deg) == (pytest.approx(150.0, abs=1e-9), pytest.approx(30.0, abs=1e-9))
    assert b.fov_deg == (pytest.approx(80 * 2.4 / 3600), pytest.approx(60 * 2.4 / 3600))
    assert b.time_mjd == pytest.approx(Time("2024-03-01T21:33:12.5", scale="utc").mjd, abs=1e-9)
    assert (b.exptime_s, b.mount) == (10.0, MOUNT_EQ)
    assert os.path.isabs(b.path) and b.size_bytes == os.path.getsize(b.path)
    assert b.mtime_ns == os.stat(b.path).st_mtime_ns

    m = frames["mono.fits"]
    assert (m.layout, m.bayer, m.height, m.width, m.dtype) == ("mono", None, 50, 70, "float32")
    assert m.scale_arcsec == pytest.approx(1.5, rel=1e-9)
    assert (m.ra_deg, m.dec_deg) == (pytest.approx(10.0, abs=1e-9), pytest.approx(-20.0, abs=1e-9))
    assert (m.time_mjd, m.exptime_s, m.mount) == (60000.25, 4.0, MOUNT_ALTAZ)

    c = frames["rgb.fts"]
    assert (c.layout, c.bayer, c.height, c.width, c.dtype) == ("rgb", None, 40, 90, "uint8")
    assert c.shape == (40, 90, 3)
    assert c.scale_arcsec == pytest.approx(10.0, rel=1e-9)
    assert c.ra_deg == pytest.approx(359.9, abs=1e-9) and c.dec_deg == pytest.approx(60.0, abs=1e-9)
    assert (c.time_mjd, c.exptime_s, c.mount) == (None, None, MOUNT_UNKNOWN)
    # the rebuilt WCS maps pixels like the file's own header
    w_file = WCS(fits.getheader(c.path)).celestial
    np.testing.assert_allclose(c.wcs().pixel_to_world_values([0, 89], [0, 39]),
                               w_file.pixel_to_world_values([0, 89], [0, 39]), atol=1e-10)
    assert c.wcs() is c.wcs() and c.wcs().pixel_shape == (90, 40)
    # ... on its own copy: the shared, cached WCS of equal cards is left as it was
    assert c.wcs() is not wcs_from_header(c.wcs_header) and wcs_from_header(c.wcs_header).pixel_shape is None


@pytest.mark.parametrize(
    "bitpix, cards, expected",
    [
        (16, {"BZERO": 32768, "BSCALE": 1}, "uint16"),
        (16, {}, "int16"),
        (16, {"BSCALE": 2.0}, "float32"),
        (16, {"BLANK": -1}, "float32"),
        (8, {}, "uint8"),
        (8, {"BZERO": -128}, "int8"),
        (32, {"BZERO": 2**31}, "uint32"),
        (32, {"BZERO": 5}, "float64"),
        (-32, {"BZERO": 5}, "float32"),
        (-64, {}, "float64"),
    ],
)
def test_dtype_matches_what_astropy_returns(tmp_path, bitpix, cards, expected):
    nbytes = abs(bitpix) // 8 * 16 * 12
    path = write_raw_fits(tmp_path / "x.fits", bitpix, (16, 12), b"\0" * nbytes,
                          **wcs_cards(width=16, height=12), **cards)
    (frame,) = scan([path]).frames
    assert frame.dtype == expected == fits.getdata(path).dtype.name


def test_image_in_extension_and_compressed(tmp_path):
    data = np.arange(40 * 30, dtype=np.float32).reshape(30, 40)
    hdr = fits.Header(wcs_cards(width=40, height=30))
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, header=hdr)]).writeto(tmp_path / "ext.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, header=hdr)]).writeto(tmp_path / "comp.fits")
    frames, rejected = by_name(scan([tmp_path]))
    assert rejected == {}
    assert frames["ext.fits"].hdu == 1 and frames["comp.fits"].hdu == 1
    assert frames["comp.fits"].shape == (30, 40) and frames["comp.fits"].layout == "mono"


def test_sip_wcs_survives_the_json_round_trip(tmp_path):
    cards = dict(wcs_cards(), A_ORDER=2, B_ORDER=2, A_2_0=2e-5, B_0_2=-3e-5)
    cards["CTYPE1"], cards["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
    path = write_fits(tmp_path / "sip.fits", np.zeros((60, 80), np.uint16), **cards)
    (frame,) = FrameTable.from_json(json.loads(json.dumps(scan([path]).to_json()))).frames
    assert frame.wcs().sip is not None
    ref = WCS(fits.getheader(path))
    np.testing.assert_allclose(frame.wcs().pixel_to_world_values([0, 79], [0, 59]),
                               ref.pixel_to_world_values([0, 79], [0, 59]), atol=1e-10)


# ------------------------------------------------------------ rejected files
def test_each_bad_kind_gets_its_reason(tmp_path):
    cards = wcs_cards()
    (tmp_path / "text.fits").write_text("just some text, not a FITS file\n" * 100)
    good = write_fits(tmp_path / "good.fits", np.ones((60, 80), np.uint16), **cards)
    blob = open(good, "rb").read()
    (tmp_path / "trunc_header.fits").write_bytes(blob[:1000])
    (tmp_path / "trunc_data.fits").write_bytes(blob[: 2880 + 4000])
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column(name="a", format="E", array=np.arange(5.0))])]).writeto(tmp_path / "table.fits")
    write_fits(tmp_path / "one_d.fits", np.ones(100, np.float32), **cards)
    write_fits(tmp_path / "cube4.fits", np.ones((4, 60, 80), np.float32), **cards)
    write_fits(tmp_path / "four_d.fits", np.ones((1, 3, 60, 80), np.float32), **cards)
    write_fits(tmp_path / "tiny.fits", np.ones((60, 4), np.float32), **wcs_cards(width=4))
    write_fits(tmp_path / "no_wcs.fits", np.ones((60, 80), np.float32), EXPTIME=10.0)
    write_fits(tmp_path / "singular.fits", np.ones((60, 80), np.float32),
               **dict(cards, CD1_1=1e-3, CD1_2=1e-3, CD2_1=1e-3, CD2_2=1e-3))
    write_fits(tmp_path / "zero_cd.fits", np.ones((60, 80), np.float32),
               **dict(cards, CD1_1=0.0, CD1_2=0.0, CD2_1=0.0, CD2_2=0.0))
    write_fits(tmp_path / "linear.fits", np.ones((60, 80), np.float32),
               **dict(cards, CTYPE1="LINEAR", CTYPE2="LINEAR"))
    write_fits(tmp_path / "huge_scale.fits", np.ones((60, 80), np.float32),
               **dict(cards, CD1_1=-20.0, CD2_2=20.0))
    write_fits(tmp_path / "bad_bayer.fits", np.ones((60, 80), np.uint16), BAYERPAT="XYZW", **cards)
    missing = tmp_path / "missing.fits"

    table = scan([tmp_path, missing])
    frames, rejected = by_name(table)
    assert set(frames) == {"good.fits"}
    expected = {
        "text.fits": REASON_NOT_FITS, "trunc_header.fits": REASON_UNREADABLE,
        "trunc_data.fits": REASON_UNREADABLE, "missing.fits": REASON_UNREADABLE,
        "table.fits": REASON_NO_IMAGE, "one_d.fits": REASON_BAD_DIMENSIONS,
        "cube4.fits": REASON_BAD_DIMENSIONS, "four_d.fits": REASON_BAD_DIMENSIONS,
        "tiny.fits": REASON_BAD_DIMENSIONS, "no_wcs.fits": REASON_NO_WCS,
        "singular.fits": REASON_BAD_WCS, "zero_cd.fits": REASON_BAD_WCS,
        "linear.fits": REASON_BAD_WCS, "huge_scale.fits": REASON_BAD_WCS,
        "bad_bayer.fits": REASON_BAD_BAYER,
    }
    assert {name: r.kind for name, r in rejected.items()} == expected
    for name, r in rejected.items():
        assert r.reason.startswith(expected[name] + ": ") and len(r.reason) > len(expected[name]) + 2
    assert rejected["missing.fits"].reason == "unreadable: no such file"
    assert "XYZW" in rejected["bad_bayer.fits"].reason
    assert table.rejection_counts()[REASON_BAD_WCS] == 4


def test_extension_case_folder_filter_explicit_files_and_duplicates(tmp_path):
    data = np.ones((60, 80), np.uint16)
    for name in ("a.FIT", "b.Fts", "c.fits"):
        write_fits(tmp_path / name, data, **wcs_cards())
    write_fits(tmp_path / "d.dat", data, **wcs_cards())  # FITS, but not by its name
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "._a.FIT").write_bytes(b"\0\0\0 mac resource fork")
    table = scan([tmp_path])
    assert sorted(os.path.basename(f.path) for f in table.frames) == ["a.FIT", "b.Fts", "c.fits"]
    # a folder's other entries are listed with the reason they were not tried
    assert [(os.path.basename(r.path), r.reason) for r in table.rejected] == [
        ("._a.FIT", "not FITS: hidden name (starts with '.')"),
        ("d.dat", NOT_A_FITS_NAME), ("notes.txt", NOT_A_FITS_NAME)]
    # explicitly named files are tried whatever their extension; duplicates listed once
    table = scan([tmp_path / "d.dat", tmp_path / "notes.txt", tmp_path, str(tmp_path / "c.fits"),
                  tmp_path / "sub" / ".." / "c.fits"])
    assert sorted(os.path.basename(f.path) for f in table.frames) == ["a.FIT", "b.Fts", "c.fits", "d.dat"]
    assert [(os.path.basename(r.path), r.kind) for r in table.rejected] == [
        ("._a.FIT", REASON_NOT_FITS), ("notes.txt", REASON_NOT_FITS)]
    assert table.rejected[1].reason.startswith("not FITS: does not start with 'SIMPLE  ='")
    assert scan([tmp_path / "nowhere"]).rejected[0].reason == "unreadable: no such file"


def test_frames_sorted_by_time_then_path(tmp_path):
    data = np.ones((60, 80), np.uint16)
    times = {"a.fits": "2024-01-01T00:00:03", "b.fits": "2024-01-01T00:00:01",
             "c.fits": None, "d.fits": "2024-01-01T00:00:01", "e.fits": "2024-01-01T00:00:02"}
    for name, t in times.items():
        extra = {} if t is None else {"DATE-OBS": t}
        write_fits(tmp_path / name, data, **wcs_cards(), **extra)
    order = [os.path.basename(f.path) for f in scan([tmp_path]).frames]
    assert order == ["b.fits", "d.fits", "e.fits", "a.fits", "c.fits"]
    assert order == [os.path.basename(f.path) for f in scan(sorted(tmp_path.iterdir(), reverse=True)).frames]


def test_scan_reads_no_pixels_and_leaves_files_untouched(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    paths = [write_fits(tmp_path / f"f{i}.fits", rng.integers(0, 4000, (60, 80)).astype(np.uint16),
                        **seestar_cards()) for i in range(3)]
    paths.append(write_fits(tmp_path / "rgb.fits", np.ones((3, 60, 80), np.float32), **wcs_cards()))
    before = {p: (open(p, "rb").read(), os.stat(p).st_mtime_ns) for p in paths}

    def no_pixels(self):
        raise AssertionError("scan touched pixel data")

    monkeypatch.setattr(fits.hdu.image._ImageBaseHDU, "data", property(no_pixels))
    fd_dir = "/proc/self/fd"
    n_fds = len(os.listdir(fd_dir)) if os.path.isdir(fd_dir) else None
    table = scan([tmp_path])
    assert len(table.frames) == 4 and table.rejected == []
    if n_fds is not None:
        assert len(os.listdir(fd_dir)) == n_fds  # every file handle closed
    monkeypatch.undo()
    for p in paths:
        assert (open(p, "rb").read(), os.stat(p).st_mtime_ns) == before[p]


def test_table_json_and_pickle_round_trip(tmp_path):
    write_fits(tmp_path / "a.fits", np.ones((60, 80), np.uint16), **seestar_cards(EQMODE=1))
    (tmp_path / "b.fits").write_text("nope")
    table = scan([tmp_path])
    again = FrameTable.from_json(json.loads(json.dumps(table.to_json())))
    assert again == table and isinstance(again.frames[0].fov_deg, tuple)
    assert again.rejected == [RejectedFile(str(tmp_path / "b.fits"), again.rejected[0].reason)]
    frame = table.frames[0]
    frame.wcs()  # populate the cache; it must not travel with the pickle
    clone = pickle.loads(pickle.dumps(frame))
    assert clone == frame and "_wcs_cache" not in clone.__dict__
    assert hash(clone) == hash(frame) and clone.fingerprint() == frame.fingerprint()
    assert str(frame.size_bytes) in frame.fingerprint() and frame.path in frame.fingerprint()


# ----------------------------------------------------------- header helpers
@pytest.mark.parametrize(
    "cards, expected",
    [
        ({"MOUNT_MODE": 1}, MOUNT_EQ), ({"MOUNT_MODE": 0}, MOUNT_ALTAZ),
        ({"EQMODE": 1}, MOUNT_EQ), ({"EQMODE": 0}, MOUNT_ALTAZ),
        ({"EQMODE": True}, MOUNT_EQ), ({"EQMODE": False}, MOUNT_ALTAZ),
        ({"MOUNT_MODE": "EQ"}, MOUNT_EQ), ({"MOUNT_MODE": " equatorial "}, MOUNT_EQ),
        ({"MOUNT_MODE": "eq"}, MOUNT_EQ), ({"EQMODE": "EQUATORIAL"}, MOUNT_EQ),
        ({"MOUNT_MODE": "ALT_AZ"}, MOUNT_ALTAZ), ({"MOUNT_MODE": "alt-az"}, MOUNT_ALTAZ),
        ({"MOUNT_MODE": "AltAz "}, MOUNT_ALTAZ), ({"MOUNT_MODE": "az"}, MOUNT_ALTAZ),
        ({"MOUNT_MODE": 2}, MOUNT_UNKNOWN), ({"MOUNT_MODE": "GEM?"}, MOUNT_UNKNOWN),
        ({"MOUNT_MODE": ""}, MOUNT_UNKNOWN), ({}, MOUNT_UNKNOWN),
        ({"MOUNT_MODE": "junk", "EQMODE": 1}, MOUNT_EQ),
    ],
)
def test_parse_mount_mode(cards, expected):
    assert parse_mount_mode(cards) == expected
    assert parse_mount_mode(fits.Header(cards)) == expected


def test_mount_mode_from_file_header(tmp_path):
    for i, (key, value) in enumerate([("EQMODE", True), ("EQMODE", False), ("MOUNT_MODE", "ALT-AZ")]):
        write_fits(tmp_path / f"m{i}.fits", np.ones((60, 80), np.uint16), **{key: value}, **wcs_cards())
    assert [f.mount for f in scan([tmp_path]).frames] == [MOUNT_EQ, MOUNT_ALTAZ, MOUNT_ALTAZ]


@pytest.mark.parametrize(
    "cards, expected",
    [
        ({"BAYERPAT": "RGGB"}, "RGGB"), ({"BAYERPAT": " rggb "}, "RGGB"),
        ({"BAYERPAT": "RGGB", "XBAYROFF": 1}, "GRBG"), ({"BAYERPAT": "RGGB", "YBAYROFF": 1}, "GBRG"),
        ({"BAYERPAT": "RGGB", "XBAYROFF": 1, "YBAYROFF": 1}, "BGGR"),
        ({"BAYERPAT": "GRBG", "XBAYROFF": 2, "YBAYROFF": -1}, "BGGR"),
        ({"COLORTYP": "GBRG"}, "GBRG"), ({"COLORTYP": "MONO"}, None), ({}, None), ({"BAYERPAT": ""}, None),
    ],
)
def test_bayer_pattern(cards, expected):
    assert fitsheader.bayer_pattern(fits.Header(cards)) == expected


@pytest.mark.parametrize("cards", [{"BAYERPAT": "XYZW"}, {"BAYERPAT": "RGGB", "XBAYROFF": "one"},
                                   {"BAYERPAT": "RGGB", "YBAYROFF": 0.5}])
def test_bayer_pattern_errors(cards):
    with pytest.raises(ValueError):
        fitsheader.bayer_pattern(fits.Header(cards))


def test_bayer_offset_applied_from_file(tmp_path):
    path = write_fits(tmp_path / "x.fits", np.ones((61, 81), np.uint16),  # odd sizes are fine
                      **seestar_cards(BAYERPAT="RGGB", XBAYROFF=1, **wcs_cards(width=81, height=61)))
    (frame,) = scan([path]).frames
    assert (frame.bayer, frame.width, frame.height) == ("GRBG", 81, 61)


@pytest.mark.parametrize(
    "cards, expected",
    [
        ({"DATE-OBS": "2024-03-01T21:33:12.123456"}, Time("2024-03-01T21:33:12.123456").mjd),
        ({"DATE-OBS": "2024-03-01"}, Time("2024-03-01").mjd),
        ({"DATE-OBS": "2024-03-01", "TIME-OBS": "06:00:00"}, Time("2024-03-01T06:00:00").mjd),
        ({"MJD-OBS": 60371.5}, 60371.5),
        ({"DATE-AVG": "2024-03-01T12:00:00"}, Time("2024-03-01T12:00:00").mjd),
        ({"DATE-OBS": "garbage", "MJD-OBS": 60000.0}, 60000.0),
        ({"DATE-OBS": "garbage"}, None), ({}, None),
    ],
)
def test_parse_time(cards, expected):
    got = fitsheader.parse_time_mjd(fits.Header(cards))
    assert got == (None if expected is None else pytest.approx(expected, abs=1e-9))


def test_parse_exptime():
    assert fitsheader.parse_exptime({"EXPTIME": 10}) == 10.0
    assert fitsheader.parse_exptime({"EXPOSURE": 2.5}) == 2.5
    assert fitsheader.parse_exptime({"EXPTIME": "n/a", "EXPOSURE": 3}) == 3.0
    assert fitsheader.parse_exptime({}) is None


def test_frame_is_frozen(tmp_path):
    (frame,) = scan([write_fits(tmp_path / "a.fits", np.ones((60, 80), np.uint16), **wcs_cards())]).frames
    assert isinstance(frame, Frame)
    with pytest.raises(dataclasses.FrozenInstanceError):
        frame.path = "elsewhere"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_named_fifo_is_rejected_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.fits"
    os.mkfifo(fifo)
    (rejected,) = scan([fifo]).rejected
    assert rejected.reason == "unreadable: not a regular file"
    assert scan([tmp_path]).rejected == [rejected]  # a folder scan names it too, unopened


# ------------------------------------------- compressed frames, entries skipped
#: Frame fields that come from the header (identical for every copy of one frame)
HEADER_FIELDS = ("height", "width", "layout", "bayer", "dtype", "wcs_header", "scale_arcsec",
                 "ra_deg", "dec_deg", "fov_deg", "time_mjd", "exptime_s", "mount")
SKIPPED_IN_MIXED_FOLDER = {
    "._plain.fits": "not FITS: hidden name (starts with '.')",
    "broken.fits": "unreadable: broken symbolic link",
    "loop.fits": "unreadable: symbolic link loop",
    "notes.txt": NOT_A_FITS_NAME,
    "x.fits": "not FITS: a directory, not a file (subfolders are not scanned)",
}


def test_compressed_frames_are_read_and_every_other_entry_is_named(mixed_frame_folder):
    folder, paths = mixed_frame_folder
    frames, rejected = by_name(scan([folder]))
    assert set(frames) == {"plain.fits", "gz.fits.gz", "rice.fits.fz"}
    plain = frames["plain.fits"]
    assert (plain.layout, plain.dtype, plain.hdu) == ("bayer", "uint16", 0)
    for name in ("gz.fits.gz", "rice.fits.fz"):
        assert {k: getattr(frames[name], k) for k in HEADER_FIELDS} == {
            k: getattr(plain, k) for k in HEADER_FIELDS}, name
    assert frames["gz.fits.gz"].hdu == 0 and frames["rice.fits.fz"].hdu == 1  # the image HDU
    assert frames["gz.fits.gz"].size_bytes == os.path.getsize(paths["gz"])  # the file on disk
    assert {name: r.reason for name, r in rejected.items()} == SKIPPED_IN_MIXED_FOLDER


def test_gzip_is_recognised_by_content_and_checked_whole(mixed_frame_folder, tmp_path):
    import gzip

    folder, paths = mixed_frame_folder
    (frame,) = scan([paths["gz"]]).frames  # named on the command line
    assert frame.path == paths["gz"]
    packed = open(paths["gz"], "rb").read()
    raw = gzip.decompress(packed)
    (tmp_path / "renamed.fits").write_bytes(packed)  # gzip under a plain FITS name
    (tmp_path / "cut.fits.gz").write_bytes(packed[: len(packed) // 2])
    (tmp_path / "bad_crc.fits.gz").write_bytes(packed[:-8] + bytes([packed[-8] ^ 0xFF]) + packed[-7:])
    (tmp_path / "short.fits.gz").write_bytes(gzip.compress(raw[:-6000]))  # complete gzip, short FITS
    (tmp_path / "notes.fits.gz").write_bytes(gzip.compress(b"observing log\n" * 50))
    os.symlink(paths["plain"], tmp_path / "alias.fits")
    frames, rejected = by_name(scan([tmp_path / "renamed.fits", paths["plain"], tmp_path]))
    assert set(frames) == {"renamed.fits", "plain.fits"}
    assert {k: getattr(frames["renamed.fits"], k) for k in HEADER_FIELDS} == {
        k: getattr(frames["plain.fits"], k) for k in HEADER_FIELDS}
    reasons = {name: r.reason for name, r in rejected.items()}
    assert reasons["cut.fits.gz"] == "unreadable: gzip data ends early (truncated file)"
    assert reasons["bad_crc.fits.gz"].startswith("unreadable: corrupt gzip data: CRC check failed")
    assert reasons["short.fits.gz"].startswith("unreadable: truncated data (")
    assert reasons["notes.fits.gz"].startswith("not FITS: does not start with 'SIMPLE  ='")
    assert reasons["frames"] == "not FITS: a directory, not a file (subfolders are not scanned)"
    # the same file under a second name is tried once, the other name listed
    assert reasons["alias.fits"] == f"duplicate: same file as {paths['plain']}"
    # named directly, broken links and link loops say what they are
    bad = {os.path.basename(r.path): r.reason
           for r in scan([folder / "broken.fits", folder / "loop.fits"]).rejected}
    assert bad == {k: SKIPPED_IN_MIXED_FOLDER[k] for k in ("broken.fits", "loop.fits")}


def test_cli_scan_lists_frames_and_skipped_entries(mixed_frame_folder):
    from typer.testing import CliRunner

    from zdask.cli import app

    folder, paths = mixed_frame_folder
    result = CliRunner().invoke(app, ["scan", str(folder)])
    assert result.exit_code == 0, result.output
    assert "3 frame(s) usable, 5 rejected" in result.output
    for kind in ("plain", "gz", "fz"):
        assert f"{paths[kind]}  bayer" in result.output
    for name, reason in SKIPPED_IN_MIXED_FOLDER.items():
        assert f"rejected {folder / name}: {reason}" in result.output

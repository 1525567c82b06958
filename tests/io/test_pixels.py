"""read_frame: float32 pixels in the stored layout, errors naming the file."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from astropy.io import fits

from zdask.io.errors import FrameReadError
from zdask.io.pixels import read_frame
from zdask.io.scan import scan


def wcs_cards(width, height, scale_arcsec=2.0):
    s = scale_arcsec / 3600.0
    return {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 80.0, "CRVAL2": 10.0,
            "CRPIX1": (width + 1) / 2, "CRPIX2": (height + 1) / 2,
            "CD1_1": -s, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": s}


def write(path, data, *, bscale=None, bzero=None, **cards):
    hdu = fits.PrimaryHDU(data)
    if bscale is not None:
        hdu.scale("int16", bscale=bscale, bzero=bzero)
    shape = np.shape(data)
    for key, value in {**wcs_cards(shape[-1], shape[-2]), **cards}.items():
        hdu.header[key] = value
    hdu.writeto(path, overwrite=True)
    return str(path)


def only_frame(path):
    table = scan([path])
    assert table.rejected == []
    return table.frames[0]


def test_bayer_uint16(tmp_path):
    data = np.random.default_rng(0).integers(0, 65535, (31, 45)).astype(np.uint16)
    frame = only_frame(write(tmp_path / "b.fits", data, BAYERPAT="RGGB"))
    assert frame.layout == "bayer" and frame.dtype == "uint16"
    out = read_frame(frame)
    assert out.dtype == np.float32 and out.shape == (31, 45) and out.dtype.isnative
    np.testing.assert_array_equal(out, data.astype(np.float32))
    assert out.max() > 32768  # BZERO applied: the unsigned range survives


def test_mono_scaled_int16(tmp_path):
    values = np.linspace(-100.0, 900.0, 20 * 24).reshape(20, 24)
    frame = only_frame(write(tmp_path / "m.fits", values.copy(), bscale=0.5, bzero=400.0))
    assert frame.layout == "mono" and frame.dtype == "float32"
    out = read_frame(frame)
    assert out.dtype == np.float32 and out.shape == (20, 24)
    np.testing.assert_allclose(out, values, atol=0.5)  # BSCALE/BZERO applied (quantised to 0.5)
    assert fits.getheader(frame.path)["BITPIX"] == 16


def test_rgb_channel_last(tmp_path):
    data = np.random.default_rng(1).random((3, 16, 21)).astype(np.float32)
    frame = only_frame(write(tmp_path / "c.fits", data))
    out = read_frame(frame)
    assert out.shape == (16, 21, 3) == frame.shape and out.dtype == np.float32
    assert out.flags.c_contiguous
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], data[c])


def test_image_in_extension_hdu(tmp_path):
    data = np.arange(12 * 10, dtype=np.float64).reshape(10, 12)
    hdr = fits.Header(wcs_cards(12, 10))
    path = tmp_path / "ext.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, header=hdr)]).writeto(path)
    frame = only_frame(path)
    assert frame.hdu == 1
    np.testing.assert_array_equal(read_frame(frame), data.astype(np.float32))


def test_changed_shape_after_scan_raises_naming_the_file(tmp_path):
    path = write(tmp_path / "late.fits", np.zeros((20, 30), np.uint16))
    frame = only_frame(path)
    write(path, np.zeros((20, 32), np.uint16))
    with pytest.raises(FrameReadError) as err:
        read_frame(frame)
    assert path in str(err.value) and err.value.path == path
    # mono became rgb
    write(path, np.zeros((3, 20, 30), np.uint16))
    with pytest.raises(FrameReadError, match="late.fits"):
        read_frame(frame)


@pytest.mark.parametrize("damage", ["delete", "truncate", "garbage"])
def test_unreadable_after_scan_raises_naming_the_file(tmp_path, damage):
    path = write(tmp_path / "gone.fits", np.ones((40, 50), np.float32))
    frame = only_frame(path)
    if damage == "delete":
        os.remove(path)
    elif damage == "truncate":
        blob = open(path, "rb").read()
        open(path, "wb").write(blob[: 2880 + 100])
    else:
        open(path, "wb").write(b"garbage" * 1000)
    with pytest.raises(FrameReadError) as err:
        read_frame(frame)
    assert path in str(err.value)


def test_frame_read_error_pickles():
    err = pickle.loads(pickle.dumps(FrameReadError("/data/x.fits", "boom")))
    assert isinstance(err, FrameReadError) and (err.path, err.reason) == ("/data/x.fits", "boom")
    assert str(err) == "cannot read frame /data/x.fits: boom"


def test_compressed_frames_read_exactly_like_the_plain_one(mixed_frame_folder):
    folder, paths = mixed_frame_folder
    table = scan([folder])
    frames = {f.path: f for f in table.frames}
    plain = read_frame(frames[paths["plain"]])
    raw = fits.getdata(paths["plain"]).astype(np.float32)
    np.testing.assert_array_equal(plain, raw)
    assert len(np.unique(plain)) > 100  # real sky and noise, not a constant that would hide a mix-up
    for kind in ("gz", "fz"):  # gzip and Rice are lossless on integers: bit-identical pixels
        out = read_frame(frames[paths[kind]])
        assert out.dtype == np.float32 and out.shape == plain.shape
        np.testing.assert_array_equal(out, plain, err_msg=kind)


def test_gzip_damaged_after_scan_raises_naming_the_file(mixed_frame_folder):
    folder, paths = mixed_frame_folder
    (frame,) = scan([paths["gz"]]).frames
    packed = open(paths["gz"], "rb").read()
    open(paths["gz"], "wb").write(packed[:-8] + bytes([packed[-8] ^ 0xFF]) + packed[-7:])
    with pytest.raises(FrameReadError) as err:  # astropy alone would not check the CRC
        read_frame(frame)
    assert err.value.path == paths["gz"] and "corrupt gzip data: CRC check failed" in err.value.reason

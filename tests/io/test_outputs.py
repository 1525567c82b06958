import os
import stat

import numpy as np
import pytest
from astropy.io import fits

from zdask.io.outputs import atomic_path, write_image_fits, write_json, write_mosaic, write_preview


def test_failed_write_leaves_the_previous_file_untouched(tmp_path):
    target = tmp_path / "mosaic.fits"
    target.write_bytes(b"previous good mosaic")
    with pytest.raises(RuntimeError):
        with atomic_path(str(target)) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b"half of a new mos")
            raise RuntimeError("crash in the middle of writing")
    assert target.read_bytes() == b"previous good mosaic"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mosaic.fits"]


def test_mosaic_layout_colour_and_mono(tmp_path):
    wcs = {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 10.0, "CRVAL2": 41.0,
           "CRPIX1": 3.0, "CRPIX2": 2.0, "CD1_1": -1e-3, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 1e-3}
    image = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
    coverage = np.array([[0, 1, 2, 3, 4]] * 4, dtype=np.float32)
    write_mosaic(str(tmp_path / "c.fits"), image, coverage, wcs)
    with fits.open(tmp_path / "c.fits") as hdul:
        assert hdul[0].data.shape == (3, 4, 5) and hdul[0].data.dtype.name == "float32"
        np.testing.assert_array_equal(hdul[0].data[1], image[..., 1])
        assert hdul[0].header["CTYPE1"] == "RA---TAN"
        assert hdul["COVERAGE"].data.dtype.name == "float32"
        assert hdul["ALPHA"].data.dtype.name == "uint8"
        np.testing.assert_array_equal(hdul["ALPHA"].data[0], [0, 255, 255, 255, 255])
    write_mosaic(str(tmp_path / "m.fits"), image[..., :1], coverage, wcs)
    with fits.open(tmp_path / "m.fits") as hdul:
        assert hdul[0].data.shape == (4, 5)


def test_colour_mosaic_wcs_reads_without_astropy_fixing_it(tmp_path):
    import warnings

    from astropy.wcs import WCS

    wcs = {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 10.0, "CRVAL2": 41.0,
           "CRPIX1": 3.0, "CRPIX2": 2.0, "CD1_1": -1e-3, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 1e-3}
    image = np.zeros((4, 5, 3), dtype=np.float32)
    write_mosaic(str(tmp_path / "c.fits"), image, np.ones((4, 5), np.float32), wcs)
    with fits.open(tmp_path / "c.fits") as hdul, warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. FITSFixedWarning: 'cdfix' made the change
        w = WCS(hdul[0].header)
    assert w.naxis == 3 and w.celestial.naxis == 2  # the colour axis is the cube's third
    ra, dec = w.celestial.all_pix2world([2.0], [1.0], 0)  # CRPIX is 1-based
    np.testing.assert_allclose([ra[0], dec[0]], [10.0, 41.0])


@pytest.fixture
def umask(request):
    """Run the test under the umask it is parametrised with; restore the previous one after."""
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


@pytest.mark.parametrize("umask", [0o022, 0o002], indirect=True)
def test_output_files_follow_the_umask(tmp_path, umask):
    """Every output (mosaic, tile FITS, preview, report) is readable as the umask allows, like
    the Zarr store: 0644 under 022, 0664 under 002 (the temporary file's 0600 was kept)."""
    wcs = {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 10.0, "CRVAL2": 41.0,
           "CRPIX1": 3.0, "CRPIX2": 2.0, "CD1_1": -1e-3, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 1e-3}
    image = np.ones((4, 5, 3), dtype=np.float32)
    coverage = np.ones((4, 5), dtype=np.float32)
    write_mosaic(str(tmp_path / "mosaic.fits"), image, coverage, wcs)
    write_image_fits(str(tmp_path / "tiles" / "tile_000.fits"), image, wcs, {"COVERAGE": coverage})
    write_preview(str(tmp_path / "preview.png"), image)
    write_json(str(tmp_path / "report.json"), {"a": 1})
    (tmp_path / "report.json").chmod(0o600)  # a file left by an older zdask: replaced, mode too
    write_json(str(tmp_path / "report.json"), {"a": 2})
    expected = 0o666 & ~umask
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in tmp_path.rglob("*") if p.is_file()}
    assert modes == {name: expected for name in
                     ("mosaic.fits", "tiles/tile_000.fits", "preview.png", "report.json")}

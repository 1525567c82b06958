"""zdask.open_mosaic: a mosaic.fits as a lazy xarray Dataset (image, coverage, alpha, WCS)."""

from __future__ import annotations

import pickle

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from astropy.wcs import WCS
from distributed import Client, LocalCluster

import zdask
from zdask.graph.geometry import tan_header
from zdask.io.mosaicdata import open_mosaic
from zdask.io.outputs import write_mosaic

HEIGHT, WIDTH = 90, 70


def _mosaic(tmp_path, channels: int = 3):
    rng = np.random.default_rng(5)
    image = rng.normal(100, 10, (HEIGHT, WIDTH, channels)).astype(np.float32)
    image[:5] = np.nan                                  # uncovered rows
    coverage = rng.integers(1, 9, (HEIGHT, WIDTH)).astype(np.float32)
    coverage[:5] = 0
    header = tan_header(150.0, 2.0, 1.5, (WIDTH / 2, HEIGHT / 2))
    path = tmp_path / "mosaic.fits"
    write_mosaic(str(path), image, coverage, header, {"NTILES": 3, "NFRAMES": 40}, band_rows=16)
    return path, image, coverage, header


def test_the_dataset_holds_the_files_arrays_lazily_with_named_dimensions(tmp_path):
    path, image, coverage, _ = _mosaic(tmp_path)
    ds = open_mosaic(path, block_bytes=4 * WIDTH * 20)   # bands of 20 rows
    assert isinstance(ds, xr.Dataset)
    assert ds["image"].dims == ("channel", "y", "x") and ds["image"].shape == (3, HEIGHT, WIDTH)
    assert ds["coverage"].dims == ("y", "x") and ds["alpha"].dims == ("y", "x")
    assert list(ds["channel"].values) == ["R", "G", "B"]
    for name in ("image", "coverage", "alpha"):
        assert isinstance(ds[name].data, da.Array)  # nothing read yet
    assert ds["image"].data.chunks == ((1, 1, 1), (20, 20, 20, 20, 10), (WIDTH,))
    assert ds["image"].dtype == np.float32 and ds["alpha"].dtype == np.uint8
    np.testing.assert_array_equal(ds["image"].values, np.moveaxis(image, -1, 0))  # NaN where NaN
    np.testing.assert_array_equal(ds["coverage"].values, coverage)
    np.testing.assert_array_equal(ds["alpha"].values, np.where(coverage > 0, 255, 0))
    assert ds.attrs["NTILES"] == 3 and ds.attrs["NFRAMES"] == 40


def test_the_wcs_is_in_the_attributes_and_ra_dec_are_lazy_coordinates(tmp_path):
    path, _, _, header = _mosaic(tmp_path)
    ds = open_mosaic(path, celestial=True, block_bytes=4 * WIDTH * 32)
    wcs = ds.attrs["wcs"]
    assert isinstance(wcs, WCS) and wcs.naxis == 2
    corners = ([0, WIDTH - 1, 0, WIDTH - 1], [0, 0, HEIGHT - 1, HEIGHT - 1])
    np.testing.assert_allclose(WCS(ds.attrs["wcs_header"]).all_pix2world(*corners, 0),
                               WCS(header).all_pix2world(*corners, 0), rtol=0, atol=1e-12)
    assert isinstance(ds["ra"].data, da.Array) and ds["ra"].dims == ("y", "x")
    ra, dec = ds["ra"].values, ds["dec"].values
    expected_ra, expected_dec = WCS(header).all_pix2world(np.arange(WIDTH)[None, :], np.arange(HEIGHT)[:, None], 0)
    np.testing.assert_allclose(ra, expected_ra, rtol=0, atol=1e-10)
    np.testing.assert_allclose(dec, expected_dec, rtol=0, atol=1e-10)
    # the reference pixel (FITS 1-based CRPIX) is at the reference direction
    y, x = round(header["CRPIX2"] - 1), round(header["CRPIX1"] - 1)
    assert (float(ds["ra"][y, x]), float(ds["dec"][y, x])) == pytest.approx((150.0, 2.0), abs=1e-9)
    assert "ra" not in open_mosaic(path).coords  # off unless asked


def test_a_mono_mosaic_has_one_channel(tmp_path):
    path, image, _, _ = _mosaic(tmp_path, channels=1)
    ds = open_mosaic(path)
    assert ds["image"].shape == (1, HEIGHT, WIDTH) and list(ds["channel"].values) == ["L"]
    np.testing.assert_array_equal(ds["image"].values[0], image[..., 0])


def test_the_dataset_computes_on_worker_processes_without_pixels_in_its_graph(tmp_path):
    path, image, _, _ = _mosaic(tmp_path)
    ds = zdask.open_mosaic(path, block_bytes=4 * WIDTH * 20)
    assert len(pickle.dumps(dict(ds["image"].data.__dask_graph__()))) < 20_000  # no pixels inside
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        medians = client.compute(ds["image"].median(dim=("y", "x"), skipna=True).data).result()
    np.testing.assert_allclose(medians, np.nanmedian(image, axis=(0, 1)), rtol=1e-6)


def test_a_fits_file_that_is_not_a_mosaic_is_refused_naming_it(tmp_path):
    from astropy.io import fits

    path = tmp_path / "frame.fits"
    fits.PrimaryHDU(np.zeros((4, 4), np.float32)).writeto(path)
    with pytest.raises(ValueError, match=r"frame\.fits: not a zdask mosaic \(no COVERAGE or ALPHA extension\)"):
        open_mosaic(path)


def test_a_mosaic_at_a_url_is_written_whole_and_opened_like_a_file(tmp_path):
    """write_mosaic to an fsspec URL (fsspec's real in-memory file system) puts the same bytes
    as the local file; open_mosaic of the URL reads the same arrays, a band of rows per block."""
    import fsspec

    path, image, coverage, header = _mosaic(tmp_path)
    url = "memory://zdask-mosaic-test/run1/mosaic.fits"
    fs = fsspec.filesystem("memory")
    try:
        write_mosaic(url, image, coverage, header, {"NTILES": 3, "NFRAMES": 40}, band_rows=16)
        assert fs.cat_file("/zdask-mosaic-test/run1/mosaic.fits") == path.read_bytes()
        assert fs.ls("/zdask-mosaic-test/run1", detail=False) == ["/zdask-mosaic-test/run1/mosaic.fits"]
        ds = open_mosaic(url, block_bytes=4 * WIDTH * 20)
        local = open_mosaic(path, block_bytes=4 * WIDTH * 20)
        assert ds["image"].data.chunks == local["image"].data.chunks and ds.attrs["source"] == url
        for name in ("image", "coverage", "alpha"):
            np.testing.assert_array_equal(ds[name].values, local[name].values)
        assert ds.attrs["NFRAMES"] == 40 and ds.attrs["wcs"].wcs.compare(local.attrs["wcs"].wcs)
    finally:
        fs.rm("/zdask-mosaic-test", recursive=True)

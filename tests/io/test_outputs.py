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


# --------------------------------------------------------------------------- streamed from Zarr

WCS = {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 10.0, "CRVAL2": 41.0,
       "CRPIX1": 3.0, "CRPIX2": 2.0, "CD1_1": -1e-3, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 1e-3}


def _zarr_canvas(folder, image, coverage, chunk):
    """The canvas as the mosaic stage leaves it: image (H, W, C) and coverage (H, W) in Zarr."""
    import zarr

    group = zarr.open_group(str(folder), mode="w")
    z_image = group.create_array("image", shape=image.shape, chunks=(chunk, chunk) + image.shape[2:],
                                 dtype="float32")
    z_cover = group.create_array("coverage", shape=coverage.shape, chunks=(chunk, chunk), dtype="float32")
    z_image[:], z_cover[:] = image, coverage
    return z_image, z_cover


@pytest.mark.parametrize("channels", [3, 1])
def test_streamed_mosaic_is_byte_for_byte_the_in_memory_one(tmp_path, channels):
    """Several bands (chunk rows of 16 cut in two bands of 8 rows; the last one partial),
    windows across chunk columns: the file equals what astropy writes from the whole arrays in
    memory (the writer before streaming)."""
    from zdask.io.outputs import alpha_from_coverage

    rng = np.random.default_rng(7)
    image = rng.normal(100.0, 5.0, (53, 41, channels)).astype(np.float32)
    image[:9, :13] = np.nan
    coverage = rng.integers(0, 4, (53, 41)).astype(np.float32)
    coverage[20, 5] = np.nan
    cards = {"NTILES": 4, "NFRAMES": 37}
    z_image, z_cover = _zarr_canvas(tmp_path / "canvas.zarr", image, coverage, chunk=16)
    bands = []
    write_mosaic(str(tmp_path / "streamed.fits"), z_image, z_cover, WCS, cards, band_rows=12,
                 each_band=lambda y0, im, cov: bands.append((y0, im.shape, cov.shape)))
    write_image_fits(str(tmp_path / "memory.fits"), image, WCS,
                     {"COVERAGE": coverage, "ALPHA": alpha_from_coverage(coverage)}, cards)
    assert [b[0] for b in bands] == [0, 8, 16, 24, 32, 40, 48] and bands[-1][1] == (5, 41, channels)
    assert (tmp_path / "streamed.fits").read_bytes() == (tmp_path / "memory.fits").read_bytes()
    with fits.open(tmp_path / "streamed.fits") as got, fits.open(tmp_path / "memory.fits") as want:
        for a, b in zip(got, want, strict=True):
            assert list(a.header.items()) == list(b.header.items())
            np.testing.assert_array_equal(a.data, b.data)
        assert got[0].header["NFRAMES"] == 37 and got["ALPHA"].data.dtype.name == "uint8"


@pytest.mark.parametrize("max_side, step", [(40, 4), (30, 5)])  # 5 does not divide the chunk side
def test_streamed_preview_equals_the_stretch_of_the_whole_strided_canvas(tmp_path, max_side, step):
    from PIL import Image

    from zdask.ops.stretch import asinh_stretch

    rng = np.random.default_rng(3)
    image = rng.normal(1000.0, 10.0, (131, 97, 3)).astype(np.float32)
    image[40:44, 10:90] = 30_000.0
    image[:7] = np.nan
    z_image, _ = _zarr_canvas(tmp_path / "canvas.zarr", image, np.ones(image.shape[:2], np.float32), 32)
    write_preview(str(tmp_path / "preview.png"), z_image, max_side=max_side, band_rows=7)
    want = asinh_stretch(image[::step, ::step])[::-1]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "preview.png")), want)


@pytest.mark.parametrize("channels, step", [(3, 4), (3, 5), (1, 5)])
def test_preview_sampled_from_the_mosaic_bands_equals_the_preview_read_on_its_own(tmp_path, channels, step):
    """The run fills the preview from the bands write_mosaic streams (bands of 8 and 4 rows,
    which the stride cuts at every phase): the PNG is the one write_preview reads itself."""
    from PIL import Image

    from zdask.io.outputs import PreviewSampler

    rng = np.random.default_rng(5)
    image = rng.normal(1000.0, 10.0, (131, 97, channels)).astype(np.float32)
    image[40:44, 10:90] = 30_000.0
    image[:7] = np.nan
    coverage = np.ones(image.shape[:2], np.float32)
    z_image, z_cover = _zarr_canvas(tmp_path / "canvas.zarr", image, coverage, 32)
    max_side = -(-131 // step)
    sampler = PreviewSampler(z_image.shape, max_side=max_side)
    assert sampler.step == step
    write_mosaic(str(tmp_path / "mosaic.fits"), z_image, z_cover, WCS, band_rows=11,
                 each_band=lambda y0, im, cov: sampler.add(y0, im))
    sampler.save(str(tmp_path / "sampled.png"))
    write_preview(str(tmp_path / "read.png"), z_image, max_side=max_side, band_rows=7)
    got, want = (np.asarray(Image.open(tmp_path / name)) for name in ("sampled.png", "read.png"))
    assert got.shape[:2] == (len(range(0, 131, step)), len(range(0, 97, step)))
    assert np.array_equal(got, want)


def test_bands_cover_the_rows_within_the_size_and_never_straddle_a_stored_chunk_row(tmp_path):
    from zdask.io.outputs import bands

    z_image, _ = _zarr_canvas(tmp_path / "c.zarr", np.zeros((100, 3, 1), np.float32), np.zeros((100, 3)), 32)
    for rows in (1, 7, 16, 31, 32, 70, 500):
        got = list(bands(z_image, rows))
        assert [y0 for y0, _ in got[1:]] == [y1 for _, y1 in got[:-1]] and got[0][0] == 0 and got[-1][1] == 100
        assert all(0 < y1 - y0 <= max(rows, 1) for y0, y1 in got) and len(got) <= -(-100 // rows) + 4
        assert all(y0 // 32 == (y1 - 1) // 32 or (y0 % 32 == 0 and y1 % 32 in (0, 100 % 32)) for y0, y1 in got)
    assert list(bands(np.zeros((10, 2)), 4)) == [(0, 3), (3, 6), (6, 10)]  # not chunked: equal bands


class _FailingCanvas:
    """An array-like whose third band cannot be read (a damaged store, say)."""

    def __init__(self, array):
        self.array, self.shape = array, array.shape

    def __getitem__(self, key):
        if key[0].start >= 20:
            raise RuntimeError("chunk 2.0 is damaged")
        return self.array[key]


def test_a_stream_broken_midway_leaves_the_previous_mosaic(tmp_path):
    target = tmp_path / "mosaic.fits"
    target.write_bytes(b"previous good mosaic")
    image = np.ones((30, 8, 3), np.float32)
    with pytest.raises(RuntimeError, match="damaged"):
        write_mosaic(str(target), _FailingCanvas(image), np.ones((30, 8), np.float32), WCS, band_rows=10)
    assert target.read_bytes() == b"previous good mosaic"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mosaic.fits"]


MEMORY_SCRIPT = """
import json, sys
import zarr
from zdask.io.outputs import write_mosaic

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

group = zarr.open_group(sys.argv[1], mode="r")
wcs = json.loads(sys.argv[3])
write_mosaic(sys.argv[2] + ".warm", group["image"][:8], group["coverage"][:8], wcs)  # imports, caches
open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS
base = status("VmRSS")
write_mosaic(sys.argv[2], group["image"], group["coverage"], wcs, band_rows=int(sys.argv[4]))
print(json.dumps({"base": base, "peak": status("VmHWM")}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
def test_writing_a_canvas_much_larger_than_a_band_holds_only_a_few_bands(tmp_path):
    import json
    import subprocess
    import sys

    import zarr

    height, width, chunk, band_rows = 4000, 3000, 256, 64
    group = zarr.open_group(str(tmp_path / "canvas.zarr"), mode="w")
    z_image = group.create_array("image", shape=(height, width, 3), chunks=(chunk, chunk, 3), dtype="float32")
    z_cover = group.create_array("coverage", shape=(height, width), chunks=(chunk, chunk), dtype="float32")
    row = np.arange(width, dtype=np.float32)
    for y0 in range(0, height, chunk):
        z_image[y0:y0 + chunk] = row[None, :, None] + np.arange(3, dtype=np.float32) + y0
        z_cover[y0:y0 + chunk] = (row[None, :] % 5) + np.zeros((chunk, 1), np.float32)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / "canvas.zarr"),
                          str(tmp_path / "mosaic.fits"), json.dumps(WCS), str(band_rows)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    canvas = height * width * 4 * 4                 # image and coverage: 192 MB
    band = band_rows * width * 4 * 4                 # 3 MB
    chunk_read = 3 * chunk * chunk * 3 * 4           # a stored chunk decoded, with its copies
    grown = r["peak"] - r["base"]
    assert grown < 4 * band + chunk_read + 16e6 < canvas / 6, (grown / 1e6, r)
    with fits.open(tmp_path / "mosaic.fits", memmap=True) as hdul:  # and it is the whole canvas
        assert hdul[0].data.shape == (3, height, width)
        assert hdul[0].data[2, height - 1, width - 1] == width - 1 + 2 + (height - 1) // chunk * chunk
        assert hdul["ALPHA"].data[height - 1, 5] == 0 and hdul["ALPHA"].data[0, 6] == 255

"""A mosaic.fits as an xarray Dataset backed by dask: for notebooks and scripts.

Nothing is read when the dataset is opened but the headers: each dask block opens the file
(memory-mapped) and copies its own rows, so the dataset works on any worker that sees the file
and its graph stays small when it is sent to a cluster (no pixels in it). A mosaic at an fsspec
URL (``s3://bucket/run1/mosaic.fits``) is read the same way through fsspec: headers in small
requests, each block its own rows (:attr:`_FitsRows.URL_FETCH_BYTES` at a time).
"""

from __future__ import annotations

import os

import dask.array as da
import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from zdask.io import urls
from zdask.io.fitsheader import open_fits

__all__ = ["open_mosaic", "celestial_coordinates"]

#: Rows per dask block: bands of whole rows (a FITS plane is stored row after row) of about
#: this many bytes.
BLOCK_BYTES = 64 << 20

#: Channel names of a colour mosaic (zdask writes RGB as planes 0, 1, 2) and of a single plane.
RGB = ("R", "G", "B")
MONO = ("L",)


class _FitsRows:
    """An HDU's data read lazily: ``self[...]`` opens the file memory-mapped and copies what is
    asked for as native-endian values. Small and picklable (a path, an HDU name, a shape)."""

    def __init__(self, path: str, hdu: int | str, shape: tuple[int, ...], dtype: np.dtype):
        self.path, self.hdu, self.shape, self.dtype = path, hdu, shape, np.dtype(dtype)
        self.ndim = len(shape)

    #: Bytes per request when a block's rows are read from a URL.
    URL_FETCH_BYTES = 8 << 20

    def __getitem__(self, index) -> np.ndarray:
        if urls.is_url(self.path):  # only the rows asked for: an HDU's section, not its data
            with urls.open_input(self.path, self.URL_FETCH_BYTES) as fh, \
                    fits.open(fh, memmap=False, lazy_load_hdus=True) as hdul:
                return np.array(hdul[self.hdu].section[index], dtype=self.dtype)
        with fits.open(self.path, memmap=True, lazy_load_hdus=True) as hdul:
            return np.array(hdul[self.hdu].data[index], dtype=self.dtype)


def open_mosaic(path: str | os.PathLike, celestial: bool = False, block_bytes: int = BLOCK_BYTES):
    """``mosaic.fits`` (as ``zdask run`` writes it) as a lazy :class:`xarray.Dataset`.

    Variables: ``image`` (``channel``, ``y``, ``x``) float32 — ``channel`` is R, G, B for a colour
    mosaic, L for a single plane; ``coverage`` (``y``, ``x``) float32, the effective number of
    frames per pixel; ``alpha`` (``y``, ``x``) uint8, 255 where a frame covers the pixel. Each is
    a dask array in bands of rows of about ``block_bytes``; ``y`` and ``x`` are 0-based pixel
    indices (FITS row 0, the south edge for a north-up mosaic, is ``y = 0``).

    Attributes: ``wcs`` (:class:`astropy.wcs.WCS`, the celestial WCS of ``y``/``x``),
    ``wcs_header`` (its cards as a dict, for writing the dataset elsewhere), ``NTILES`` and
    ``NFRAMES`` where the file has them, and ``source`` (the path). ``path`` may be an fsspec URL.

    ``celestial=True`` adds the coordinates ``ra`` and ``dec`` (degrees) on (``y``, ``x``), lazy
    like the data (:func:`celestial_coordinates`). They are off by default: xarray computes a
    variable's coordinates with it, and two float64 planes cost more than the image.
    """
    import xarray as xr

    path = urls.normalise(os.fspath(path))
    with open_fits(path) as hdul:
        names = [hdu.name for hdu in hdul]
        missing = [name for name in ("COVERAGE", "ALPHA") if name not in names]
        if missing:
            raise ValueError(f"{path}: not a zdask mosaic (no {' or '.join(missing)} extension)")
        header = hdul[0].header.copy()
        shapes = {name: hdul[name].data.shape for name in ("COVERAGE", "ALPHA")}
        image_shape = hdul[0].data.shape
    if image_shape[-2:] != shapes["COVERAGE"] or shapes["ALPHA"] != shapes["COVERAGE"]:
        raise ValueError(f"{path}: image {image_shape}, COVERAGE {shapes['COVERAGE']} and ALPHA "
                         f"{shapes['ALPHA']} differ in size")
    height, width = shapes["COVERAGE"]
    rows = int(max(1, min(height, block_bytes // (4 * width))))
    planes = image_shape[0] if len(image_shape) == 3 else 1
    image = da.from_array(_FitsRows(path, 0, image_shape, np.float32),
                          chunks=(1, rows, width) if len(image_shape) == 3 else (rows, width),
                          name=f"mosaic-image-{_token(path)}", meta=np.empty((0,) * len(image_shape), np.float32))
    if len(image_shape) == 2:
        image = image[None]
    coverage = da.from_array(_FitsRows(path, "COVERAGE", (height, width), np.float32), chunks=(rows, width),
                             name=f"mosaic-coverage-{_token(path)}", meta=np.empty((0, 0), np.float32))
    alpha = da.from_array(_FitsRows(path, "ALPHA", (height, width), np.uint8), chunks=(rows, width),
                          name=f"mosaic-alpha-{_token(path)}", meta=np.empty((0, 0), np.uint8))
    wcs = WCS(header).celestial
    attrs = {"wcs": wcs, "wcs_header": dict(wcs.to_header()), "source": path}
    attrs.update({key: header[key] for key in ("NTILES", "NFRAMES") if key in header})
    dataset = xr.Dataset(
        {"image": (("channel", "y", "x"), image), "coverage": (("y", "x"), coverage),
         "alpha": (("y", "x"), alpha)},
        coords={"channel": list(RGB if planes == 3 else MONO if planes == 1 else range(planes)),
                "y": np.arange(height), "x": np.arange(width)},
        attrs=attrs,
    )
    return celestial_coordinates(dataset) if celestial else dataset


def celestial_coordinates(dataset):
    """``dataset`` with ``ra`` and ``dec`` (degrees, ICRS as the WCS says) on (``y``, ``x``),
    computed lazily block by block from ``dataset.attrs['wcs']``."""
    wcs = dataset.attrs["wcs"]
    template = dataset["coverage"].data
    ra, dec = (da.map_blocks(_world_block, wcs.to_header_string(), axis, dtype=np.float64,
                             chunks=template.chunks, meta=np.empty((0, 0), np.float64),
                             name=f"mosaic-{name}-{_token(dataset.attrs['source'])}", block_info=True)
               for axis, name in ((0, "ra"), (1, "dec")))
    return dataset.assign_coords(ra=(("y", "x"), ra), dec=(("y", "x"), dec))


def _world_block(header_text: str, axis: int, block_info=None) -> np.ndarray:
    """RA (axis 0) or Dec (axis 1) of every pixel of one block, in degrees."""
    (y0, y1), (x0, x1) = block_info[None]["array-location"]
    x, y = np.meshgrid(np.arange(x0, x1, dtype=np.float64), np.arange(y0, y1, dtype=np.float64))
    return WCS(fits.Header.fromstring(header_text)).all_pix2world(x, y, 0)[axis]


def _token(path: str) -> str:
    """Names the file's blocks in dask: the same file (path, size, time) gives the same keys."""
    from dask.base import tokenize

    stat = urls.stat(path)
    return tokenize(urls.absolute(path), stat.st_size, stat.st_mtime_ns)

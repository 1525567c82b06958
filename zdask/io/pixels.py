"""Pixel reading for one scanned frame (called lazily inside graph tasks)."""

from __future__ import annotations

import warnings

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning

from zdask.io.errors import FrameReadError
from zdask.io.fitsheader import fits_stream, image_axes
from zdask.io.scan import LAYOUT_RGB, Frame

__all__ = ["read_frame", "FrameReadError"]


def _expected_axes(frame: Frame) -> tuple[int, ...]:
    """FITS-order axes (NAXIS1, NAXIS2[, NAXIS3]) the scan recorded."""
    if frame.layout == LAYOUT_RGB:
        return (frame.width, frame.height, 3)
    return (frame.width, frame.height)


def read_frame(frame: Frame) -> np.ndarray:
    """Read one frame's pixels as float32 in its stored layout.

    bayer/mono -> (H, W); rgb -> (H, W, 3) (channel last, transposed from the
    FITS (3, H, W) order).  BZERO/BSCALE/BLANK are applied by astropy.  A gzip-compressed
    file is decompressed in memory (its end and CRC checked, as the scan did); a
    tile-compressed image (``.fz``) is decompressed by astropy from its HDU.  Raises
    :class:`FrameReadError` naming the file when it cannot be read or no longer
    has the scanned shape.
    """
    path = frame.path
    expected = _expected_axes(frame)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            stream = fits_stream(path, whole=True)  # (a URL's bytes in one request)
            if stream is None:
                raise FrameReadError(path, "no longer a FITS file (file changed?)")
            with fits.open(stream[0], memmap=False, lazy_load_hdus=True) as hdul:
                try:
                    hdu = hdul[frame.hdu]
                except IndexError:
                    raise FrameReadError(path, f"HDU {frame.hdu} no longer exists") from None
                axes = image_axes(hdu.header)
                if axes != expected:
                    raise FrameReadError(
                        path, f"HDU {frame.hdu} has axes {axes}, scan recorded {expected} (file changed?)"
                    )
                data = hdu.data
                if data is None or data.shape != expected[::-1]:
                    got = None if data is None else data.shape
                    raise FrameReadError(path, f"data shape {got}, expected {expected[::-1]}")
                out = np.asarray(data, dtype=np.float32)
                del data
    except FrameReadError:
        raise
    except Exception as exc:  # OSError, truncated data, corrupt header, ...
        raise FrameReadError(path, f"{type(exc).__name__}: {exc}") from exc
    if frame.layout == LAYOUT_RGB:
        out = np.ascontiguousarray(np.moveaxis(out, 0, -1))
    return out

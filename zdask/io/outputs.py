"""Files a run leaves for the user: mosaic and tile FITS, the PNG preview, the JSON report.

Every file is written under a temporary name in its final folder and renamed into place, so a
crash never leaves a half-written file where a good one was.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from typing import Iterator

import numpy as np
from astropy.io import fits

from zdask.io.errors import writing
from zdask.ops.stretch import asinh_stretch


def _create_temporary(folder: str, name: str) -> str:
    """Create an empty ``.NAME.RANDOM.part`` in ``folder`` with mode 0o666 less the umask.

    Not ``tempfile.mkstemp``: its file is 0600, writers that reuse an existing empty file keep
    that mode, and the rename carries it onto the final file (no one else could read it).
    """
    for _ in range(100):
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.part")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name for {name} in {folder}")


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The file is created like any other the user's programs create: its mode follows the umask.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = _create_temporary(folder, os.path.basename(path))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _image_hdu_data(image: np.ndarray) -> np.ndarray:
    """(H, W, C) → FITS order (C, H, W); a single channel becomes a 2-D (H, W) image."""
    if image.ndim == 3 and image.shape[-1] == 1:
        return np.ascontiguousarray(image[..., 0], dtype=np.float32)
    if image.ndim == 3:
        return np.ascontiguousarray(np.moveaxis(image, -1, 0), dtype=np.float32)
    return np.ascontiguousarray(image, dtype=np.float32)


def _wcs_cards(wcs_header: dict) -> fits.Header:
    header = fits.Header()
    for key, value in wcs_header.items():
        if key.startswith("NAXIS"):
            continue
        header[key] = value
    return header


def write_image_fits(
    path: str, image: np.ndarray, wcs_header: dict, extensions: dict[str, np.ndarray],
    cards: dict | None = None,
) -> None:
    """A float32 image (FITS order) with celestial WCS and named image extensions."""
    data = _image_hdu_data(image)
    header = _wcs_cards(wcs_header)
    if data.ndim == 3 and any(k.startswith("CD1_") for k in wcs_header):
        # Readers give a colour cube a third WCS axis; with a CD matrix that lacks CD3_3, astropy
        # fills it in and warns ("'cdfix' made the change") on every open of the file.
        header["CD3_3"] = (1.0, "axis 3: colour channel number")
    for key, value in (cards or {}).items():
        header[key] = value
    hdus = [fits.PrimaryHDU(data, header=header)]
    for name, data in extensions.items():
        hdus.append(fits.ImageHDU(np.ascontiguousarray(data), header=_wcs_cards(wcs_header), name=name))
    with writing(path), atomic_path(path) as tmp:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)


def alpha_from_coverage(coverage: np.ndarray) -> np.ndarray:
    """uint8 alpha: 255 where at least one frame covers the pixel, else 0."""
    return np.where(np.nan_to_num(coverage) > 0, 255, 0).astype(np.uint8)


def write_mosaic(path: str, image: np.ndarray, coverage: np.ndarray, wcs_header: dict,
                 cards: dict | None = None) -> None:
    """``mosaic.fits``: image (C, H, W) float32 + COVERAGE float32 + ALPHA uint8."""
    write_image_fits(
        path, image, wcs_header,
        {"COVERAGE": coverage.astype(np.float32), "ALPHA": alpha_from_coverage(coverage)},
        cards,
    )


def write_preview(path: str, image: np.ndarray, max_side: int = 4096) -> None:
    """Asinh-stretched 8-bit PNG, north up (FITS row 0 is the bottom row, PNG row 0 the top)."""
    from PIL import Image

    step = max(1, int(np.ceil(max(image.shape[:2]) / max_side)))
    pixels = asinh_stretch(image[::step, ::step])[::-1]
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    with writing(path), atomic_path(path) as tmp:
        # zlib level 1: a third of the default's time on a mosaic-sized preview, ~15 % larger
        Image.fromarray(np.ascontiguousarray(pixels)).save(tmp, format="PNG", compress_level=1)


def write_json(path: str, payload: dict) -> None:
    with writing(path), atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            json.dump(payload, fh, indent=2, sort_keys=False, default=_json_default)
            fh.write("\n")


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")

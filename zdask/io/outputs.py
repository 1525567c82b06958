"""Files a run leaves for the user: mosaic and tile FITS, the PNG preview, the JSON report.

The mosaic and its preview are streamed from the canvas (a Zarr array) band by band: a canvas
of any size is written in the memory of a few bands.

Every file is written under a temporary name in its final folder and renamed into place, so a
crash never leaves a half-written file where a good one was. An output folder at an fsspec URL
(``s3://bucket/run1``) gets the same guarantee: the file is written in a local temporary folder,
put beside its name under a temporary one, and moved onto it (:func:`zdask.io.urls.upload`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import numpy as np
from astropy.io import fits

from zdask.io import urls
from zdask.io.errors import writing
from zdask.ops.stretch import apply_asinh, asinh_levels


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
    A ``path`` at a URL: the temporary is a local file, uploaded to ``path`` when the block
    succeeds (:func:`zdask.io.urls.staged_upload`).
    """
    if urls.is_url(path):
        with urls.staged_upload(path) as tmp:
            yield tmp
        return
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
    # NaN compares False, as np.nan_to_num's 0 did, without its copies of the band
    return np.multiply(np.asarray(coverage) > 0, np.uint8(255), dtype=np.uint8)


def write_mosaic(path: str, image, coverage, wcs_header: dict, cards: dict | None = None,
                 band_rows: int = 512, each_band: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
                 ) -> None:
    """``mosaic.fits``: image (C, H, W) float32 + COVERAGE float32 + ALPHA uint8, streamed.

    ``image`` (H, W, C) or (H, W) and ``coverage`` (H, W) are anything sliced like NumPy arrays
    (a Zarr array on disk): they are read ``band_rows`` rows at a time and each band is written
    where it belongs in every HDU, so memory holds a few bands, never the canvas. The file is
    byte for byte what astropy writes for the same arrays in memory. ``each_band(y0, image_band,
    coverage_band)``, when given, sees every band once, in order (to gather statistics in the
    same pass).

    Memory: two bands of image and coverage (``rows_per_band`` sizes them; the next one is read
    while this one is written), one channel of a band in FITS byte order, and one stored chunk
    being decoded.
    """
    height, width = coverage.shape[:2]
    channels = image.shape[2] if len(image.shape) == 3 else 1
    plane_shape = (height, width) if channels == 1 else (channels, height, width)
    # Headers from astropy itself, on zero-stride stand-ins of the data (no memory): the same
    # cards, in the same order, as an HDUList of the real arrays writes.
    hdus = fits.HDUList([
        fits.PrimaryHDU(np.broadcast_to(np.float32(0), plane_shape), header=_primary_cards(
            wcs_header, channels, cards)),
        fits.ImageHDU(np.broadcast_to(np.float32(0), (height, width)), header=_wcs_cards(wcs_header),
                      name="COVERAGE"),
        fits.ImageHDU(np.broadcast_to(np.uint8(0), (height, width)), header=_wcs_cards(wcs_header),
                      name="ALPHA"),
    ])
    hdus.update_extend()
    layout, offset = [], 0   # per HDU: (its header's bytes, where its data starts)
    for hdu, itemsize in zip(hdus, (4, 4, 1)):
        header = hdu.header.tostring().encode("ascii")
        layout.append((header, offset + len(header)))
        offset += len(header) + _padded(int(np.prod(hdu.shape)) * itemsize)
    plane_bytes = height * width * 4
    with writing(path), atomic_path(path) as tmp, open(tmp, "r+b") as fh:
        fh.truncate(offset)  # data padding is zeros, as FITS wants; the rest is written below
        for header, data_start in layout:
            fh.seek(data_start - len(header))
            fh.write(header)
        for y0, image_band, coverage_band in _bands_read_ahead(image, coverage, band_rows):
            planes = image_band[..., None] if image_band.ndim == 2 else image_band
            for c in range(channels):
                fh.seek(layout[0][1] + c * plane_bytes + y0 * width * 4)
                fh.write(planes[..., c].astype(">f4"))
            fh.seek(layout[1][1] + y0 * width * 4)
            fh.write(coverage_band.astype(">f4"))
            fh.seek(layout[2][1] + y0 * width)
            fh.write(alpha_from_coverage(coverage_band))
            if each_band is not None:
                each_band(y0, image_band, coverage_band)
            del image_band, coverage_band, planes  # freed before the band after next is read


def _bands_read_ahead(image, coverage, band_rows: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(y0, image band, coverage band)`` in order, the next band read in a second thread
    while the caller writes this one (decoding and writing overlap: a third off the write)."""
    spans = list(bands(coverage, band_rows))

    def read(span: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        return read_band(image, *span), read_band(coverage, *span)

    with ThreadPoolExecutor(1, thread_name_prefix="zdask-band-reader") as reader:
        pending = reader.submit(read, spans[0]) if spans else None
        for k, span in enumerate(spans):
            image_band, coverage_band = pending.result()
            pending = reader.submit(read, spans[k + 1]) if k + 1 < len(spans) else None
            yield span[0], image_band, coverage_band
            del image_band, coverage_band


def bands(array, rows: int) -> Iterator[tuple[int, int]]:
    """``(y0, y1)`` of successive bands of at most ``rows`` rows covering ``array``.

    A band never straddles two stored chunk rows (one is cut into equal bands, or a band is
    whole chunk rows), so a window of a band decodes one chunk, and no chunk is decoded more
    often than it must be.
    """
    height, rows = array.shape[0], max(1, int(rows))
    chunk_rows = _chunk_side(array, 0) or height
    if rows >= chunk_rows:
        rows -= rows % chunk_rows
        yield from ((y0, min(height, y0 + rows)) for y0 in range(0, height, rows))
        return
    for c0 in range(0, height, chunk_rows):
        c1 = min(height, c0 + chunk_rows)
        pieces = -(-(c1 - c0) // rows)
        edges = [c0 + (c1 - c0) * i // pieces for i in range(pieces + 1)]
        yield from zip(edges[:-1], edges[1:])


def read_band(array, y0: int, y1: int, step: int = 1) -> np.ndarray:
    """Rows ``y0 <= y < y1`` of ``array[::step, ::step]`` (whole-array stride: the rows and
    columns that are multiples of ``step``) as float32, read one stored chunk at a time.

    A Zarr read decodes every chunk it touches at once (concurrently): a band of a wide canvas
    read in one go would hold several decoded chunks on top of the band itself.
    """
    rows = list(_stride_spans(y0, y1, _chunk_side(array, 0) or max(1, y1 - y0), step))
    columns = list(_stride_spans(0, array.shape[1], _chunk_side(array, 1) or max(1, array.shape[1]), step))
    out = np.empty((sum(n for *_, n in rows), sum(n for *_, n in columns)) + tuple(array.shape[2:]),
                   np.float32)
    r = 0
    for r_first, r_stop, r_count in rows:
        c = 0
        for c_first, c_stop, c_count in columns:
            out[r:r + r_count, c:c + c_count] = array[r_first:r_stop:step, c_first:c_stop:step]
            c += c_count
        r += r_count
    return out


def _stride_spans(lo: int, hi: int, chunk: int, step: int) -> Iterator[tuple[int, int, int]]:
    """``(first, stop, count)`` per stored chunk met in ``lo..hi``: its first index on the
    stride (a multiple of ``step``), where it stops, and how many stride indices it holds."""
    for c0 in range(lo - lo % chunk, hi, chunk):
        first, stop = max(lo, c0), min(hi, c0 + chunk)
        first += (-first) % step
        if first < stop:
            yield first, stop, len(range(first, stop, step))


def _chunk_side(array, axis: int) -> int | None:
    """The stored chunk's side along ``axis`` of a chunked array (Zarr), else None."""
    chunks = getattr(array, "chunks", None)
    side = chunks[axis] if chunks else None
    return int(side) if isinstance(side, (int, np.integer)) else None


def _primary_cards(wcs_header: dict, channels: int, cards: dict | None) -> fits.Header:
    header = _wcs_cards(wcs_header)
    if channels > 1 and any(k.startswith("CD1_") for k in wcs_header):
        header["CD3_3"] = (1.0, "axis 3: colour channel number")
    for key, value in (cards or {}).items():
        header[key] = value
    return header


def _padded(nbytes: int) -> int:
    """Bytes a FITS data unit of ``nbytes`` takes: whole 2880-byte blocks."""
    return -(-nbytes // 2880) * 2880


def rows_per_band(shape: tuple[int, ...], nbytes: int) -> int:
    """Rows of an (H, W[, C]) float32 canvas and its coverage that fit ``nbytes`` (at least 1)."""
    width = shape[1]
    channels = shape[2] if len(shape) == 3 else 1
    return max(1, int(nbytes) // (width * (channels + 1) * 4))


class PreviewSampler:
    """The preview's pixels (every ``step``-th row and column of the canvas, at most
    ``max_side`` on a side) gathered from bands of rows as they stream past, so the preview
    needs no read of its own when the mosaic is written band by band."""

    def __init__(self, shape: tuple[int, ...], max_side: int = 4096):
        height, width = shape[:2]
        self.step = max(1, int(np.ceil(max(height, width) / max_side)))
        self.pixels = np.empty((len(range(0, height, self.step)), len(range(0, width, self.step)))
                               + tuple(shape[2:]), np.float32)

    def add(self, y0: int, band: np.ndarray) -> None:
        """Take the preview's rows and columns from ``band``, canvas rows ``y0`` onwards."""
        first = -(-y0 // self.step)  # the band's first row on the stride
        part = band[first * self.step - y0::self.step, ::self.step]
        self.pixels[first:first + len(part)] = part

    def save(self, path: str) -> np.ndarray:
        """Asinh-stretched 8-bit PNG, north up (FITS row 0 is the bottom row, PNG row 0 the top).
        Returns its pixels (rows, cols[, 3]) uint8, RGB, north up."""
        import cv2

        pixels = self.stretched()
        if pixels.ndim == 3:
            pixels = pixels[..., ::-1]  # OpenCV takes colour as BGR
        # zlib level 1 with run-length matching: on a mosaic-sized preview, half the time of
        # Pillow's level 1 and a smaller file (a third of Pillow's default level's time)
        ok, encoded = cv2.imencode(".png", np.ascontiguousarray(pixels),
                                   [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE])
        if not ok:
            raise OSError(f"{path}: the PNG encoder failed")
        with writing(path), atomic_path(path) as tmp, open(tmp, "wb") as fh:
            fh.write(encoded.tobytes())
        return pixels[..., ::-1] if pixels.ndim == 3 else pixels

    def stretched(self) -> np.ndarray:
        """The preview's pixels asinh-stretched to uint8 (rows, cols[, C]), north up; a single
        channel as (rows, cols)."""
        preview = self.pixels
        levels = asinh_levels(preview)
        pixels = np.empty(preview.shape[:2] + ((preview.shape[2],) if preview.ndim == 3 else ()), np.uint8)
        rows = len(preview)
        for y0 in range(0, rows, 256):  # the stretch's float temporaries, a band at a time
            y1 = min(rows, y0 + 256)
            pixels[rows - y1:rows - y0] = apply_asinh(preview[y0:y1], levels)[::-1]
        if pixels.ndim == 3 and pixels.shape[-1] == 1:
            pixels = pixels[..., 0]
        return pixels


def write_preview(path: str, image, max_side: int = 4096, band_rows: int = 512) -> None:
    """Asinh-stretched 8-bit PNG, north up (see :class:`PreviewSampler`).

    ``image`` (H, W[, C]) is anything sliced like a NumPy array (a Zarr array on disk): it is
    read with the preview's stride, ``band_rows`` source rows at a time, so memory holds the
    preview (at most ``max_side`` squared pixels), never the canvas.
    """
    sampler = PreviewSampler(image.shape, max_side)
    step = sampler.step
    for y0, y1 in bands(image, max(1, int(band_rows)) * step):  # a band's read is 1/step of it
        part = read_band(image, y0, y1, step)
        first = -(-y0 // step)
        sampler.pixels[first:first + len(part)] = part
    sampler.save(path)


def write_text(path: str, text: str) -> None:
    """A UTF-8 text file (report.html), written atomically."""
    with writing(path), atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)


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

"""Header scan: turn input files and folders into a :class:`FrameTable`.

Only headers are read (``fits.open(..., memmap=True, lazy_load_hdus=True)``,
never ``.data``).  Every input file and folder entry either becomes a :class:`Frame`
or a :class:`RejectedFile` whose reason starts with one of the ``REASON_*`` texts.

Files rejected only for having no celestial WCS are also kept, as :class:`Frame` objects with
an empty ``wcs_header`` and NaN sky fields, in :attr:`FrameTable.unsolved`: alignment can
register them to solved frames by their stars (:func:`with_wcs` then gives them a WCS).

Folders are scanned NON-recursively (:mod:`zdask.io.listing`): entries named like FITS files
(``.fit``/``.fits``/``.fts``, gzip-compressed ``.gz`` ones, tile-compressed ``.fz``) are tried;
every other entry (hidden name, subfolder, other file, broken link, link loop, FIFO) is
rejected with the reason it was skipped.  A file named explicitly is always tried, whatever
its extension.  Gzip-compressed files are recognised by their content and decompressed once
to check they are complete (:func:`zdask.io.fitsheader.fits_stream`); a tile-compressed
image (CompImageHDU) is read from the extension that holds it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS

from zdask.io.fitsheader import (
    MOUNT_ALTAZ,
    MOUNT_EQ,
    MOUNT_UNKNOWN,
    REASON_BAD_WCS,
    REASON_NO_WCS,
    HeaderError,
    bayer_pattern,
    celestial_wcs,
    fits_stream,
    image_axes,
    open_fits,
    parse_exptime,
    parse_mount_mode,
    parse_time_mjd,
    stored_dtype,
    wcs_from_header,
)
from zdask.io import urls
from zdask.io.listing import (
    FITS_EXTENSIONS,
    FRAME_SUFFIXES,
    REASON_DUPLICATE,
    REASON_NOT_FITS,
    REASON_UNREADABLE,
    expand_inputs,
)

__all__ = [
    "MOUNT_EQ", "MOUNT_ALTAZ", "MOUNT_UNKNOWN", "FITS_EXTENSIONS", "FRAME_SUFFIXES",
    "REASON_NOT_FITS", "REASON_UNREADABLE", "REASON_DUPLICATE", "REASON_NO_IMAGE", "REASON_BAD_DIMENSIONS",
    "REASON_NO_WCS", "REASON_BAD_WCS", "REASON_BAD_BAYER", "MIN_IMAGE_SIDE",
    "Frame", "RejectedFile", "FrameTable", "scan", "scan_file", "parse_mount_mode", "with_wcs",
]

REASON_NO_IMAGE = "no image data"
REASON_BAD_DIMENSIONS = "wrong dimensions"
REASON_BAD_BAYER = "unknown Bayer pattern"

#: smallest accepted image side in pixels
MIN_IMAGE_SIDE = 8

LAYOUT_BAYER, LAYOUT_MONO, LAYOUT_RGB = "bayer", "mono", "rgb"
_IMAGE_HDU_TYPES = (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)
_JSON_VERSION = 1


@dataclass(frozen=True)
class Frame:
    """One accepted light frame (header facts only; see :func:`zdask.io.pixels.read_frame`)."""

    path: str
    hdu: int
    height: int
    width: int
    layout: str
    bayer: str | None
    dtype: str
    wcs_header: dict
    scale_arcsec: float
    ra_deg: float
    dec_deg: float
    fov_deg: tuple[float, float]
    time_mjd: float | None
    exptime_s: float | None
    mount: str
    size_bytes: int
    mtime_ns: int

    def __hash__(self) -> int:  # wcs_header is a dict: hash the identity fields
        return hash((self.path, self.hdu, self.size_bytes, self.mtime_ns))

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape :func:`read_frame` returns: (H, W) or (H, W, 3) for rgb."""
        return (self.height, self.width, 3) if self.layout == LAYOUT_RGB else (self.height, self.width)

    def wcs(self) -> WCS:
        """Celestial WCS (pixel_shape set), built once per Frame object and cached.

        The same object is returned on every call: copy it before mutating.
        """
        cached = self.__dict__.get("_wcs_cache")
        if cached is None:
            cached = wcs_from_header(self.wcs_header).deepcopy()  # shared by equal cards: a copy
            cached.pixel_shape = (self.width, self.height)
            object.__setattr__(self, "_wcs_cache", cached)
        return cached

    def fingerprint(self) -> str:
        """Stable identity of the file content as scanned: path, size, mtime, HDU."""
        return f"{self.path}|{self.size_bytes}|{self.mtime_ns}|{self.hdu}"

    def __getstate__(self) -> dict:  # do not ship the cached WCS to workers
        return {k: v for k, v in self.__dict__.items() if k != "_wcs_cache"}

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)} | {
            "fov_deg": list(self.fov_deg),
            "wcs_header": dict(self.wcs_header),
        }

    @classmethod
    def from_json(cls, data: dict) -> Frame:
        kwargs = {f.name: data[f.name] for f in dataclasses.fields(cls)}
        kwargs["fov_deg"] = tuple(float(v) for v in kwargs["fov_deg"])
        kwargs["wcs_header"] = dict(kwargs["wcs_header"])
        return cls(**kwargs)


def with_wcs(frame: Frame, wcs_header: dict) -> Frame:
    """A copy of ``frame`` with a new celestial WCS; centre RA/Dec, scale and FoV recomputed.

    ``wcs_header`` is a dict of FITS cards (e.g. a refined TAN WCS); it is validated like a
    scanned header and stored normalised. Raises :class:`HeaderError` if it is not usable.
    """
    header = fits.Header()
    for key, value in wcs_header.items():
        header[key] = value
    _, cards, ra, dec, scale = celestial_wcs(header, frame.width, frame.height)
    return dataclasses.replace(
        frame, wcs_header=cards, ra_deg=ra, dec_deg=dec, scale_arcsec=scale,
        fov_deg=(frame.width * scale / 3600.0, frame.height * scale / 3600.0),
    )


@dataclass(frozen=True)
class RejectedFile:
    path: str
    reason: str  # "<REASON_*>: detail"

    @property
    def kind(self) -> str:
        """The leading REASON_* text of ``reason``."""
        return self.reason.split(":", 1)[0]


@dataclass
class FrameTable:
    frames: list[Frame] = field(default_factory=list)
    rejected: list[RejectedFile] = field(default_factory=list)
    #: valid images rejected only for "no celestial WCS" (also listed in ``rejected``), as
    #: Frames with ``wcs_header == {}`` and NaN ra/dec/scale/fov
    unsolved: list[Frame] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.frames)

    def layouts(self) -> set[str]:
        return {f.layout for f in self.frames}

    def is_mono(self) -> bool:
        """True when there are frames and all of them are mono."""
        return bool(self.frames) and self.layouts() == {LAYOUT_MONO}

    def mode_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for f in self.frames:
            counts[f.mount] = counts.get(f.mount, 0) + 1
        return counts

    def rejection_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.rejected:
            counts[r.kind] = counts.get(r.kind, 0) + 1
        return counts

    def to_json(self) -> dict:
        return {
            "version": _JSON_VERSION,
            "frames": [f.to_json() for f in self.frames],
            "rejected": [{"path": r.path, "reason": r.reason} for r in self.rejected],
            "unsolved": [f.to_json() for f in self.unsolved],
        }

    @classmethod
    def from_json(cls, data: dict) -> FrameTable:
        if data.get("version") != _JSON_VERSION:
            raise ValueError(f"unsupported frame table version {data.get('version')!r}")
        return cls(
            frames=[Frame.from_json(f) for f in data["frames"]],
            rejected=[RejectedFile(r["path"], r["reason"]) for r in data["rejected"]],
            unsolved=[Frame.from_json(f) for f in data.get("unsolved", [])],
        )


# ----------------------------------------------------------------- scanning
def _required_bytes(hdul: fits.HDUList, index: int, hdu, axes: tuple[int, ...]) -> int:
    info = hdul.fileinfo(index)
    if isinstance(hdu, fits.CompImageHDU):  # on-disk size is the table's; allow for padding
        return info["datLoc"] + max(info["datSpan"] - 2879, 0)
    return info["datLoc"] + abs(int(hdu.header["BITPIX"])) // 8 * math.prod(axes)


class _NoWCS(HeaderError):
    """No celestial WCS, everything else valid: carries the frame with NaN sky fields."""

    def __init__(self, detail: str, frame: Frame) -> None:
        super().__init__(REASON_NO_WCS, detail)
        self.frame = frame


def _frame_from_hdu(path, st, stream_size, hdul, index, hdu) -> Frame:
    """``stream_size``: length of the FITS bytes (the decompressed length for gzip)."""
    header = hdu.header
    axes = image_axes(header)  # FITS order: (W, H[, 3])
    if len(axes) not in (2, 3) or (len(axes) == 3 and axes[2] != 3):
        raise HeaderError(REASON_BAD_DIMENSIONS, f"NAXIS={len(axes)} axes {axes}, need (W, H) or (W, H, 3)")
    width, height = axes[0], axes[1]
    if min(width, height) < MIN_IMAGE_SIDE:
        raise HeaderError(REASON_BAD_DIMENSIONS, f"{width}x{height} px is smaller than {MIN_IMAGE_SIDE} px")
    need = _required_bytes(hdul, index, hdu, axes)
    if stream_size < need:
        raise HeaderError(REASON_UNREADABLE, f"truncated data ({stream_size} bytes, header needs {need})")
    try:
        dtype = stored_dtype(header)
    except (KeyError, ValueError, TypeError) as exc:
        raise HeaderError(REASON_UNREADABLE, f"bad BITPIX/BZERO/BSCALE: {exc}") from None
    if len(axes) == 3:
        layout, bayer = LAYOUT_RGB, None
    else:
        try:
            bayer = bayer_pattern(header)
        except ValueError as exc:
            raise HeaderError(REASON_BAD_BAYER, str(exc)) from None
        layout = LAYOUT_MONO if bayer is None else LAYOUT_BAYER
    missing = None
    try:
        _, cards, ra, dec, scale = celestial_wcs(header, width, height)
    except HeaderError as exc:
        if exc.reason != REASON_NO_WCS:
            raise
        missing, cards, ra, dec, scale = exc.detail, {}, math.nan, math.nan, math.nan
    frame = Frame(
        path=path, hdu=index, height=height, width=width, layout=layout, bayer=bayer,
        dtype=dtype, wcs_header=cards, scale_arcsec=scale, ra_deg=ra, dec_deg=dec,
        fov_deg=(width * scale / 3600.0, height * scale / 3600.0),
        time_mjd=parse_time_mjd(header), exptime_s=parse_exptime(header),
        mount=parse_mount_mode(header), size_bytes=int(st.st_size), mtime_ns=int(st.st_mtime_ns),
    )
    if missing is not None:
        raise _NoWCS(missing, frame)
    return frame


def scan_file(path: str) -> Frame | RejectedFile:
    """Scan one file's headers; never raises for a bad file."""
    return _scan_one(path)[0]


def _scan_one(path: str) -> tuple[Frame | RejectedFile, Frame | None]:
    """scan_file's result, and the unsolved Frame when the only problem is a missing WCS."""
    result = _scan_file(path)
    if isinstance(result, _NoWCS):
        return RejectedFile(result.frame.path, f"{result.reason}: {result.detail}"), result.frame
    return result, None


def _scan_file(path: str) -> Frame | RejectedFile | _NoWCS:
    path = urls.absolute(os.fspath(path))
    try:
        st = urls.stat(path)
        stream = fits_stream(path)
        if stream is None:
            return RejectedFile(path, f"{REASON_NOT_FITS}: does not start with 'SIMPLE  =' (nor does its gzip content)")
        source, stream_size = stream
    except FileNotFoundError:
        return RejectedFile(path, f"{REASON_UNREADABLE}: no such file")
    except OSError as exc:
        return RejectedFile(path, f"{REASON_UNREADABLE}: {exc.strerror or exc}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            with open_fits(source) as hdul:
                index = 0
                while True:
                    try:
                        hdu = hdul[index]
                    except IndexError:
                        detail = f"no image HDU with NAXIS >= 1 among {index} HDU(s)"
                        return RejectedFile(path, f"{REASON_NO_IMAGE}: {detail}")
                    axes = image_axes(hdu.header) if isinstance(hdu, _IMAGE_HDU_TYPES) else ()
                    if axes and all(axes):
                        return _frame_from_hdu(path, st, stream_size, hdul, index, hdu)
                    index += 1
    except _NoWCS as exc:
        return exc
    except HeaderError as exc:
        return RejectedFile(path, f"{exc.reason}: {exc.detail}")
    except Exception as exc:  # OSError, truncated/corrupt header, VerifyError, ...
        return RejectedFile(path, f"{REASON_UNREADABLE}: {type(exc).__name__}: {exc}")


def _sort_key(frame: Frame):
    return (frame.time_mjd is None, frame.time_mjd or 0.0, frame.path)


def scan(inputs: Sequence[str | os.PathLike]) -> FrameTable:
    """Scan files and folders (non-recursive) into a :class:`FrameTable`.

    Frames (and unsolved frames) are sorted by (time_mjd, path), frames without
    a time last; rejected files are sorted by path.  Each path appears once in
    ``frames`` or ``rejected``; an unsolved frame is in both ``rejected`` and
    ``unsolved``.
    """
    files, skipped = expand_inputs(inputs)
    rejected = [RejectedFile(path, reason) for path, reason in skipped]
    frames: list[Frame] = []
    unsolved: list[Frame] = []
    for path in files:
        result, no_wcs = _scan_one(path)
        (frames if isinstance(result, Frame) else rejected).append(result)
        if no_wcs is not None:
            unsolved.append(no_wcs)
    frames.sort(key=_sort_key)
    unsolved.sort(key=_sort_key)
    rejected.sort(key=lambda r: r.path)
    return FrameTable(frames=frames, rejected=rejected, unsolved=unsolved)

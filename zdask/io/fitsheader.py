"""Header-only FITS parsing helpers used by :mod:`zdask.io.scan`.

Everything here works on an :class:`astropy.io.fits.Header` (or any mapping
with the same keys) and never touches pixel data, except :func:`fits_stream`, which
says what to hand ``fits.open`` for a plain or a gzip-compressed FITS file, and
:func:`open_fits`, which opens it (a local file memory-mapped, one at a URL through fsspec).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import json
import math
import re
import zlib
import warnings
from collections.abc import Iterator, Mapping
from datetime import date

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS

from zdask.io import urls

MOUNT_EQ, MOUNT_ALTAZ, MOUNT_UNKNOWN = "EQ", "ALT_AZ", "UNKNOWN"

REASON_NO_WCS = "no celestial WCS"
REASON_BAD_WCS = "invalid celestial WCS"

BAYER_PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")

#: Bytes fetched per request when only headers are read from a URL: a header is 2880-byte
#: blocks, and a Seestar frame's primary header fits in two; the backend's default (S3: 5 MiB)
#: would fetch the whole frame to read its header.
HEADER_FETCH_BYTES = 16 * 2880

#: plausible pixel-scale range (arcsec/px) for a celestial WCS; 10 deg/px max
MIN_SCALE_ARCSEC = 1e-3
MAX_SCALE_ARCSEC = 36000.0

FITS_SIGNATURE = b"SIMPLE  ="
GZIP_SIGNATURE = b"\x1f\x8b"

_BITPIX_DTYPE = {8: "uint8", 16: "int16", 32: "int32", 64: "int64", -32: "float32", -64: "float64"}
_MJD_EPOCH = date(1858, 11, 17)
_ISO_RE = re.compile(
    r"^\s*(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2}(?:\.\d*)?))?)?\s*Z?\s*$"
)
_WCS_KEY_RE = re.compile(r"^(CTYPE|CRVAL|CRPIX|CDELT|CD\d_|PC\d_)\d+$")


class HeaderError(ValueError):
    """A header fails a check; ``reason`` is one of the scan ``REASON_*`` texts."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def fits_stream(path: str, whole: bool = False) -> tuple[str | io.BytesIO, int] | None:
    """What to give ``fits.open`` for ``path``, and the length of its FITS byte stream.

    A plain FITS file (tile-compressed ``.fz`` ones included): ``(path, file size)``. A
    gzip-compressed one (``.fits.gz``; recognised by its content, whatever its name): its
    decompressed bytes and their length. The whole gzip stream is decompressed here, once,
    because only that checks it is complete (end marker, CRC) and tells the size a header's
    data needs; astropy itself would inflate the file to find its HDUs anyway. None when
    the file (or the gzip content) does not start with ``SIMPLE  =``. Raises OSError, with a
    message saying what is wrong for truncated or corrupt gzip data.

    ``path`` may be an fsspec URL: a plain FITS file is then given as its URL (headers are read
    through fsspec, :func:`open_fits`), or with ``whole`` as its bytes, fetched at once (to
    read its pixels: one request instead of one per buffered block).
    """
    with urls.open_input(path, HEADER_FETCH_BYTES) as fh:
        head = fh.read(len(FITS_SIGNATURE))
        if head == FITS_SIGNATURE:
            if whole and urls.is_url(path):
                raw = urls.read_bytes(path)
                return io.BytesIO(raw), len(raw)
            return path, fh.seek(0, io.SEEK_END)
        if not head.startswith(GZIP_SIGNATURE):
            return None
        fh.seek(0)
        packed = fh.read()
    try:
        raw = gzip.decompress(packed)
    except EOFError:
        raise OSError("gzip data ends early (truncated file)") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise OSError(f"corrupt gzip data: {exc}") from None
    return (io.BytesIO(raw), len(raw)) if raw.startswith(FITS_SIGNATURE) else None


@contextlib.contextmanager
def open_fits(source: str | io.BytesIO) -> Iterator[fits.HDUList]:
    """``fits.open`` of what :func:`fits_stream` gave (or of a path or URL), headers read as HDUs
    are asked for: a local file memory-mapped, one at a URL through an fsspec file that fetches
    :data:`HEADER_FETCH_BYTES` at a time (closed with the HDU list), bytes in memory as they are."""
    with contextlib.ExitStack() as stack:
        if isinstance(source, str) and urls.is_url(source):
            source = stack.enter_context(urls.open_input(source, HEADER_FETCH_BYTES))
        yield stack.enter_context(fits.open(source, memmap=isinstance(source, str), lazy_load_hdus=True))


# --------------------------------------------------------------------- pixels
def image_axes(header: Mapping) -> tuple[int, ...]:
    """NAXISn values in FITS order (NAXIS1 first); () when there is no image."""
    naxis = int(header.get("NAXIS", 0) or 0)
    return tuple(int(header.get(f"NAXIS{i}", 0) or 0) for i in range(1, naxis + 1))


def stored_dtype(header: Mapping) -> str:
    """Numpy dtype name astropy returns for ``.data`` (BZERO/BSCALE/BLANK applied).

    Mirrors astropy's rules: the unsigned-integer BZERO convention gives
    uint16/uint32/uint64 (int8 for BITPIX 8 with BZERO -128); any other
    scaling of integers gives float32 (BITPIX 8/16) or float64 (32/64).
    """
    bitpix = int(header["BITPIX"])
    if bitpix not in _BITPIX_DTYPE:
        raise ValueError(f"BITPIX {bitpix} is not a FITS value")
    if bitpix < 0:
        return _BITPIX_DTYPE[bitpix]
    bzero = header.get("BZERO", 0) or 0
    bscale = header.get("BSCALE", 1)
    bscale = 1 if bscale is None else bscale
    blank = header.get("BLANK")
    blank = blank if isinstance(blank, (int, np.integer)) and not isinstance(blank, bool) else None
    if bzero == 0 and bscale == 1 and blank is None:
        return _BITPIX_DTYPE[bitpix]
    if bscale == 1:
        if bitpix == 8 and bzero == -128:
            return "int8"
        if bitpix in (16, 32, 64) and bzero == 1 << (bitpix - 1):
            return f"uint{bitpix}"
    return "float64" if bitpix > 16 else "float32"


def bayer_pattern(header: Mapping) -> str | None:
    """The CFA pattern of the (0, 0) pixel, or None for a mono frame.

    Reads ``BAYERPAT`` (strict: any non-blank value must be a known pattern)
    and falls back to ``COLORTYP`` (lenient: only a known pattern counts).
    ``XBAYROFF``/``YBAYROFF`` shift the pattern: an odd X offset swaps the
    columns of the 2x2 cell, an odd Y offset swaps its rows.  Raises
    ValueError for an unknown pattern or a non-integer offset.
    """
    raw = header.get("BAYERPAT")
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        colortyp = header.get("COLORTYP")
        if isinstance(colortyp, str) and colortyp.strip().upper() in BAYER_PATTERNS:
            raw = colortyp
        else:
            return None
    pattern = str(raw).strip().upper() if isinstance(raw, str) else None
    if pattern not in BAYER_PATTERNS:
        raise ValueError(f"BAYERPAT={raw!r}, expected one of {', '.join(BAYER_PATTERNS)}")
    offsets = []
    for key in ("XBAYROFF", "YBAYROFF"):
        value = header.get(key, 0)
        try:
            fval = float(value or 0)
            if isinstance(value, str) or not fval.is_integer():
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(f"{key}={value!r} is not an integer offset") from None
        offsets.append(int(fval) % 2)
    xoff, yoff = offsets
    if xoff:
        pattern = pattern[1] + pattern[0] + pattern[3] + pattern[2]
    if yoff:
        pattern = pattern[2:] + pattern[:2]
    return pattern


# ------------------------------------------------------------ time, exposure
def _iso_to_mjd(text: str) -> float | None:
    m = _ISO_RE.match(text)
    if m:
        y, mo, d, hh, mm, ss = m.groups()
        try:
            days = (date(int(y), int(mo), int(d)) - _MJD_EPOCH).days
        except ValueError:
            return None
        secs = int(hh or 0) * 3600 + int(mm or 0) * 60 + float(ss or 0.0)
        return days + secs / 86400.0
    try:  # unusual but valid forms: let astropy have a go
        from astropy.time import Time

        return float(Time(text.strip(), scale="utc").mjd)
    except Exception:
        return None


def _finite_float(value) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def parse_time_mjd(header: Mapping) -> float | None:
    """Observation time as MJD (UTC assumed) from DATE-OBS, MJD-OBS, DATE-AVG, MJD-AVG."""
    for key in ("DATE-OBS", "MJD-OBS", "DATE-AVG", "MJD-AVG"):
        value = header.get(key)
        if value is None:
            continue
        if key.startswith("MJD"):
            out = _finite_float(value)
        elif isinstance(value, str):
            text = value.strip()
            time_obs = header.get("TIME-OBS") if key == "DATE-OBS" else None
            if "T" not in text and isinstance(time_obs, str) and time_obs.strip():
                text = f"{text}T{time_obs.strip()}"
            out = _iso_to_mjd(text)
        else:
            out = None
        if out is not None:
            return out
    return None


def parse_exptime(header: Mapping) -> float | None:
    """Exposure time in seconds from EXPTIME or EXPOSURE (None if absent/invalid)."""
    for key in ("EXPTIME", "EXPOSURE"):
        out = _finite_float(header.get(key))
        if out is not None and out >= 0:
            return out
    return None


# ---------------------------------------------------------------------- mount
_EQ_WORDS = {"EQ", "EQUATORIAL", "1"}
_ALTAZ_WORDS = {"ALT_AZ", "ALT-AZ", "ALTAZ", "AZ", "0"}


def _mount_from_value(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return MOUNT_EQ if value else MOUNT_ALTAZ
    if isinstance(value, (int, float, np.integer, np.floating)):
        return {1: MOUNT_EQ, 0: MOUNT_ALTAZ}.get(value, MOUNT_UNKNOWN)
    if isinstance(value, str):
        word = value.strip().upper()
        if word in _EQ_WORDS:
            return MOUNT_EQ
        if word in _ALTAZ_WORDS:
            return MOUNT_ALTAZ
    return MOUNT_UNKNOWN


def parse_mount_mode(header: Mapping) -> str:
    """Mount mode from ``MOUNT_MODE`` or ``EQMODE`` (first one that is understood).

    1 / True / "EQ" / "EQUATORIAL" -> EQ; 0 / False / "ALT_AZ" / "ALT-AZ" /
    "ALTAZ" / "AZ" -> ALT_AZ (strings case-insensitive and stripped, "1"/"0"
    accepted too); anything else or absent -> UNKNOWN.
    """
    for key in ("MOUNT_MODE", "EQMODE"):
        if key in header:
            mode = _mount_from_value(header[key])
            if mode != MOUNT_UNKNOWN:
                return mode
    return MOUNT_UNKNOWN


# ------------------------------------------------------------------------ WCS
def has_wcs_keywords(header: Mapping) -> bool:
    return any(_WCS_KEY_RE.match(str(key)) for key in header.keys())


def _scale_matrix_ok(header: Mapping, lng: int, lat: int) -> None:
    """Reject headers whose own CD (or CDELT) matrix is missing, singular or zero.

    wcslib silently replaces an all-zero CD matrix or missing CDELT by unity,
    which would pass as a 1 deg/px WCS; check the cards themselves.
    """
    axes = (lng + 1, lat + 1)
    cd_keys = [f"CD{i}_{j}" for i in axes for j in axes]
    if any(key in header for key in cd_keys):
        matrix = np.array([_finite_float(header.get(k, 0.0)) for k in cd_keys], dtype=float)
        if np.any(np.isnan(matrix)):
            raise HeaderError(REASON_BAD_WCS, "CD matrix has non-numeric values")
        det = float(np.linalg.det(matrix.reshape(2, 2)))
        if not math.isfinite(det) or det == 0.0:
            raise HeaderError(REASON_BAD_WCS, "CD matrix is singular")
        return
    cdelt = [_finite_float(header.get(f"CDELT{i}")) for i in axes]
    if any(c is None or c == 0.0 for c in cdelt):
        raise HeaderError(REASON_BAD_WCS, "no usable CD or CDELT scale keywords")


def celestial_wcs(
    header: fits.Header, width: int, height: int
) -> tuple[WCS, dict, float, float, float]:
    """Validate the celestial WCS of an image header.

    Returns ``(wcs, cards, ra_centre_deg, dec_centre_deg, scale_arcsec)`` where
    ``cards`` is the JSON-able dict :func:`wcs_from_header` rebuilds ``wcs`` from.

    Raises :class:`HeaderError` with reason "no celestial WCS" (no WCS cards at
    all) or "invalid celestial WCS" (not celestial, singular, not invertible,
    non-finite, implausible pixel scale).
    """
    if not has_wcs_keywords(header):
        raise HeaderError(REASON_NO_WCS, "no CTYPE/CRVAL/CRPIX/CD/CDELT keywords")
    bad = REASON_BAD_WCS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        try:
            full = WCS(header)
            if not full.has_celestial:
                raise HeaderError(bad, "no celestial (RA/Dec-like) axes")
            _scale_matrix_ok(header, full.wcs.lng, full.wcs.lat)
            plain_2d = full.naxis == 2 and (full.wcs.lng, full.wcs.lat) == (0, 1)
            wcs = full if plain_2d else full.celestial
            card_dict = wcs_to_json(wcs)
            cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
            px = np.array([cx, 0.0, width - 1.0, 0.0, width - 1.0])
            py = np.array([cy, 0.0, 0.0, height - 1.0, height - 1.0])
            lon, lat = (np.asarray(v, dtype=float) for v in wcs.pixel_to_world_values(px, py))
            if not (np.all(np.isfinite(lon)) and np.all(np.isfinite(lat))):
                raise HeaderError(bad, "pixel to sky gives non-finite values")
            bx, by = wcs.world_to_pixel_values(lon[:1], lat[:1])
            if not (np.isfinite(bx[0]) and np.isfinite(by[0])) or math.hypot(bx[0] - cx, by[0] - cy) > 1e-2:
                raise HeaderError(bad, "sky to pixel does not invert pixel to sky")
            scale = math.sqrt(abs(float(np.linalg.det(wcs.pixel_scale_matrix)))) * 3600.0
        except HeaderError:
            raise
        except Exception as exc:  # wcslib errors come in many types
            raise HeaderError(bad, f"{type(exc).__name__}: {exc}") from None
    if not (math.isfinite(scale) and MIN_SCALE_ARCSEC <= scale <= MAX_SCALE_ARCSEC):
        raise HeaderError(bad, f"implausible pixel scale {scale:.6g} arcsec/px")
    return wcs, card_dict, float(lon[0]) % 360.0, float(lat[0]), scale


def _plain(value):
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value)
    return str(value)


def wcs_to_json(wcs: WCS) -> dict:
    """``wcs.to_header(relax=True)`` as a plain ``{keyword: value}`` dict (SIP kept)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        hdr = wcs.to_header(relax=True)
    return {card.keyword: _plain(card.value) for card in hdr.cards if card.keyword}


def wcs_from_header(cards: Mapping) -> WCS:
    """The WCS of a dict of cards (:func:`wcs_to_json`, :func:`celestial_cards`, a grid's).

    Cached per process (grids are reused per block): the same object comes back for equal
    cards, so copy it before mutating it.
    """
    return _wcs_cached(json.dumps(cards, sort_keys=True))


@functools.lru_cache(maxsize=4096)
def _wcs_cached(cards_json: str) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        return WCS(json.loads(cards_json))


def celestial_cards(header: Mapping) -> dict:
    """The 2-D celestial WCS of a header (a colour image's third axis dropped) as plain cards."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        celestial = WCS(header).celestial
    return {k: v for k, v in celestial.to_header(relax=True).items() if k != "WCSAXES"}

"""Bilinear demosaicing of a raw Bayer mosaic into RGB, NumPy or CuPy alike.

Pattern convention (the same in the scanner and the simulator): the four letters give the colours
of data-array pixels (row 0, col 0), (row 0, col 1), (row 1, col 0), (row 1, col 1), where data
row 0 is the first row NumPy returns from the FITS file.
"""

from __future__ import annotations

import numpy as np

from zdask.ops.backend import array_module, convolve3x3

BAYER_PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")
_CHANNEL = {"R": 0, "G": 1, "B": 2}

# Bilinear interpolation written as convolutions of the masked colour planes: a green pixel is
# the mean of its 4 direct neighbours, red/blue the mean of 2 or 4 diagonal/side neighbours.
_KERNEL_G = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], dtype=np.float32) / 4
_KERNEL_RB = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float32) / 4


def _bayer_sites(pattern: str) -> list[tuple[int, int, int]]:
    """(channel, row parity, column parity) of the four pixels of ``pattern``'s 2 × 2 cell."""
    if pattern not in BAYER_PATTERNS:
        raise ValueError(f"unknown Bayer pattern {pattern!r}; allowed: {', '.join(BAYER_PATTERNS)}")
    return [(_CHANNEL[letter],) + divmod(k, 2) for k, letter in enumerate(pattern)]


def channel_masks(pattern: str, shape: tuple[int, int], xp=np) -> list:
    """Boolean masks (R, G, B) of shape ``shape`` saying which pixels carry which colour."""
    h, w = shape
    rows = (xp.arange(h) % 2)[:, None]
    cols = (xp.arange(w) % 2)[None, :]
    masks = [xp.zeros((h, w), dtype=bool) for _ in range(3)]
    for channel, r, c in _bayer_sites(pattern):
        masks[channel] |= (rows == r) & (cols == c)
    return masks


def debayer_bilinear(raw, pattern: str):
    """Demosaic a 2-D raw mosaic to a float32 ``(H, W, 3)`` RGB image (bilinear).

    Each output channel equals the raw value where the sensor measured that colour, and the
    bilinear mean of the nearest same-colour pixels elsewhere. Borders are reflected about the
    edge pixel, which keeps the Bayer parity, so edges need no special case.
    """
    xp = array_module(raw)
    sites = _bayer_sites(pattern)
    raw = raw.astype(xp.float32, copy=False)
    # Each colour's samples copied onto a zero plane by strided slices (the same planes as
    # where(channel_masks(...), raw, 0), without building and reading three masks).
    planes = [xp.zeros(raw.shape, dtype=xp.float32) for _ in range(3)]
    for channel, r, c in sites:
        planes[channel][r::2, c::2] = raw[r::2, c::2]
    planes = [convolve3x3(planes[c], _KERNEL_G if c == 1 else _KERNEL_RB) for c in range(3)]
    if xp is np:
        import cv2

        return cv2.merge(planes)  # interleaves in one pass (numpy: one strided pass per channel)
    return xp.stack(planes, axis=-1)

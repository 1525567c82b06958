"""Quality measures of a mosaic against a known truth (pure kernels)."""

from __future__ import annotations

import numpy as np


def robust_sigma(values: np.ndarray) -> float:
    """1.4826 × median absolute deviation of the finite values (σ for Gaussian noise)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


def pixel_noise(image: np.ndarray, mask: np.ndarray) -> float:
    """White-noise σ from differences of horizontally adjacent pixels that are both in ``mask``.

    Differences cancel everything smoother than a pixel (gradients, halos, seams), so this
    measures noise alone. Resampling correlates neighbours and lowers it somewhat: ratios
    against it are conservative (they overstate residual structure, never hide it).
    """
    both = mask[:, 1:] & mask[:, :-1]
    diff = (image[:, 1:] - image[:, :-1])[both]
    return robust_sigma(diff) / np.sqrt(2.0)


def linear_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares (gain, offset) of y ≈ gain·x + offset; (1, 0) when x is constant."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    vx = x.var()
    if x.size < 2 or vx <= 0:
        return 1.0, float(np.mean(y - x)) if x.size else 0.0
    gain = float(((x - x.mean()) * (y - y.mean())).mean() / vx)
    return gain, float(y.mean() - gain * x.mean())


def large_scale_background(image: np.ndarray, mask: np.ndarray, box: int = 32) -> np.ndarray:
    """Smooth background of ``image``: medians of ``box``-px cells (``mask`` pixels only),
    interpolated bilinearly back to full size. Cells with too few pixels borrow the median of
    all cells."""
    import cv2

    h, w = image.shape
    ny, nx = -(-h // box), -(-w // box)
    cells = np.full((ny, nx), np.nan, dtype=np.float32)
    for j in range(ny):
        for i in range(nx):
            block = image[j * box:(j + 1) * box, i * box:(i + 1) * box]
            keep = mask[j * box:(j + 1) * box, i * box:(i + 1) * box]
            if keep.sum() >= box * box // 8:
                cells[j, i] = np.median(block[keep])
    fill = np.nanmedian(cells) if np.isfinite(cells).any() else 0.0
    cells = np.where(np.isfinite(cells), cells, fill).astype(np.float32)
    # Cell centres sit at (k + 0.5) * box; resizing with pixel-centre alignment matches that.
    return cv2.resize(cells, (nx * box, ny * box), interpolation=cv2.INTER_LINEAR)[:h, :w]


def centroid_offsets(image: np.ndarray, xs: np.ndarray, ys: np.ndarray, half: int = 4) -> np.ndarray:
    """(dx, dy) of the background-subtracted intensity centroid of ``image`` around each predicted
    position (x, y), in pixels; NaN rows where the box leaves the image or holds a NaN."""
    h, w = image.shape
    out = np.full((len(xs), 2), np.nan)
    for k, (x, y) in enumerate(zip(xs, ys)):
        ix, iy = int(round(x)), int(round(y))
        if ix - half < 0 or iy - half < 0 or ix + half >= w or iy + half >= h:
            continue
        box = image[iy - half:iy + half + 1, ix - half:ix + half + 1].astype(np.float64)
        if not np.isfinite(box).all():
            continue
        edge = np.concatenate([box[0], box[-1], box[1:-1, 0], box[1:-1, -1]])
        flux = np.clip(box - np.median(edge), 0, None)
        total = flux.sum()
        if total <= 0:
            continue
        gy, gx = np.mgrid[-half:half + 1, -half:half + 1]
        out[k] = ((flux * gx).sum() / total + ix - x, (flux * gy).sum() / total + iy - y)
    return out


def aperture_fluxes(image: np.ndarray, xs: np.ndarray, ys: np.ndarray, radius: float = 6.0,
                    annulus: tuple[float, float] = (9.0, 13.0)) -> np.ndarray:
    """Background-subtracted flux in a circular aperture around each (x, y); NaN where the
    annulus leaves the image or holds a NaN. The background is the annulus median."""
    h, w = image.shape
    r_out = int(np.ceil(annulus[1]))
    gy, gx = np.mgrid[-r_out:r_out + 1, -r_out:r_out + 1]
    out = np.full(len(xs), np.nan)
    for k, (x, y) in enumerate(zip(xs, ys)):
        ix, iy = int(round(x)), int(round(y))
        if ix - r_out < 0 or iy - r_out < 0 or ix + r_out >= w or iy + r_out >= h:
            continue
        box = image[iy - r_out:iy + r_out + 1, ix - r_out:ix + r_out + 1].astype(np.float64)
        dist = np.hypot(gx + ix - x, gy + iy - y)
        ring = box[(dist >= annulus[0]) & (dist <= annulus[1])]
        inner = box[dist <= radius]
        if not (np.isfinite(ring).all() and np.isfinite(inner).all()):
            continue
        out[k] = inner.sum() - np.median(ring) * inner.size
    return out

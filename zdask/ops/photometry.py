"""Inter-tile photometric harmonisation: pairwise fits on overlaps, a global solve, a seam metric.

Workflow: for every pair of overlapping tiles ``(i, j)`` on a common grid,
``fit = fit_gain_offset(tile_i, tile_j)`` gives ``tile_i ≈ fit.gain · tile_j + fit.offset``;
``solve_tile_photometry(n, [(i, j, fit.gain, fit.offset, weight), ...])`` turns the pairwise
relations into one ``(gain, offset)`` per tile; ``apply_photometry`` applies them;
``zdask.ops.seams.seam_metric(overlap_medians(tiles))`` measures what is left.

``fit_gain_offset``, ``fit_source_gain`` and ``solve_tile_photometry`` are
NumPy-only; ``apply_photometry`` works on NumPy or CuPy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from zdask.ops.backend import array_module

__all__ = [
    "PairFit", "TilePhotometry", "apply_photometry", "fit_gain_offset", "fit_source_gain",
    "solve_tile_photometry",
]


@dataclass(frozen=True)
class PairFit:
    """``gain · target + offset ≈ reference`` on an overlap, per channel.

    Attributes
    ----------
    gain, offset : numpy.ndarray
        ``(C,)`` float64, always finite.
    n_pixels : int
        Valid overlap pixels (finite in both images, inside the mask).
    ok : bool
        True when every channel got a gain-and-offset fit.
    reason : str or None
        Why some channel fell back (None when ok).
    fitted : numpy.ndarray
        ``(C,)`` bool, per channel: True = gain and offset fitted; False = fallback with gain 1
        and offset = median(reference − target) (0 when there is no valid pixel). A fallback
        with ``n_pixels > 0`` is still a sound offset-only relation: pass it to the solver.
    """

    gain: np.ndarray
    offset: np.ndarray
    n_pixels: int
    ok: bool
    reason: str | None
    fitted: np.ndarray


# The sky band is chosen on images box-smoothed over this many pixels (noise down 5×).
_BAND_SMOOTH_PX = 5


def _as_hwc(image: np.ndarray, name: str) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3:
        raise ValueError(f"{name} must be (H, W, C) or (H, W); got shape {img.shape}")
    return img


def _mad_sigma(values: np.ndarray) -> float:
    if values.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def _neighbour_noise(plane: np.ndarray, use: np.ndarray) -> float:
    """Per-pixel noise σ from horizontal neighbour differences (robust to stars and gradients)."""
    both = use[:, 1:] & use[:, :-1]
    d = (plane[:, 1:] - plane[:, :-1])[both]
    return _mad_sigma(d) / np.sqrt(2.0)


def _box_smooth(plane: np.ndarray, valid: np.ndarray, size: int = _BAND_SMOOTH_PX) -> np.ndarray:
    """Box mean over the valid pixels of a ``size`` × ``size`` window (normalised convolution)."""
    import cv2

    v = valid.astype(np.float64)
    num = cv2.blur(np.where(valid, plane, 0.0), (size, size), borderType=cv2.BORDER_REFLECT_101)
    den = cv2.blur(v, (size, size), borderType=cv2.BORDER_REFLECT_101)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def _deming_slope(sxx: float, syy: float, sxy: float, var_x: float, var_y: float) -> float:
    """Errors-in-variables slope of y on x with noise variances ``var_x`` and ``var_y``."""
    if var_x <= 0 and var_y <= 0:
        lam = 1.0
    elif var_x <= 0:
        return sxy / sxx  # x exact: ordinary least squares of y on x is unbiased
    elif var_y <= 0:
        return syy / sxy  # y exact: regress x on y and invert
    else:
        lam = float(np.clip(var_y / var_x, 1e-6, 1e6))
    a = syy - lam * sxx
    return (a + np.sqrt(a * a + 4.0 * lam * sxy * sxy)) / (2.0 * sxy)


def fit_gain_offset(
    reference: np.ndarray,
    target: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    sky_band: tuple[float, float] = (5.0, 60.0),
    min_pixels: int = 50,
    min_correlation: float = 0.5,
    kappa: float = 3.0,
    iterations: int = 5,
) -> PairFit:
    """Robust per-channel ``(gain, offset)`` with ``gain · target + offset ≈ reference``.

    Method, per channel, on the pixels finite (all channels) in both images and inside ``mask``:

    1. sky band: keep the pixels whose 5 × 5 box-smoothed value lies between the ``sky_band``
       percentiles in BOTH images (stars, trails and their PSF differences are above the band
       in either image; selecting on smoothed values keeps the selection from truncating the
       pixel noise, which would bias the slope);
    2. a straight-line errors-in-variables (Deming) fit, since both tiles are noisy and an
       ordinary least-squares slope would be biased toward 0 by the target's noise. The noise
       variance ratio comes from each image's horizontal neighbour differences (MAD);
    3. sigma clipping: pixels with ``|residual − median| > kappa · σ_MAD`` are dropped and the
       line refitted, up to ``iterations`` times. ``offset = mean(ref) − gain · mean(target)``.

    Guards (channel falls back to gain 1, offset = median(reference − target), ``fitted`` False):
    fewer than ``min_pixels`` valid or sky-band pixels; zero variance in the band; correlation
    below ``min_correlation`` (a flat sky does not constrain a gain, only an offset); a
    non-finite or non-positive gain.

    Parameters
    ----------
    reference, target : numpy.ndarray
        ``(H, W, C)`` or ``(H, W)`` on the same grid; NaN = no data.
    mask : numpy.ndarray of bool, optional
        ``(H, W)``, True = use the pixel (e.g. the overlap).
    sky_band : tuple of float
        ``(low, high)`` percentiles, ``0 <= low < high <= 100``.
    min_pixels : int
        Minimum number of pixels for a fit (>= 2).
    min_correlation : float
        Minimum Pearson correlation in the band for a gain fit, in ``[0, 1]``.
    kappa : float
        Clipping threshold in robust sigmas, > 0.
    iterations : int
        Maximum clipping rounds, >= 1.

    Returns
    -------
    PairFit
    """
    ref = _as_hwc(reference, "reference").astype(np.float64)
    tgt = _as_hwc(target, "target").astype(np.float64)
    if ref.shape != tgt.shape:
        raise ValueError(f"reference and target shapes differ: {ref.shape} vs {tgt.shape}")
    lo, hi = (float(v) for v in sky_band)
    if not 0.0 <= lo < hi <= 100.0:
        raise ValueError("sky_band must be (low, high) percentiles with 0 <= low < high <= 100; "
                         f"got {sky_band!r}")
    if int(min_pixels) != min_pixels or min_pixels < 2:
        raise ValueError(f"min_pixels must be an integer >= 2; got {min_pixels!r}")
    if not 0.0 <= min_correlation <= 1.0:
        raise ValueError(f"min_correlation must be in [0, 1]; got {min_correlation!r}")
    if not np.isfinite(kappa) or kappa <= 0:
        raise ValueError(f"kappa must be a finite number > 0; got {kappa!r}")
    if int(iterations) != iterations or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1; got {iterations!r}")
    h, w, c = ref.shape
    valid = np.all(np.isfinite(ref), axis=2) & np.all(np.isfinite(tgt), axis=2)
    if mask is not None:
        m = np.asarray(mask).astype(bool)
        if m.shape != (h, w):
            raise ValueError(f"mask must have shape {(h, w)} (H, W); got {m.shape}")
        valid &= m
    n_pixels = int(valid.sum())

    gain = np.ones(c)
    offset = np.zeros(c)
    fitted = np.zeros(c, dtype=bool)
    reasons: list[str] = []
    for k in range(c):
        r_img, t_img = ref[:, :, k], tgt[:, :, k]
        r_all, t_all = r_img[valid], t_img[valid]
        if n_pixels == 0:
            reasons.append(f"channel {k}: no valid overlap pixel")
            continue
        offset[k] = float(np.median(r_all - t_all))
        if n_pixels < min_pixels:
            reasons.append(f"channel {k}: {n_pixels} valid pixels < min_pixels {min_pixels}")
            continue
        # Select on smoothed images: selecting on the noisy values themselves would truncate
        # the noise and bias the slope; the smoothing also widens the star cut to the wings.
        r_sm, t_sm = _box_smooth(r_img, valid), _box_smooth(t_img, valid)
        r_lo, r_hi = np.percentile(r_sm[valid], [lo, hi])
        t_lo, t_hi = np.percentile(t_sm[valid], [lo, hi])
        band = valid & (r_sm >= r_lo) & (r_sm <= r_hi) & (t_sm >= t_lo) & (t_sm <= t_hi)
        rs, ts = r_img[band], t_img[band]
        if rs.size < min_pixels:
            reasons.append(f"channel {k}: {rs.size} sky-band pixels < min_pixels {min_pixels}")
            continue
        offset[k] = float(np.median(rs - ts))
        # On all valid pixels, not the band: truncating to the band would shrink the noise.
        var_r = _neighbour_noise(r_img, valid) ** 2
        var_t = _neighbour_noise(t_img, valid) ** 2
        g = o = np.nan
        why = None
        for _ in range(int(iterations)):
            mr, mt = rs.mean(), ts.mean()
            dr, dt = rs - mr, ts - mt
            syy, sxx, sxy = float(dr @ dr), float(dt @ dt), float(dr @ dt)
            if sxx <= 0 or syy <= 0:
                why = "zero variance in the sky band"
                break
            rho = sxy / np.sqrt(sxx * syy)
            if rho < min_correlation:
                why = f"correlation {rho:.2f} < min_correlation {min_correlation:g} (gain unconstrained)"
                break
            g = _deming_slope(sxx, syy, sxy, var_t, var_r)
            o = mr - g * mt
            res = rs - (g * ts + o)
            sigma = _mad_sigma(res)
            if sigma == 0:
                break
            keep = np.abs(res - np.median(res)) <= kappa * sigma
            if keep.all() or keep.sum() < min_pixels:
                break
            rs, ts = rs[keep], ts[keep]
        if why is None and not (np.isfinite(g) and np.isfinite(o) and g > 0):
            why = f"non-finite or non-positive fit (gain {g!r})"
        if why is not None:
            reasons.append(f"channel {k}: {why}")
            continue
        gain[k], offset[k], fitted[k] = g, o, True
    offset[~np.isfinite(offset)] = 0.0
    ok = bool(fitted.all())
    return PairFit(gain, offset, n_pixels, ok, None if ok else "; ".join(reasons), fitted)


@dataclass(frozen=True)
class TilePhotometry:
    """Per-tile corrections from :func:`solve_tile_photometry`.

    Attributes
    ----------
    gains, offsets : numpy.ndarray
        ``(n_tiles, C)`` float64, finite; the corrected tile is ``gains[k] · T_k + offsets[k]``.
    connected : numpy.ndarray
        ``(n_tiles,)`` bool: True for tiles in the anchor's connected component. Every other
        component is anchored at its own lowest-index tile (g = 1, o = 0); isolated tiles get
        the identity.
    """

    gains: np.ndarray
    offsets: np.ndarray
    connected: np.ndarray


def _components(n: int, edges: list[tuple[int, int]]) -> np.ndarray:
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j in edges:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)  # the root is the lowest index
    return np.array([find(a) for a in range(n)])


def _solve_differences(n: int, edges: np.ndarray, rhs: np.ndarray, w: np.ndarray,
                       root: int) -> np.ndarray:
    """Weighted least squares for ``x[j] − x[i] = rhs`` over ``edges`` with ``x[root] = 0``."""
    free = [k for k in range(n) if k != root]
    col = {k: a for a, k in enumerate(free)}
    a = np.zeros((len(edges), len(free)))
    for row, (i, j) in enumerate(edges):
        if j != root:
            a[row, col[j]] += 1.0
        if i != root:
            a[row, col[i]] -= 1.0
    sw = np.sqrt(w)
    sol = np.linalg.lstsq(a * sw[:, None], rhs * sw, rcond=None)[0]
    x = np.zeros(n)
    x[free] = sol
    return x


def solve_tile_photometry(
    n_tiles: int,
    pairs: Sequence[tuple[int, int, np.ndarray, np.ndarray, float]],
    *,
    anchor: int = 0,
    gain_clip: tuple[float, float] = (0.5, 2.0),
    n_channels: int | None = None,
) -> TilePhotometry:
    """Per-tile ``(g_k, o_k)`` making the corrected tiles ``g_k · T_k + o_k`` agree on overlaps.

    A pair ``(i, j, a, b, w)`` states ``T_i ≈ a · T_j + b`` on the overlap (per channel; from
    ``fit_gain_offset(reference=T_i, target=T_j)``) with weight ``w``. Asking the corrected
    tiles to agree, ``g_i T_i + o_i = g_j T_j + o_j``, and substituting ``T_i``:

    * ``g_i · a = g_j``, i.e. ``log g_j − log g_i = log a``;
    * ``g_i · b + o_i = o_j``, i.e. ``o_j − o_i = g_i · b``.

    Both are solved by weighted least squares over each connected component of the pair
    graph, first the log-gains, then (with the clipped gains) the offsets; the anchor is fixed
    at ``g = 1, o = 0`` and every other component at its lowest-index tile. With consistent
    (noiseless) pairs and gains inside ``gain_clip`` the planted solution is recovered exactly.

    Ignored pairs: any non-finite value, a gain <= 0, a weight that is not finite and > 0.
    Indices out of range or ``i == j`` raise ``ValueError``.

    Parameters
    ----------
    n_tiles : int
        Number of tiles (>= 1).
    pairs : sequence of tuple
        ``(i, j, gain_ij (C,), offset_ij (C,), weight)``.
    anchor : int
        Tile fixed at the identity, in ``[0, n_tiles)``.
    gain_clip : tuple of float
        ``(low, high)`` bounds of the solved gains, ``0 < low <= 1 <= high``.
    n_channels : int, optional
        C when ``pairs`` is empty (default 1); otherwise taken from the pairs.

    Returns
    -------
    TilePhotometry
    """
    if int(n_tiles) != n_tiles or n_tiles < 1:
        raise ValueError(f"n_tiles must be an integer >= 1; got {n_tiles!r}")
    n = int(n_tiles)
    if not 0 <= anchor < n:
        raise ValueError(f"anchor must be in [0, {n}); got {anchor!r}")
    lo, hi = (float(v) for v in gain_clip)
    if not (0 < lo <= 1.0 <= hi and np.isfinite(hi)):
        raise ValueError(f"gain_clip must be (low, high) with 0 < low <= 1 <= high; got {gain_clip!r}")
    c = n_channels
    if pairs:
        c = int(np.atleast_1d(np.asarray(pairs[0][2])).size)
    c = 1 if c is None else int(c)

    edges, log_a, b, w = [], [], [], []
    for p in pairs:
        i, j, a_ij, b_ij, w_ij = p
        if not (0 <= int(i) < n and 0 <= int(j) < n) or int(i) == int(j):
            raise ValueError(f"pairs: tile indices must be distinct and in [0, {n}); got ({i}, {j})")
        a_ij = np.atleast_1d(np.asarray(a_ij, dtype=np.float64))
        b_ij = np.atleast_1d(np.asarray(b_ij, dtype=np.float64))
        if a_ij.shape != (c,) or b_ij.shape != (c,):
            raise ValueError(f"pairs: gain and offset must have shape ({c},); "
                             f"got {a_ij.shape}, {b_ij.shape}")
        w_ij = float(w_ij)
        usable = (np.isfinite(a_ij).all() and np.isfinite(b_ij).all() and (a_ij > 0).all()
                  and np.isfinite(w_ij) and w_ij > 0)
        if usable:
            edges.append((int(i), int(j)))
            log_a.append(np.log(a_ij))
            b.append(b_ij)
            w.append(w_ij)

    gains = np.ones((n, c))
    offsets = np.zeros((n, c))
    comp = _components(n, edges)
    connected = comp == comp[anchor]
    edges_arr = np.array(edges, dtype=np.int64).reshape(-1, 2)
    log_a_arr = np.array(log_a).reshape(-1, c)
    b_arr = np.array(b).reshape(-1, c)
    w_arr = np.array(w)
    for root in np.unique(comp):
        members = np.flatnonzero(comp == root)
        if members.size < 2:
            continue
        fixed = anchor if root == comp[anchor] else int(root)
        local = {int(t): a for a, t in enumerate(members)}
        sel = np.flatnonzero(np.isin(edges_arr[:, 0], members))
        e_loc = np.array([(local[int(i)], local[int(j)]) for i, j in edges_arr[sel]])
        for ch in range(c):
            lg = _solve_differences(members.size, e_loc, log_a_arr[sel, ch], w_arr[sel], local[fixed])
            g = np.clip(np.exp(lg), lo, hi)
            g_i = g[e_loc[:, 0]]
            o = _solve_differences(members.size, e_loc, g_i * b_arr[sel, ch], w_arr[sel], local[fixed])
            if not (np.isfinite(g).all() and np.isfinite(o).all()):
                continue  # numerically hopeless component: leave it at the identity
            gains[members, ch] = g
            offsets[members, ch] = o
    return TilePhotometry(gains, offsets, connected)


def apply_photometry(image, gain, offset):
    """``gain · image + offset`` per channel, as a float32 copy (NumPy or CuPy).

    Parameters
    ----------
    image : array
        ``(H, W, C)``.
    gain, offset : array_like
        ``(C,)``.
    """
    xp = array_module(image)
    img = xp.asarray(image)
    if img.ndim != 3:
        raise ValueError(f"image must be (H, W, C); got shape {img.shape}")
    g = np.atleast_1d(np.asarray(gain, dtype=np.float32))
    o = np.atleast_1d(np.asarray(offset, dtype=np.float32))
    if g.shape != (img.shape[2],) or o.shape != (img.shape[2],):
        raise ValueError(f"gain and offset must have shape ({img.shape[2]},); got {g.shape}, {o.shape}")
    out = img.astype(xp.float32, copy=True)
    out *= xp.asarray(g)
    out += xp.asarray(o)
    return out


def fit_source_gain(
    reference: np.ndarray, target: np.ndarray, *, mask: np.ndarray | None = None,
    filter_px: int = 7, snr: float = 5.0, min_pixels: int = 20,
) -> PairFit:
    """Per-channel ``(gain, offset)`` with ``gain · target + offset ≈ reference``, the gain
    measured on sources only.

    Transparency scales the astronomical signal, not the additive sky glow, so a gain is only
    visible in stars and compact structure: both images are high-passed (minus a
    ``filter_px`` median filter, which removes sky, gradients and offsets), pixels where both
    high-passed values exceed ``snr`` × their noise are kept, and the gain is the ratio of
    their sums (flux-weighted, so faint noisy pixels count little). The offset is then the
    median of ``reference − gain · target`` over the whole overlap. Channels without enough
    source pixels fall back to gain 1 (``fitted`` False).
    """
    from scipy.ndimage import median_filter

    ref = _as_hwc(reference, "reference").astype(np.float64)
    tgt = _as_hwc(target, "target").astype(np.float64)
    valid = np.isfinite(ref).all(axis=-1) & np.isfinite(tgt).all(axis=-1)
    if mask is not None:
        valid &= np.asarray(mask, dtype=bool)
    c = ref.shape[-1]
    gain, offset = np.ones(c), np.zeros(c)
    fitted = np.zeros(c, dtype=bool)
    n_used = 0
    for k in range(c):
        r, t = ref[..., k], tgt[..., k]
        if valid.sum() < min_pixels:
            break
        fill_r, fill_t = np.median(r[valid]), np.median(t[valid])
        hr = np.where(valid, r, fill_r) - median_filter(np.where(valid, r, fill_r), size=filter_px)
        ht = np.where(valid, t, fill_t) - median_filter(np.where(valid, t, fill_t), size=filter_px)
        sr, st = _mad_sigma(hr[valid]), _mad_sigma(ht[valid])
        sources = valid & (hr > snr * max(sr, 1e-12)) & (ht > snr * max(st, 1e-12))
        if sources.sum() >= min_pixels:
            ratio = hr[sources].sum() / ht[sources].sum()
            if np.isfinite(ratio) and ratio > 0:
                gain[k], fitted[k] = ratio, True
                n_used = max(n_used, int(sources.sum()))
        offset[k] = float(np.median(r[valid] - gain[k] * t[valid]))
    ok = bool(fitted.all())
    return PairFit(gain, offset, int(valid.sum()), ok,
                   None if ok else "too few source pixels for a gain: offset only", fitted)

"""Inter-tile photometric harmonisation: pairwise fits on overlaps and a global solve.

Workflow: for every pair of overlapping tiles ``(i, j)`` on a common grid,
``fit = fit_source_gain(tile_i, tile_j)`` gives ``tile_i ≈ fit.gain · tile_j + fit.offset``;
``solve_tile_photometry(n, [(i, j, fit.gain, fit.offset, weight), ...])`` turns the pairwise
relations into one ``(gain, offset)`` per tile. NumPy-only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from zdask.ops.backend import as_hwc
from zdask.ops.robust import robust_sigma
from zdask.ops.unionfind import UnionFind

__all__ = ["PairFit", "TilePhotometry", "fit_source_gain", "solve_tile_photometry"]


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
    """Per tile, the lowest index of its connected component (the component's own anchor)."""
    links = UnionFind(n)
    for i, j in edges:
        links.union(i, j)
    return links.roots()


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
    ``fit_source_gain(reference=T_i, target=T_j)``) with weight ``w``. Asking the corrected
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

    ref = as_hwc(reference, "reference")[1].astype(np.float64)
    tgt = as_hwc(target, "target")[1].astype(np.float64)
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
        sr, st = robust_sigma(hr[valid]), robust_sigma(ht[valid])
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

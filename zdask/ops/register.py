"""Registration kernels: similarity transforms from star lists, phase correlation (pure).

A transform is a 3×3 homogeneous matrix ``T`` (float64) mapping pixel ``(x, y)`` of one image
to pixel ``T @ (x, y, 1)`` of another; every function here also accepts an object with a
``params`` attribute (skimage/astroalign ``SimilarityTransform``). Pixel coordinates are 0-based
pixel centres.

Matching pipeline used by :mod:`zdask.graph.align`:

* :func:`match_stars` — astroalign's triangle-invariant matching on the brightest control
  points (translation, rotation and scale free), followed by :func:`refine_matches`.
* :func:`match_by_offset_vote` — when a prior says the two lists differ by a small shift (a
  WCS prediction), a vote over the pairwise displacements shorter than ``max_shift``; fixed
  pattern sources and wild mismatches cannot win it because their displacement is not small.
* :func:`refine_matches` — mutual nearest neighbours under a first transform, least-squares
  similarity refit with residual clipping, over *all* stars (not only control points): the
  final transform is deterministic even though astroalign's RANSAC is randomised.
* :func:`phase_correlation_shift` — a translation from the whole image when stars are too few.
"""

from __future__ import annotations

import numpy as np

from zdask.ops.robust import mad_sigma

__all__ = [
    "as_matrix", "apply_transform", "similarity_from_matches", "similarity_parameters",
    "translation", "match_stars", "refine_matches", "match_by_offset_vote", "residuals",
    "max_displacement", "transform_agrees", "phase_correlation_shift", "prepare_for_phase",
]


# ------------------------------------------------------------------------- transforms
def as_matrix(transform) -> np.ndarray:
    """The 3×3 float64 matrix of a transform (matrix or object with ``params``)."""
    m = np.asarray(getattr(transform, "params", transform), dtype=np.float64)
    if m.shape != (3, 3):
        raise ValueError(f"a transform is a 3x3 matrix, got shape {m.shape}")
    return m


def translation(dx: float, dy: float) -> np.ndarray:
    """The matrix of a pure shift by (dx, dy)."""
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def apply_transform(transform, xy: np.ndarray) -> np.ndarray:
    """``T`` applied to an (N, 2) array of points."""
    m = as_matrix(transform)
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    return xy @ m[:2, :2].T + m[:2, 2]


def similarity_from_matches(src_xy: np.ndarray, dst_xy: np.ndarray) -> np.ndarray:
    """Least-squares similarity (scale, rotation, shift; no reflection) mapping src onto dst.

    Closed form (Umeyama 1991). Needs at least 2 distinct points.
    """
    src = np.asarray(src_xy, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst_xy, dtype=np.float64).reshape(-1, 2)
    if len(src) != len(dst) or len(src) < 2:
        raise ValueError(f"need >= 2 matched pairs, got {len(src)} and {len(dst)}")
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - mu_s, dst - mu_d
    var_s = float((s**2).sum()) / len(src)
    if var_s <= 0:
        raise ValueError("source points coincide")
    # With complex numbers z = x + iy, a similarity is z -> a z + b, a = scale * e^(i rotation).
    zs, zd = s[:, 0] + 1j * s[:, 1], d[:, 0] + 1j * d[:, 1]
    a = complex(np.vdot(zs, zd) / np.vdot(zs, zs))
    m = np.array([[a.real, -a.imag, 0.0], [a.imag, a.real, 0.0], [0.0, 0.0, 1.0]])
    m[:2, 2] = mu_d - m[:2, :2] @ mu_s
    return m


def similarity_parameters(transform) -> tuple[float, float, float, float]:
    """(scale, rotation_deg, tx, ty) of a similarity matrix."""
    m = as_matrix(transform)
    scale = float(np.sqrt(abs(np.linalg.det(m[:2, :2]))))
    rotation = float(np.degrees(np.arctan2(m[1, 0], m[0, 0])))
    return scale, rotation, float(m[0, 2]), float(m[1, 2])


def residuals(transform, src_xy: np.ndarray, dst_xy: np.ndarray) -> np.ndarray:
    """|T(src) − dst| per matched pair, pixels."""
    return np.hypot(*(apply_transform(transform, src_xy) - np.asarray(dst_xy, float).reshape(-1, 2)).T)


def _probe_points(shape: tuple[int, int]) -> np.ndarray:
    h, w = shape[:2]
    return np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1], [(w - 1) / 2, (h - 1) / 2]], float)


def max_displacement(transform, shape: tuple[int, int]) -> float:
    """Largest |T(p) − p| over the frame's four corner pixels and its centre."""
    p = _probe_points(shape)
    return float(np.max(np.hypot(*(apply_transform(transform, p) - p).T)))


def transform_agrees(transform, shape: tuple[int, int], tolerance_px: float) -> bool:
    """True when T moves no corner nor the centre of a ``shape`` frame by ``tolerance_px`` or more."""
    d = max_displacement(transform, shape)
    return bool(np.isfinite(d) and d < tolerance_px)


# -------------------------------------------------------------------------- matching
def _xy(points) -> np.ndarray:
    """(N, 2) float64 x, y of an (N, 2+) array (extra columns such as flux are ignored)."""
    a = np.asarray(points, dtype=np.float64)
    if a.size == 0:
        return np.zeros((0, 2))
    return a.reshape(len(a), -1)[:, :2]


def match_stars(
    src_xy: np.ndarray, dst_xy: np.ndarray, *, max_control_points: int = 50
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """astroalign similarity from src to dst star lists (brightest first), or None.

    Returns ``(T, src_index, dst_index)``: the matrix and the indices of astroalign's matched
    control points. None when astroalign finds no transform (too few stars, no consistent
    asterisms: ``MaxIterError``/``ValueError``) or the fit is degenerate.
    """
    import astroalign

    src, dst = _xy(src_xy), _xy(dst_xy)
    n = max(3, int(max_control_points))
    if len(src) < 3 or len(dst) < 3:
        return None
    try:
        found, (s_pts, d_pts) = astroalign.find_transform(src[:n], dst[:n], max_control_points=n)
    except (astroalign.MaxIterError, ValueError, TypeError, np.linalg.LinAlgError):
        return None
    m = as_matrix(found)
    if not np.all(np.isfinite(m)) or abs(np.linalg.det(m[:2, :2])) < 1e-12:
        return None
    s_idx = _lookup(src[:n], np.atleast_2d(s_pts))
    d_idx = _lookup(dst[:n], np.atleast_2d(d_pts))
    return m, s_idx, d_idx


def _lookup(points: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Indices into ``points`` of rows equal to ``found`` (astroalign returns copies)."""
    from scipy.spatial import cKDTree

    if found.size == 0:
        return np.zeros(0, dtype=np.intp)
    _, idx = cKDTree(points).query(found[:, :2])
    return np.asarray(idx, dtype=np.intp)


def _mutual_nearest(src_t: np.ndarray, dst: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    from scipy.spatial import cKDTree

    if len(src_t) == 0 or len(dst) == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    d1, j = cKDTree(dst).query(src_t, distance_upper_bound=radius)
    _, i_back = cKDTree(src_t).query(dst, distance_upper_bound=radius)
    i = np.arange(len(src_t))
    ok = np.isfinite(d1)
    ok[ok] &= i_back[j[ok]] == i[ok]
    return i[ok], j[ok]


def refine_matches(
    src_xy: np.ndarray, dst_xy: np.ndarray, transform, *, radius: float = 2.0,
    iterations: int = 4, clip: float = 3.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-pair all stars under ``transform`` and refit: ``(T, src_index, dst_index)``.

    Pairs are mutual nearest neighbours closer than ``radius`` px after ``T``; the similarity is
    refit by least squares, pairs beyond ``clip`` × the robust residual σ (at least 0.5 px) are
    dropped, and this repeats. Fewer than 3 pairs leave ``transform`` unchanged (with the pairs
    found).
    """
    src, dst = _xy(src_xy), _xy(dst_xy)
    m = as_matrix(transform).copy()
    si = di = np.zeros(0, np.intp)
    for _ in range(iterations):
        si, di = _mutual_nearest(apply_transform(m, src), dst, radius)
        if len(si) < 3:
            return m, si, di
        m = similarity_from_matches(src[si], dst[di])
        r = residuals(m, src[si], dst[di])
        # r are lengths, centred on 0 for good pairs: the MAD is about 0, not their median
        limit = max(float(mad_sigma(r, 0.0, kappa=clip)), 0.5)
        keep = r <= limit
        if keep.sum() >= 3 and not keep.all():
            si, di = si[keep], di[keep]
            m = similarity_from_matches(src[si], dst[di])
        radius = min(radius, max(limit, 1.0))
    return m, si, di


def match_by_offset_vote(
    src_xy: np.ndarray, dst_xy: np.ndarray, *, max_shift: float, bin_px: float = 2.0,
    min_votes: int = 3,
) -> tuple[np.ndarray, int] | None:
    """The shift most pairs agree on, among pairs closer than ``max_shift``: ``(T, votes)``.

    For lists that a prior (a WCS prediction) already aligns to within ``max_shift`` px and a
    small rotation. Displacements are binned (``bin_px``); the best 2×2 block of bins wins and
    the shift is the mean displacement of its pairs. None with fewer than ``min_votes`` pairs.
    """
    from scipy.spatial import cKDTree

    src, dst = _xy(src_xy), _xy(dst_xy)
    if len(src) == 0 or len(dst) == 0:
        return None
    pairs = cKDTree(src).query_ball_tree(cKDTree(dst), r=max_shift)
    ii = np.repeat(np.arange(len(src)), [len(p) for p in pairs])
    jj = np.fromiter((j for p in pairs for j in p), dtype=np.intp, count=len(ii))
    if len(ii) < min_votes:
        return None
    disp = dst[jj] - src[ii]
    nb = int(np.ceil(2 * max_shift / bin_px)) + 1
    edges = np.linspace(-max_shift - bin_px / 2, max_shift + bin_px / 2, nb + 1)
    hist, _, _ = np.histogram2d(disp[:, 0], disp[:, 1], bins=(edges, edges))
    block = hist[:-1, :-1] + hist[1:, :-1] + hist[:-1, 1:] + hist[1:, 1:]
    bx, by = np.unravel_index(int(np.argmax(block)), block.shape)
    sel = ((disp[:, 0] >= edges[bx]) & (disp[:, 0] < edges[bx + 2])
           & (disp[:, 1] >= edges[by]) & (disp[:, 1] < edges[by + 2]))
    votes = int(sel.sum())
    if votes < min_votes:
        return None
    shift = disp[sel].mean(axis=0)
    return translation(float(shift[0]), float(shift[1])), votes


# -------------------------------------------------------------------- phase correlation
def prepare_for_phase(image: np.ndarray, *, low_sigma: float = 3.0, high_sigma: float = 100.0) -> np.ndarray:
    """Stars-only float32 image for phase correlation.

    NaN → median; a 3×3 median removes single-pixel spikes (hot pixels, cosmic rays); the
    coarse background is subtracted; pixels below ``low_sigma`` × the *local* noise (block MAD,
    so the shot noise of a bright galaxy core does not pass as structure) become 0 — noise and
    smooth nebulosity would otherwise carry as much weight as stars once the spectrum is
    whitened — and values are clipped at ``high_sigma`` × the local noise.
    """
    import cv2

    from zdask.ops.stars import estimate_background

    img = np.asarray(image, dtype=np.float32)
    finite = np.isfinite(img)
    if not finite.all():
        fill = np.float32(np.nanmedian(img)) if finite.any() else np.float32(0)
        img = np.where(finite, img, fill)
    img = cv2.medianBlur(np.ascontiguousarray(img), 3)
    background, _ = estimate_background(img)
    resid = img - background
    _, noise = estimate_background(resid)
    floor = 0.5 * float(np.median(noise))
    if not floor > 0:
        return np.zeros_like(resid)
    noise = np.maximum(noise, floor)
    out = np.minimum(resid, high_sigma * noise)
    out[resid < low_sigma * noise] = 0
    return out


def phase_correlation_shift(reference: np.ndarray, moving: np.ndarray) -> tuple[float, float, float]:
    """``(dx, dy, response)``: ``moving``'s content sits at ``reference``'s + (dx, dy).

    Both 2-D images of one shape (NaN allowed: only pixels finite in both are compared); each
    goes through :func:`prepare_for_phase`,
    then ``cv2.phaseCorrelate`` with a Hanning window. ``response`` (0…1) is OpenCV's peak
    strength: about 1 for identical star fields, below about 0.05 for unrelated images.
    """
    import cv2

    ref = np.asarray(reference)
    mov = np.asarray(moving)
    if ref.shape != mov.shape or ref.ndim != 2:
        raise ValueError(f"need two 2-D images of one shape, got {ref.shape} and {mov.shape}")
    a, b = prepare_for_phase(ref), prepare_for_phase(mov)
    both = np.isfinite(ref) & np.isfinite(mov)
    if not both.all():  # compare only where both images have data
        a[~both] = 0
        b[~both] = 0
    if not (a.any() and b.any()):
        return 0.0, 0.0, 0.0
    window = cv2.createHanningWindow((ref.shape[1], ref.shape[0]), cv2.CV_32F)
    (dx, dy), response = cv2.phaseCorrelate(a, b, window)
    if not (np.isfinite(dx) and np.isfinite(dy) and np.isfinite(response)):
        return 0.0, 0.0, 0.0
    return float(dx), float(dy), float(response)

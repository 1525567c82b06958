"""Matching sky surfaces between overlapping images, keeping what they agree on.

Frames inside a master tile, and master tiles inside a mosaic, each carry their own sky:
light-pollution gradients and offsets that move with the frame, while nebulae and halos stay
on the sky. The surfaces are solved so that every pair of images agrees where they overlap:
emission that both images show cancels in their difference and is kept; what differs between
images is removed. A surface common to all images cannot be told
from the sky and is left alone (the mean correction over images is zero).

Two solvers of that one least-squares problem: :func:`match_surfaces` accumulates it pair by
pair (cost quadratic in the number of images; for a few master tiles chained by partial
overlaps), :func:`match_to_consensus` solves it image by image against the running consensus
of the others (cost linear in the number of images; for the many frames of one master tile).

Images are cut-outs on one common (usually binned) grid: ``(image (h, w, C), weight (h, w),
origin (y0, x0))``. Pure NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from zdask.ops.background import Surface, fit_surface, n_terms, pad_order, poly_terms
from zdask.ops.robust import mad_sigma
from zdask.ops.unionfind import UnionFind


@dataclass(frozen=True)
class CutOut:
    """An image on a common grid: its pixels, its weight (0 = no data), and where it sits."""

    image: np.ndarray        # (h, w, C) float32, NaN where no data
    weight: np.ndarray       # (h, w) float32 >= 0
    origin: tuple[int, int]  # (y0, x0) on the common grid

    def window(self) -> tuple[slice, slice]:
        y0, x0 = self.origin
        return slice(y0, y0 + self.image.shape[0]), slice(x0, x0 + self.image.shape[1])


def accumulate(items: list[CutOut], values: list[np.ndarray], shape: tuple[int, int], channels: int):
    """Weighted sum of ``values`` (one per cut-out, NaN = no data) and the weight sum on the grid."""
    total = np.zeros((*shape, channels))
    wsum = np.zeros(shape)
    for item, value in zip(items, values):
        ys, xs = item.window()
        w = np.where(np.isfinite(value).all(axis=-1), item.weight, 0.0)
        total[ys, xs] += np.nan_to_num(value) * w[..., None]
        wsum[ys, xs] += w
    return total, wsum


def match_surfaces(
    items: list[CutOut], grid_shape: tuple[int, int], *, order: int, extent, passes: int = 4,
    exclude: np.ndarray | None = None, min_overlap: int = 20, step: int = 1,
    max_samples: int = 20000, shapes: list[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Per-image surface coefficients ``(C, n_terms)`` (subtract them to match the images).

    One least-squares solve over every overlapping pair: on their shared pixels,
    ``S_i − S_j ≈ I_i − I_j``, accumulated as normal equations (a few hundred unknowns
    whatever the pixel count). The images' common surface is undetermined; the minimum-norm
    solution fixes it so that the corrections sum to zero (per connected group of images),
    which keeps the overall level where it was. ``passes`` rounds of 3σ clipping of each
    pair's residuals drop stars, trails and PSF differences; ``exclude`` (grid shape, True =
    leave out) masks known sources up front. ``extent`` = (y_min, y_max, x_min, x_max) of the
    grid in the coordinates the surfaces are evaluated in; pairs sharing fewer than
    ``min_overlap`` pixels are ignored, larger ones subsampled (``step``, ``max_samples``).

    ``shapes`` (one quadratic per image, 6 coefficients in :func:`poly_terms` order, or None)
    gives every image one more unknown: the multiple of its own shape it carries. Differences
    show the multiples' differences; their sum only as far as the shapes differ, and not at
    all when they are alike: a faint pull (a millionth of the data's weight) holds the sum at
    zero then. The result is of order ``max(order, 2)``: the surface plus the multiple of the
    image's shape.
    """
    channels = items[0].image.shape[-1] if items else 0
    nt = n_terms(order)
    out_order = order if shapes is None else max(order, 2)
    n_out = n_terms(out_order)
    m = nt + (shapes is not None)  # unknowns per image
    pairs = []
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            found = _pair_samples(items[i], items[j], exclude, step, max_samples, out_order, extent)
            if found is not None and len(found[1]) >= min_overlap:
                terms, diff = found
                a = b = terms[:, :nt]
                if shapes is not None:  # each image's own shape, sampled on the shared pixels
                    a = np.column_stack([a, terms @ pad_order(shapes[i], 2, out_order)[0]])
                    b = np.column_stack([b, terms @ pad_order(shapes[j], 2, out_order)[0]])
                pairs.append((i, j, a, b, diff))
    coeffs = np.zeros((len(items) * m, channels))
    if pairs:
        coeffs = _solve_pairs(pairs, len(items), m, channels, passes, min_overlap, shapes is not None)
    out = []
    for k in range(len(items)):
        c = np.zeros((channels, n_out))
        c[:, :nt] = coeffs[k * m:k * m + nt].T
        if shapes is not None:
            c += coeffs[k * m + nt][:, None] * pad_order(shapes[k], 2, out_order)
        out.append(c)
    return out


# Weight of the pull on the shape multiples' sum, relative to the data's mean weight on one:
# enough to fix it where the pairs do not see it at all, too little to move what they see.
SUM_PULL = 1e-6


def _solve_pairs(pairs, n_items: int, m: int, channels: int, passes: int, min_overlap: int,
                 sum_free: bool) -> np.ndarray:
    """The least-squares solution of ``a·c_i − b·c_j ≈ d`` over every pair (i, j, a, b, d),
    with ``passes`` rounds of 3σ clipping; with ``sum_free``, the sum of the last unknowns of
    the images, which the pairs may not see, is pulled faintly towards zero."""
    keeps = [np.ones(len(d), dtype=bool) for *_, d in pairs]
    coeffs = np.zeros((n_items * m, channels))
    for _ in range(max(1, passes)):
        normal = np.zeros((n_items * m, n_items * m))
        rhs = np.zeros((n_items * m, channels))
        for (i, j, a, b, d), keep in zip(pairs, keeps):
            ak, bk, dk = a[keep], b[keep], d[keep]
            si, sj = slice(i * m, (i + 1) * m), slice(j * m, (j + 1) * m)
            normal[si, si] += ak.T @ ak
            normal[sj, sj] += bk.T @ bk
            normal[si, sj] -= ak.T @ bk
            normal[sj, si] -= bk.T @ ak
            rhs[si] += ak.T @ dk
            rhs[sj] -= bk.T @ dk
        if sum_free:
            last = np.arange(m - 1, n_items * m, m)
            normal[np.ix_(last, last)] += SUM_PULL * max(float(np.mean(normal[last, last])), 1e-12)
        coeffs = np.linalg.lstsq(normal, rhs, rcond=None)[0]
        changed = False
        for n, (i, j, a, b, d) in enumerate(pairs):
            residual = d - (a @ coeffs[i * m:(i + 1) * m] - b @ coeffs[j * m:(j + 1) * m])
            centre = np.median(residual[keeps[n]], axis=0)
            sigma = mad_sigma(residual[keeps[n]], centre, axis=0)
            keep = np.all(np.abs(residual - centre) <= 3.0 * np.maximum(sigma, 1e-12), axis=1)
            if keep.sum() >= min_overlap and not np.array_equal(keep, keeps[n]):
                keeps[n], changed = keep, True
        if not changed:
            break
    return coeffs


@dataclass(frozen=True)
class ConsensusMatch:
    """What :func:`match_to_consensus` found: per image its surface coefficients ``(C, n_terms)``
    (subtract them to match the images), and the work it took."""

    coeffs: list[np.ndarray]
    visits: int      # passes of one image's window over the grid: O(images), whatever the overlaps
    iterations: int  # conjugate-gradient steps, all clipping rounds together


def match_to_consensus(
    items: list[CutOut], grid_shape: tuple[int, int], *, order: int, extent, passes: int = 4,
    exclude: np.ndarray | None = None, min_overlap: int = 20, kappa: float = 3.0,
    max_iterations: int = 50, tolerance: float = 1e-6,
) -> ConsensusMatch:
    """The least-squares solution of :func:`match_surfaces`, at a cost linear in the number of images.

    Over every overlapping pair, ``Σ_{i<j} Σ_{p ∈ i∩j} (I_i − S_i − I_j + S_j)²`` is minimal
    where, for each image ``i``, ``Σ_{p ∈ i} t_p (n_p·(I_i − S_i) − Σ_{j∋p} (I_j − S_j)) = 0``
    (``t_p`` the polynomial terms at pixel ``p``, ``n_p`` the number of images there, the sum
    over all of them): each image is matched to the consensus of the OTHER images covering its
    pixels, weighted by how many they are. Written this way the normal equations need only two
    sums over the grid (of the images and of their surfaces), so one product with the normal
    matrix visits each image twice, whatever the overlaps; the system is solved by conjugate
    gradients preconditioned by each image's own block (images overlapping almost entirely, as
    the frames of one master tile do, converge in one or two steps). Nothing pairwise is formed.

    Emission fixed on the sky is in every ``I_j`` and cancels: it is kept. The surface common to
    all images is undetermined; as in :func:`match_surfaces` the corrections sum to zero per
    connected group of images, which keeps the overall level where it was. ``passes`` rounds:
    after each, an image's pixels whose residual against the consensus of the others departs by
    more than ``kappa`` robust sigmas (1.4826·MAD, per channel) leave the next round, from its
    fit and from the others' consensus (stars, trails, PSF differences); ``exclude`` (grid shape,
    True = leave out) masks known sources up front. An image sharing fewer than ``min_overlap``
    pixels with the others gets no correction. Conjugate gradients stop when the preconditioned
    residual falls below ``tolerance`` times its start, or after ``max_iterations``.

    ``extent`` = (y_min, y_max, x_min, x_max) of the grid in the coordinates the surfaces are
    evaluated in. To subsample, pass images sampled every ``s`` pixels, on the sampled grid, with
    the extent divided by ``s``: the normalised coordinates, hence the coefficients, are the same.
    """
    for name, value, low in (("passes", passes, 1), ("max_iterations", max_iterations, 1)):
        if int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
    n_images = len(items)
    channels = items[0].image.shape[-1] if items else 0
    nt = n_terms(order)
    yy, xx = np.mgrid[0:grid_shape[0], 0:grid_shape[1]]
    terms = poly_terms(xx, yy, order, extent).reshape(*grid_shape, nt)
    solver = _Consensus(items, terms, channels)
    usable = []
    for i, win, _ in solver.windows():
        ok = np.isfinite(items[i].image).all(axis=-1) & (items[i].weight > 0)
        if exclude is not None:
            ok &= ~exclude[win]
        usable.append(ok)
    keeps = solver.drop_lonely(usable, min_overlap)
    coeffs = np.zeros((n_images, nt, channels))
    iterations = 0
    for round_ in range(int(passes)):
        coeffs, steps = solver.solve(keeps, coeffs, max_iterations, tolerance)
        iterations += steps
        coeffs = _zero_mean_per_group(coeffs, solver, keeps)
        if round_ == passes - 1:
            break
        clipped = solver.drop_lonely(solver.clip(usable, keeps, coeffs, kappa), min_overlap)
        if all(np.array_equal(a, b) for a, b in zip(clipped, keeps)):
            break
        keeps = clipped
    return ConsensusMatch([c.T.copy() for c in coeffs], solver.visits, iterations)


class _Consensus:
    """The normal equations of :func:`match_to_consensus` for a given set of kept pixels, each
    product a pass over the images' windows (counted in ``visits``)."""

    def __init__(self, items: list[CutOut], terms: np.ndarray, channels: int):
        self.items, self.terms, self.channels = items, terms, channels
        self.shape = terms.shape[:2]
        self.visits = 0

    def windows(self):
        for i, item in enumerate(self.items):
            self.visits += 1
            ys, xs = item.window()
            yield i, (ys, xs), self.terms[ys, xs]

    def _sums(self, keeps, values) -> tuple[np.ndarray, np.ndarray]:
        """Sums over the grid of ``values(i, t)`` on each image's kept pixels, and their count."""
        total = np.zeros((*self.shape, self.channels))
        count = np.zeros(self.shape)
        for i, win, t in self.windows():
            total[win] += np.where(keeps[i][..., None], values(i, t), 0.0)
            count[win] += keeps[i]
        return total, count

    def drop_lonely(self, keeps: list[np.ndarray], min_overlap: int) -> list[np.ndarray]:
        """``keeps`` with every image that shares fewer than ``min_overlap`` kept pixels with
        the others emptied (it is then neither fitted nor part of any consensus). Judged once:
        an image left short by another's removal is still solved, on what it shares."""
        _, count = self._sums(keeps, lambda i, t: 0.0)
        return [keeps[i] & (np.count_nonzero(keeps[i] & (count[win] > 1)) >= min_overlap)
                for i, win, _ in self.windows()]

    def _apply(self, keeps, coeffs, count) -> np.ndarray:
        """Normal matrix times ``coeffs``: per image Σ_p t_p (n_p S_i − Σ_j S_j) on its pixels."""
        total, _ = self._sums(keeps, lambda i, t: t @ coeffs[i])
        out = np.zeros_like(coeffs)
        for i, win, t in self.windows():
            k = keeps[i]
            out[i] = t[k].T @ (count[win][k][:, None] * (t[k] @ coeffs[i]) - total[win][k])
        return out

    def solve(self, keeps, start: np.ndarray, max_iterations: int, tolerance: float):
        """Preconditioned conjugate gradients from ``start`` (each channel its own system)."""
        images, count = self._sums(keeps, lambda i, t: self.items[i].image)
        rhs = np.zeros_like(start)
        blocks = np.zeros((len(self.items), start.shape[1], start.shape[1]))
        for i, win, t in self.windows():
            k = keeps[i]
            tk, n = t[k], count[win][k][:, None]
            rhs[i] = tk.T @ (n * self.items[i].image[k] - images[win][k])
            blocks[i] = tk.T @ ((n - 1.0) * tk)       # the image's own block of the normal matrix
        inverse = np.stack([np.linalg.pinv(b) for b in blocks])
        coeffs = start.copy()
        residual = rhs - self._apply(keeps, coeffs, count)
        z = inverse @ residual
        direction = z.copy()
        rz = np.einsum("itc,itc->c", residual, z)
        first = np.sqrt(np.abs(rz))
        steps = 0
        while steps < max_iterations and np.any(np.sqrt(np.abs(rz)) > tolerance * np.maximum(first, 1e-300)):
            product = self._apply(keeps, direction, count)
            curvature = np.einsum("itc,itc->c", direction, product)
            alpha = np.divide(rz, curvature, out=np.zeros_like(rz), where=curvature > 0)
            coeffs += alpha * direction
            residual -= alpha * product
            z = inverse @ residual
            rz_next = np.einsum("itc,itc->c", residual, z)
            beta = np.divide(rz_next, rz, out=np.zeros_like(rz), where=rz > 0)
            direction = z + beta * direction
            rz = rz_next
            steps += 1
        return coeffs, steps

    def clip(self, usable, keeps, coeffs, kappa: float) -> list[np.ndarray]:
        """Per image, its usable pixels whose residual against the mean of the other images
        there lies within ``kappa`` robust sigmas of the residuals it kept this round.

        The mean is over every usable pixel of the others, kept or not (as each pair's
        residual is judged in :func:`match_surfaces`): judged against the kept ones only, a
        pixel that every image drops would have no others, come back, and the rounds would
        alternate between two masks.
        """
        corrected, count = self._sums(usable, lambda i, t: self.items[i].image - t @ coeffs[i])
        out = []
        for i, win, t in self.windows():
            own = self.items[i].image - t @ coeffs[i]
            others = count[win] - usable[i]
            with np.errstate(invalid="ignore", divide="ignore"):
                residual = own - (corrected[win] - np.where(usable[i][..., None], own, 0.0)) / others[..., None]
            judged = keeps[i] & (others > 0)
            out.append(usable[i] & ((others == 0) | _within_kappa(residual, judged, kappa)))
        return out


def _zero_mean_per_group(coeffs: np.ndarray, solver: _Consensus, keeps: list[np.ndarray]) -> np.ndarray:
    """``coeffs`` (images, n_terms, C) shifted to sum to zero over each group of images linked by
    shared kept pixels (one pass over the grid: each pixel remembers the last image seen there,
    which is linked to every image before it); images without kept pixels get zero."""
    links = UnionFind(len(keeps))
    last = np.full(solver.shape, -1, dtype=np.int64)
    for i, win, _ in solver.windows():
        seen = last[win][keeps[i]]
        for j in np.unique(seen[seen >= 0]):
            links.union(int(j), i)
        last[win][keeps[i]] = i
    coeffs = coeffs.copy()
    groups: dict[int, list[int]] = {}
    for i, keep in enumerate(keeps):
        if keep.any():
            groups.setdefault(links.find(i), []).append(i)
        else:
            coeffs[i] = 0.0
    for members in groups.values():
        coeffs[members] -= coeffs[members].mean(axis=0)
    return coeffs


def _within_kappa(residual: np.ndarray, where: np.ndarray, kappa: float) -> np.ndarray:
    """True where every channel of ``residual`` lies within ``kappa`` robust sigmas of its
    median over ``where`` (all True when ``where`` holds too few pixels to judge)."""
    r = residual[where]
    if len(r) < 10:
        return np.ones(residual.shape[:2], dtype=bool)
    centre = np.median(r, axis=0)
    sigma = mad_sigma(r, centre, axis=0)
    with np.errstate(invalid="ignore"):
        return np.all(np.abs(residual - centre) <= kappa * np.maximum(sigma, 1e-12), axis=-1)


def _pair_samples(a: CutOut, b: CutOut, exclude, step, max_samples, order, extent):
    """(terms (n, n_terms), a − b (n, C)) on the pixels two cut-outs share, or None."""
    ay, ax = a.origin
    by, bx = b.origin
    y0, x0 = max(ay, by), max(ax, bx)
    y1 = min(ay + a.image.shape[0], by + b.image.shape[0])
    x1 = min(ax + a.image.shape[1], bx + b.image.shape[1])
    if y1 <= y0 or x1 <= x0:
        return None
    va = a.image[y0 - ay:y1 - ay:step, x0 - ax:x1 - ax:step]
    vb = b.image[y0 - by:y1 - by:step, x0 - bx:x1 - bx:step]
    use = (np.isfinite(va).all(axis=-1) & np.isfinite(vb).all(axis=-1)
           & (a.weight[y0 - ay:y1 - ay:step, x0 - ax:x1 - ax:step] > 0)
           & (b.weight[y0 - by:y1 - by:step, x0 - bx:x1 - bx:step] > 0))
    if exclude is not None:
        use &= ~exclude[y0:y1:step, x0:x1:step]
    rows, cols = np.nonzero(use)
    if rows.size > max_samples:  # an even thinning keeps the solve small on big overlaps
        pick = np.linspace(0, rows.size - 1, max_samples).astype(int)
        rows, cols = rows[pick], cols[pick]
    terms = poly_terms(x0 + cols * step, y0 + rows * step, order, extent)
    return terms, (va[rows, cols] - vb[rows, cols]).astype(np.float64)


def fit_common_sky(
    image: np.ndarray, weight: np.ndarray, *, order: int, extent, passes: int = 6,
    source_sigma: float = 2.0, source_grow: int = 0, basis: np.ndarray | None = None,
) -> np.ndarray:
    """Coefficients ``(C, n_terms)`` of the sky surface an assembled mosaic still holds.

    Matching images against one another leaves the surface they all share (light pollution
    on the same side of every frame). It is fitted here on the assembled (binned) mosaic,
    with sources left out asymmetrically: pixels more than ``source_sigma`` robust sigmas
    ABOVE the current surface are masked and stay masked (stars, nebulae and galaxy halos are
    positive; the sky is what lies under them), so extended emission grows out of the fit
    pass after pass instead of being fitted away. ``source_grow`` widens each pass's new
    sources by that many pixels: a galaxy's halo and a star's wings go on below the clip.
    ``basis`` restricts the surfaces fitted (:func:`zdask.ops.background.fit_surface`).
    """
    img = image if image.ndim == 3 else image[..., None]
    valid = (weight > 0) & np.isfinite(img).all(axis=-1)
    # Sources are judged on the channel sum: a galaxy is positive in every channel.
    total = np.where(valid, img.sum(axis=-1), np.nan)
    excluded = ~valid
    coeffs = np.zeros((img.shape[-1], n_terms(order)))
    for _ in range(passes):
        # Every other pixel each way: a quarter of a million samples of a binned mosaic still
        # fix a low-order surface, and each pass took 0.5 s on all of them.
        fit = fit_surface(np.where(excluded[..., None], np.nan, img), order=order, extent=extent, step=2,
                          basis=basis)
        coeffs = fit.coeffs
        model = Surface(coeffs, order, fit.extent, fit.n_used).evaluate(img.shape[:2]).sum(axis=-1)
        residual = total - model
        kept = residual[~excluded]
        if kept.size < 10 * (n_terms(order) if basis is None else basis.shape[1]):
            break
        kept = kept[::max(1, kept.size // (1 << 18))]  # centre and σ from a strided sample
        centre = np.median(kept)
        sigma = mad_sigma(kept, centre)
        grown = excluded | (valid & (residual > centre + source_sigma * sigma))
        if source_grow:
            grown = excluded | (valid & ndimage.binary_dilation(grown & ~excluded, iterations=source_grow))
        if grown.sum() == excluded.sum():
            break
        excluded = grown
    return coeffs

import numpy as np
import pytest

from zdask.ops.background import Surface, fit_surface, n_terms, pad_order, poly_terms, star_mask


def test_poly_terms_columns_and_normalisation():
    x = np.array([10.0, 30.0, 50.0])
    y = np.array([0.0, 100.0, 200.0])
    ext = (0.0, 200.0, 10.0, 50.0)
    np.testing.assert_array_equal(poly_terms(x, y, 0, ext), np.ones((3, 1)))
    u, v = np.array([-1.0, 0.0, 1.0]), np.array([-1.0, 0.0, 1.0])
    np.testing.assert_allclose(poly_terms(x, y, 1, ext), np.stack([np.ones(3), u, v], 1))
    np.testing.assert_allclose(poly_terms(x, y, 2, ext),
                               np.stack([np.ones(3), u, v, u * u, u * v, v * v], 1))
    assert poly_terms(x, y, 3, ext).shape == (3, n_terms(3)) == (3, 10)
    with pytest.raises(ValueError, match="order"):
        poly_terms(x, y, 4, ext)
    with pytest.raises(ValueError, match="extent"):
        poly_terms(x, y, 1, (5.0, 0.0, 0.0, 1.0))


def _quadratic(coeffs, shape, offset, extent):
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    a = poly_terms(xx + offset[1], yy + offset[0], 2, extent)
    return (a @ np.asarray(coeffs).T).reshape(h, w, -1)


def test_fit_surface_recovers_planted_quadratic_through_holes_masks_and_outliers():
    extent = (0.0, 299.0, 0.0, 399.0)  # a canvas; the block is a cut-out at an offset
    offset = (50, 120)
    truth = np.array([[5.0, 2.0, -3.0, 1.0, 0.5, -0.7], [-1.0, 0.0, 4.0, 0.0, 0.0, 2.0]])
    diff = _quadratic(truth, (120, 160), offset, extent)
    diff[10:30, 10:30] = np.nan
    mask = np.zeros((120, 160), bool)
    mask[60:80, 100:140] = True
    diff[60:80, 100:140] += 1e4  # masked stars
    rng = np.random.default_rng(0)
    ys, xs = rng.integers(0, 30, 40) * 4, rng.integers(0, 40, 40) * 4
    diff[ys, xs] += 500.0  # unmasked outliers on the sampling grid: clipped
    s = fit_surface(diff, order=2, mask=mask, extent=extent, offset=offset, step=4)
    np.testing.assert_allclose(s.coeffs, truth, atol=1e-9)
    assert s.n_used.min() > 0
    # Evaluation elsewhere on the canvas follows the same coordinates.
    other = s.evaluate((40, 50), offset=(200, 300))
    np.testing.assert_allclose(other, _quadratic(truth, (40, 50), (200, 300), extent), atol=1e-4)
    assert other.dtype == np.float32


def test_fit_surface_default_extent_and_unfittable_channel():
    diff = np.zeros((64, 64, 2), np.float32)
    diff[..., 0] = 3.0
    diff[..., 1] = np.nan
    s = fit_surface(diff, order=1)
    np.testing.assert_allclose(s.coeffs[0], [3.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_array_equal(s.coeffs[1], 0.0)
    assert s.n_used[1] == 0 and s.extent == (0.0, 63.0, 0.0, 63.0)
    with pytest.raises(ValueError, match="step"):
        fit_surface(diff, step=0)


def _point_sources(shape, positions, amp=200.0, sigma=1.2):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    out = np.zeros(shape)
    for y, x in positions:
        out += amp * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))
    return out


def test_star_mask_flags_points_but_not_extended_emission():
    rng = np.random.default_rng(1)
    shape = (200, 240)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    blob = 60 * np.exp(-((xx - 120) ** 2 + (yy - 100) ** 2) / (2 * 35 ** 2))
    stars = [(30, 30), (100, 120), (150, 60), (60, 200), (170, 210), (90, 90)]
    img = 100 + blob + _point_sources(shape, stars) + rng.normal(0, 1.0, shape)
    rgb = np.repeat(img[:, :, None], 3, axis=2).astype(np.float32)
    m = star_mask(rgb, kappa=3.0, grow_px=3)
    assert m.dtype == bool and m.shape == shape
    assert all(m[y, x] for y, x in stars)
    near_star = _point_sources(shape, stars, amp=1.0, sigma=6.0) > 1e-3
    core = (np.hypot(xx - 120, yy - 100) < 60) & ~near_star
    empty = (blob < 0.5) & ~near_star
    m0 = star_mask(rgb, kappa=3.0, grow_px=0)
    # Only 3-sigma noise peaks are flagged on the blob, about as often as on empty sky.
    assert m0[core].mean() < 0.01 and m0[empty].mean() < 0.01
    assert m[core].mean() < m[empty].mean() + 0.06
    # grow_px widens the flags around each star.
    assert m.sum() > m0.sum() and not m0[30, 35] and m[30, 32]


def _mosaic(frames, offsets, width, skip=None):
    acc = np.zeros((frames[0].shape[0], width))
    n = np.zeros_like(acc)
    for k, (f, x0) in enumerate(zip(frames, offsets)):
        if k != skip:
            acc[:, x0:x0 + f.shape[1]] += f
            n[:, x0:x0 + f.shape[1]] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return acc / n


def test_fitting_against_the_other_frames_keeps_the_galaxy_halo():
    """Six overlapping frames of one sky with a big galaxy, each with its own plane gradient.

    Fitting each frame's plane to ``frame − (mean of the other corrected frames)`` removes the
    frame-to-frame gradients and keeps the galaxy; fitting a plane to each frame itself (stars
    masked), the usual per-frame background subtraction, removes part of the halo.
    """
    rng = np.random.default_rng(7)
    h, w, fw = 160, 320, 200
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    ell = ((xx - 160) / 40) ** 2 + ((yy - 80) / 25) ** 2
    galaxy = 40 * np.exp(-ell / 2)
    stars = list(zip(rng.integers(4, h - 4, 40), rng.integers(4, w - 4, 40)))
    sky = 100 + galaxy + _point_sources((h, w), stars, amp=300.0)
    offsets = np.linspace(0, w - fw, 6).astype(int)
    fy, fx = np.mgrid[0:h, 0:fw].astype(float)
    planes = [a + b * (2 * fx / (fw - 1) - 1) + c * (2 * fy / (h - 1) - 1)
              for a, b, c in rng.uniform(-15, 15, (6, 3))]
    frames = [sky[:, x0:x0 + fw] + p + rng.normal(0, 0.5, (h, fw)) for x0, p in zip(offsets, planes)]

    def galaxy_flux(img):
        # Aperture sum above a plane fitted outside the galaxy, identical for every method.
        inside, ext = ell < 9, (0, h - 1, 0, w - 1)
        beta = np.linalg.lstsq(poly_terms(xx[~inside], yy[~inside], 1, ext), img[~inside], rcond=None)[0]
        return float((img - (poly_terms(xx, yy, 1, ext) @ beta).reshape(h, w))[inside].sum())

    truth = galaxy_flux(sky)

    # Against the other frames: a few Gauss-Seidel passes, since frames overlap only partly.
    surfaces = [np.zeros((h, fw)) for _ in frames]
    for _ in range(5):
        for k, (f, x0) in enumerate(zip(frames, offsets)):
            others = _mosaic([g - s for g, s in zip(frames, surfaces)], offsets, w, skip=k)
            surfaces[k] = fit_surface(f - others[:, x0:x0 + fw], order=1).evaluate((h, fw))[..., 0]
    kept = galaxy_flux(_mosaic([f - s for f, s in zip(frames, surfaces)], offsets, w)) / truth

    # Frame-to-frame gradient differences: spread across the frames covering each sky pixel.
    def spread(per_frame):
        stack = np.full((len(per_frame), h, w), np.nan)
        for k, (p, x0) in enumerate(zip(per_frame, offsets)):
            stack[k][:, x0:x0 + fw] = p
        return float(np.nanmean(np.nanstd(stack, axis=0)))

    residual = spread([p - s for p, s in zip(planes, surfaces)])
    planted = spread(planes)

    # The usual way: a plane fitted to each frame itself, stars masked.
    self_fit = [f - fit_surface(f, order=1, mask=star_mask(f)).evaluate((h, fw))[..., 0] for f in frames]
    kept_self = galaxy_flux(_mosaic(self_fit, offsets, w)) / truth

    assert 0.97 <= kept <= 1.03  # >= 95 % of the galaxy flux kept, none invented
    assert residual < 0.01 * planted
    assert kept_self < 0.92  # a measurable part of the halo is gone
    assert (1 - kept_self) > abs(1 - kept) + 0.05


def test_fit_surface_with_a_basis_fits_only_the_surfaces_it_spans():
    # a plane plus a multiple of one quadratic shape, and a quadratic outside that family
    h, w = 60, 80
    extent = (0.0, h - 1.0, 0.0, w - 1.0)
    yy, xx = np.mgrid[0:h, 0:w]
    terms = poly_terms(xx.ravel(), yy.ravel(), 2, extent)
    shape = np.array([0.0, 0.0, 0.0, 0.36, 0.96, 0.64])          # (0.6 u + 0.8 v)²
    basis = np.zeros((6, 4))
    basis[:3, :3], basis[:, 3] = np.eye(3), shape
    planted = basis @ np.array([3.0, 1.0, -2.0, 5.0])
    image = (terms @ planted).reshape(h, w, 1)
    fit = fit_surface(image, order=2, extent=extent, step=1, basis=basis)
    np.testing.assert_allclose(fit.coeffs[0], planted, atol=1e-9)
    # a curvature across the shape's axis is not in the family: none of it is taken for it
    across = np.array([0.0, 0.0, 0.0, 0.64, -0.96, 0.36])        # (0.8 u - 0.6 v)²
    image = (terms @ (planted + 4.0 * across)).reshape(h, w, 1)
    fit = fit_surface(image, order=2, extent=extent, step=1, basis=basis, iterations=1)
    assert np.abs(fit.coeffs[0, 3:] - planted[3:]).max() < np.abs(4.0 * across[3:]).max()
    assert fit.coeffs.shape == (1, n_terms(2))


def test_pad_order_keeps_the_surface():
    plane = np.array([[1.0, 2.0, -3.0]])
    padded = pad_order(plane, 1, 2)
    extent = (0.0, 299.0, 0.0, 299.0)
    a = Surface(plane, 1, extent, np.zeros(1)).evaluate((20, 30), offset=(5, 7))
    b = Surface(padded, 2, extent, np.zeros(1)).evaluate((20, 30), offset=(5, 7))
    assert np.allclose(a, b)

import numpy as np
import pytest

from zdask.ops.crop import autocrop_box


def test_box_is_the_tight_bound_of_covered_pixels():
    cov = np.full((50, 80), np.nan, np.float32)
    cov[10:20, 30:35] = 2
    cov[25, 60] = 1
    cov[40, 5] = 0.5  # below min_coverage
    box = autocrop_box(cov)
    assert box == (10, 26, 30, 61)
    y0, y1, x0, x1 = box
    inner = np.nan_to_num(cov[y0:y1, x0:x1]) >= 1
    assert inner.sum() == (np.nan_to_num(cov) >= 1).sum()
    assert inner[0].any() and inner[-1].any() and inner[:, 0].any() and inner[:, -1].any()
    assert autocrop_box(cov, min_coverage=0.5) == (10, 41, 5, 61)
    assert autocrop_box(cov, min_coverage=2) == (10, 20, 30, 35)


def test_margin_is_clipped_to_the_array():
    cov = np.zeros((30, 40), np.float32)
    cov[2:28, 10:20] = 1
    assert autocrop_box(cov, margin=5) == (0, 30, 5, 25)


def test_nothing_covered_and_bad_parameters():
    assert autocrop_box(np.zeros((5, 5), np.float32)) is None
    assert autocrop_box(np.full((5, 5), np.nan, np.float32)) is None
    with pytest.raises(ValueError, match="min_coverage"):
        autocrop_box(np.ones((5, 5)), min_coverage=0)
    with pytest.raises(ValueError, match="margin"):
        autocrop_box(np.ones((5, 5)), margin=-1)
    with pytest.raises(ValueError, match="coverage"):
        autocrop_box(np.ones(5))

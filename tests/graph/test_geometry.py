import numpy as np
import pytest

from zdask.graph.geometry import Grid, covering_grid, footprint_outline, grid_bbox_of, tan_header


def test_covering_grid_contains_every_outline_point_with_margin():
    grids = [Grid(tan_header(10.0 + 0.1 * i, 41.0 - 0.05 * i, 2.4, (60.5, 40.5)), (80, 120)) for i in range(3)]
    outlines = [footprint_outline(g.wcs(), g.shape) for g in grids]
    cover = covering_grid(outlines, 2.4, margin=4)
    x, y = cover.wcs().all_world2pix(np.concatenate([o[0] for o in outlines]),
                                     np.concatenate([o[1] for o in outlines]), 0)
    h, w = cover.shape
    assert x.min() >= 3.5 and y.min() >= 3.5 and x.max() <= w - 4.5 and y.max() <= h - 4.5


def test_same_grid_maps_onto_itself_pixel_for_pixel():
    g = Grid(tan_header(200.0, -30.0, 1.5, (50.5, 25.5)), (50, 100))
    cover = covering_grid([footprint_outline(g.wcs(), g.shape)], 1.5, centre=(200.0, -30.0))
    # The covering grid of one north-up grid at its own centre is that grid shifted by whole pixels.
    assert cover.shape in {(50, 100), (51, 101)}
    assert grid_bbox_of(g, cover) == (0, cover.shape[0], 0, cover.shape[1])


def test_disjoint_grid_has_no_bbox():
    a = Grid(tan_header(10.0, 41.0, 2.4, (10.5, 10.5)), (20, 20))
    b = Grid(tan_header(11.0, 41.0, 2.4, (10.5, 10.5)), (20, 20))
    assert grid_bbox_of(a, b) is None


def test_footprints_beyond_a_hemisphere_are_refused_not_sized_by_nan():
    """A footprint 90° or more from the grid's centre has no TAN pixel: it used to make the
    canvas size NaN ("cannot convert float NaN to integer")."""
    near = [Grid(tan_header(10.0 + 0.1 * i, 41.0, 2.4, (60.5, 40.5)), (80, 120)) for i in range(2)]
    south = Grid(tan_header(200.0, -30.0, 2.4, (60.5, 40.5)), (80, 120))
    outlines = [footprint_outline(g.wcs(), g.shape) for g in [*near, south]]
    with pytest.raises(ValueError, match="90° or more from the grid centre"):
        covering_grid(outlines, 2.4)
    cover = covering_grid(outlines[:2], 2.4)
    assert grid_bbox_of(south, cover) is None

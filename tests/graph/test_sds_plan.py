"""SDS lot planner on planted footprints: exact lots, mount modes kept apart, the last-lot merge."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

from zdask.graph.geometry import Grid, footprint_outline, tan_header
from zdask.graph.sds_plan import footprint_cells, footprint_mask, lots_json, plan_lots, summarize_lots
from zdask.io.fitsheader import wcs_from_header
from zdask.io.scan import MOUNT_ALTAZ, MOUNT_EQ, MOUNT_UNKNOWN, Frame

SCALE = 2.0  # arcsec / px
CANVAS = Grid(tan_header(10.0, 40.0, SCALE, (0.5, 0.5)), (100, 200))

# Footprints on the canvas (the canvas's own tangent point and scale: frame pixel (x, y) is canvas
# pixel (x + dx, y)): the left half, the right half, 95 % of the canvas.
LEFT, RIGHT, MOST = ((100, 100), 0), ((100, 100), 100), ((100, 190), 0)


def frame(i: int, footprint, mount=MOUNT_EQ) -> Frame:
    (h, w), dx = footprint
    return Frame(path=f"f{i:03d}.fits", hdu=0, height=h, width=w, layout="rgb", bayer=None, dtype="float32",
                 wcs_header=tan_header(10.0, 40.0, SCALE, (0.5 - dx, 0.5)), scale_arcsec=SCALE, ra_deg=10.0,
                 dec_deg=40.0, fov_deg=(w * SCALE / 3600, h * SCALE / 3600), time_mjd=60000.0 + i,
                 exptime_s=10.0, mount=mount, size_bytes=1, mtime_ns=1)


def test_footprint_cells_are_exactly_the_pixels_inside_the_frame():
    left = footprint_cells(frame(0, LEFT).wcs_header, (100, 100), CANVAS)
    expected = (np.arange(100)[:, None] * 200 + np.arange(100)[None, :]).ravel()
    np.testing.assert_array_equal(np.sort(left), expected)
    # On a canvas wider than 512 px the cells are 2 px: the right half of a 1000 px canvas.
    wide = Grid(tan_header(10.0, 40.0, SCALE, (0.5, 0.5)), (100, 1000))
    right = footprint_cells(tan_header(10.0, 40.0, SCALE, (0.5 - 500, 0.5)), (100, 500), wide)
    np.testing.assert_array_equal(np.sort(right), (np.arange(50)[:, None] * 500 + np.arange(250, 500)).ravel())


def rotated_header(angle_deg: float, dx: float, dy: float) -> dict:
    """A TAN header of the canvas's tangent point, rotated by ``angle_deg``, its reference pixel
    moved by (dx, dy)."""
    header = tan_header(10.0, 40.0, SCALE, (0.5 + dx, 0.5 + dy))
    a = np.radians(angle_deg)
    s = SCALE / 3600.0
    header.update(CD1_1=-s * np.cos(a), CD1_2=s * np.sin(a), CD2_1=s * np.sin(a), CD2_2=s * np.cos(a))
    for key in ("CDELT1", "CDELT2", "PC1_1", "PC1_2", "PC2_1", "PC2_2", "CROTA2"):
        header.pop(key, None)
    return header


def even_odd_cells(header: dict, shape: tuple[int, int], canvas: Grid) -> np.ndarray:
    """The reference: every cell centre of a 1-px cell canvas tested against every edge of the
    frame's outline by the even-odd rule (cells × edges)."""
    ra, dec = footprint_outline(wcs_from_header(header), shape)
    u, v = canvas.wcs().all_world2pix(ra, dec, 0)
    jj, ii = np.meshgrid(np.arange(canvas.shape[1], dtype=float), np.arange(canvas.shape[0], dtype=float))
    inside = np.zeros(jj.shape, dtype=bool)
    for k in range(u.size):
        ua, va, ub, vb = u[k], v[k], u[k - 1], v[k - 1]
        if va != vb:
            inside ^= ((va > ii) != (vb > ii)) & (jj < ua + (ii - va) * (ub - ua) / (vb - va))
    return inside


@pytest.mark.parametrize("angle, dx, dy", [(0.0, 30.0, 20.0), (17.0, 40.0, -10.0), (-63.5, 120.0, 35.0),
                                           (90.0, 50.0, 120.0)])
def test_footprint_mask_is_the_even_odd_rule_on_every_cell_centre(angle, dx, dy):
    header = rotated_header(angle, dx, dy)
    mask = footprint_mask(header, (60, 90), CANVAS)
    assert mask.shape == CANVAS.shape
    np.testing.assert_array_equal(mask, even_odd_cells(header, (60, 90), CANVAS))
    assert 0 < mask.sum() < mask.size  # a rotated frame partly on the canvas: both kinds of cells


def test_planner_memory_does_not_grow_with_the_frames():
    """The planner keeps a few coarse grids, not one per frame: its peak allocation for 200
    frames stays within a few grids (one grid of this canvas is 160 kB; keeping every frame's
    cells, as int64 indices, would take 250 MB)."""
    canvas = Grid(tan_header(10.0, 40.0, SCALE, (0.5, 0.5)), (400, 400))
    frames = [frame(i, ((380, 380), i % 7)) for i in range(200)]
    tracemalloc.start()
    try:
        lots = plan_lots(frames, canvas)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [len(lot.frames) for lot in lots] == [5] * 40
    assert peak < 16 * 400 * 400


def test_planted_layout_gives_exact_lots():
    layout = [LEFT, LEFT, LEFT, RIGHT, LEFT]   # covers the field at its 5th frame: closes
    layout += [LEFT] * 10                        # never more than half the field: closes at 10
    layout += [RIGHT, MOST, MOST, MOST, MOST]    # full coverage at its 2nd frame, but 5 are needed
    layout += [MOST, MOST]                       # a tail of 2 < 5: joins the lot before it
    frames = [frame(i, fp) for i, fp in enumerate(layout)]
    lots = plan_lots(frames, CANVAS, min_lot_size=5, lot_coverage=0.92, target_lot_size=10)
    assert [lot.frames for lot in lots] == [tuple(range(0, 5)), tuple(range(5, 15)), tuple(range(15, 22))]
    assert [lot.id for lot in lots] == [0, 1, 2]
    assert [lot.coverage for lot in lots] == [1.0, 0.5, 1.0]
    assert {lot.mode for lot in lots} == {MOUNT_EQ}


def test_a_lot_closes_on_coverage_only_at_the_threshold():
    # MOST covers 95 % of the survey (the last frame covers the rest): with lot_coverage 0.96
    # the lots fill to target_lot_size instead.
    frames = [frame(i, MOST) for i in range(11)] + [frame(11, RIGHT)]
    assert [len(lot.frames) for lot in plan_lots(frames, CANVAS, lot_coverage=0.95)] == [5, 7]
    assert [len(lot.frames) for lot in plan_lots(frames, CANVAS, lot_coverage=0.96)] == [12]
    assert [len(lot.frames) for lot in plan_lots(frames, CANVAS, lot_coverage=0.96, target_lot_size=6)] == [6, 6]


def test_no_lot_mixes_mount_modes_and_each_mode_merges_its_own_tail():
    mounts = [MOUNT_EQ, MOUNT_ALTAZ, MOUNT_EQ, MOUNT_EQ, MOUNT_ALTAZ, MOUNT_EQ, MOUNT_UNKNOWN, MOUNT_EQ,
              MOUNT_ALTAZ, MOUNT_EQ, MOUNT_EQ, MOUNT_ALTAZ, MOUNT_EQ, MOUNT_ALTAZ, MOUNT_EQ, MOUNT_ALTAZ]
    frames = [frame(i, MOST, m) for i, m in enumerate(mounts)]
    lots = plan_lots(frames, CANVAS)
    for lot in lots:
        assert {frames[i].mount for i in lot.frames} == {lot.mode}
    assert sorted(i for lot in lots for i in lot.frames) == list(range(len(frames)))
    eq = [i for i, m in enumerate(mounts) if m == MOUNT_EQ]
    altaz = [i for i, m in enumerate(mounts) if m == MOUNT_ALTAZ]
    # EQ: 9 frames = 5 + a tail of 4 that joins; ALT_AZ: 6 = 5 + 1 joined; UNKNOWN: 1 alone.
    assert [(lot.mode, lot.frames) for lot in lots] == [
        (MOUNT_EQ, tuple(eq)), (MOUNT_ALTAZ, tuple(altaz)), (MOUNT_UNKNOWN, (6,))]
    # A mode's coverage is against its own frames' footprints: the lone unknown frame covers it all.
    assert lots[2].coverage == 1.0


def test_a_short_survey_is_one_lot_and_the_lot_json_lists_paths():
    frames = [frame(i, LEFT if i % 2 else RIGHT) for i in range(3)]
    lots = plan_lots(frames, CANVAS)
    assert [lot.frames for lot in lots] == [(0, 1, 2)]
    data = json.loads(json.dumps(lots_json(lots, frames)))
    assert data == {"lots": [{"id": 0, "mode": MOUNT_EQ, "frames": ["f000.fits", "f001.fits", "f002.fits"],
                              "coverage": 1.0}]}
    text = summarize_lots(lots, frames)
    assert "3 frames -> 1 SDS lots" in text and "lot    0" in text


@pytest.mark.parametrize("kwargs, name", [({"min_lot_size": 0}, "min_lot_size"),
                                          ({"target_lot_size": 4}, "target_lot_size"),
                                          ({"lot_coverage": 0.0}, "lot_coverage"),
                                          ({"lot_coverage": 1.5}, "lot_coverage")])
def test_bad_knobs_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        plan_lots([frame(0, LEFT)], CANVAS, **kwargs)

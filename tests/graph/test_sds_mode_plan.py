"""The sds mode's pure parts: its plan on a frame front (no cluster, no pixel read), the sky fit's
window and binning, and a lot's sky surfaces moved from its window onto the canvas."""

from __future__ import annotations

from types import MappingProxyType

import numpy as np

from zdask.config import Config
from zdask.graph.canvas import frames_canvas
from zdask.graph.front import FrameFront, gather_frames
from zdask.graph.geometry import Grid, grid_bbox_of
from zdask.graph.modes import sds
from zdask.graph.sds_plan import plan_lots
from zdask.graph.sds_sky import on_canvas, sky_bin, sky_fit_bytes
from zdask.ops.background import Surface


def _front(survey, excluded: dict[str, str]) -> FrameFront:
    """The survey's frame front as the headers give it (nothing calibrated)."""
    gathered = gather_frames([str(survey / "frames")], Config(), say=lambda text: None)
    empty = MappingProxyType({})
    return FrameFront(gathered.frames, gathered.groups, empty, empty, empty, MappingProxyType(excluded), 3,
                      empty, 0, None, gathered.rejected, gathered.off_field)


def test_the_plan_is_the_lots_of_the_frames_not_excluded_each_with_its_window(small_survey):
    survey, _ = small_survey
    whole = _front(survey, {})
    victim = whole.frames[3].path
    front = _front(survey, {victim: "no signal"})
    config = Config(altaz_cleanup=True)
    canvas = frames_canvas(front, config)
    plan = sds.plan(front, canvas, config)
    assert plan == sds.plan(front, canvas, config)  # a value
    used = [f for f in front.frames if f.path != victim]
    expected = plan_lots(used, canvas.grid, min_lot_size=5, lot_coverage=0.92, target_lot_size=10)
    # the lots index the front's frames; the excluded frame is in none
    assert [[front.frames[i].path for i in job.frames] for job in plan.lots] == \
        [[used[k].path for k in lot.frames] for lot in expected]
    assert [(job.id, job.mode) for job in plan.lots] == [(lot.id, lot.mode) for lot in expected]
    for job in plan.lots:
        assert {front.frames[i].mount for i in job.frames} == {job.mode}
        y0, y1, x0, x1 = job.window
        for i in job.frames:  # every frame's footprint lies inside its lot's window
            f = front.frames[i]
            b = grid_bbox_of(Grid(f.wcs_header, (f.height, f.width)), canvas.grid)
            assert y0 <= b[0] and b[1] <= y1 and x0 <= b[2] and b[3] <= x1
        assert job.sky_bin == config.match_bin  # small windows: the classic binning
    # alt-az cleanup is asked of the ALT_AZ lots only, and the run says it is not done
    assert [job.cleanup for job in plan.lots] == [job.mode == "ALT_AZ" for job in plan.lots]
    assert any("not done in the sds mode" in w for w in plan.warnings)
    assert sds.plan(front, canvas, Config()).warnings == ()


def test_the_sky_fit_bins_more_where_the_window_would_exceed_the_budget():
    window, n, channels = (8000, 12000), 10, 3
    assert sky_bin((500, 600), n, channels, 8, "256MiB") == 8
    factor = sky_bin(window, n, channels, 8, "64MiB")
    assert factor % 8 == 0 and factor > 8
    assert sky_fit_bytes(window, n, channels, factor) <= 64 << 20 < sky_fit_bytes(window, n, channels, factor - 8)


def test_a_surface_fitted_on_a_window_is_the_same_surface_on_the_canvas():
    rng = np.random.default_rng(2)
    coeffs = rng.normal(size=(3, 6))
    extent = (3.5, 203.5, 3.5, 303.5)  # binned_extent of a window binned by 8
    on_window = Surface(coeffs, 2, extent, np.zeros(0))
    moved_coeffs, order, moved_extent = on_canvas((coeffs.tolist(), 2, list(extent)), (40, 25))
    moved = Surface(np.asarray(moved_coeffs), order, tuple(moved_extent), np.zeros(0))
    # the window's pixel (y, x) is the canvas's (y + 40, x + 25)
    np.testing.assert_array_equal(moved.evaluate((120, 90), offset=(40 + 17, 25 + 33)),
                                  on_window.evaluate((120, 90), offset=(17, 33)))

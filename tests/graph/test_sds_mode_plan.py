"""The sds mode's parts without a cluster: its plan on a frame front (pure, no pixel read), the
sky fit's window and binning, and a lot's sky surfaces fitted on its window and moved onto the
canvas (planted skies)."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

import numpy as np

from zdask.config import Config
from zdask.graph.canvas import frames_canvas
from zdask.graph.front import FrameFront, gather_frames
from zdask.graph.canvas import Canvas
from zdask.graph.geometry import Grid, grid_bbox_of, tan_header
from zdask.graph.modes import sds
from zdask.graph.sds_plan import plan_lots
from zdask.graph.sds_sky import lot_skies, lot_window, on_canvas, sky_bin, sky_fit_bytes
from zdask.graph.tiles import TileSource
from zdask.io import store
from zdask.io.scan import MOUNT_EQ
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
    # alt-az cleanup is asked of the ALT_AZ lots only (the survey has some: no warning)
    assert [job.cleanup for job in plan.lots] == [job.mode == "ALT_AZ" for job in plan.lots]
    assert any(job.cleanup for job in plan.lots) and plan.warnings == ()
    assert sds.plan(front, canvas, Config()).warnings == ()
    # asked of a run without any ALT_AZ frame: off for every lot, with classic's warning
    equatorial = dataclasses.replace(front, frames=tuple(dataclasses.replace(f, mount=MOUNT_EQ)
                                                         for f in front.frames))
    plan = sds.plan(equatorial, canvas, config)
    assert plan.lots and not any(job.cleanup for job in plan.lots)
    assert plan.warnings == ("alt-az cleanup requested but no ALT_AZ frames detected: disabled",)


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


def test_a_lots_skies_matched_on_its_window_bring_its_frames_to_one_sky_on_the_canvas(tmp_path):
    """Planted skies: each frame carries its own offset and gradient (in its own pixels). The
    surfaces lot_skies fits on the lot's window, evaluated where the mega-tile's warp evaluates
    them (canvas pixels), leave the frames differing by their noise only."""
    scale, noise = 2.0, 2.0
    canvas = Canvas(Grid(tan_header(10.0, 40.0, scale, (0.5, 0.5)), (260, 360)), scale)
    frame_shape = (120, 176)
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[0:260, 0:360].astype(np.float64)
    truth = np.zeros((260, 360))
    for _ in range(120):  # stars, which the fit must leave out
        x0, y0, flux = rng.uniform(0, 360), rng.uniform(0, 260), rng.uniform(500, 5000)
        truth += flux / (2 * np.pi * 1.5 ** 2) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 1.5 ** 2))
    root = str(tmp_path / "work.zarr")
    group = store.open_store(root)
    shifts = [(100 + int(rng.integers(0, 24)), 70 + int(rng.integers(0, 24))) for _ in range(8)]
    fy, fx = np.mgrid[0:frame_shape[0], 0:frame_shape[1]].astype(np.float64)
    sources, frames = [], []
    for i, (dx, dy) in enumerate(shifts):
        a, b, c = rng.uniform(100, 160), rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1)
        sky = a + b * fx + c * fy
        image = (truth[dy:dy + frame_shape[0], dx:dx + frame_shape[1]] + sky)[..., None] * [1.0, 0.9, 0.8]
        image = (image + rng.normal(0, noise, image.shape)).astype(np.float32)
        store.create_array(group, f"frames/f{i}", image.shape, "float32", (40, frame_shape[1], 3))[:] = image
        store.mark_complete(root, f"frames/f{i}", f"fp{i}")
        sources.append(TileSource(root, f"f{i}", f"fp{i}", tan_header(10.0, 40.0, scale, (0.5 - dx, 0.5 - dy)),
                                  frame_shape))
        frames.append(image)
    window = lot_window([s.wcs_header for s in sources], [frame_shape] * len(sources), canvas.grid)
    assert window[0] >= 60 and window[2] >= 90  # a window well inside the canvas
    matched = lot_skies(sources, canvas.grid, window, 4, 1)
    # the pixels every frame covers, in canvas coordinates
    y0, x0 = max(dy for _, dy in shifts), max(dx for dx, _ in shifts)
    y1 = min(dy for _, dy in shifts) + frame_shape[0]
    x1 = min(dx for dx, _ in shifts) + frame_shape[1]
    before, after = [], []
    for src, image, (dx, dy) in zip(matched, frames, shifts):
        coeffs, order, extent = src.sky
        surface = Surface(np.asarray(coeffs), order, tuple(extent), np.zeros(0)).evaluate((y1 - y0, x1 - x0), (y0, x0))
        part = image[y0 - dy:y1 - dy, x0 - dx:x1 - dx]
        before.append(part)
        after.append(part - surface)
    spread_before = np.median(np.std(before, axis=0))
    spread_after = np.median(np.std(after, axis=0))
    assert spread_before > 5 * noise and spread_after < 1.3 * noise, (spread_before, spread_after)

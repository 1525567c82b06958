"""The grid planner: cell geometry and frame-to-cell assignment, exact on planted footprints;
max_cells; the blend's partition of unity; the grid mode's plan of a real survey's headers."""

from __future__ import annotations

from types import MappingProxyType

import numpy as np
import pytest

from zdask.config import Config
from zdask.graph.canvas import frames_canvas
from zdask.graph.errors import RunError
from zdask.graph.front import FrameFront, gather_frames
from zdask.graph.grid_plan import _touching, blend_profile, cell_size, intervals, plan_grid
from zdask.graph.modes import grid


def _box(x0, y0, x1, y1):
    """Corners of the pixels x0..x1-1, y0..y1-1 (pixel edges)."""
    return np.array([[x0 - 0.5, y0 - 0.5], [x1 - 0.5, y0 - 0.5], [x1 - 0.5, y1 - 0.5], [x0 - 0.5, y1 - 0.5]])


def test_cell_size_and_raster_are_the_documented_arithmetic():
    assert cell_size(100, 1.0, 0.4, align=8) == (104, 64)      # 100 → 104 (multiple of 8), 104·0.6 → 64
    assert cell_size(10, 1.0, 0.4, align=1) == (32, 19)        # at least 32 px
    assert intervals(300, 104, 64) == ((0, 104), (64, 168), (128, 232), (192, 296), (256, 300))
    assert intervals(50, 104, 64) == ((0, 50),)


def test_assignment_is_exact_on_planted_footprints():
    # canvas 300 x 400; cells of 104 px every 64 px: rows start 0, 64, ..., 256; columns 0, ..., 320
    frames = [_box(0, 0, 100, 50),          # columns 0-1 (x up to 99 < 128), row 0 only (y < 64)
              _box(130, 70, 140, 80),       # x 130-139: columns 1 (64-167) and 2 (128-231); y 70-79: rows 0, 1
              _box(399, 299, 400, 300),     # the last pixel: last row and column only
              _box(500, 500, 510, 510)]     # off the canvas: no cell
    layout = plan_grid(frames, [100.0] * 4, (300, 400), cell_fov_factor=1.0, cell_overlap=0.4, max_cells=100, align=8)
    assert (layout.side, layout.step) == (104, 64)
    members = {(c.row, c.col): set(c.frames) for c in layout.cells if c.frames}
    expected = {(0, 0): {0}, (0, 1): {0, 1}, (0, 2): {1}, (1, 1): {1}, (1, 2): {1}, (4, 5): {2}}
    assert members == expected
    assert len(layout.cells) == 5 * 6 and layout.summary()["empty_cells"] == 30 - len(expected)


def test_a_rotated_footprint_touches_only_the_cells_its_area_reaches():
    # a diamond centred at (200, 150) with half-diagonal 60: its bounding box meets the cells
    # around it, but the corner cells of that box only by the box, not by the diamond
    c, r = np.array([200.0, 150.0]), 60.0
    diamond = np.array([c + (0, -r), c + (r, 0), c + (0, r), c + (-r, 0)])
    layout = plan_grid([diamond], [100.0], (300, 400), cell_fov_factor=1.0, cell_overlap=0.4, max_cells=100, align=8)
    got = {(cell.row, cell.col) for cell in layout.cells if cell.frames}
    # brute force: a cell touches the diamond when some point of the cell lies strictly inside it
    expected = set()
    for cell in layout.cells:
        y0, y1, x0, x1 = cell.box
        ys, xs = np.mgrid[y0 - 0.5:y1 - 0.5:0.25, x0 - 0.5:x1 - 0.5:0.25]
        if (np.abs(xs - c[0]) + np.abs(ys - c[1]) < r - 1e-6).any():
            expected.add((cell.row, cell.col))
    assert got == expected
    # the diamond's bounding box: x 140..260, y 90..210
    bbox_cells = {(cell.row, cell.col) for cell in layout.cells
                  if cell.box[0] - 0.5 < 210 and cell.box[1] - 0.5 > 90
                  and cell.box[2] - 0.5 < 260 and cell.box[3] - 0.5 > 140}
    assert got < bbox_cells  # the separating-axis test dropped bounding-box-only cells


def test_the_index_finds_what_an_exhaustive_test_finds():
    rng = np.random.default_rng(4)
    quads = []
    for _ in range(60):
        centre = rng.uniform(-50, 450, 2)
        angle = rng.uniform(0, np.pi)
        half = rng.uniform(5, 120, 2)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        quads.append(centre + np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half @ rot.T)
    layout = plan_grid(quads, [80.0] * len(quads), (300, 400), cell_fov_factor=1.0, cell_overlap=0.55,
                       max_cells=1000, align=4)
    boxes = np.array([c.box for c in layout.cells])
    for f, quad in enumerate(quads):
        exhaustive = set(np.flatnonzero(_touching(quad, boxes)).tolist())
        assert {c.id for c in layout.cells if f in c.frames} == exhaustive


def test_max_cells_is_refused_naming_the_option():
    with pytest.raises(RunError, match=r"grid plan of 30 cells .*grid\.max_cells = 29.*--grid-max-cells"):
        plan_grid([_box(0, 0, 10, 10)], [100.0], (300, 400), cell_fov_factor=1.0, cell_overlap=0.4, max_cells=29,
                  align=8)


def test_the_blend_profiles_are_a_partition_of_unity_falling_to_zero_at_shared_edges():
    spans = intervals(300, 104, 64)
    profiles = blend_profile(spans, 300)
    total = np.zeros(300)
    for (a, b), p in zip(spans, profiles):
        total[a:b] += p
        assert (p > 0).all()
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    first, second = profiles[0], profiles[1]
    assert first[0] == pytest.approx(1.0) and first[-1] < 0.01     # canvas edge kept, shared edge ~0
    assert second[0] < 0.01 and np.all(np.diff(second[:40]) > 0)   # rises smoothly from the shared edge


def test_the_grid_mode_plans_every_frame_of_a_survey_into_cells(small_survey):
    survey, _ = small_survey
    gathered = gather_frames([str(survey / "frames")], Config(), say=lambda text: None)
    empty = MappingProxyType({})
    front = FrameFront(gathered.frames, gathered.groups, empty, empty, empty, empty, 3, empty, 0, None,
                       gathered.rejected, gathered.off_field)
    config = Config(mode="grid").replace(**{"grid.cell_fov_factor": 1.0})
    canvas = frames_canvas(front, config)
    plan = grid.plan(front, canvas, config)
    assert plan == grid.plan(front, canvas, config)
    placed = {i for c in plan.layout.cells for i in c.frames}
    assert placed == set(range(len(front.frames))) and plan.excluded == ()
    assert plan.layout.side == 480 and len(plan.layout.cells) == 6
    text = grid.summarize(plan)
    assert "6 cells (3 x 2) of 480 px" in text and "empty cells: 0" in text

"""End to end: the grid mode on the small simulated survey (panels that differ in transparency and
sky gradient), on a real LocalCluster, started by a stack_plan.csv in the input folder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from astropy.io import fits
from typer.testing import CliRunner

from zdask.cli import app
from zdask.compare import compare

CLUSTER = ["--workers", "1", "--threads-per-worker", "2"]
# Cells of one frame field (480 px): a 3 x 2 raster of 6 cells on this survey, each stacking
# 32-64 frames of 2-4 panels (the default 4.0 would make one cell of it).
GRID_OPTIONS = ["--grid-cell-fov-factor", "1.0", *CLUSTER]
# The classic end-to-end thresholds (tests/graph/test_run.py), measured there on the same survey.
MAX_STAR_OFFSET_PX = 0.25
MAX_TRAIL_RESIDUAL = 1.5
MIN_EXTENDED_KEPT = 0.9
MAX_LARGE_SCALE_RESIDUAL = 2.0
MAX_SCORE_LARGE_SCALE = 1.5
MAX_SCORE_SEAMS = 1.5
# Inter-cell median stddev after / before, per channel. Measured: 2.3 / 104 (R), 3.5 / 77 (G),
# 3.2 / 38 (B) ADU, i.e. 2-8 %; with nothing matched between the cells (the checkerboard the
# ancestor showed: each cell left at its own level and gradient) after = before, 100 %.
MAX_MEDIAN_STD_RATIO = 0.15


@pytest.fixture(scope="module")
def grid_run(small_survey, tmp_path_factory):
    """The survey's frames in a folder with a stack_plan.csv naming them (and a missing file)."""
    survey, manifest = small_survey
    folder = tmp_path_factory.mktemp("planned")
    names = sorted(p.name for p in (survey / "frames").iterdir())
    for name in names:
        shutil.copy2(survey / "frames" / name, folder / name)
    rows = [f"{k},{name},10" for k, name in enumerate(names)] + ["999,gone.fits,10"]
    (folder / "stack_plan.csv").write_text("order,file_path,exposure\n" + "\n".join(rows) + "\n")
    out = tmp_path_factory.mktemp("grid") / "out"
    result = CliRunner().invoke(app, ["run", str(folder), "--out", str(out), *GRID_OPTIONS])
    assert result.exit_code == 0, result.output
    return survey, manifest, folder, out, result.output


def test_a_stack_plan_starts_the_grid_mode_and_its_missing_row_is_reported(grid_run):
    _, manifest, folder, out, output = grid_run
    assert "stack_plan.csv: stack plan found, grid mode" in output
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "grid"
    missing = [r for r in report["frames_rejected"] if "gone.fits" in r["reason"]]
    assert len(missing) == 1 and missing[0]["path"].endswith("stack_plan.csv:66")
    used = {p for cell in report["cells"] for p in cell["frames"]}
    assert len(used) == len(manifest["frames"]) == report["frames_used"]


def test_the_report_has_the_grid_and_every_cell(grid_run):
    _, _, _, out, output = grid_run
    report = json.loads((out / "report.json").read_text())
    grid = report["grid"]
    assert (grid["cells"], grid["raster"], grid["side_px"], grid["empty_cells"]) == (6, [3, 2], 480, 0)
    for cell in report["cells"]:
        assert {"id", "frames", "gain", "offset", "healthy", "rgb_equalised"} <= set(cell)
        assert cell["healthy"] and cell["rgb_equalised"] and len(cell["gain"]) == 3
        assert np.isfinite(cell["gain"]).all() and np.isfinite(cell["offset"]).all()
        assert f"cell {cell['id']}: RGB equalised" in output
    photometry = report["grid_photometry"]
    assert photometry["reference"] == report["cells"][0]["id"] and len(photometry["pairs"]) >= 5
    assert all(p["mask_pixels"] > 0 for p in photometry["pairs"])
    assert "grid pair" in output and "overlap mask" in output
    with fits.open(out / "mosaic.fits") as hdul:
        coverage = hdul["COVERAGE"].data
        # the cells' blend weights sum to 1: the coverage is the frames', not the cells' sum
        assert 16 <= coverage.max() <= 64 + 1e-3


def test_the_inter_cell_median_spread_falls_to_a_small_fraction(grid_run):
    _, _, _, out, output = grid_run
    metric = json.loads((out / "report.json").read_text())["inter_cell_median_std"]
    assert len(metric["before"]) == len(metric["after"]) == 3
    for before, after in zip(metric["before"], metric["after"]):
        assert after < MAX_MEDIAN_STD_RATIO * before, metric
    assert "[GRID][METRICS] Inter-cell median stddev (channel R)" in output


def test_the_grid_mosaic_meets_the_classic_thresholds(grid_run):
    survey, _, _, out, _ = grid_run
    result = compare(str(out / "mosaic.fits"), str(survey / "truth.fits"), str(survey / "manifest.json"))
    assert result["covered_fraction"] > 0.85
    assert result["stars_measured"] >= 30
    assert result["star_offset_px_median"] < MAX_STAR_OFFSET_PX, result
    assert result["trail_residual_over_noise"] < MAX_TRAIL_RESIDUAL, result["trails"]
    for ch in result["channels"]:
        assert 0.6 < ch["star_flux_scale"] < 1.1
    assert result["extended_kept"] > MIN_EXTENDED_KEPT, result
    assert result["large_scale_rms_over_noise"] < MAX_LARGE_SCALE_RESIDUAL, result
    scores = result["scores"]
    assert scores["large_scale"] < MAX_SCORE_LARGE_SCALE, scores
    assert MIN_EXTENDED_KEPT < scores["extended_kept"] < 1.1, scores
    assert scores["seams"]["std"] < MAX_SCORE_SEAMS, scores["seams"]


def test_the_mosaic_does_not_depend_on_the_cell_size(grid_run, tmp_path):
    """The default cell size (4 frame fields) makes one cell of this survey: no neighbour to be
    matched to, and the same sky surfaces as six cells (the frames' skies are matched over the
    survey, the shared curvature measured on the frames, the plane on the cells' mean). It took
    out no sky surface at all: large-scale 21.8, seams 14.8."""
    survey, _, _, out, _ = grid_run
    one = tmp_path / "one"
    result = CliRunner().invoke(app, ["run", str(survey / "frames"), "--out", str(one), "--mode", "grid", *CLUSTER])
    assert result.exit_code == 0, result.output
    assert json.loads((one / "report.json").read_text())["grid"]["cells"] == 1
    truth, manifest = str(survey / "truth.fits"), str(survey / "manifest.json")
    six = compare(str(out / "mosaic.fits"), truth, manifest)["scores"]
    single = compare(str(one / "mosaic.fits"), truth, manifest)["scores"]
    assert single["large_scale"] < MAX_SCORE_LARGE_SCALE and single["seams"]["std"] < MAX_SCORE_SEAMS, single
    assert abs(single["large_scale"] - six["large_scale"]) < 0.05, (single["large_scale"], six["large_scale"])
    assert abs(single["seams"]["std"] - six["seams"]["std"]) < 0.05, (single["seams"], six["seams"])


def test_a_second_run_reuses_every_cell(grid_run):
    _, _, folder, out, _ = grid_run
    result = CliRunner().invoke(app, ["run", str(folder), "--out", str(out), *GRID_OPTIONS])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert len(report["cells_reused"]) == 6 and report["cells_computed"] == [] and report["mosaic"]["reused"]


def test_plan_prints_the_cells(small_survey):
    survey, _ = small_survey
    result = CliRunner().invoke(app, ["plan", str(survey / "frames"), "--mode", "grid", "--grid-cell-fov-factor", "1"])
    assert result.exit_code == 0, result.output
    assert "grid: 6 cells (3 x 2) of 480 px" in result.stdout
    assert "frames per cell: min 32 / median 62.5 / max 64" in result.stdout and "empty cells: 0" in result.stdout


def test_too_many_cells_are_refused_naming_the_option_and_the_outputs_stay(grid_run):
    _, _, folder, out, _ = grid_run
    before = (out / "mosaic.fits").read_bytes()
    result = CliRunner().invoke(app, ["run", str(folder), "--out", str(out), *GRID_OPTIONS, "--grid-max-cells", "5"])
    assert result.exit_code == 2, result.output
    assert "grid plan of 6 cells (3 x 2 of 480 px) exceeds grid.max_cells = 5" in " ".join(result.output.split())
    assert (out / "mosaic.fits").read_bytes() == before

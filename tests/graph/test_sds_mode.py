"""End to end: `zdask run --mode sds` on a survey that suits SDS (one pointing, many dithered
frames), its re-run, `zdask plan --mode sds`, and the fallback to classic on a survey of panels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from PIL import Image
from typer.testing import CliRunner

from zdask.cli import app
from zdask.compare import compare
from zdask.sim import SurveySpec, simulate_survey

pytestmark = pytest.mark.slow

CLUSTER = ["--workers", "1", "--threads-per-worker", "2"]

# The classic end-to-end test's thresholds (tests/graph/test_run.py), met by the SDS mosaic.
MAX_STAR_OFFSET_PX = 0.25
MAX_TRAIL_RESIDUAL = 1.5
MIN_EXTENDED_KEPT = 0.9
MAX_LARGE_SCALE_RESIDUAL = 2.0
MAX_SCORE_LARGE_SCALE = 1.5

# One pointing, 32 dithered frames (four of them crossed by a satellite trail), without the
# light-pollution gradient tied to the frame: from a single pointing neither mode can tell that
# gradient from the sky (measured with it, 24 frames: large-scale residual 15.2 σ in sds and
# 20.2 σ in classic; without it 0.21 σ and 0.35 σ). Transparency varies from frame to frame,
# so the lots' gains have something to match.
SDS_SURVEY = SurveySpec(panels=(1, 1), frames_per_panel=32, frame_size=(270, 480), seed=5,
                        gradient_frac=0.0, transparency_range=(0.7, 1.0))


@pytest.fixture(scope="module")
def sds_survey(tmp_path_factory):
    out = tmp_path_factory.mktemp("sds_survey")
    manifest = simulate_survey(out, SDS_SURVEY)
    return out, manifest


@pytest.fixture(scope="module")
def sds_run(sds_survey, tmp_path_factory):
    survey, _ = sds_survey
    out = tmp_path_factory.mktemp("sds_run") / "out"
    result = CliRunner().invoke(app, ["run", str(survey / "frames"), "--out", str(out), "--mode", "sds", *CLUSTER])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_the_sds_run_writes_the_outputs_and_reports_its_lots(sds_survey, sds_run):
    survey, manifest = sds_survey
    out, output = sds_run
    with fits.open(out / "mosaic.fits") as hdul:
        image = hdul[0].data
        assert image.dtype.name == "float32" and image.shape[0] == 3
        assert WCS(hdul[0].header).celestial.has_celestial
        assert hdul["COVERAGE"].data.shape == image.shape[1:] and hdul["ALPHA"].data.dtype.name == "uint8"
        assert hdul["COVERAGE"].data.max() == len(manifest["frames"])  # every frame on the deepest pixel
        assert hdul[0].header["NFRAMES"] == len(manifest["frames"])
    assert Image.open(out / "preview.png").size == (image.shape[2], image.shape[1])
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "sds" and "mode_requested" not in report and report["warnings"] == []
    lots = report["lots"]
    assert len(lots) >= 3
    stacked = sorted(p for lot in lots for p in lot["frames"])
    assert stacked == sorted(str(survey / f["file"]) for f in manifest["frames"])
    for lot in lots:
        assert {"id", "frames", "mode", "seconds", "gain", "rejected_fraction"} <= set(lot)
        assert lot["mode"] == "EQ" and len(lot["gain"]) == 3 and 0 <= lot["rejected_fraction"] < 0.1
        assert f"(id {lot['id']}, EQ): {len(lot['frames'])} frames" in output
    chain = report["sds"]
    # the gain match brings the lots' medians together
    for before, after in zip(chain["median_spread_before"], chain["median_spread_after"]):
        assert after < 0.5 * before, chain
    assert {"sds_sky", "sds", "write", "total"} <= set(report["stages"])


def test_the_sds_mosaic_meets_the_classic_thresholds_against_the_truth(sds_survey, sds_run):
    survey, _ = sds_survey
    out, _ = sds_run
    result = compare(str(out / "mosaic.fits"), str(survey / "truth.fits"), str(survey / "manifest.json"))
    assert result["covered_fraction"] > 0.85
    assert result["stars_measured"] >= 20  # (a fifth of the 2 x 2 survey's field: test_run asks 30)
    assert result["star_offset_px_median"] < MAX_STAR_OFFSET_PX, result
    assert len(result["trails"]) >= 4 and result["trail_residual_over_noise"] < MAX_TRAIL_RESIDUAL, result["trails"]
    for ch in result["channels"]:
        assert 0.6 < ch["star_flux_scale"] < 1.1
    assert result["extended_kept"] > MIN_EXTENDED_KEPT, result
    assert result["large_scale_rms_over_noise"] < MAX_LARGE_SCALE_RESIDUAL, result
    scores = result["scores"]
    assert scores["large_scale"] < MAX_SCORE_LARGE_SCALE, scores
    assert MIN_EXTENDED_KEPT < scores["extended_kept"] < 1.1, scores


def test_a_rerun_from_a_toml_mode_reuses_every_lot_and_the_mosaic(sds_survey, sds_run, tmp_path):
    survey, _ = sds_survey
    out, _ = sds_run
    with fits.open(out / "mosaic.fits") as hdul:
        before = hdul[0].data.copy()
    toml = tmp_path / "zdask.toml"
    toml.write_text('mode = "sds"\n')
    result = CliRunner().invoke(app, ["run", str(survey / "frames"), "--out", str(out), "--config", str(toml),
                                      *CLUSTER])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "sds" and report["frames_calibrated"] == 0
    assert all(lot["reused"] for lot in report["lots"]) and report["mosaic"]["reused"] is True
    with fits.open(out / "mosaic.fits") as hdul:
        np.testing.assert_array_equal(hdul[0].data, before)


def test_plan_json_gives_the_lots_the_run_stacked(sds_survey, sds_run):
    survey, _ = sds_survey
    out, _ = sds_run
    result = CliRunner().invoke(app, ["plan", str(survey / "frames"), "--mode", "sds", "--json"])
    assert result.exit_code == 0, result.output
    planned = json.loads(result.stdout)["lots"]
    ran = json.loads((out / "report.json").read_text())["lots"]
    assert [(p["id"], p["mode"], p["frames"]) for p in planned] == [(r["id"], r["mode"], r["frames"]) for r in ran]
    text = CliRunner().invoke(app, ["plan", str(survey / "frames"), "--mode", "sds"])
    assert text.exit_code == 0 and f"{len(planned)} SDS lots" in text.stdout


def test_a_survey_of_panels_falls_back_to_classic_and_says_why(small_survey, tmp_path):
    """Four panels of 16 frames: the lots (10 frames each, in time order) cover a panel or two,
    so the coverage cut at 0.4 x the peak (64 frames where the four panels meet) keeps little
    more than the overlaps; SDS gives up and the classic mosaic is built, the report naming both."""
    survey, _ = small_survey
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(survey / "frames"), "--out", str(out), "--mode", "sds", *CLUSTER])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "classic" and report["mode_requested"] == "sds"
    assert "of the field the frames cover" in report["sds_fallback_reason"]
    lines = [line for line in result.output.splitlines() if "SDS cannot make a mosaic" in line]
    assert len(lines) == 1 and report["sds_fallback_reason"] in " ".join(result.output.split())
    assert any("SDS cannot make a mosaic" in w for w in report["warnings"])
    assert len(report["tiles"]) == 4 and (out / "mosaic.fits").exists()

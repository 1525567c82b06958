"""What a cluster user watches, on one run of the small survey submitted by the command line to
a running scheduler: the task names the dashboard shows, dask's performance report, report.html
(drawn by a real browser) and the mosaic opened as an xarray Dataset."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from astropy.io import fits
from dask.utils import key_split
from distributed import LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin
from PIL import Image
from typer.testing import CliRunner

import zdask
from zdask.cli import app

pytestmark = pytest.mark.slow

#: The first word of every task group a classic run shows in the dashboard: zdask's stages.
STAGE_WORDS = {"hot", "calibrate", "reference", "align", "sky", "local", "tile", "stack", "write", "finish",
               "coadd"}
#: dask's own names, which say nothing of what a task does.
GENERIC = {"store-map", "getitem", "finalize", "finalize-hlgfinalizecompute", "lambda", "_finish", "data", "Other"}


class _SubmittedKeys(SchedulerPlugin):
    """Every key that the scheduler sends to a worker."""

    def __init__(self):
        self.keys = []

    def transition(self, key, start, finish, *args, **kwargs):
        if finish == "processing":
            self.keys.append(key)


@pytest.fixture(scope="module")
def watched_run(small_survey, tmp_path_factory):
    survey, manifest = small_survey
    out = tmp_path_factory.mktemp("watched") / "mosaic"
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster:
        submitted = _SubmittedKeys()
        cluster.scheduler.add_plugin(submitted, name="zdask-test-submitted-keys")
        result = CliRunner().invoke(app, ["run", str(survey / "frames"), "--out", str(out),
                                          "--scheduler", cluster.scheduler_address, "--performance-report"])
        dashboard_port = cluster.scheduler.http_server.port
    assert result.exit_code == 0, result.output
    return out, manifest, submitted.keys, result.output, dashboard_port


def test_the_dashboard_link_printed_is_the_schedulers(watched_run):
    _, _, _, output, port = watched_run
    assert f"dashboard: http://127.0.0.1:{port}/status" in output


def test_task_names_say_what_each_task_does(watched_run):
    _, manifest, keys, _, _ = watched_run
    groups = {key_split(k) for k in keys}
    assert not groups & GENERIC, groups
    assert {g.split("-")[0] for g in groups} <= STAGE_WORDS, groups
    names = {k[0] if isinstance(k, tuple) else k for k in keys}
    frames = {os.path.basename(f["file"]) for f in manifest["frames"]}
    assert {n.split("-")[1] for n in names if key_split(n) == "calibrate"} == frames
    assert {n.split("-")[1] for n in names if key_split(n) == "align"} == frames
    for stage in ("stack-tile", "write-tile", "finish-tile", "sky-fit", "tile-cutout"):
        assert {n.split("-")[2] for n in names if key_split(n) == stage} == {"0", "1", "2", "3"}, stage


def test_the_performance_report_is_written_next_to_the_outputs(watched_run):
    out = watched_run[0]
    text = (out / "performance-report.html").read_text(encoding="utf-8")
    assert text.lstrip().lower().startswith("<!doctype html>") and "</html>" in text
    assert "Dask Performance Report" in text
    assert not [n for n in os.listdir(out) if n.endswith(".part")]


def test_report_html_is_drawn_by_a_browser_with_the_runs_pictures(watched_run, chromium, tmp_path):
    out = watched_run[0]
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count('<polygon class="tile"') == 2 * 4  # the 4 tiles, over the preview and the coverage
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    shot = tmp_path / "report.png"
    dom = chromium(out / "report.html", shot, 1200, 1600)
    for section in ("summary", "preview", "coverage", "tiles", "seams", "timings", "problems"):
        assert f'<section id="{section}">' in dom
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    not_white = np.count_nonzero((pixels < 245).any(axis=-1)) / (pixels.shape[0] * pixels.shape[1])
    assert not_white > 0.15, not_white
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 2000  # the sky and the coverage map, not text only


def test_open_mosaic_gives_the_files_arrays(watched_run):
    out = watched_run[0]
    ds = zdask.open_mosaic(out / "mosaic.fits")
    with fits.open(out / "mosaic.fits") as hdul:
        np.testing.assert_array_equal(ds["image"].values, hdul[0].data)
        np.testing.assert_array_equal(ds["coverage"].values, hdul["COVERAGE"].data)
        assert ds.attrs["NFRAMES"] == hdul[0].header["NFRAMES"] == 64

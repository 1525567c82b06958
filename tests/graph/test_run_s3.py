"""End to end with the working store on a real S3-compatible server (moto's, in server mode, on
127.0.0.1): the workers (real processes of a LocalCluster) and the client reach it over HTTP, as
workers on nodes without a shared file system would."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from astropy.io import fits
from typer.testing import CliRunner

from zdask.cli import app

moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install moto[server])")
s3fs = pytest.importorskip("s3fs", reason="s3fs is not installed (the s3 extra)")

CLUSTER = ["--workers", "1", "--threads-per-worker", "2"]
BUCKET = "zdask-work"


@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server on a free port of 127.0.0.1 with one empty bucket; the endpoint and
    credentials in the environment, where the client and the workers it spawns read them."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # (one line per request otherwise)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", endpoint)
        env.setenv("AWS_ACCESS_KEY_ID", "zdask-test")
        env.setenv("AWS_SECRET_ACCESS_KEY", "zdask-test")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem(endpoint_url=endpoint)
        fs.mkdir(BUCKET)
        try:
            yield fs
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
            server.stop()


def _run(frames, out, *options):
    result = CliRunner().invoke(app, ["run", str(frames), "--out", str(out), *CLUSTER, *options])
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text())


def test_a_run_with_its_store_on_s3_gives_the_local_mosaic_and_a_second_run_reuses_it(
        small_survey, s3_server, tmp_path):
    survey, _ = small_survey
    frames = survey / "frames"
    local = _run(frames, tmp_path / "local")
    url = f"s3://{BUCKET}/run1"
    first = _run(frames, tmp_path / "s3", "--work", url)
    # The store is in the bucket, not in the output folder.
    assert not (tmp_path / "s3" / "work.zarr").exists()
    stored = s3_server.ls(f"{BUCKET}/run1")
    assert {f"{BUCKET}/run1/frames", f"{BUCKET}/run1/tiles", f"{BUCKET}/run1/mosaic"} <= set(stored)
    calibrated = [p for p in s3_server.ls(f"{BUCKET}/run1/frames") if not p.endswith("zarr.json")]
    assert len(calibrated) == len(list(frames.iterdir()))
    # Bit for bit the local run's mosaic (the classic mosaic is deterministic), and its tiles.
    assert sorted(first["tiles_computed"]) == sorted(local["tiles_computed"]) == [0, 1, 2, 3]
    with fits.open(tmp_path / "local" / "mosaic.fits") as a, fits.open(tmp_path / "s3" / "mosaic.fits") as b:
        for hdu in ("PRIMARY", "COVERAGE", "ALPHA"):
            np.testing.assert_array_equal(b[hdu].data, a[hdu].data)
    for tile in sorted((tmp_path / "local" / "tiles").iterdir()):
        np.testing.assert_array_equal(fits.getdata(tmp_path / "s3" / "tiles" / tile.name), fits.getdata(tile))
    # A second run into another output folder, same store: every frame and tile reused.
    second = _run(frames, tmp_path / "s3-again", "--work", url)
    assert second["tiles_computed"] == [] and sorted(second["tiles_reused"]) == [0, 1, 2, 3]
    assert second["frames_calibrated"] == 0
    np.testing.assert_array_equal(fits.getdata(tmp_path / "s3-again" / "mosaic.fits"),
                                  fits.getdata(tmp_path / "local" / "mosaic.fits"))
    assert len(list((tmp_path / "s3-again" / "tiles").iterdir())) == 4


def test_a_store_in_a_missing_bucket_fails_in_one_line_naming_it(small_survey, s3_server, tmp_path):
    survey, _ = small_survey
    url = "s3://no-such-bucket/run1"
    result = CliRunner().invoke(app, ["run", str(survey / "frames"), "--out", str(tmp_path / "o"),
                                      "--work", url, *CLUSTER])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and url in lines[0] and "bucket" in lines[0], result.output
    assert not (tmp_path / "o" / "mosaic.fits").exists()


def test_an_unknown_store_protocol_is_refused_as_a_setting(small_survey, tmp_path):
    survey, _ = small_survey
    result = CliRunner().invoke(app, ["run", str(survey / "frames"), "--out", str(tmp_path / "o"),
                                      "--work", "nosuch://bucket/run1", *CLUSTER])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == "error: config field 'work' = 'nosuch://bucket/run1': unknown protocol 'nosuch'"


def test_a_working_store_inside_an_input_folder_is_refused(small_survey, tmp_path):
    survey, _ = small_survey
    frames = survey / "frames"
    before = sorted(p.name for p in frames.iterdir())
    for work in (str(frames / "work.zarr"), f"file://{frames}/work.zarr"):
        result = CliRunner().invoke(app, ["run", str(frames), "--out", str(tmp_path / "o"), "--work", work, *CLUSTER])
        assert result.exit_code == 2, result.output
        assert result.output.strip() == (f"error: working store {frames}/work.zarr is inside input folder {frames}; "
                                         f"choose another --work")
    assert sorted(p.name for p in frames.iterdir()) == before

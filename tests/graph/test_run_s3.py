"""End to end with the working store, the frames and the outputs on a real S3-compatible server
(moto's, in server mode, on 127.0.0.1): the workers (real processes of a LocalCluster) and the
client reach it over HTTP, as workers on nodes without a shared file system would."""

from __future__ import annotations

import io
import json
import logging
import os

import numpy as np
import pytest
from astropy.io import fits
from typer.testing import CliRunner

from zdask.cli import app
from zdask.config import Config
from zdask.graph.runner import run
from zdask.io.errors import FrameReadError

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


@pytest.fixture(scope="module")
def local_run(small_survey, tmp_path_factory):
    """The survey's mosaic made with everything local, once for the module's comparisons."""
    out = tmp_path_factory.mktemp("local")
    return out, _run(small_survey[0] / "frames", out)


@pytest.fixture(scope="module")
def frames_url(small_survey, s3_server):
    """The survey's frames uploaded to the bucket: their folder's URL."""
    frames = small_survey[0] / "frames"
    for path in sorted(frames.iterdir()):
        s3_server.put_file(str(path), f"{BUCKET}/frames/{path.name}")
    return f"s3://{BUCKET}/frames"


def _run(frames, out, *options):
    result = CliRunner().invoke(app, ["run", str(frames), "--out", str(out), *CLUSTER, *options])
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text())


def test_a_run_with_its_store_on_s3_gives_the_local_mosaic_and_a_second_run_reuses_it(
        small_survey, s3_server, local_run, tmp_path):
    survey, _ = small_survey
    frames = survey / "frames"
    local_dir, local = local_run
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
    with fits.open(local_dir / "mosaic.fits") as a, fits.open(tmp_path / "s3" / "mosaic.fits") as b:
        for hdu in ("PRIMARY", "COVERAGE", "ALPHA"):
            np.testing.assert_array_equal(b[hdu].data, a[hdu].data)
    for tile in sorted((local_dir / "tiles").iterdir()):
        np.testing.assert_array_equal(fits.getdata(tmp_path / "s3" / "tiles" / tile.name), fits.getdata(tile))
    # A second run into another output folder, same store: every frame and tile reused.
    second = _run(frames, tmp_path / "s3-again", "--work", url)
    assert second["tiles_computed"] == [] and sorted(second["tiles_reused"]) == [0, 1, 2, 3]
    assert second["frames_calibrated"] == 0
    np.testing.assert_array_equal(fits.getdata(tmp_path / "s3-again" / "mosaic.fits"),
                                  fits.getdata(local_dir / "mosaic.fits"))
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


def _fits_at(fs, path: str) -> fits.HDUList:
    return fits.open(io.BytesIO(fs.cat_file(path)))


def _assert_same_mosaic(fs, path: str, local_file) -> None:
    with fits.open(local_file) as a, _fits_at(fs, path) as b:
        for hdu in ("PRIMARY", "COVERAGE", "ALPHA"):
            assert np.array_equal(b[hdu].data, a[hdu].data, equal_nan=True), hdu


def test_frames_and_outputs_at_an_s3_url_give_the_local_mosaic_and_a_second_run_reuses_its_tiles(
        s3_server, local_run, frames_url):
    local_dir, local = local_run
    out = f"s3://{BUCKET}/out1"
    result = CliRunner().invoke(app, ["run", frames_url + "/", "--out", out, *CLUSTER])
    assert result.exit_code == 0, result.output
    prefix = f"{BUCKET}/out1"
    report = json.loads(s3_server.cat_file(f"{prefix}/report.json"))
    assert report["inputs"] == [frames_url] and report["frames_rejected"] == []
    # Every output at the URL, the working store beside them (the default), nothing half-made
    # (no .part object), and the run's lock object removed.
    assert set(s3_server.ls(prefix, detail=False)) == {
        f"{prefix}/{name}" for name in ("mosaic.fits", "preview.png", "report.json", "report.html", "tiles", "work.zarr")}
    assert s3_server.cat_file(f"{prefix}/preview.png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<html" in s3_server.cat_file(f"{prefix}/report.html")
    # Bit for bit the local run's mosaic and tiles (the frames are the same bytes).
    assert sorted(report["tiles_computed"]) == sorted(local["tiles_computed"]) == [0, 1, 2, 3]
    _assert_same_mosaic(s3_server, f"{prefix}/mosaic.fits", local_dir / "mosaic.fits")
    for tile in sorted((local_dir / "tiles").iterdir()):
        with fits.open(tile) as a, _fits_at(s3_server, f"{prefix}/tiles/{tile.name}") as b:
            np.testing.assert_array_equal(b[0].data, a[0].data)
    # Again into the same URL: the store found there, every frame and tile reused.
    again = CliRunner().invoke(app, ["run", frames_url, "--out", out + "/", *CLUSTER])
    assert again.exit_code == 0, again.output
    second = json.loads(s3_server.cat_file(f"{prefix}/report.json"))
    assert second["tiles_computed"] == [] and sorted(second["tiles_reused"]) == [0, 1, 2, 3]
    assert second["frames_calibrated"] == 0
    _assert_same_mosaic(s3_server, f"{prefix}/mosaic.fits", local_dir / "mosaic.fits")
    assert not [p for p in s3_server.find(prefix) if p.endswith(".part") or p.endswith(".zdask.lock")]


def test_a_second_run_into_an_output_url_in_use_is_refused_in_one_line(s3_server, frames_url):
    from zdask.io.folderlock import ObjectLock  # (here: the module's other tests run on older code)

    out = f"s3://{BUCKET}/busy"
    lock = ObjectLock.acquire(out)
    try:
        result = CliRunner().invoke(app, ["run", frames_url, "--out", out, *CLUSTER])
    finally:
        lock.release()
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: output folder {out} is in use by another zdask run (pid ")
    assert lines[0].endswith(f"; if that run was killed, delete {out}/.zdask.lock")
    # Refused before writing anything; the holder's release removed its lock object.
    assert not s3_server.exists(f"{BUCKET}/busy")


def test_a_frame_at_a_url_that_cannot_be_read_is_named_by_its_url(s3_server, frames_url, tmp_path):
    """The frame's object is overwritten with bytes that are not FITS after the scan, so the
    hot-pixel task that reads it on the worker fails: the error names its URL, in one line."""
    frames = f"{BUCKET}/bad-frames"
    for source in sorted(s3_server.ls(frames_url.removeprefix("s3://"), detail=False)):
        s3_server.copy(source, f"{frames}/{source.rsplit('/', 1)[1]}")
    victim = sorted(s3_server.ls(frames, detail=False))[5]

    def say(text: str) -> None:
        if "master-tile group(s)" in text:
            s3_server.pipe_file(victim, b"not a FITS file any more")

    with pytest.raises(FrameReadError) as err:
        run([f"s3://{frames}"], str(tmp_path / "out"), Config().replace(workers=1, threads_per_worker=2), say=say)
    assert err.value.path == f"s3://{victim}"
    # (s3fs may notice first that the object's ETag changed since it looked: either reason)
    message = str(err.value)
    assert message.startswith(f"cannot read frame s3://{victim}: ") and "\n" not in message, message
    assert not (tmp_path / "out" / "mosaic.fits").exists()


def test_scan_and_plan_read_frames_at_an_s3_url_as_from_a_folder(small_survey, s3_server, frames_url):
    frames = small_survey[0] / "frames"
    local = CliRunner().invoke(app, ["scan", str(frames), "--json"])
    remote = CliRunner().invoke(app, ["scan", frames_url, "--json"])
    assert local.exit_code == remote.exit_code == 0, remote.output
    local_frames, remote_frames = json.loads(local.output)["frames"], json.loads(remote.output)["frames"]
    assert [os.path.basename(f["path"]) for f in remote_frames] == [os.path.basename(f["path"]) for f in local_frames]
    assert all(f["path"].startswith(f"{frames_url}/") for f in remote_frames)
    for lf, rf in zip(local_frames, remote_frames):  # the headers read through fsspec: the same frames
        assert {k: v for k, v in rf.items() if k not in ("path", "mtime_ns")} == \
            {k: v for k, v in lf.items() if k not in ("path", "mtime_ns")}
    plans = [CliRunner().invoke(app, ["plan", where, "--json"]) for where in (str(frames), frames_url)]
    assert plans[0].exit_code == plans[1].exit_code == 0, plans[1].output
    groups = [[{**g, "paths": [os.path.basename(p) for p in g["paths"]]} for g in json.loads(plan.output)["groups"]]
              for plan in plans]
    assert groups[1] == groups[0] and len(groups[0]) == 4

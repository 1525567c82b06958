"""The command line ends every failure with one line: status 2 for what the user can change,
1 for a bug, 130 for Ctrl-C; the traceback only with --debug."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import dask
import numpy as np
import psutil
import pytest
from astropy.io import fits
from typer.testing import CliRunner

from zdask.cli import app, describe_failure
from zdask.io.errors import WriteError

CLUSTER = ["--workers", "1", "--threads-per-worker", "2"]


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def _corrupt_compressed_copy(frame, dest) -> None:
    """A tile-compressed copy of ``frame`` whose compressed pixels are damaged: its headers
    scan as a good frame, reading its pixels fails (as a file damaged on disk does)."""
    with fits.open(frame) as hdul:
        data, header = hdul[0].data, hdul[0].header
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, header, compression_type="RICE_1")]).writeto(dest)
    with fits.open(dest, disable_image_compression=True) as hdul:  # the binary table as stored
        table = hdul[1].header
        heap = hdul.fileinfo(1)["datLoc"] + table.get("THEAP", table["NAXIS1"] * table["NAXIS2"])
    raw = bytearray(dest.read_bytes())
    end = len(raw) - len(raw) % 2880 - 2880  # keep the padding of the last block
    raw[heap + 64:end] = bytes((b * 7 + 13) & 0xFF for b in raw[heap + 64:end])
    dest.write_bytes(bytes(raw))


@pytest.fixture(scope="module")
def frames_with_a_damaged_file(small_survey, tmp_path_factory):
    survey, _ = small_survey
    frames = tmp_path_factory.mktemp("damaged") / "frames"
    shutil.copytree(survey / "frames", frames)
    damaged = frames / "Light_damaged.fits"
    _corrupt_compressed_copy(sorted(frames.iterdir())[0], damaged)
    return frames, damaged


@pytest.mark.parametrize("debug", [False, True])
def test_an_unreadable_frame_ends_the_run_with_one_line_naming_it(frames_with_a_damaged_file, tmp_path, debug):
    frames, damaged = frames_with_a_damaged_file
    args = ["run", str(frames), "--out", str(tmp_path / "out"), *CLUSTER] + (["--debug"] if debug else [])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.output.rstrip().splitlines()[-1] == _error_lines(result.output)[0]
    assert len(_error_lines(result.output)) == 1
    assert f"cannot read frame {damaged}: " in result.output and "Cancelled" not in result.output
    assert ("Traceback" in result.output) is debug


def test_a_missing_input_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["run", str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {tmp_path / 'nope'}: no such file or folder"


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:1", "nonsense://x"])
def test_an_unreachable_or_malformed_scheduler_is_one_line_naming_it(small_survey, tmp_path, address):
    survey, _ = small_survey
    frame = sorted((survey / "frames").iterdir())[0]
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        result = CliRunner().invoke(app, ["run", str(frame), "--out", str(tmp_path / "out"), "--scheduler", address])
    assert result.exit_code == 2, result.output
    assert _error_lines(result.output) == [result.output.rstrip().splitlines()[-1]]
    assert _error_lines(result.output)[0].startswith(f"error: scheduler {address}: cannot connect")
    assert "Traceback" not in result.output


def test_a_cluster_the_machine_cannot_hold_is_refused_before_anything_starts(tmp_path):
    result = CliRunner().invoke(app, ["run", str(tmp_path), "--out", str(tmp_path / "out"), "--workers", "10000"])
    assert result.exit_code == 2
    assert result.output.startswith("error: config fields 'workers' × 'threads_per_worker' = 10000 × ")
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_exit_status_tells_a_user_error_from_a_bug(tmp_path):
    target = tmp_path / "report.json"
    try:
        target.mkdir()
        os.replace(os.devnull, target)  # a real OSError naming the file
    except OSError as exc:
        message, status = describe_failure(exc)
    assert status == 2 and message.startswith(f"{os.devnull}: ")
    message, status = describe_failure(WriteError(str(target), "No space left on device", 28))
    assert status == 2 and "previous version" in message
    try:
        np.zeros(3)[5]
    except IndexError as exc:
        message, status = describe_failure(exc)
    assert status == 1 and message.startswith("internal error: IndexError: ") and "--debug" in message


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_stops_a_run_promptly_with_status_130(small_survey, tmp_path, workers):
    """SIGINT once the cluster is up: the run closes its cluster and exits, leaving no process."""
    survey, _ = small_survey
    cmd = [sys.executable, "-m", "zdask.cli", "run", str(survey / "frames"), "--out", str(tmp_path / "out"),
           "--workers", workers]
    # SIGINT at its default in the child: a test started in the background of a shell inherits
    # it ignored, and Python then installs no KeyboardInterrupt handler (the run ends with 0).
    run = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in run.stderr:
            if line.startswith("local cluster:"):
                break
        children = psutil.Process(run.pid).children(recursive=True)
        run.send_signal(signal.SIGINT)
        rest = run.stderr.read()
        assert run.wait(timeout=60) == 130, rest
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    # The worker processes got the same SIGINT (as in a terminal); multiprocessing's resource
    # tracker, a process of its own sharing stderr, may then warn about their semaphores after
    # zdask's last line, in an order that depends on the machine's load: its lines are not ours.
    ours = [line for line in rest.rstrip().splitlines()
            if "resource_tracker" not in line and "leaked semaphore" not in line]
    assert ours[-1] == "interrupted" and "Traceback" not in rest
    _, alive = psutil.wait_procs(children, timeout=30)
    assert alive == []
    assert not (tmp_path / "out" / "mosaic.fits").exists()


def test_plan_names_a_frame_outside_the_main_field_and_plans_without_it(small_survey, tmp_path):
    survey, _ = small_survey
    frames = sorted((survey / "frames").glob("*.fits"))[:6]
    for p in frames:
        shutil.copy2(p, tmp_path / p.name)
    with fits.open(frames[0]) as hdul:
        header, data = hdul[0].header.copy(), hdul[0].data
    header["CRVAL1"] = (header["CRVAL1"] + 30.0) % 360.0
    fits.PrimaryHDU(data, header).writeto(tmp_path / "far.fits")
    result = CliRunner().invoke(app, ["plan", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert f"excluded {tmp_path / 'far.fits'}: does not overlap the main field" in result.output
    assert "far.fits" not in result.stdout  # the plan itself holds the six frames only


def test_the_command_keeps_its_output_and_status_when_it_exits_quickly(tmp_path):
    """The console command leaves without the interpreter's teardown: everything it printed is
    still there (flushed first), and its exit status is the command's."""
    from zdask.config import describe_fields

    listing = subprocess.run([sys.executable, "-m", "zdask.cli", "config"], capture_output=True, text=True)
    assert listing.returncode == 0
    names = [line.split(" = ")[0] for line in listing.stdout.splitlines() if not line.startswith((" ", "["))]
    assert names == [name for name, _, _ in describe_fields()]
    assert "[sds]" in listing.stdout.splitlines()  # a section's heading
    missing = subprocess.run([sys.executable, "-m", "zdask.cli", "run", str(tmp_path / "none"),
                              "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert missing.returncode == 2
    assert len(missing.stderr.strip().splitlines()) == 1 and str(tmp_path / "none") in missing.stderr

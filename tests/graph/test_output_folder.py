"""The output folder end to end: one run at a time, file modes, exactly this run's tiles, counts.

The concurrent runs are real `python -m zdask.cli run` processes. The first is frozen (SIGSTOP
on its process group) once it holds the folder, so the second starts while the first is
certainly running, whatever the machine's speed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
from astropy.io import fits
from typer.testing import CliRunner

from zdask.cli import app
from zdask.io.folderlock import LOCK_NAME, FolderLock

CLUSTER = ["--workers", "1", "--threads-per-worker", "2"]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUTPUTS = ("mosaic.fits", "preview.png", "report.json")


def _zdask(*args: str) -> list[str]:
    return [sys.executable, "-m", "zdask.cli", *args]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}


def _listing(folder) -> dict:
    """Every file under ``folder``: relative path → (size, mtime), the lock files (the folder's, the
    store's) aside: their content is the holder."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(LOCK_NAME)}


def _tile_names(folder) -> list[str]:
    return sorted(p.name for p in (folder / "tiles").iterdir())


@pytest.fixture(scope="module")
def clean_run(small_survey, tmp_path_factory):
    survey, _ = small_survey
    out = tmp_path_factory.mktemp("clean") / "out"
    result = CliRunner().invoke(app, ["run", str(survey / "frames"), "--out", str(out), *CLUSTER])
    assert result.exit_code == 0, result.output
    return out


def test_a_second_run_into_a_busy_folder_is_refused_and_the_first_is_intact(small_survey, clean_run, tmp_path):
    survey, _ = small_survey
    out = tmp_path / "C"
    command = _zdask("run", str(survey / "frames"), "--out", str(out), *CLUSTER)
    previous = os.umask(0o002)  # the first run's outputs follow its umask (0664), not 0600
    try:
        first = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True, start_new_session=True)
    finally:
        os.umask(previous)
    try:
        # It holds the folder once its pid is in the lock file (written after the lock is taken).
        deadline = time.monotonic() + 300
        while not ((out / LOCK_NAME).exists() and (out / LOCK_NAME).read_text().strip() == str(first.pid)):
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the first run never took the folder"
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGSTOP)
        before = _listing(out)
        second = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
        assert _listing(out) == before  # the refused run wrote nothing
        os.killpg(first.pid, signal.SIGCONT)
        assert second.returncode == 2, second.stderr
        message = second.stderr.strip()
        assert "\n" not in message and "Traceback" not in message
        assert f"output folder {out} is in use by another zdask run (pid {first.pid})" in message
        _, err = first.communicate(timeout=600)
        assert first.returncode == 0, err
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGCONT)
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    # The first run's outputs are those of a run alone: the same tile files byte for byte, and
    # the same mosaic to float32 rounding (the coadd's sums are not bit-reproducible from run to
    # run: measured up to 3e-5 ADU apart, in ~150 of its 1.4 M values; the double colour
    # equalisation of two runs sharing a tile moved whole channels by up to 5 %).
    assert _tile_names(out) == _tile_names(clean_run) == [f"tile_00{k}.fits" for k in range(4)]
    for name in _tile_names(out):
        assert (out / "tiles" / name).read_bytes() == (clean_run / "tiles" / name).read_bytes(), name
    with fits.open(out / "mosaic.fits") as got, fits.open(clean_run / "mosaic.fits") as alone:
        assert got[0].header == alone[0].header
        np.testing.assert_allclose(got[0].data, alone[0].data, rtol=1e-6, atol=1e-4)
        np.testing.assert_array_equal(got["COVERAGE"].data, alone["COVERAGE"].data)
    for name in [*OUTPUTS, *(f"tiles/{t}" for t in _tile_names(out))]:
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o664, name


@pytest.fixture(scope="module")
def fewer_groups_rerun(small_survey, clean_run, tmp_path_factory):
    """The clean run's folder re-run on one panel's frames plus a frame of pure noise (no star:
    alignment excludes it), with a file of the user's in tiles/."""
    survey, manifest = small_survey
    base = tmp_path_factory.mktemp("rerun")
    frames = base / "panel0"
    frames.mkdir()
    panel = [f for f in manifest["frames"] if f["panel"] == 0]
    for f in panel:
        shutil.copy2(survey / f["file"], frames / os.path.basename(f["file"]))
    noise = frames / "noise.fits"
    with fits.open(survey / panel[0]["file"]) as hdul:
        raw = hdul[0].data.astype(np.float64)
        rng = np.random.default_rng(1)
        # Noisier than any real frame (never the group's reference), and without a star.
        pixels = rng.normal(np.median(raw), 5 * raw.std(), raw.shape).clip(0, 65535).astype(hdul[0].data.dtype)
        fits.PrimaryHDU(pixels, header=hdul[0].header).writeto(noise)
    out = base / "out"
    shutil.copytree(clean_run, out)
    (out / "tiles" / "my notes.txt").write_text("a file of the user's")
    result = CliRunner().invoke(app, ["run", str(frames), "--out", str(out), *CLUSTER])
    assert result.exit_code == 0, result.output
    return out, noise, len(panel), result.output


def test_tiles_folder_holds_exactly_this_runs_tiles(fewer_groups_rerun):
    out, _, _, output = fewer_groups_rerun
    report = json.loads((out / "report.json").read_text())
    assert [t["file"] for t in report["tiles"]] == ["tiles/tile_000.fits"]
    assert _tile_names(out) == ["my notes.txt", "tile_000.fits"]
    with fits.open(out / "tiles" / "tile_000.fits") as hdul:
        assert "tiles/" + hdul[0].header["ZDASKFP"] == report["tiles"][0]["zarr"]  # this run's tile
    assert "tile_003.fits" in output  # the removal is said


def test_nframes_counts_the_frames_in_the_mosaic(fewer_groups_rerun):
    out, noise, n_good, _ = fewer_groups_rerun
    report = json.loads((out / "report.json").read_text())
    used = [p for t in report["tiles"] for p in t["frames"]]
    assert len(used) == n_good and str(noise) not in used
    assert str(noise) in json.dumps(report)  # named with the reason it was left out
    header = fits.getheader(out / "mosaic.fits")
    assert header["NFRAMES"] == n_good == report["frames_used"]
    assert header["NTILES"] == 1


@pytest.mark.parametrize("mode", ["frames", "tiles"])
def test_both_run_modes_refuse_a_held_folder_before_writing(small_survey, tmp_path, mode):
    survey, _ = small_survey
    out = tmp_path / "held"
    (tmp_path / "tiles_in").mkdir()
    inputs = [str(survey / "frames")] if mode == "frames" else ["--tiles", str(tmp_path / "tiles_in")]
    with FolderLock.acquire(str(out)):
        result = CliRunner().invoke(app, ["run", *inputs, "--out", str(out), *CLUSTER])
        assert result.exit_code == 2
        assert result.output.strip() == (f"error: output folder {out} is in use by another zdask run "
                                          f"(pid {os.getpid()}); wait for it or choose another --out")
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]

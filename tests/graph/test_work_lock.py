"""One run at a time per working store given with ``--work``: runs into different output folders
sharing a store are kept apart as runs into one folder are, one after the other they share it.

The concurrent holder is this test process, through the store's lock itself (a run refused for
the store stops before starting a cluster, so no two runs are ever under way at once).
"""

from __future__ import annotations

import json
import os
import socket
import warnings

import fsspec
import zarr
from typer.testing import CliRunner

from zdask.cli import app
from zdask.io.folderlock import LOCK_NAME, lock_store

CLUSTER = ["--workers", "1", "--threads-per-worker", "2"]


def _run(frames, out, work):
    return CliRunner().invoke(app, ["run", str(frames), "--out", str(out), "--work", str(work), *CLUSTER])


def test_a_run_on_a_store_another_run_holds_is_refused_in_one_line_and_writes_nothing(small_survey, tmp_path):
    survey, _ = small_survey
    store = tmp_path / "shared" / "store.zarr"
    link = tmp_path / "link.zarr"  # another spelling of the same store
    store.parent.mkdir()
    link.symlink_to(store)
    with lock_store(str(store)):
        for given, out in ((store, tmp_path / "second"), (link, tmp_path / "third")):
            result = _run(survey / "frames", out, given)
            assert result.exit_code == 2, result.output
            assert result.output.strip() == (f"error: working store {given} is in use by another zdask run "
                                              f"(pid {os.getpid()}); wait for it or choose another --work")
            assert not out.exists()
    # The lock is a file beside the store, never in it (the store was not even created).
    assert sorted(p.name for p in store.parent.iterdir()) == [f".store.zarr{LOCK_NAME}"]


def test_runs_one_after_the_other_share_a_store_that_zarr_still_lists_cleanly(small_survey, tmp_path):
    survey, _ = small_survey
    store = tmp_path / "store.zarr"
    first = _run(survey / "frames", tmp_path / "a", store)
    assert first.exit_code == 0, first.output
    second = _run(survey / "frames", tmp_path / "b", store)
    assert second.exit_code == 0, second.output
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["frames_calibrated"] == 0 and report["tiles_computed"] == []
    assert sorted(report["tiles_reused"]) == [0, 1, 2, 3]
    # Each run released the lock, and nothing but zarr's nodes is in the store: listing its
    # root warns of no foreign key.
    with lock_store(str(store)) as lock:
        assert lock.held
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert {"frames", "tiles", "mosaic"} <= set(zarr.open_group(str(store), mode="r").group_keys())


def test_a_run_on_a_held_store_at_a_url_is_refused_naming_the_lock_object(small_survey, tmp_path):
    survey, _ = small_survey
    url = "memory://zdask-work-lock-test/store"
    fs = fsspec.filesystem("memory")
    try:
        with lock_store(url):
            result = _run(survey / "frames", tmp_path / "out", url)
            assert result.exit_code == 2, result.output
            assert result.output.strip() == (
                f"error: working store {url} is in use by another zdask run (pid {os.getpid()} on "
                f"{socket.gethostname()}); wait for it or choose another --work; if that run was "
                f"killed, delete {url}/{LOCK_NAME}")
            assert not (tmp_path / "out").exists()
        assert not fs.exists(f"/zdask-work-lock-test/store/{LOCK_NAME}")  # removed on release
    finally:
        if fs.exists("/zdask-work-lock-test"):
            fs.rm("/zdask-work-lock-test", recursive=True)


def test_a_runs_default_store_is_held_while_it_runs(small_survey, tmp_path):
    """Another run's ``--work OUT/work.zarr`` meets the lock that run holds on its default store:
    probed from the run's own log lines, while it runs; free again when it ends."""
    from zdask.config import Config
    from zdask.graph.runner import run
    from zdask.io.folderlock import FolderInUse

    survey, _ = small_survey
    out = tmp_path / "out"
    store = str(out / "work.zarr")
    probes = []

    def say(line: str) -> None:
        if not probes:  # the first line the run says, once its folders are claimed
            try:
                with lock_store(store):
                    probes.append("free")
            except FolderInUse:
                probes.append("held")

    config = Config().replace(workers=1, threads_per_worker=2)
    run([str(survey / "frames")], str(out), config, say=say)
    assert probes == ["held"]
    with lock_store(store) as lock:
        assert lock.held

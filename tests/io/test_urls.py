"""Locations at an fsspec URL: staged uploads that never expose part of a file, the folder
scan's rules on a URL, the output folder's lock as an exclusively created object. On fsspec's
real in-memory file system (``memory://``); S3 itself in tests/graph/test_run_s3.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import fsspec
import pytest

from zdask.io import urls
from zdask.io.folderlock import LOCK_NAME, FolderInUse, ObjectLock, lock_folder
from zdask.io.listing import expand_inputs
from zdask.io.outputs import write_json


@pytest.fixture
def memory():
    """A fresh folder URL in fsspec's in-memory file system, removed after the test."""
    fs = fsspec.filesystem("memory")
    root = "/zdask-test"
    fs.mkdir(root)
    yield fs, f"memory://{root}"
    fs.rm(root, recursive=True)


def test_a_failed_write_at_a_url_leaves_the_previous_file_and_no_temporary(memory):
    fs, root = memory
    write_json(urls.join(root, "report.json"), {"run": 1})
    assert fs.cat_file("/zdask-test/report.json") == b'{\n  "run": 1\n}\n'
    with pytest.raises(RuntimeError):
        with urls.staged_upload(urls.join(root, "report.json")) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b'{"run": ')
            raise RuntimeError("killed mid-write")
    assert fs.cat_file("/zdask-test/report.json") == b'{\n  "run": 1\n}\n'
    write_json(urls.join(root, "report.json"), {"run": 2})
    assert fs.cat_file("/zdask-test/report.json") == b'{\n  "run": 2\n}\n'
    assert fs.ls("/zdask-test", detail=False) == ["/zdask-test/report.json"]


def test_a_folder_url_is_scanned_with_the_folder_rules(memory):
    fs, root = memory
    for name in ("b.fits", "a.FIT", "c.fits.fz", ".hidden.fits", "notes.txt", "sub.fits/x.fits"):
        fs.pipe_file(f"/zdask-test/{name}", b"SIMPLE  =")
    files, skipped = expand_inputs([root + "/", f"{root}/a.FIT", f"{root}/missing.fits"])
    assert files == [f"{root}/a.FIT", f"{root}/b.fits", f"{root}/c.fits.fz"]
    assert dict(skipped) == {
        f"{root}/.hidden.fits": "not FITS: hidden name (starts with '.')",
        f"{root}/notes.txt": "not FITS: not a FITS file name (.fit, .fits, .fts, each also .gz; .fz)",
        f"{root}/sub.fits": "not FITS: a directory, not a file (subfolders are not scanned)",
        f"{root}/missing.fits": "unreadable: no such file",
    }


def test_an_output_url_is_locked_by_one_holder_at_a_time(memory):
    fs, root = memory
    out = urls.join(root, "run1")
    lock = lock_folder(out)
    assert isinstance(lock, ObjectLock) and fs.exists(f"/zdask-test/run1/{LOCK_NAME}")
    with pytest.raises(FolderInUse) as refused:
        lock_folder(out)
    assert refused.value.pid is not None and refused.value.folder == out
    lock.release()
    assert not fs.exists(f"/zdask-test/run1/{LOCK_NAME}")
    with lock_folder(out + "/"):  # (the same folder)
        with pytest.raises(FolderInUse):
            lock_folder(out)
    assert not fs.exists(f"/zdask-test/run1/{LOCK_NAME}")


def test_a_lock_left_by_a_dead_process_of_this_host_is_taken_over(memory):
    fs, root = memory
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    fs.pipe_file(f"/zdask-test/run1/{LOCK_NAME}", f"{socket.gethostname()} {dead_pid} abc".encode())
    with lock_folder(urls.join(root, "run1")):
        assert fs.cat_file(f"/zdask-test/run1/{LOCK_NAME}").split()[1] == str(os.getpid()).encode()
    # One of another host is not: nothing tells whether that run still goes on.
    fs.pipe_file(f"/zdask-test/run1/{LOCK_NAME}", f"elsewhere.example {dead_pid} abc".encode())
    with pytest.raises(FolderInUse) as refused:
        lock_folder(urls.join(root, "run1"))
    assert (refused.value.host, refused.value.pid) == ("elsewhere.example", dead_pid)


def test_a_file_url_is_a_local_path(tmp_path):
    assert urls.normalise(f"file://{tmp_path}") == str(tmp_path)
    assert urls.normalise("s3://bucket/run1//") == "s3://bucket/run1"
    assert urls.inside("s3://bucket/frames/out", "s3://bucket/frames/")
    assert not urls.inside("s3://bucket/frames2", "s3://bucket/frames")
    assert not urls.inside(str(tmp_path), "s3://bucket") and urls.inside(str(tmp_path / "a"), f"file://{tmp_path}")

"""The output folder's lock: one holder at a time, released by the OS when the holder dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from zdask.io.folderlock import LOCK_NAME, FolderInUse, FolderLock

# A child process that takes the lock, says so, and waits to be killed.
HOLDER = """
import sys, time
from zdask.io.folderlock import FolderLock
lock = FolderLock.acquire(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


def test_a_held_folder_is_refused_until_released(tmp_path):
    folder = str(tmp_path / "out")
    lock = FolderLock.acquire(folder)  # creates the folder
    assert os.path.isdir(folder) and lock.held
    with pytest.raises(FolderInUse) as refused:
        FolderLock.acquire(folder)
    assert refused.value.pid == os.getpid() and refused.value.folder == folder
    lock.release()
    lock.release()  # idempotent
    with FolderLock.acquire(folder) as again:
        assert again.held
    assert not again.held
    assert sorted(os.listdir(folder)) == [LOCK_NAME]


def test_a_killed_holder_leaves_the_folder_free(tmp_path):
    folder = str(tmp_path / "out")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen([sys.executable, "-c", HOLDER, folder], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(FolderInUse) as refused:
            FolderLock.acquire(folder)
        assert refused.value.pid == child.pid
        assert f"(pid {child.pid})" in str(refused.value)
        os.kill(child.pid, signal.SIGKILL)  # no clean-up code runs in the child
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
    with FolderLock.acquire(folder) as lock:
        assert lock.held

"""WriteError: a failed write names its file and cause, and a full disk says what was kept."""

from __future__ import annotations

import errno
import os
import pickle

import pytest

from zdask.io.errors import FileError, FrameReadError, WriteError, writing
from zdask.io.outputs import write_json


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux) for a real ENOSPC")
def test_a_full_disk_is_named_with_the_file_and_says_previous_outputs_were_kept(tmp_path):
    target = str(tmp_path / "out" / "mosaic.fits")
    with pytest.raises(WriteError) as err:
        with writing(target):
            with open("/dev/full", "wb") as full:  # every write there fails with ENOSPC
                full.write(b"\0" * 4096)
                full.flush()
    text = str(err.value)
    assert err.value.disk_full and err.value.errno == errno.ENOSPC and err.value.path == target
    assert text.startswith(f"cannot write {target}: No space left on device")
    assert "disk is full" in text and "keep their previous version" in text and "\n" not in text


def test_a_write_that_fails_names_the_final_file_and_leaves_the_old_one(tmp_path):
    target = tmp_path / "report.json"
    target.mkdir()  # a folder where the file goes: the rename onto it fails
    (target / "kept").write_text("old")
    with pytest.raises(WriteError) as err:
        write_json(str(target), {"a": 1})
    assert err.value.path == str(target) and not err.value.disk_full
    assert str(err.value) == f"cannot write {target}: {os.strerror(err.value.errno)}"
    assert (target / "kept").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temporary left


def test_errors_cross_process_boundaries_intact():
    for error in (WriteError("/data/out/x.zarr", "No space left on device", errno.ENOSPC),
                  FrameReadError("/data/x.fits", "boom")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error) and isinstance(copy, FileError)
    assert pickle.loads(pickle.dumps(WriteError("p", "r", errno.ENOSPC))).disk_full

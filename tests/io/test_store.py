"""Fingerprints of the working store."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from zdask.io import store


def test_fingerprint_is_stable_and_follows_the_results_revision(monkeypatch):
    a = store.fingerprint("frame.fits", {"reject": "winsorized"}, 3)
    assert a == store.fingerprint("frame.fits", {"reject": "winsorized"}, 3)
    assert a != store.fingerprint("frame.fits", {"reject": "kappa_sigma"}, 3)
    # a code change that alters results bumps the revision: every stored stage is recomputed
    monkeypatch.setattr(store, "RESULTS_REVISION", store.RESULTS_REVISION + 1)
    assert store.fingerprint("frame.fits", {"reject": "winsorized"}, 3) != a


def test_a_complete_entry_is_never_written_again(tmp_path):
    root = str(tmp_path / "work.zarr")
    group = store.open_store(root)
    store.create_array(group, "mosaic/image", (4, 6), "float32", (4, 6))[:] = 1.0
    store.mark_complete(root, "mosaic", "fp-old", wcs={"CRVAL1": 1.0})
    # Replacing one of its arrays (a recompute for other tiles or settings) is refused...
    with pytest.raises(store.CompleteEntryError, match="mosaic"):
        store.create_array(group, "mosaic/image", (4, 6), "float32", (4, 6))
    with pytest.raises(store.CompleteEntryError):
        store.create_array(group, "mosaic/coverage", (4, 6), "float32", (4, 6))
    assert store.is_complete(root, "mosaic", "fp-old")
    np.testing.assert_array_equal(group["mosaic/image"][:], 1.0)
    # ...until the entry is unmarked: from then on a crash leaves it incomplete, not "fp-old".
    store.begin_entry(root, "mosaic")
    assert not store.is_complete(root, "mosaic", "fp-old")
    assert zarr.open_group(root, path="mosaic", mode="r").attrs["wcs"] == {"CRVAL1": 1.0}
    store.create_array(group, "mosaic/image", (4, 6), "float32", (4, 6))[:] = 2.0
    store.mark_complete(root, "mosaic", "fp-new")
    assert store.is_complete(root, "mosaic", "fp-new")


def test_a_complete_array_entry_is_never_overwritten(tmp_path):
    root = str(tmp_path / "work.zarr")
    group = store.open_store(root)
    store.create_array(group, "frames/f", (3,), "float32", (3,))[:] = 5.0
    store.mark_complete(root, "frames/f", "fp")
    with pytest.raises(store.CompleteEntryError):
        store.create_array(group, "frames/f", (3,), "float32", (3,))
    store.begin_entry(root, "frames/f")
    store.begin_entry(root, "frames/absent")  # nothing to unmark: no error
    store.create_array(group, "frames/f", (3,), "float32", (3,))[:] = 6.0
    assert not store.is_complete(root, "frames/f", "fp")


def test_the_store_root_is_the_work_setting_or_work_zarr_in_the_output_folder(tmp_path):
    out = str(tmp_path / "out")
    assert store.work_store_root(out, None) == str(tmp_path / "out" / "work.zarr")
    assert store.work_store_root(out, "s3://bucket/run1/") == "s3://bucket/run1"
    # a file:// URL is its path: local stores keep their direct chunk reads and writes
    assert store.work_store_root(out, f"file://{tmp_path}/shared.zarr") == f"{tmp_path}/shared.zarr"
    assert store.is_url("s3://bucket/run1") and not store.is_url(str(tmp_path))
    assert store.url_problem("s3://bucket/run1") is None
    assert store.url_problem("nosuchprotocol://x") == "unknown protocol 'nosuchprotocol'"


def test_a_store_at_a_url_keeps_entries_marks_and_rows(tmp_path):
    """The same entries, marks and row reads through fsspec (memory://) as in a folder."""
    from zdask.io.chunkrows import read_rows, write_rows

    data = np.arange(40 * 6 * 3, dtype=np.float32).reshape(40, 6, 3)
    for root in (str(tmp_path / "work.zarr"), "memory://zdask-test-store/work.zarr"):
        group = store.open_store(root)
        arr = store.create_array(group, "frames/a", data.shape, "float32", (16, 6, 3),
                                 compressor=store.FRAME_COMPRESSOR)
        write_rows(arr, data)
        assert not store.is_complete(root, "frames/a", "fp")
        store.mark_complete(root, "frames/a", "fp", stats={"median": 1.5})
        assert store.is_complete(root, "frames/a", "fp") and not store.is_complete(root, "frames/b", "fp")
        with pytest.raises(store.CompleteEntryError):
            store.create_array(group, "frames/a", data.shape, "float32", (16, 6, 3))
        reopened = store.open_array(root, "frames/a", "fp")
        np.testing.assert_array_equal(read_rows(reopened, 5, 37), data[5:37])
        assert store.open_node(root, "frames/a").attrs["stats"] == {"median": 1.5}
    assert list(store.open_group("memory://zdask-test-store/work.zarr", "frames")) == ["a"]

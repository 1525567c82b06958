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

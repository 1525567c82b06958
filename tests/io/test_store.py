"""Fingerprints of the working store."""

from __future__ import annotations

from zdask.io import store


def test_fingerprint_is_stable_and_follows_the_results_revision(monkeypatch):
    a = store.fingerprint("frame.fits", {"reject": "winsorized"}, 3)
    assert a == store.fingerprint("frame.fits", {"reject": "winsorized"}, 3)
    assert a != store.fingerprint("frame.fits", {"reject": "kappa_sigma"}, 3)
    # a code change that alters results bumps the revision: every stored stage is recomputed
    monkeypatch.setattr(store, "RESULTS_REVISION", store.RESULTS_REVISION + 1)
    assert store.fingerprint("frame.fits", {"reject": "winsorized"}, 3) != a

"""The classic mode's mosaic, pinned bit for bit.

The runner is being redesigned so that modes plug in (issue 16); the classic mode must come out
of it exactly as it was. The constants below are the SHA-256 of the small survey's mosaic (image,
COVERAGE, ALPHA) computed before the redesign; a re-run into the same folder reuses every stage
and writes the same bytes. The image's was pinned again when the sky model's common curvature
changed (issue 15: the median of the tiles' own curvatures, sources widened), on the code before that change plus
that change alone; coverage and alpha did not move. It was pinned again when each tile's glow
curvature along its own gradient replaced the one curvature for all tiles (issue 15), on the
code before that change plus that change alone; coverage and alpha did not move.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from astropy.io import fits

import zdask

PINNED = {
    "image": "156df6f4988e26c9f67e2a913bb9a35ab3c056b8d3216a2263e208f2c66b049c",
    "COVERAGE": "10cb15940d4acf1463f9df3b3ac95440a8f5b65bdad637ab5753220e42960ea7",
    "ALPHA": "2da96f11b47c835bbd067b83a9a22271141d067dc06f6c6ebd5a0bc3e661b41b",
}
SHAPE = (3, 880, 520)


def _digests(path) -> dict[str, str]:
    with fits.open(path) as hdul:
        arrays = {"image": hdul[0].data, "COVERAGE": hdul["COVERAGE"].data, "ALPHA": hdul["ALPHA"].data}
        assert arrays["image"].shape == SHAPE
        # (FITS byte order, whatever the reader hands back)
        return {name: hashlib.sha256(np.ascontiguousarray(a, dtype=a.dtype.newbyteorder(">")).tobytes()).hexdigest()
                for name, a in arrays.items()}


@pytest.fixture(scope="module")
def classic_run(small_survey, tmp_path_factory):
    survey, _ = small_survey
    out = tmp_path_factory.mktemp("pin") / "out"
    config = zdask.Config(workers=1, threads_per_worker=2, altaz_cleanup=True).validate()
    report = zdask.run([str(survey / "frames")], str(out), config, say=lambda text: None)
    return survey, out, config, report


def test_the_classic_mosaic_is_the_pinned_one(classic_run):
    _, out, _, report = classic_run
    assert report["mosaic"]["reused"] is False
    assert _digests(out / "mosaic.fits") == PINNED


def test_a_rerun_reuses_every_stage_and_writes_the_same_bytes(classic_run):
    survey, out, config, _ = classic_run
    report = zdask.run([str(survey / "frames")], str(out), config, say=lambda text: None)
    assert report["frames_calibrated"] == 0
    assert report["tiles_computed"] == [] and sorted(report["tiles_reused"]) == [0, 1, 2, 3]
    assert report["mosaic"]["reused"] is True
    assert json.loads((out / "report.json").read_text())["mosaic"]["reused"] is True
    assert _digests(out / "mosaic.fits") == PINNED

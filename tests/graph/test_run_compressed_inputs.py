"""A run reads gzip- and tile-compressed frames like plain ones and reports what it skipped."""

from __future__ import annotations

import gzip
import os
import shutil

import numpy as np
from astropy.io import fits

from zdask.config import Config
from zdask.graph.runner import run


def _run_mosaic(folder, out):
    config = Config(workers=1, threads_per_worker=2, align=False)
    report = run([str(folder)], str(out), config, say=lambda text: None)
    with fits.open(out / "mosaic.fits") as hdul:
        return report, hdul[0].data.copy(), hdul["COVERAGE"].data.copy()


def test_compressed_frames_give_the_same_mosaic(small_survey, tmp_path):
    survey, manifest = small_survey
    panel = [survey / f["file"] for f in manifest["frames"] if f["panel"] == 0][:8]
    plain, mixed = tmp_path / "plain", tmp_path / "mixed"
    plain.mkdir()
    mixed.mkdir()
    for i, path in enumerate(panel):
        shutil.copy2(path, plain / path.name)
        if i % 3 == 0:  # every third frame gzip'ed
            with open(path, "rb") as src, gzip.open(mixed / f"{path.name}.gz", "wb") as dst:
                shutil.copyfileobj(src, dst)
        elif i % 3 == 1:  # every third tile-compressed (Rice, lossless on the uint16 data)
            with fits.open(path) as hdul:
                image = fits.CompImageHDU(hdul[0].data, hdul[0].header, compression_type="RICE_1")
                fits.HDUList([fits.PrimaryHDU(), image]).writeto(mixed / f"{path.stem}.fits.fz")
        else:
            shutil.copy2(path, mixed / path.name)
    (mixed / "session.json").write_text("{}")
    (mixed / "rejected").mkdir()
    os.symlink("moved-elsewhere.fits", mixed / "gone.fits")

    ref_report, ref_image, ref_coverage = _run_mosaic(plain, tmp_path / "out_plain")
    report, image, coverage = _run_mosaic(mixed, tmp_path / "out_mixed")
    assert ref_report["frames_used"] == report["frames_used"] == len(panel)
    np.testing.assert_array_equal(coverage, ref_coverage)
    # Two runs of the very same plain frames differ in a few dozen of 435456 values by one
    # float32 step (measured: 0 or 37), so allow a few steps; reading a compressed frame wrong
    # (its BZERO, its HDU, its orientation) moves values by tens to thousands of ADU.
    assert np.array_equal(np.isnan(image), np.isnan(ref_image))
    np.testing.assert_allclose(image, ref_image, rtol=1e-6, atol=0)
    assert ref_report["frames_rejected"] == []
    assert {os.path.basename(r["path"]): r["reason"] for r in report["frames_rejected"]} == {
        "gone.fits": "unreadable: broken symbolic link",
        "rejected": "not FITS: a directory, not a file (subfolders are not scanned)",
        "session.json": "not FITS: not a FITS file name (.fit, .fits, .fts, each also .gz; .fz)",
    }

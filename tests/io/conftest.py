"""Fixtures of tests/io: a folder mixing plain and compressed copies of a real frame."""

from __future__ import annotations

import gzip
import os
import shutil

import pytest
from astropy.io import fits


def write_compressed_copies(frame_path, folder) -> dict[str, str]:
    """Copies of one frame in ``folder``: ``plain.fits``, ``gz.fits.gz`` (gzip of the file) and
    ``rice.fits.fz`` (its uint16 data and header as a Rice CompImageHDU in extension 1)."""
    names = {"plain": "plain.fits", "gz": "gz.fits.gz", "fz": "rice.fits.fz"}
    paths = {kind: str(folder / name) for kind, name in names.items()}
    shutil.copyfile(frame_path, paths["plain"])
    with open(frame_path, "rb") as src, gzip.open(paths["gz"], "wb") as dst:
        shutil.copyfileobj(src, dst)
    with fits.open(frame_path) as hdul:
        data, header = hdul[0].data, hdul[0].header
        assert data.dtype == "uint16" and header["BAYERPAT"].strip()  # a raw Bayer frame
        compressed = fits.CompImageHDU(data, header, compression_type="RICE_1")
        fits.HDUList([fits.PrimaryHDU(), compressed]).writeto(paths["fz"])
    return paths


@pytest.fixture
def mixed_frame_folder(small_survey, tmp_path):
    """``(folder, paths)``: the three copies of a survey frame, plus entries a scan must skip
    and name: a symbolic link loop, a directory named ``x.fits``, a broken symbolic link, a
    text file and a hidden file."""
    survey, manifest = small_survey
    folder = tmp_path / "frames"
    folder.mkdir()
    paths = write_compressed_copies(survey / manifest["frames"][0]["file"], folder)
    os.symlink("loop.fits", folder / "loop.fits")
    (folder / "x.fits").mkdir()
    os.symlink("nowhere.fits", folder / "broken.fits")
    (folder / "notes.txt").write_text("seeing was good")
    (folder / "._plain.fits").write_bytes(b"\0\5\26\7 mac resource fork")
    return folder, paths

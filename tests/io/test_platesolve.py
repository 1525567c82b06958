"""Optional plate solving: what can be tested without solve-field or ASTAP installed."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
import sys

import numpy as np
import pytest
from astropy.io import fits

from zdask.graph.geometry import tan_header
from zdask.io import platesolve
from zdask.io.platesolve import available_solver, plate_solve, read_wcs_file, solver_command

TRUE_WCS = tan_header(10.68, 41.27, 2.4, (135.5, 240.5))


def _unsolved_fits(path):
    header = fits.Header()
    header["RA"], header["DEC"] = 10.7, 41.3
    fits.PrimaryHDU(np.zeros((480, 270), np.uint16), header).writeto(path)
    return path


def _fake_solver(bin_dir, name, *, write_wcs=True, sleep_s=0.0):
    """An executable that records its arguments (and a copy of the image it was given as
    ``<name>.input``) and writes solved.wcs like the real tool."""
    log = bin_dir / f"{name}.argv.json"
    script = f"""#!{sys.executable}
import json, os, shutil, sys, time
from astropy.io import fits
args = sys.argv[1:]
json.dump({{"argv": args, "cwd": os.getcwd()}}, open({str(log)!r}, "w"))
shutil.copyfile(args[-1] if "--dir" in args else args[args.index("-f") + 1], {str(bin_dir / name)!r} + ".input")
time.sleep({sleep_s})
if {write_wcs!r}:
    if "--dir" in args:
        out = os.path.join(args[args.index("--dir") + 1], args[args.index("--out") + 1] + ".wcs")
    else:
        out = args[args.index("-o") + 1] + ".wcs"
    header = fits.Header()
    for key, value in {TRUE_WCS!r}.items():
        header[key] = value
    header.tofile(out)
    open(os.path.join(os.path.dirname(out), "by-product.axy"), "w").write("x")
"""
    exe = bin_dir / name
    exe.write_text(script)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return log


@pytest.fixture
def empty_path(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


def test_no_solver_installed(empty_path, tmp_path):
    assert available_solver() is None
    assert plate_solve(str(_unsolved_fits(tmp_path / "a.fits"))) is None


def test_solver_preference_order(empty_path):
    _fake_solver(empty_path, "astap")
    assert available_solver() == "astap"
    _fake_solver(empty_path, "solve-field")
    assert available_solver() == "solve-field"


def test_command_lines():
    cmd = solver_command("solve-field", "/t/frame.fits", "/t", scale_arcsec_hint=2.4, ra_deg=10.7,
                         dec_deg=41.3, timeout_s=30)
    assert cmd[0] == "solve-field" and cmd[-1] == "/t/frame.fits"
    joined = " ".join(cmd)
    for part in ("--dir /t", "--out solved", "--no-plots", "--new-fits none", "--cpulimit 30",
                 "--scale-units arcsecperpix", "--scale-low 2.16", "--scale-high 2.64", "--ra 10.700000"):
        assert part in joined
    cmd = solver_command("astap", "/t/frame.fits", "/t", executable="/opt/astap", scale_arcsec_hint=2.4,
                         height_px=1920)
    assert cmd[:3] == ["/opt/astap", "-f", "/t/frame.fits"] and "-update" not in cmd
    assert cmd[cmd.index("-o") + 1] == os.path.join("/t", "solved") and cmd[cmd.index("-fov") + 1] == "1.2800"
    with pytest.raises(ValueError):
        solver_command("nova", "x", "y")


@pytest.mark.parametrize("name", ["solve-field", "astap"])
def test_solve_runs_in_a_temporary_directory_and_parses_the_wcs(empty_path, tmp_path, name):
    log = _fake_solver(empty_path, name)
    data = tmp_path / "data"
    data.mkdir()
    image = _unsolved_fits(data / "Light_001.fit")
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    cards = plate_solve(str(image), scale_arcsec_hint=2.4, timeout_s=20)
    assert cards is not None
    assert cards["CRVAL1"] == pytest.approx(10.68) and cards["CRVAL2"] == pytest.approx(41.27)
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before  # nothing written beside it
    run = json.loads(log.read_text())
    assert str(data) not in " ".join(run["argv"]) and not os.path.exists(run["cwd"])  # temp dir gone


@pytest.mark.parametrize("compression", ["gzip", "tiles"])
def test_compressed_frame_reaches_the_solver_as_plain_fits(empty_path, tmp_path, compression):
    _fake_solver(empty_path, "astap")
    plain = _unsolved_fits(tmp_path / "a.fits")
    data = np.random.default_rng(2).integers(0, 65535, (480, 270)).astype(np.uint16)
    header = fits.getheader(plain)
    if compression == "gzip":
        image = tmp_path / "a.fits.gz"
        with gzip.open(image, "wb") as fh:
            fits.PrimaryHDU(data, header).writeto(fh)
    else:
        image = tmp_path / "a.fits.fz"
        fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, header)]).writeto(image)
    cards = plate_solve(str(image), scale_arcsec_hint=2.4, timeout_s=20)
    assert cards is not None and cards["CRVAL2"] == pytest.approx(41.27)
    given = empty_path / "astap.input"
    with fits.open(given) as hdul:  # one plain primary HDU with the frame's exact pixels
        assert open(given, "rb").read(9) == b"SIMPLE  =" and len(hdul) == 1
        assert hdul[0].data.dtype == np.uint16 and np.array_equal(hdul[0].data, data)
        assert hdul[0].header["RA"] == 10.7


def test_failed_or_slow_solves_return_none(empty_path, tmp_path):
    image = str(_unsolved_fits(tmp_path / "a.fits"))
    _fake_solver(empty_path, "solve-field", write_wcs=False)
    assert plate_solve(image) is None
    _fake_solver(empty_path, "solve-field", sleep_s=30)
    assert plate_solve(image, timeout_s=0.5) is None
    assert plate_solve(str(tmp_path / "missing.fits")) is None


def test_read_wcs_file_text_and_garbage(tmp_path):
    header = fits.Header()
    for key, value in TRUE_WCS.items():
        header[key] = value
    header.totextfile(tmp_path / "a.wcs")
    assert read_wcs_file(str(tmp_path / "a.wcs"), 270, 480)["CRVAL2"] == pytest.approx(41.27)
    (tmp_path / "b.wcs").write_text("nonsense")
    assert read_wcs_file(str(tmp_path / "b.wcs"), 270, 480) is None


@pytest.mark.skipif(shutil.which("solve-field") is None and shutil.which("astap") is None,
                    reason="neither solve-field nor astap is installed")
def test_real_solver_on_a_simulated_frame(small_survey, tmp_path):  # pragma: no cover - needs a solver
    out, manifest = small_survey
    entry = manifest["frames"][0]
    image = tmp_path / "frame.fits"
    with fits.open(out / entry["file"]) as hdul:
        header = hdul[0].header.copy()
        for key in [k for k in header if k.startswith(("CTYPE", "CRVAL", "CRPIX", "CD1_", "CD2_", "CUNIT"))]:
            del header[key]
        fits.PrimaryHDU(hdul[0].data, header).writeto(image)
    cards = platesolve.plate_solve(str(image), scale_arcsec_hint=2.4, timeout_s=60)
    if cards is None:
        pytest.skip("the installed solver found no solution (index files missing?)")
    assert abs(cards["CRVAL2"] - entry["wcs_true"]["CRVAL2"]) < 0.05

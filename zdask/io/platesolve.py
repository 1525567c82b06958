"""Optional plate solving of frames without WCS: astrometry.net's ``solve-field`` or ASTAP.

Neither tool is required: :func:`available_solver` says whether one is on ``PATH`` and
:func:`plate_solve` returns None when none is, when the solve fails or times out. The solver
runs in a temporary directory on a *copy* of the input file, so nothing is ever written next
to the input (ASTAP writes ``.ini``/``.wcs`` files beside the image it solves, and
``solve-field`` a dozen by-products).
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import tempfile
import warnings

from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning

from zdask.io.fitsheader import HeaderError, celestial_wcs, fits_stream, image_axes

__all__ = ["SOLVERS", "available_solver", "solver_command", "read_wcs_file", "plate_solve"]

#: solvers in order of preference (executable names looked up on PATH)
SOLVERS = ("solve-field", "astap")
_OUT_BASE = "solved"
_IMAGE_HDU_TYPES = (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)


def available_solver() -> str | None:
    """``"solve-field"`` or ``"astap"`` (the first found on PATH, in that order), else None."""
    for name in SOLVERS:
        if shutil.which(name):
            return name
    return None


def solver_command(
    solver: str, image_path: str, out_dir: str, *, executable: str | None = None,
    scale_arcsec_hint: float | None = None, height_px: int | None = None,
    ra_deg: float | None = None, dec_deg: float | None = None, timeout_s: float = 60,
) -> list[str]:
    """The command line that solves ``image_path`` and writes ``out_dir/solved.wcs``.

    ``scale_arcsec_hint`` narrows the scale search to ±10 % (solve-field) or gives ASTAP the
    field height (needs ``height_px``); ``ra_deg``/``dec_deg`` (e.g. the header's pointing)
    restrict solve-field to 10° around them (ASTAP reads them from the header itself).
    """
    exe = executable or solver
    out_base = os.path.join(out_dir, _OUT_BASE)
    if solver == "solve-field":
        cmd = [exe, "--dir", out_dir, "--out", _OUT_BASE, "--overwrite", "--no-plots",
               "--new-fits", "none", "--temp-dir", out_dir, "--downsample", "2",
               "--cpulimit", str(max(1, int(math.ceil(timeout_s))))]
        if scale_arcsec_hint:
            cmd += ["--scale-units", "arcsecperpix", "--scale-low", f"{0.9 * scale_arcsec_hint:.6g}",
                    "--scale-high", f"{1.1 * scale_arcsec_hint:.6g}"]
        if ra_deg is not None and dec_deg is not None:
            cmd += ["--ra", f"{ra_deg:.6f}", "--dec", f"{dec_deg:.6f}", "--radius", "10"]
        return cmd + [image_path]
    if solver == "astap":
        cmd = [exe, "-f", image_path, "-o", out_base, "-wcs", "-r", "30", "-z", "0"]
        if scale_arcsec_hint and height_px:
            cmd += ["-fov", f"{scale_arcsec_hint * height_px / 3600.0:.4f}"]
        return cmd
    raise ValueError(f"unknown solver {solver!r}; known: {', '.join(SOLVERS)}")


def read_wcs_file(path: str, width: int, height: int) -> dict | None:
    """Celestial WCS cards of a solver's ``.wcs`` header file (FITS blocks or text), or None."""
    header = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        for reader in (fits.Header.fromfile, fits.Header.fromtextfile):
            try:
                header = reader(path)
            except Exception:
                header = None
            if header is not None and len(header):
                break
    if not header:
        return None
    try:
        return celestial_wcs(header, width, height)[1]
    except HeaderError:
        return None


def _finite(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _run(cmd: list[str], cwd: str, timeout_s: float) -> bool:
    """Run the solver in its own process group; on timeout the whole group is killed."""
    posix = hasattr(os, "killpg")
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=posix)
    except OSError:
        return False
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        if posix:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
        else:
            proc.kill()
        proc.wait()
        return False
    return True


def _solver_input(path: str, tmp: str) -> tuple[str, fits.Header]:
    """Write the file the solver reads into ``tmp``: ``(its path, the image header)``.

    A plain FITS file with its image in the primary HDU is copied byte for byte; a
    gzip-compressed one, a tile-compressed image (``.fz``) or an image in an extension is
    written as a plain single-HDU FITS file, which every solver reads. Raises on any problem.
    """
    stream = fits_stream(path)
    if stream is None:
        raise ValueError(f"{path}: not FITS")
    source = stream[0]
    with fits.open(source, memmap=False, lazy_load_hdus=True) as hdul:
        index, hdu = next((i, h) for i, h in enumerate(hdul)
                          if isinstance(h, _IMAGE_HDU_TYPES) and len(image_axes(h.header)) >= 2)
        header = hdu.header.copy()
        if index == 0 and isinstance(source, str):
            image = os.path.join(tmp, "frame" + (os.path.splitext(path)[1].lower() or ".fits"))
            shutil.copyfile(path, image)
        else:
            image = os.path.join(tmp, "frame.fits")
            fits.PrimaryHDU(hdu.data, header).writeto(image)
    return image, header


def plate_solve(
    path: str, *, scale_arcsec_hint: float | None = None, timeout_s: float = 60,
    solver: str | None = None,
) -> dict | None:
    """Plate-solve one FITS file: its celestial WCS cards, or None (no solver, no solution).

    ``solver`` forces one of :data:`SOLVERS` (default: :func:`available_solver`). The file is
    copied (its image decompressed, see :func:`_solver_input`) into a temporary directory, the solver runs there with a ``timeout_s`` limit, and the
    directory is removed afterwards.
    """
    name = solver or available_solver()
    exe = shutil.which(name) if name else None
    if not exe:
        return None
    with tempfile.TemporaryDirectory(prefix="zdask-solve-") as tmp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", AstropyWarning)
                image, header = _solver_input(path, tmp)
            axes = image_axes(header)
            width, height = int(axes[0]), int(axes[1])
        except Exception:
            return None
        ra, dec = _finite(header.get("RA")), _finite(header.get("DEC"))
        cmd = solver_command(name, image, tmp, executable=exe, scale_arcsec_hint=scale_arcsec_hint,
                             height_px=height, ra_deg=ra, dec_deg=dec, timeout_s=timeout_s)
        if not _run(cmd, tmp, 1.25 * timeout_s + 1):
            return None
        wcs_file = os.path.join(tmp, _OUT_BASE + ".wcs")
        if not os.path.isfile(wcs_file):
            return None
        return read_wcs_file(wcs_file, width, height)

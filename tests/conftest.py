"""Shared fixtures: small simulated surveys made once per test session."""

from __future__ import annotations

import pytest

from zdask.sim import SurveySpec, simulate_survey

# Small enough to simulate in about two seconds, large enough for 4 tiles with overlaps,
# alt-az rotation, trails and hot pixels. 16 frames per panel, so that the trails' faint wings
# are rejected too (the Student-t bound of kappa-sigma is ~20σ at 4 frames, ~4σ at 16; real
# panels hold tens to hundreds).
# Transparency 0.6-1.0 gives the panels photometric differences that harmonisation must remove.
SMALL_SURVEY = SurveySpec(panels=(2, 2), frames_per_panel=16, frame_size=(270, 480),
                          altaz_panels=(1,), seed=3, transparency_range=(0.6, 1.0))


@pytest.fixture(scope="session")
def small_survey(tmp_path_factory):
    """A 2×2 survey of 16 frames of 270×480 (panel 1 alt-az); read-only for tests."""
    out = tmp_path_factory.mktemp("survey")
    manifest = simulate_survey(out, SMALL_SURVEY)
    return out, manifest


@pytest.fixture(scope="session")
def chromium():
    """A real headless browser: ``chromium(page, png, width, height)`` renders the page file,
    saves a screenshot and returns the page's DOM after rendering. Skips where Chromium is not
    installed (``.ci/run`` and ``make test`` install Debian's ``chromium`` as root)."""
    import shutil
    import subprocess

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Chromium is not installed (as root: apt-get install -y chromium)")
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             "--disable-extensions", "--allow-file-access-from-files"]

    def render(page, png, width: int = 1200, height: int = 2000) -> str:
        url = f"file://{page}"
        shot = subprocess.run([*flags, f"--screenshot={png}", f"--window-size={width},{height}", url],
                              capture_output=True, text=True, timeout=120)
        assert shot.returncode == 0, shot.stderr[-2000:]
        dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
        assert dom.returncode == 0, dom.stderr[-2000:]
        return dom.stdout

    return render

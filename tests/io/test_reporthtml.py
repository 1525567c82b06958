"""report.html's builder: a pure function of the report's values and pictures, self-contained,
and drawn by a real browser (headless Chromium) into a page that is not blank."""

from __future__ import annotations

import base64
import io
import re
import warnings

import numpy as np
from PIL import Image

from zdask.io.reporthtml import PICTURE_PX, TileOutline, coverage_colours, render_report_html

SECTIONS = ("summary", "preview", "coverage", "tiles", "seams", "timings", "problems")
COVERAGE_TOP = (253, 231, 37)   # the colour map's brightest colour (most frames)
OUTLINE = (255, 221, 0)         # tile outlines and labels


def _report() -> dict:
    tile = {"mode": "EQ", "altaz_cleanup": False, "frames_excluded": [], "n_frames": 12,
            "rejected_fraction": 0.0125, "rgb_gains": [0.97, 1.0, 1.03], "healthy": True, "reused": False}
    return {
        "inputs": ["frames"], "mode": "classic", "frames_used": 23,
        "frames_rejected": [{"path": "frames/notes.txt", "reason": "not a FITS file name"}],
        "frames_excluded": [{"path": "frames/cloud_007.fits", "reason": "no usable signal (constant image)"}],
        "stages": {"scan": 0.5, "calibrate": 2.0, "tiles": 4.0, "mosaic": 1.0, "write": 0.25, "total": 7.75},
        "tiles": [
            {**tile, "id": 0, "gains": [1.0, 1.0, 1.0], "offsets": [0.0, 0.0, 0.0]},
            {**tile, "id": 1, "mode": "ALT_AZ", "altaz_cleanup": True, "alpha_applied": True, "n_frames": 11,
             "gains": [0.9123, 0.95, 0.99], "offsets": [-12.5, -3.0, 1.0],
             "frames_excluded": [{"path": "frames/trail_003.fits", "reason": "alignment failed"}]},
        ],
        "mosaic": {"shape": [120, 200], "channels": 3, "scale_arcsec": 2.4, "covered_fraction": 0.93,
                   "seam_before": [40.0, 30.0, 20.0], "seam_after": [2.0, 1.5, 1.0],
                   "pair_seam_before": [90.0, 70.0, 50.0], "pair_seam_after": [5.0, 4.0, 3.0]},
        "warnings": ["alt-az cleanup <requested> & done"],
    }


def _pictures():
    rows, cols = 120, 200
    y, x = np.mgrid[0:rows, 0:cols]
    preview = np.stack([x * 255 // cols, y * 255 // rows, np.full_like(x, 60)], axis=-1).astype(np.uint8)
    preview[50:54, 90:94] = 255  # a star
    coverage = np.zeros((rows, cols), np.float32)
    coverage[10:110, 10:120] += 12
    coverage[10:110, 80:190] += 11
    outlines = [TileOutline(0, ((10, 10), (120, 10), (120, 110), (10, 110)), "tile 0 · 12 frames"),
                TileOutline(1, ((80, 10), (190, 10), (190, 110), (80, 110)), "tile 1 · 11 frames")]
    return preview, coverage, outlines


def _data_pngs(page: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(data)))
            for data in re.findall(r'href="data:image/png;base64,([^"]+)"', page)]


def test_the_page_has_every_section_and_the_reports_figures():
    preview, coverage, outlines = _pictures()
    page = render_report_html(_report(), preview, coverage, outlines)
    assert [m for m in re.findall(r'<section id="([a-z]+)"', page)] == list(SECTIONS)
    tiles = page[page.index('id="tiles"'):page.index('id="seams"')]
    assert "ALT_AZ" in tiles and "1.25%" in tiles and "0.912, 0.95, 0.99" in tiles and "-12.5, -3, 1" in tiles
    assert "on, applied" in tiles
    problems = page[page.index('id="problems"'):]
    assert "alt-az cleanup &lt;requested&gt; &amp; done" in problems  # escaped, never markup
    assert "frames/cloud_007.fits</code>: no usable signal" in problems
    assert "frames/trail_003.fits</code>: alignment failed (tile 1)" in problems
    assert "frames/notes.txt</code>: not a FITS file name" in problems
    seams = page[page.index('id="seams"'):page.index('id="timings"')]
    assert seams.count('class="bar before"') == 6 and seams.count('class="bar after"') == 6
    timings = page[page.index('id="timings"'):page.index('id="problems"')]
    assert timings.count('class="bar timing"') == 5 and "Total 7.75 s" in timings
    assert page.count('<polygon class="tile"') == 4  # both tiles, on the preview and on the coverage


def test_the_page_needs_no_network_and_embeds_its_pictures():
    preview, coverage, outlines = _pictures()
    page = render_report_html(_report(), preview, coverage, outlines)
    assert not re.search(r'(src|href)="(?!data:|#)', page)  # nothing fetched from elsewhere
    assert "<script" not in page and "@import" not in page
    pictures = _data_pngs(page)
    assert [p.size for p in pictures] == [(200, 120), (200, 120)]
    assert np.array_equal(np.asarray(pictures[0].convert("RGB")), preview)
    assert np.array_equal(np.asarray(pictures[1].convert("RGB")), coverage_colours(coverage, 23.0))


def test_a_mosaic_without_overlaps_says_it_has_no_seam_metric():
    report = _report()
    report["mosaic"].update(seam_before=[float("nan")] * 3, seam_after=[float("nan")] * 3,
                            pair_seam_before=[float("nan")] * 3, pair_seam_after=[float("nan")] * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no all-NaN reduction on the way
        page = render_report_html(report, None, None)
    seams = page[page.index('id="seams"'):page.index('id="timings"')]
    assert "No seam metric: no two tiles of the mosaic overlap." in seams and "<rect" not in seams


def test_a_large_preview_is_embedded_at_most_picture_width():
    preview = np.zeros((1500, 3000, 3), np.uint8)
    page = render_report_html(_report(), preview, None)
    (picture,) = _data_pngs(page)
    assert picture.size == (PICTURE_PX, PICTURE_PX // 2)
    assert 'id="coverage"' not in page


def test_coverage_colours_white_where_no_frame_and_the_top_colour_at_the_peak():
    colours = coverage_colours(np.array([[0.0, np.nan, 23.0, 40.0]]), 23.0)
    assert colours[0, 0].tolist() == [255, 255, 255] and colours[0, 1].tolist() == [255, 255, 255]
    assert colours[0, 2].tolist() == list(COVERAGE_TOP) and colours[0, 3].tolist() == list(COVERAGE_TOP)


def _near(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int = 12) -> int:
    return int(np.count_nonzero(np.abs(pixels.astype(int) - colour).max(axis=-1) <= tolerance))


def test_a_real_browser_draws_the_page_with_its_pictures(chromium, tmp_path):
    preview, coverage, outlines = _pictures()
    page = tmp_path / "report.html"
    page.write_text(render_report_html(_report(), preview, coverage, outlines), encoding="utf-8")
    dom = chromium(page, tmp_path / "shot.png", 1200, 1800)
    assert all(f'<section id="{s}">' in dom for s in SECTIONS)
    shot = np.asarray(Image.open(tmp_path / "shot.png").convert("RGB"))
    assert shot.shape == (1800, 1200, 3)
    not_white = np.count_nonzero((shot < 245).any(axis=-1)) / (shot.shape[0] * shot.shape[1])
    assert not_white > 0.1, not_white
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 1000  # pictures, not only text on white
    assert _near(shot, COVERAGE_TOP) > 1000  # the coverage map is drawn, at its scale
    assert _near(shot, OUTLINE) > 200        # and the tile outlines over the pictures

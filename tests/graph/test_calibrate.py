"""Calibration stage pieces: which frames make a sensor's hot-pixel map."""

from __future__ import annotations

import dataclasses

import numpy as np

from zdask.config import Config
from zdask.graph import calibrate as cal
from zdask.graph.plan import spread_evenly
from zdask.io.scan import scan


def test_spread_evenly_takes_first_last_and_at_most_the_limit():
    assert list(spread_evenly(5, 32)) == [0, 1, 2, 3, 4]
    assert list(spread_evenly(5, 0)) == [0, 1, 2, 3, 4]
    picked = spread_evenly(540, 32)
    assert len(picked) == 32 and picked[0] == 0 and picked[-1] == 539
    assert np.all(np.diff(picked) >= 16) and np.all(np.diff(picked) <= 18)  # even steps


def test_hot_pixel_frames_are_spread_over_time_and_capped(small_survey):
    out, _ = small_survey
    frames = scan([str(out / "frames")]).frames
    assert len(frames) == 64
    shuffled = frames[::-1]
    chosen = cal.hot_pixel_frames(shuffled, Config(hot_pixel_frames=8))
    times = [f.time_mjd for f in chosen]
    assert len(chosen) == 8 and times == sorted(times)
    all_times = sorted(f.time_mjd for f in frames)
    assert times[0] == all_times[0] and times[-1] == all_times[-1]
    assert len(cal.hot_pixel_frames(frames, Config(hot_pixel_frames=0))) == 64


def test_a_sample_of_frames_finds_the_planted_hot_pixels(small_survey):
    """8 of the 64 frames find exactly the map all 64 find, and it holds every planted hot pixel."""
    out, manifest = small_survey
    frames = scan([str(out / "frames")]).frames
    config = Config()

    def hot_map(chosen):
        candidates = [cal.frame_hot_candidates(f, config.hot_pixel_sigma) for f in chosen]
        return cal.combine_hot_candidates(candidates, config)

    sampled = hot_map(cal.hot_pixel_frames(frames, dataclasses.replace(config, hot_pixel_frames=8)))
    width = frames[0].width
    planted = {p["y"] * width + p["x"] for p in manifest["hot_pixels"]}
    assert planted <= set(sampled.tolist())
    assert np.array_equal(sampled, hot_map(frames))


def test_the_hot_map_fingerprint_follows_the_frame_cap(small_survey):
    out, _ = small_survey
    frames = scan([str(out / "frames")]).frames
    assert (cal.hotmap_fingerprint(frames, Config(hot_pixel_frames=8))
            != cal.hotmap_fingerprint(frames, Config(hot_pixel_frames=16)))


def test_calibration_keeps_the_stars_alignment_would_find(small_survey, tmp_path):
    """The stars kept with a calibrated frame are exactly those detected on its stored green
    channel, their count is the statistics' n_stars, and the alignment reads them from there."""
    from zdask.graph.align import AlignSource, read_green, source_stars
    from zdask.io import store
    from zdask.ops.stars import detect_stars

    out, _ = small_survey
    frame = scan([str(out / "frames")]).frames[5]
    root = str(tmp_path / "work.zarr")
    stats = cal.calibrate_frame(cal.CalibrationJob(frame, root, "k", "fp", np.zeros(0, np.int64), 3))
    src = AlignSource(frame.path, root, "k", "fp", dict(frame.wcs_header), (frame.height, frame.width))
    kept = cal.stored_stars(store.open_array(root, "frames/k", "fp").attrs)
    assert len(kept) == stats["n_stars"] > 20
    assert np.array_equal(kept, detect_stars(read_green(src), max_stars=500))
    # Alignment uses the kept list (a planted one comes back), not a new detection.
    planted = kept[:7] + 0.25
    store.mark_complete(root, "frames/k", "fp2", stars=cal._stars_text(planted))  # a new token: not cached
    assert np.array_equal(source_stars(dataclasses.replace(src, token="fp2")), planted)


def test_the_sky_fit_reads_each_frame_binned_as_the_whole_frame_bins(small_survey, tmp_path):
    """Read and binned a band of rows at a time (the bands decompressed in the reading thread),
    a frame gives exactly what binning the whole stored frame gives."""
    from zdask.graph.harmonize import _read_binned
    from zdask.graph.tiles import TileSource
    from zdask.io import store
    from zdask.ops.warp import bin_image

    out, _ = small_survey
    frame = scan([str(out / "frames")]).frames[3]
    root = str(tmp_path / "work.zarr")
    cal.calibrate_frame(cal.CalibrationJob(frame, root, "k", "fp", np.zeros(0, np.int64), 3))
    whole = np.asarray(store.open_array(root, "frames/k", "fp")[:])
    source = TileSource(root, "k", "fp", dict(frame.wcs_header), (frame.height, frame.width))
    for factor in (8, 4, 5):
        assert np.array_equal(_read_binned(source, factor), bin_image(whole, factor))

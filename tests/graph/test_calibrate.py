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


def test_calibration_stores_the_binned_copy_the_sky_fit_reads(small_survey, tmp_path):
    """The binned copy is bit-identical to binning the stored frame, and the sky fit reads the
    copy when there is one at its factor (else it bins the frame itself)."""
    from zdask.graph.harmonize import _read_binned, bin_in_bands, binned_entry
    from zdask.graph.tiles import TileSource
    from zdask.io import store

    out, _ = small_survey
    frame = scan([str(out / "frames")]).frames[3]
    root = str(tmp_path / "work.zarr")
    cal.calibrate_frame(cal.CalibrationJob(frame, root, "k", "fp", np.zeros(0, np.int64), 3, match_bin=8))
    from_frame = bin_in_bands(store.open_array(root, "frames/k", "fp"), 8)
    name, fp = binned_entry("k", "fp", 8)
    assert store.is_complete(root, name, fp)
    assert np.array_equal(store.open_array(root, name, fp)[:], from_frame)
    source = TileSource(root, "k", "fp", dict(frame.wcs_header), (frame.height, frame.width))
    assert np.array_equal(_read_binned(source, 8), from_frame)
    assert np.array_equal(_read_binned(source, 4), bin_in_bands(store.open_array(root, "frames/k", "fp"), 4))
    # The copy is what is read: a planted copy comes back.
    store.begin_entry(root, name)
    arr = store.create_array(store.open_store(root), name, from_frame.shape, "float32", from_frame.shape)
    arr[:] = from_frame + 1.0
    store.mark_complete(root, name, fp)
    assert np.array_equal(_read_binned(source, 8), from_frame + 1.0)

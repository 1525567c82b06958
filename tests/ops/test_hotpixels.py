import numpy as np
import pytest

from zdask.ops import hotpixels as hp
from zdask.ops.hotpixels import correct_hot_pixels, hot_pixel_candidates, hot_pixel_map


def _frames(n=6, shape=(64, 80), seed=0):
    """Bayer-like noise frames with 3 fixed hot pixels and one sharp star that moves."""
    rng = np.random.default_rng(seed)
    hot = [(10, 11), (33, 50), (60, 3)]
    frames = []
    for i in range(n):
        raw = rng.normal(500, 10, shape).astype(np.float32)
        for y, x in hot:
            raw[y, x] = 9000
        raw[20 + 3 * i, 30 + 5 * i] += 7000  # an undersampled star, jittered between frames
        frames.append(raw)
    return frames, [np.ravel_multi_index(p, shape) for p in hot]


def test_map_keeps_fixed_pixels_and_drops_moving_stars():
    frames, hot = _frames()
    cands = [hot_pixel_candidates(f, "bayer", sigma=6.0) for f in frames]
    # Each frame alone flags the star as well: one frame cannot tell them apart.
    assert all(len(set(c) - set(hot)) >= 1 for c in cands)
    hmap = hot_pixel_map(cands, min_fraction=0.5)
    assert sorted(hmap.tolist()) == sorted(hot)


def test_too_few_frames_declare_nothing_hot():
    frames, _ = _frames(n=2)
    cands = [hot_pixel_candidates(f, "bayer", sigma=6.0) for f in frames]
    assert hot_pixel_map(cands, min_fraction=0.5).size == 0


def test_correction_replaces_only_hot_pixels_with_same_colour_median():
    frames, hot = _frames(n=1)
    raw = frames[0]
    fixed = correct_hot_pixels(raw, "bayer", np.array(hot))
    changed = np.flatnonzero(fixed != raw)
    assert sorted(changed.tolist()) == sorted(hot)
    y, x = np.unravel_index(hot[0], raw.shape)
    same_colour = raw[y - 2:y + 3:2, x - 2:x + 3:2]
    assert fixed[y, x] == np.median(same_colour)
    assert raw[y, x] == 9000  # the input is not modified


@pytest.mark.parametrize("layout, shape", [("bayer", (64, 90)), ("bayer", (7, 9)), ("mono", (31, 27))])
def test_correction_from_indices_equals_the_mask_of_the_whole_frame(layout, shape):
    """Hot positions taken straight from the indices (repeats, corners and edges included) are
    corrected exactly as marking them on a whole-frame mask and searching each plane does."""
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 65535, shape, dtype=np.uint16)
    hot = np.concatenate([rng.choice(raw.size, raw.size // 5, replace=False),
                          [0, raw.size - 1, shape[1] - 1, 5, 5]])
    expected = raw.astype(np.float32)
    mask = np.zeros(shape, dtype=bool)
    mask.ravel()[hot] = True
    for index, plane in hp._planes(expected, layout):
        ys, xs = np.nonzero(mask[index])
        plane[ys, xs] = hp._median3x3_at(plane, ys, xs)
    got = correct_hot_pixels(raw, layout, hot)
    assert np.array_equal(got, expected) and not np.array_equal(got, raw.astype(np.float32))

"""The group's alignment reference: a frame with a WCS, typical statistics, low noise, central."""

import pytest

from zdask.graph.align import AlignSource
from zdask.graph.align_reference import reference_index
from zdask.graph.geometry import tan_header


def _source(name, ra, dec, wcs=True):
    header = tan_header(ra, dec, 2.4, (270.5, 480.5)) if wcs else None
    return AlignSource(name, "root", name, "t", header, (960, 540))


def test_reference_index_prefers_low_noise_then_the_central_frame():
    sources = [_source("a", 10.0, 41.0), _source("b", 10.01, 41.0), _source("c", 10.02, 41.0),
               _source("d", 10.01, 41.0, wcs=False)]
    assert reference_index(sources, [5.0, 5.2, 5.1, 1.0]) == 1  # d has no WCS; b is central
    assert reference_index(sources, [5.0, 9.0, 5.1, 1.0]) in (0, 2)
    assert reference_index(sources, [5.0, 9.0, 4.0, 1.0]) == 2
    assert reference_index(sources, [None, float("nan"), 3.0, 1.0]) == 2
    assert reference_index(sources, [1.0] * 4, n_stars=[10, 200, 50, 300]) == 1
    assert reference_index(sources, [1.0] * 4) == reference_index(sources, [1.0] * 4)
    with pytest.raises(ValueError):
        reference_index([sources[3]], [1.0])


def test_reference_index_never_picks_a_frame_whose_statistics_are_not_typical():
    """A blank frame has the lowest noise of its group (0) but no stars and a background far
    from the others': it must not become the reference (it would fail every other frame)."""
    sources = [_source(n, 10.0 + 0.01 * i, 41.0) for i, n in enumerate("abcde")]
    noise = [70.0, 71.0, 0.0, 72.0, 70.5]
    stars = [30, 35, 0, 32, 31]
    background = [560.0, 550.0, 0.0, 555.0, 548.0]
    assert reference_index(sources, noise) == 2  # noise alone: the blank frame
    # among the typical frames (noise within 10 %) b and d are nearest the mean centre: b
    assert reference_index(sources, noise, stars, background=background) == 1
    assert reference_index(sources, noise, stars) == 1
    assert reference_index(sources, noise, background=background) == 1
    # a saturated frame: noise 0, background 65535, no stars
    assert reference_index(sources, noise, stars, background=[560.0, 550.0, 65535.0, 555.0, 548.0]) == 1
    # fogged: more background, fewer stars, and (in ADU) less noise than the clear frames
    assert reference_index(sources, [70.0, 71.0, 40.0, 72.0, 70.5], [30, 35, 12, 32, 31],
                           background=[560.0, 550.0, 2400.0, 555.0, 548.0]) == 1

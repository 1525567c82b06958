"""The main field (largest set of frames linked by overlapping footprints) and its canvas."""

from __future__ import annotations

import math

import numpy as np

from zdask.graph.field import OFF_FIELD_REASON, field_canvas, field_canvas_problem, main_field
from zdask.graph.geometry import tan_header
from zdask.io.scan import Frame

W, H, SCALE = 270, 480, 2.4  # px, px, arcsec/px: a 0.18° × 0.32° footprint
FOV = (W * SCALE / 3600, H * SCALE / 3600)


def _frame(path: str, ra: float, dec: float) -> Frame:
    cards = tan_header(ra, dec, SCALE, ((W + 1) / 2, (H + 1) / 2))
    return Frame(path=path, hdu=0, height=H, width=W, layout="bayer", bayer="GRBG", dtype="uint16",
                 wcs_header=cards, scale_arcsec=SCALE, ra_deg=ra, dec_deg=dec, fov_deg=FOV,
                 time_mjd=60000.0, exptime_s=10.0, mount="EQ", size_bytes=1, mtime_ns=1)


def _offset(ra0: float, dec0: float, east_deg: float, north_deg: float) -> tuple[float, float]:
    """The sky position ``east_deg``/``north_deg`` from (ra0, dec0) on its tangent plane."""
    cards = tan_header(ra0, dec0, 3600.0, (0.0, 0.0))  # 1 px = 1°, CRPIX 0 (1-based)
    from zdask.io.fitsheader import wcs_from_header

    ra, dec = wcs_from_header(cards).all_pix2world([-east_deg - 1.0], [north_deg - 1.0], 0)
    return float(ra[0]), float(dec[0])


def test_planted_components_keep_the_largest():
    panel = [_frame(f"m{i}{j}", *_offset(10.0, 41.0, 0.15 * i, 0.28 * j)) for i in range(3) for j in range(3)]
    pair = [_frame("p0", 40.0, 41.0), _frame("p1", *_offset(40.0, 41.0, 0.1, 0.0))]
    south = [_frame("south", 200.0, -30.0)]
    frames = [pair[0], *panel[:4], south[0], *panel[4:], pair[1]]
    mask = main_field(frames)
    assert [f.path for f, keep in zip(frames, mask) if keep] == [f.path for f in [*panel[:4], *panel[4:]]]
    assert OFF_FIELD_REASON == "does not overlap the main field"


def test_ties_go_to_the_component_of_the_earliest_frame_and_lone_frames_stand_alone():
    a = [_frame("a0", 10.0, 41.0), _frame("a1", *_offset(10.0, 41.0, 0.1, 0.0))]
    b = [_frame("b0", 100.0, 41.0), _frame("b1", *_offset(100.0, 41.0, 0.0, 0.2))]
    assert main_field([*a, *b]).tolist() == [True, True, False, False]
    assert main_field([*b, *a]).tolist() == [True, True, False, False]
    assert main_field([_frame("x", 10.0, 41.0), _frame("y", 10.0, 60.0)]).tolist() == [True, False]
    assert main_field([]).tolist() == []


def test_frames_overlapping_only_at_a_corner_are_linked_and_apart_ones_are_not():
    """Diagonal neighbours overlapping by a corner belong to the field; a frame whose
    footprint's circumscribed circle does not reach any other stays out."""
    diag = math.hypot(*FOV)
    corner = _frame("corner", *_offset(10.0, 41.0, 0.95 * FOV[0], 0.95 * FOV[1]))
    apart = _frame("apart", *_offset(10.0, 41.0, -1.02 * diag, 0.0))
    frames = [_frame("c0", 10.0, 41.0), _frame("c1", *_offset(10.0, 41.0, 0.0, 0.05)), corner, apart]
    assert main_field(frames).tolist() == [True, True, True, False]


def test_a_frame_without_a_centre_is_outside_the_field():
    frames = [_frame("a", 10.0, 41.0), _frame("b", 10.05, 41.0)]
    unsolved = Frame(**{**frames[0].__getstate__(), "path": "u", "ra_deg": math.nan, "dec_deg": math.nan})
    assert main_field([unsolved, *frames]).tolist() == [False, True, True]


def test_field_canvas_covers_the_footprints_and_the_limit_names_its_option():
    one = field_canvas([_frame("a", 10.0, 41.0)])
    assert one.shape in {(H, W), (H + 1, W + 1)}
    frames = [_frame(f"m{i}", *_offset(10.0, 41.0, 0.15 * i, 0.0)) for i in range(3)]
    h, w = field_canvas(frames, margin=8).shape
    # the footprints and the margins, to a few pixels (the frames are north-up about their own
    # centres, so each is turned a little on the canvas)
    assert abs(h - (H + 16)) <= 3 and abs(w - (W + 2 * 0.15 * 3600 / SCALE + 16)) <= 3
    assert field_canvas_problem(frames, 8, h * w) is None
    problem = field_canvas_problem(frames, 8, h * w - 1)
    assert problem.startswith(f"the mosaic canvas would be {w} x {h} pixels") and "max_canvas_pixels" in problem
    assert "\n" not in problem
    far = field_canvas_problem([*frames, _frame("south", 200.0, -30.0)], 8, 10 ** 12)
    assert far.startswith("the frames cannot share one mosaic canvas: footprints reach 90°")


def test_thousands_of_frames_on_one_spot_are_one_field():
    rng = np.random.default_rng(0)
    frames = [_frame(f"f{i}", 10.0 + rng.normal(0, 0.01), 41.0 + rng.normal(0, 0.01)) for i in range(5000)]
    frames.append(_frame("south", 200.0, -30.0))
    mask = main_field(frames)
    assert mask[:-1].all() and not mask[-1]

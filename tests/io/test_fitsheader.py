"""The one cards → WCS helper (``wcs_from_header``), on planted cards."""

import math

import numpy as np

from zdask.io.fitsheader import wcs_from_header

CARDS = {
    "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CUNIT1": "deg", "CUNIT2": "deg",
    "CRVAL1": 150.0, "CRVAL2": 2.0, "CRPIX1": 11.0, "CRPIX2": 21.0,
    "CD1_1": -1.0 / 3600.0, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 1.0 / 3600.0,
}


def test_cards_give_the_planted_projection():
    wcs = wcs_from_header(CARDS)
    ra, dec = wcs.all_pix2world([10.0], [20.0], 0)  # CRPIX is 1-based
    assert (ra[0], dec[0]) == (150.0, 2.0)
    # 3600 px north on the tangent plane: η = 1°, on the central meridian dec = dec0 + atan(η)
    ra, dec = wcs.all_pix2world([10.0], [20.0 + 3600.0], 0)
    np.testing.assert_allclose([ra[0], dec[0]], [150.0, 2.0 + math.degrees(math.atan(math.radians(1.0)))],
                               rtol=0, atol=1e-12)


def test_equal_cards_share_one_cached_object_whatever_their_order():
    shuffled = dict(reversed(list(CARDS.items())))
    assert wcs_from_header(shuffled) is wcs_from_header(CARDS)
    assert wcs_from_header({**CARDS, "CRVAL1": 151.0}) is not wcs_from_header(CARDS)

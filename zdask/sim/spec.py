"""The survey specification: every knob of the simulator, with units.

Defaults describe a ZWO Seestar S50 (IMX462 sensor, 2.9 um pixels behind a
250 mm focal length, i.e. about 2.4 arcsec per pixel; 10 s sub-exposures;
portrait 1080 x 1920 frames) pointed at an M31-like field under a
moderately light-polluted suburban sky.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["SurveySpec"]

_BAYER_PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")


@dataclass(frozen=True)
class SurveySpec:
    """Parameters of a simulated mosaic survey.

    All random choices are drawn from ``numpy.random.Generator`` streams
    derived from ``seed``, so the same spec always produces byte-identical
    frames. Fields set to ``None`` are derived from the others (see
    :meth:`n_trails_effective` and friends).
    """

    # ----------------------------------------------------------------- layout
    panels: tuple[int, int] = (2, 2)
    """Mosaic grid as (rows, cols). Row 0 is the northernmost row and column
    0 the easternmost (left in a north-up, east-left display); panels are
    numbered row-major and shot in that order."""

    frames_per_panel: int = 8
    """Number of sub-exposures taken on each panel."""

    frame_size: tuple[int, int] = (1080, 1920)
    """Frame size as (width, height) in pixels; both must be even (whole
    Bayer cells). The FITS data array is (height, width)."""

    pixel_scale_arcsec: float = 2.4
    """Plate scale in arcsec per pixel (same for frames and truth)."""

    overlap: float = 0.2
    """Fraction of a frame's width/height shared by neighbouring panels."""

    altaz_panels: tuple[int, ...] | None = None
    """Row-major indices of panels shot on an alt-azimuth mount (field
    rotation, horizon-locked gradient). ``None`` means all equatorial."""

    ra_deg: float = 10.68
    """Right ascension of the survey centre (ICRS, degrees)."""

    dec_deg: float = 41.27
    """Declination of the survey centre (ICRS, degrees)."""

    seed: int = 0
    """Seed of every random stream of the simulation."""

    # ----------------------------------------------------------------- timing
    exptime_s: float = 10.0
    """Exposure time of one frame in seconds. Sky, stars and the galaxy
    scale linearly with it."""

    frame_interval_s: float | None = None
    """Start-to-start time between frames of a panel in seconds; ``None``
    means ``exptime_s + 2`` (readout and dither overhead)."""

    slew_s: float = 20.0
    """Extra time between the last frame of a panel and the first of the
    next, in seconds."""

    start_time: str = "2024-10-05T21:00:00"
    """ISO-8601 UTC time of the first frame's start (``DATE-OBS``)."""

    # ------------------------------------------------------------- pointing
    jitter_px: float = 8.0
    """RMS pointing offset per axis between frames of a panel, in pixels
    (dithering plus tracking error); clipped at 3 sigma."""

    field_rotation_deg_per_min: float = 2.5
    """Rate of change of the parallactic angle in degrees per minute. Alt-az
    frames rotate on the sky at this rate; on equatorial frames only the
    horizon-tied light-pollution gradient turns. The angle is zero at the
    survey's mid-time."""

    eq_rotation_scatter_deg: float = 0.5
    """RMS of the constant per-panel camera angle of equatorial panels,
    in degrees (how squarely the user set up the mount)."""

    wcs_error_px: float = 0.0
    """RMS (radial, in pixels) of the error put in the header WCS by moving
    CRVAL; the manifest always keeps the true WCS."""

    # --------------------------------------------------------------- camera
    bayer: str = "GRBG"
    """Colour filter array pattern; see :mod:`zdask.sim.camera` for the
    convention."""

    gain_e_per_adu: float = 0.25
    """Conversion gain in electrons per ADU (16-bit output)."""

    read_noise_e: float = 1.6
    """Read noise in electrons RMS."""

    pedestal_adu: float = 128.0
    """Bias offset added to every pixel, in ADU."""

    n_hot_pixels: int | None = None
    """Number of hot pixels (fixed sensor positions); ``None`` means 20 per
    megapixel, at least 3."""

    n_trails: int | None = None
    """Number of frames crossed by a satellite trail; ``None`` means one in
    eight frames, at least one."""

    # ------------------------------------------------------------ conditions
    sky_adu_per_s: float = 30.0
    """Mean light-pollution sky in the green channel, ADU per pixel per
    second (300 ADU in a 10 s frame)."""

    sky_color: tuple[float, float, float] = (1.25, 1.0, 0.6)
    """Sky level of (R, G, B) relative to green: sodium/LED light pollution
    is orange."""

    gradient_frac: float = 0.3
    """Light-pollution gradient in green: the sky changes by +/- this
    fraction of its level from the frame centre to the farthest corner."""

    gradient_quad_frac: float = 0.0
    """Quadratic part of the light-pollution gradient, as a fraction of the sky level: the
    sky adds ``gradient_quad_frac * (s² - 1/3)`` with ``s`` the position along the gradient
    direction (-1 .. 1 at the farthest corners), tied to the frame like the linear part (so
    tiles at different places of a mosaic each carry it around their own centre)."""

    gradient_quad_scatter: float = 0.0
    """Frame-to-frame spread of that quadratic part: each frame's is drawn uniformly from
    ``gradient_quad_frac ± gradient_quad_scatter`` (0 = every frame alike). The glow's shape
    changes from exposure to exposure, so each tile's stack carries the mean of its own frames'
    curvatures, and the tiles of a mosaic differ."""

    nebula_adu_per_s: float = 0.0
    """Mean surface brightness in green of an emission nebula that fills the whole survey
    (ADU per pixel per second; 0 = none): a positive random field with a power-law spectrum,
    structure at every scale from a few pixels to larger than the mosaic."""

    gradient_color: tuple[float, float, float] = (1.2, 1.0, 0.7)
    """Gradient amplitude of (R, G, B) relative to green (the glow near the
    horizon is redder)."""

    psf_fwhm_range_px: tuple[float, float] = (2.0, 3.5)
    """Allowed range of the per-frame PSF FWHM (seeing + focus), pixels."""

    transparency_range: tuple[float, float] = (0.8, 1.0)
    """Allowed range of the per-frame atmospheric transparency, which
    multiplies the astronomical signal."""

    # ------------------------------------------------------------------ sky
    star_density_deg2: float = 1800.0
    """Number of stars per square degree brighter than ``mag_limit``."""

    mag_limit: float = 17.0
    """Faintest catalogue magnitude (green/V-like)."""

    mag_bright: float = 6.0
    """Brightest catalogue magnitude."""

    count_slope: float = 0.3
    """Slope of the cumulative star counts, d log10 N(<m) / dm."""

    zero_point_mag: float = 20.75
    """Magnitude giving 1 ADU per second of total green flux; with the
    defaults, stars brighter than about mag 9 saturate a 10 s frame and the
    5-sigma limit is about mag 15."""

    galaxy_major_axis_frac: float = 1.5
    """Galaxy disk diameter (to 3 % of its central brightness) as a multiple
    of a frame's longer side."""

    galaxy_disk_adu_per_s: float = 25.0
    """Central surface brightness of the galaxy disk in green, ADU per pixel
    per second."""

    def __post_init__(self) -> None:
        # The CLI hands lists; freeze them to tuples so the spec is hashable
        # and serialises the same way whatever the caller passed.
        for name in ("panels", "frame_size", "sky_color", "gradient_color",
                     "psf_fwhm_range_px", "transparency_range"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.altaz_panels is not None:
            object.__setattr__(self, "altaz_panels",
                               tuple(sorted({int(i) for i in self.altaz_panels})))
        object.__setattr__(self, "bayer", str(self.bayer).upper())
        self._validate()

    def _validate(self) -> None:
        rows, cols = self.panels
        if rows < 1 or cols < 1:
            raise ValueError(f"panels must be positive, got {self.panels}")
        if self.frames_per_panel < 1:
            raise ValueError("frames_per_panel must be >= 1")
        w, h = self.frame_size
        if w < 16 or h < 16 or w % 2 or h % 2:
            raise ValueError(f"frame_size must be even and >= 16, got {self.frame_size}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError("overlap must be in [0, 1)")
        if self.bayer not in _BAYER_PATTERNS:
            raise ValueError(f"bayer must be one of {_BAYER_PATTERNS}")
        for i in self.altaz_panels or ():
            if not 0 <= i < rows * cols:
                raise ValueError(f"altaz panel index {i} outside 0..{rows * cols - 1}")
        if self.seed < 0:
            raise ValueError("seed must be >= 0")
        if self.mag_bright >= self.mag_limit:
            raise ValueError("mag_bright must be brighter (smaller) than mag_limit")
        if self.exptime_s <= 0 or self.gain_e_per_adu <= 0:
            raise ValueError("exptime_s and gain_e_per_adu must be positive")
        if self.gradient_quad_scatter < 0:
            raise ValueError("gradient_quad_scatter must be >= 0")

    # ------------------------------------------------------- derived values
    @property
    def n_panels(self) -> int:
        """Number of panels (rows * cols)."""
        return self.panels[0] * self.panels[1]

    @property
    def n_frames(self) -> int:
        """Total number of frames of the survey."""
        return self.n_panels * self.frames_per_panel

    @property
    def interval_s(self) -> float:
        """Start-to-start time between frames of a panel, seconds."""
        if self.frame_interval_s is None:
            return self.exptime_s + 2.0
        return float(self.frame_interval_s)

    @property
    def n_trails_effective(self) -> int:
        """Number of trail frames after applying the default rule."""
        if self.n_trails is None:
            return max(1, round(self.n_frames / 8))
        return max(0, min(int(self.n_trails), self.n_frames))

    @property
    def n_hot_pixels_effective(self) -> int:
        """Number of hot pixels after applying the default rule."""
        if self.n_hot_pixels is None:
            w, h = self.frame_size
            return max(3, round(20 * w * h / 1e6))
        return max(0, int(self.n_hot_pixels))

    def is_altaz(self, panel: int) -> bool:
        """Whether panel ``panel`` (row-major index) is shot alt-az."""
        return self.altaz_panels is not None and panel in self.altaz_panels

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of the fields (tuples become lists)."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


"""Survey simulator: Seestar-S50-like raw frames with full ground truth.

``simulate_survey(out_dir, SurveySpec(...))`` writes raw Bayer FITS frames,
a noiseless truth image and a JSON manifest describing every frame, so each
stage of zdask can be tested against known answers. See
:mod:`zdask.sim.survey` for the output layout and :mod:`zdask.sim.camera`
for the Bayer convention.
"""

from .camera import cfa_channels
from .spec import SurveySpec
from .survey import FRAME_PATTERN, simulate_survey

__all__ = ["SurveySpec", "simulate_survey", "cfa_channels", "FRAME_PATTERN"]

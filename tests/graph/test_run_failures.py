"""A run that cannot go on says why: the frame made unreadable mid-run, the missing input."""

from __future__ import annotations

import os
import shutil

import pytest

from zdask.config import Config
from zdask.graph.runner import RunError, run
from zdask.io.errors import FrameReadError


def test_a_frame_made_unreadable_mid_run_is_named_with_its_cause(small_survey, tmp_path):
    """The frame is replaced by a folder after the scan (when the plan is announced), so the
    hot-pixel task that reads it fails on the worker: the run raises that task's own error,
    naming the file, not a cancellation ("FutureCancelledError ... reason: unknown")."""
    survey, _ = small_survey
    frames = tmp_path / "frames"
    shutil.copytree(survey / "frames", frames)
    victim = sorted(frames.iterdir())[5]

    def say(text: str) -> None:
        if "master-tile group(s)" in text:
            victim.unlink()
            victim.mkdir()

    with pytest.raises(FrameReadError) as err:
        run([str(frames)], str(tmp_path / "out"), Config().replace(workers=1, threads_per_worker=2), say=say)
    assert err.value.path == str(victim) and "Is a directory" in err.value.reason
    assert not (tmp_path / "out" / "mosaic.fits").exists()


def test_a_missing_input_is_named_as_missing(tmp_path):
    missing = tmp_path / "no-such-frames"
    with pytest.raises(RunError) as err:
        run([str(missing)], str(tmp_path / "out"), Config())
    assert str(err.value) == f"{missing}: no such file or folder"
    assert not os.path.exists(tmp_path / "out")

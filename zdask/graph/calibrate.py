"""Calibration stage: sensor hot-pixel maps, then one calibrated frame per input in Zarr.

Each function that runs on a worker takes plain values (a Frame, paths, parameters) and does its
own I/O, so tasks stay small and the client holds no pixels.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
from dataclasses import dataclass

import numpy as np

from zdask.config import Config
from zdask.graph.plan import spread_evenly
from zdask.io import store
from zdask.io.chunkrows import write_rows
from zdask.io.errors import writing
from zdask.io.pixels import read_frame
from zdask.io.scan import Frame
from zdask.ops.debayer import debayer_bilinear
from zdask.ops.framestats import FrameStats, frame_defect, frame_statistics, frame_stars
from zdask.ops.hotpixels import correct_hot_pixels, hot_pixel_candidates, hot_pixel_map

# Calibrated frames are stored in full-width strips of this many rows: a tile block's warp
# reads the window it needs, and strips read 2-4× faster than square chunks of the same size.
FRAME_CHUNK_ROWS = 256


def sensor_key(frame: Frame) -> str:
    """Frames of one sensor share raw layout and size: hot pixels are per sensor position."""
    return f"{frame.layout}-{frame.bayer or 'none'}-{frame.height}x{frame.width}"


def output_channels(frames: list[Frame]) -> int:
    """3 for colour runs (Bayer or RGB frames), 1 for mono runs."""
    return 1 if all(f.layout == "mono" for f in frames) else 3


# --- hot pixels ------------------------------------------------------------------------------------

def frame_hot_candidates(frame: Frame, sigma: float) -> np.ndarray:
    """Worker task: hot-pixel candidates (flat indices) of one raw frame."""
    return hot_pixel_candidates(read_frame(frame), frame.layout, sigma).astype(np.int64)


def hot_pixel_frames(frames: list[Frame], config: Config) -> list[Frame]:
    """The frames of one sensor whose candidates make its hot-pixel map: at most
    ``config.hot_pixel_frames``, spread evenly over the frames in time order (a hot pixel sits
    in all of them; a sample spread over the night also sees one that comes and goes)."""
    ordered = sorted(frames, key=lambda f: (f.time_mjd is None, f.time_mjd or 0.0, f.path))
    return [ordered[i] for i in spread_evenly(len(ordered), config.hot_pixel_frames)]


def hotmap_fingerprint(frames: list[Frame], config: Config) -> str:
    return store.fingerprint(
        sorted(f.fingerprint() for f in frames),
        config.stage_digest("hotpixels"),
    )


def save_hot_map(root: str, sensor: str, indices: np.ndarray, fp: str) -> None:
    store.begin_entry(root, f"hotpixels/{sensor}")
    group = store.open_store(root)
    arr = store.create_array(
        group, f"hotpixels/{sensor}", (int(indices.size),), "int64", (max(1, int(indices.size)),)
    )
    if indices.size:
        arr[:] = indices
    store.mark_complete(root, f"hotpixels/{sensor}", fp)


def load_hot_map(root: str, sensor: str) -> np.ndarray:
    arr = store.open_array(root, f"hotpixels/{sensor}", store.fingerprint(sensor))
    return np.asarray(arr[:], dtype=np.int64)


def combine_hot_candidates(candidates: list[np.ndarray], config: Config) -> np.ndarray:
    return hot_pixel_map(candidates, config.hot_pixel_min_fraction)


# --- calibrated frames -------------------------------------------------------------------------------

@dataclass(frozen=True)
class CalibrationJob:
    """What one worker needs to calibrate one frame and where to put it."""

    frame: Frame
    root: str
    key: str
    fingerprint: str
    hot_indices: np.ndarray
    channels: int


def calibration_fingerprint(frame: Frame, hot_indices: np.ndarray, channels: int) -> str:
    """Depends on the file and on the hot-pixel map's content (not on which frames made it)."""
    hot = np.ascontiguousarray(hot_indices, dtype=np.int64)
    hot_digest = hashlib.sha256(hot.tobytes()).hexdigest()[:16]
    # "stats-v2": the stored statistics gained saturated pixels, pixel and star counts;
    # "stars-v1": the entry keeps the stars it counted, for the alignment.
    return store.fingerprint(frame.fingerprint(), hot_digest, channels, "bilinear-v1", "stats-v2", "stars-v1")


def saturation_level(dtype: str) -> float | None:
    """The value a saturated pixel of raw data of this type reads: the largest integer of the
    type (65535 for uint16); None for float data, whose scale says nothing of saturation."""
    kind = np.dtype(dtype)
    return float(np.iinfo(kind).max) if kind.kind in "iu" else None


def calibrate_to_rgb(raw: np.ndarray, frame: Frame, hot_indices: np.ndarray, channels: int) -> np.ndarray:
    """Hot-pixel correction, then demosaicing: float32 (H, W, channels)."""
    fixed = correct_hot_pixels(raw, frame.layout, hot_indices)
    if frame.layout == "bayer":
        return debayer_bilinear(fixed, frame.bayer)
    if frame.layout == "mono":
        return fixed[..., None] if channels == 1 else np.repeat(fixed[..., None], channels, axis=-1)
    return fixed


def calibrate_frame(job: CalibrationJob) -> dict:
    """Worker task: read, calibrate, store one frame; returns its statistics (JSON-able).

    The stars counted for the statistics are kept with the frame (attribute ``stars``, see
    :func:`stored_stars`): the alignment matches them without reading the frame again."""
    image = calibrate_to_rgb(read_frame(job.frame), job.frame, job.hot_indices, job.channels)
    stats = frame_statistics(image, saturation=saturation_level(job.frame.dtype))
    stars = frame_stars(image, stats)
    stats = dataclasses.replace(stats, n_stars=len(stars)).to_dict()
    name = f"frames/{job.key}"
    h, w, c = image.shape
    with writing(os.path.join(job.root, name)):  # a full disk is named with the entry
        store.begin_entry(job.root, name)  # made from another hot-pixel map before
        group = store.open_store(job.root)
        arr = store.create_array(group, name, (h, w, c), "float32", (FRAME_CHUNK_ROWS, w, c),
                                  compressor=store.FRAME_COMPRESSOR)
        write_rows(arr, image)  # (compressed in this thread: zarr's own write would not scale)
        store.mark_complete(job.root, name, job.fingerprint, stats=stats, stars=_stars_text(stars),
                            path=job.frame.path)
    return stats


def stored_stats(root: str, key: str) -> dict:
    return dict(store.open_node(root, f"frames/{key}").attrs["stats"])


def stored_stars(attrs) -> np.ndarray | None:
    """The stars :func:`calibrate_frame` kept in a frame entry's attributes, float64 (N, 3)
    x, y, flux brightest first, bit for bit; None when the entry has none (a frame stored by
    other code)."""
    text = attrs.get("stars")
    if text is None:
        return None
    return np.frombuffer(base64.b64decode(text), dtype="<f8").astype(np.float64).reshape(-1, 3)


def _stars_text(stars: np.ndarray) -> str:
    # Base64 of the little-endian float64 values: exact, and a quarter of the time zarr takes
    # to write 1500 floats as JSON numbers (7 ms a frame).
    return base64.b64encode(np.ascontiguousarray(stars, dtype="<f8").tobytes()).decode("ascii")


def unusable_frames(stats: dict[str, FrameStats], config: Config) -> dict[str, str]:
    """Path → why the frame has no usable signal (see :func:`zdask.ops.framestats.frame_defect`),
    for the frames that must not reach alignment (nor be chosen as a reference). Pure."""
    found = {}
    for path, st in stats.items():
        reason = frame_defect(st, max_saturated_fraction=config.max_saturated_fraction,
                              min_stars=config.min_frame_stars)
        if reason is not None:
            found[path] = reason
    return found

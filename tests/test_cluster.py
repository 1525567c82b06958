"""open_client: kernels run single-threaded inside the workers, settings restored afterwards."""

from __future__ import annotations

import cv2
from threadpoolctl import threadpool_info

from zdask.cluster import open_client
from zdask.config import Config


def _kernel_threads_here():
    import cv2 as cv  # noqa: PLC0415
    from threadpoolctl import threadpool_info as info  # noqa: PLC0415

    return cv.getNumThreads(), sorted({p["num_threads"] for p in info() if p["user_api"] == "blas"})


def test_workers_run_kernels_single_threaded_and_settings_come_back():
    before_cv2 = cv2.getNumThreads()
    before_blas = sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})
    cv2.setNumThreads(2)  # as on a 2-core machine, whatever this one has
    try:
        with open_client(Config(workers=1, threads_per_worker=2), say=lambda *_: None) as client:
            cv_threads, blas_threads = client.submit(_kernel_threads_here, pure=False).result()
        assert cv_threads == 1
        assert blas_threads in ([1], [])  # [] when NumPy was built without a BLAS threadpool
        assert cv2.getNumThreads() == 2  # the in-process worker gave the settings back
        assert sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}) == before_blas
    finally:
        cv2.setNumThreads(before_cv2)

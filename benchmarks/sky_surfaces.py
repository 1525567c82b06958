"""Time (and peak traced memory of) the per-group sky-surface fit on a prepared store.

    python benchmarks/sky_surfaces.py prepare SURVEY_DIR OUT_DIR   # calibrate + align, keep the task's arguments
    python benchmarks/sky_surfaces.py time OUT_DIR [--repeat 3]      # call frame_sky_surfaces on them

``prepare`` runs ``zdask run`` on an in-process worker until the sky-surface stage, saves one
group's arguments to ``OUT_DIR/skyfit_args.pkl`` and stops; ``time`` calls
``zdask.graph.harmonize.frame_sky_surfaces`` directly on them (whichever zdask is on the path,
so the same prepared store times two versions).
"""

from __future__ import annotations

import argparse
import os
import pickle
import time
import tracemalloc

ARGS_FILE = "skyfit_args.pkl"


class _Stop(Exception):
    pass


def prepare(survey: str, out: str) -> None:
    import zdask
    from zdask.graph import tile_stage

    path = os.path.join(os.path.abspath(out), ARGS_FILE)

    def capture(sources, grid, factor, order):
        # Runs on the worker (dask ships a copy of this function): the arguments go to a file.
        with open(path, "wb") as f:
            pickle.dump([(sources, grid, factor, order)], f)
        raise _Stop()

    tile_stage.frame_sky_surfaces = capture
    try:
        zdask.run([os.path.join(survey, "frames")], out, zdask.Config().replace(workers=1, threads_per_worker=1))
    except Exception as exc:  # noqa: BLE001 - the run stops at the sky-surface stage on purpose
        print(f"run stopped: {type(exc).__name__}")
    if not os.path.exists(path):
        raise SystemExit("the run never reached the sky-surface stage")
    with open(path, "rb") as f:
        print(f"saved the arguments of a group of {len(pickle.load(f)[0][0])} frames")


def time_it(out: str, repeat: int) -> None:
    from zdask.graph.harmonize import frame_sky_surfaces

    with open(os.path.join(out, ARGS_FILE), "rb") as f:
        groups = pickle.load(f)
    for sources, grid, factor, order in groups:
        walls = []
        for _ in range(repeat):
            t = time.perf_counter()
            frame_sky_surfaces(sources, grid, factor, order)
            walls.append(time.perf_counter() - t)
        tracemalloc.start()
        frame_sky_surfaces(sources, grid, factor, order)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"{len(sources)} frames, tile {grid.shape}, bin {factor}, order {order}: "
              f"best {min(walls):.2f} s of {repeat} ({', '.join(f'{w:.2f}' for w in walls)}), "
              f"peak traced {peak / 2**20:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("survey")
    p.add_argument("out")
    t = sub.add_parser("time")
    t.add_argument("out")
    t.add_argument("--repeat", type=int, default=3)
    a = parser.parse_args()
    if a.command == "prepare":
        prepare(a.survey, a.out)
    else:
        time_it(a.out, a.repeat)


if __name__ == "__main__":
    main()

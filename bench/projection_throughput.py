"""Projection-domain motion benchmark: slices/s of `projection_pair` on 2 cores, and its ratio to one
plain FBP of the same slice (the floor).

Usage: .venv/bin/python bench/projection_throughput.py [--views 360 720] [--slices 24] [--rounds 3]
                                                       [--no-baselines]

One 512x512 phantom thorax slice (HU, 0.8 mm pixels). For each view count, 2 worker processes run
alternating phases of the same number of jobs, `rounds` times, so both kinds see the same load:
  pair: sample a motion from ids (default config: smooth, breathing, jerk), `projection_pair`
        (two projections and two FBPs, HU in and out);
  fbp:  `filtered_back_projection` of the slice's static sinogram (precomputed in each worker).
It prints slices/s over the 2 processes, FBPs/s, and the ratio of pair to FBP time (wall clock,
and CPU seconds per job measured inside the workers, which other users of the cores disturb less).

Baselines (one process, 360 views, measured next to our FBP in the same run): scikit-image's
`radon` and `iradon`, and a projector made of one `scipy.ndimage.rotate` per view; a pair built on
them needs two projections and two FBPs.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time

import numpy as np
import scipy
import skimage
from scipy import ndimage
from skimage.transform import iradon, radon

from pipeline.hashing import derive_rng
from pipeline.phantom import phantom_hu, phantom_series
from pipeline.projection import (
    ProjectionConfig,
    filtered_back_projection,
    hu_to_attenuation,
    project,
    projection_pair,
    sample_rigid_motion,
    scan_geometry,
)

SIZE = 512

_state: dict = {}


def _slice() -> tuple[np.ndarray, tuple[float, float]]:
    series = phantom_series(1, 10, SIZE, seed=0)
    return phantom_hu(series, 5), (series.pixel_spacing_mm, series.pixel_spacing_mm)


def _init_worker(views: int) -> None:
    hu, spacing = _slice()
    config = ProjectionConfig(views=views)
    geometry = scan_geometry(hu.shape, spacing, config)
    _state.update(hu=hu, spacing=spacing, config=config, geometry=geometry,
                  sinogram=project(hu_to_attenuation(hu), geometry, np.zeros((views, 3))))


def _pair_job(index: int) -> float:
    started = time.process_time()
    motion = sample_rigid_motion(derive_rng(0, "bench-projection", index), _state["config"])
    projection_pair(_state["hu"], _state["spacing"], motion, _state["config"])
    return time.process_time() - started


def _fbp_job(index: int) -> float:
    started = time.process_time()
    filtered_back_projection(_state["sinogram"], _state["geometry"], _state["config"].fbp_filter)
    return time.process_time() - started


def measure(views: int, slices: int, rounds: int) -> dict[str, float]:
    """Wall seconds and CPU seconds of `slices` pairs and `slices` FBPs per round, summed over rounds."""
    totals = {"pair_wall": 0.0, "fbp_wall": 0.0, "pair_cpu": 0.0, "fbp_cpu": 0.0, "jobs": 0}
    with multiprocessing.get_context("spawn").Pool(2, initializer=_init_worker, initargs=(views,)) as pool:
        pool.map(_fbp_job, range(2))
        for round_index in range(rounds):
            for kind, job in (("pair", _pair_job), ("fbp", _fbp_job)):
                indices = range(round_index * slices, (round_index + 1) * slices)
                started = time.monotonic()
                cpu = pool.map(job, indices, chunksize=1)
                totals[f"{kind}_wall"] += time.monotonic() - started
                totals[f"{kind}_cpu"] += sum(cpu)
            totals["jobs"] += slices
    return totals


def _timed(function, *args, repeats: int = 1, **kwargs) -> float:
    """Median CPU seconds of `repeats` calls."""
    seconds = []
    for _ in range(repeats):
        started = time.process_time()
        function(*args, **kwargs)
        seconds.append(time.process_time() - started)
    return float(np.median(seconds))


def _ndimage_projector(attenuation: np.ndarray, angles_deg: np.ndarray) -> np.ndarray:
    return np.stack([ndimage.rotate(attenuation, -angle, reshape=False, order=1).sum(axis=0) for angle in angles_deg])


def baselines(views: int = 360) -> list[tuple[str, float]]:
    """CPU seconds per 512x512 slice in this process: our FBP and pair, then the library options."""
    hu, spacing = _slice()
    config = ProjectionConfig(views=views)
    geometry = scan_geometry(hu.shape, spacing, config)
    attenuation = hu_to_attenuation(hu)
    sinogram = project(attenuation, geometry, np.zeros((views, 3)))
    motions = iter([sample_rigid_motion(derive_rng(0, "bench-projection", i), config) for i in range(5)])
    angles = np.arange(views) * (360.0 / views)
    rows = [("ours: filtered_back_projection (the floor)", _timed(filtered_back_projection, sinogram, geometry,
                                                                  repeats=5)),
            ("ours: projection_pair (median of 5 motions)",
             _timed(lambda: projection_pair(hu, spacing, next(motions), config), repeats=5)),
            ("ours: project (one sinogram, incl. object spectrum)", _timed(project, attenuation, geometry,
                                                                           np.zeros((views, 3)), repeats=5))]
    square_sinogram = radon(attenuation, angles, circle=False)
    rows += [("scikit-image radon (one sinogram)", _timed(radon, attenuation, angles, circle=False)),
             ("scikit-image iradon, ramp (one FBP)", _timed(iradon, square_sinogram, angles, output_size=SIZE,
                                                            filter_name="ramp", circle=False)),
             ("scipy.ndimage.rotate per view + sum (one sinogram)", _timed(_ndimage_projector, attenuation, angles))]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, nargs="+", default=[360, 720], help="view counts to measure")
    parser.add_argument("--slices", type=int, default=24, help="pairs (and FBPs) per round, split over 2 processes")
    parser.add_argument("--rounds", type=int, default=3, help="alternating pair/FBP rounds per view count")
    parser.add_argument("--no-baselines", action="store_true", help="skip the scikit-image / ndimage timings")
    args = parser.parse_args()
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")

    print(f"cores: {os.cpu_count()}, python {sys.version.split()[0]}, numpy {np.__version__}, "
          f"scipy {scipy.__version__}, scikit-image {skimage.__version__}; {SIZE}x{SIZE} slice, "
          f"2 processes, {args.rounds} rounds of {args.slices} pairs + {args.slices} FBPs per view count; "
          f"load average at start {os.getloadavg()[0]:.1f}")
    print()
    print("| views (360 deg) | pairs/s (2 proc.) | FBPs/s (2 proc.) | pair / FBP, wall | pair / FBP, CPU s per job |")
    print("|---:|---:|---:|---:|---:|")
    for views in args.views:
        t = measure(views, args.slices, args.rounds)
        print(f"| {views} | {t['jobs'] / t['pair_wall']:.2f} | {t['jobs'] / t['fbp_wall']:.2f} | "
              f"{t['pair_wall'] / t['fbp_wall']:.2f} | {t['pair_cpu'] / t['fbp_cpu']:.2f} "
              f"({t['pair_cpu'] / t['jobs']:.2f} s / {t['fbp_cpu'] / t['jobs']:.2f} s) |", flush=True)
    print(f"load average at end of the throughput runs: {os.getloadavg()[0]:.1f}")
    if not args.no_baselines:
        rows = baselines()
        floor = rows[0][1]
        print()
        print("| one 512x512 slice, 360 views, 1 process | CPU s | x our FBP |")
        print("|---|---:|---:|")
        for name, seconds in rows:
            print(f"| {name} | {seconds:.2f} | {seconds / floor:.1f} |")


if __name__ == "__main__":
    main()

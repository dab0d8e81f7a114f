"""Benchmark: where `ctdeblur-evaluate`'s time goes on 512x512 pairs, and what a 300-pair test split costs.

    .venv/bin/python bench/evaluate_throughput.py [--pairs 4] [--size 512] [--rl_iterations 200]
                                                  [--no-model]

Pairs are phantom slices blurred with the pipeline's paper-default motion kernels (60-pixel paths,
PSFs up to 64 px), as the pipeline makes them. Measured in one run, per pair: the scoring of one
method (two windows, full field and body mask), the per-pair preparation (body mask, reference
statistics), Wiener (one NSR), one Richardson-Lucy iteration in float32 (what the evaluation runs)
and float64 (for the ratio), and the paper-size generator (untrained export: the weights do not
change the cost) at batch 1 and 4. Each step's wall time and this process's CPU time are given:
the numpy steps are single-threaded, so on a shared machine their CPU time is what they take on a
free core. The last table adds them up for a 300-pair split with one model and the default tuning
(16 validation pairs, RL to the grid's largest count): CPU time for the numpy steps, wall time for
the generator (TensorFlow uses both cores).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from model import baselines
from model.config import TrainConfig
from model.evaluation_engine import Scorer
from model.evaluation_protocol import EvalConfig
from model.export import export_generator, load_exported_generator
from model.networks import build_generator
from pipeline.kernels import (
    MotionConfig,
    blur_hu,
    motion_psf,
    motion_trajectory,
    sample_motion_params,
)
from pipeline.pairs import to_int16_hu
from pipeline.phantom import phantom_hu, phantom_series
from tfrecords_schema import MOTION_PARAM_NAMES, Pair


def paper_pairs(count: int, size: int) -> list[Pair]:
    pairs = []
    for index in range(count):
        sharp = to_int16_hu(phantom_hu(phantom_series(index, 10, size, seed=0), 5))
        params = sample_motion_params(np.random.default_rng(index), MotionConfig())
        psf, _ = motion_psf(motion_trajectory(params), params.exposure, 64)
        blurry = to_int16_hu(blur_hu(sharp.astype(np.float32), psf))
        pairs.append(Pair(
            sharp_hu=sharp, blurry_hu=blurry, psf=psf, record_key=f"bench/{index}", pixel_spacing_mm=(0.7, 0.7),
            slice_thickness_mm=1.0, slice_position_mm=0.0, collection="bench", patient_key=str(index), patient_id="",
            series_uid="1", sop_instance_uid=str(index), slice_index=index, kernel_index=0, source_kind="synthetic",
            split="test", subdataset=-1, motion=dict.fromkeys(MOTION_PARAM_NAMES, 0.0)))
    return pairs


def per_call(function, repeats: int) -> tuple[float, float]:
    """(wall, CPU) mean seconds per call of `function()` over `repeats` calls after one warm-up call."""
    function()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - wall) / repeats, (time.process_time() - cpu) / repeats


def mean_times(calls) -> tuple[float, float]:
    """Element-wise mean of (wall, CPU) pairs."""
    walls, cpus = zip(*calls)
    return float(np.mean(walls)), float(np.mean(cpus))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rl_iterations", type=int, default=200, help="RL count of the split estimate (grid's largest)")
    parser.add_argument("--no-model", dest="model", action="store_false", help="skip the paper generator")
    args = parser.parse_args()

    config = EvalConfig()
    load_before = os.getloadavg()[0]
    pairs = paper_pairs(args.pairs, args.size)
    psf_sizes = ", ".join(str(p.psf.shape[0]) for p in pairs)
    rows: dict[str, tuple[float, float]] = {}
    rows["prepare pair (body mask, reference statistics)"] = mean_times([per_call(lambda p=p: Scorer(p, config), 3)
                                                                         for p in pairs])
    scorers = [Scorer(p, config) for p in pairs]
    rows["score one method (2 windows x full/body)"] = mean_times(
        [per_call(lambda s=s, p=p: s.scores(p.blurry_hu.astype(np.float32)), 3) for s, p in zip(scorers, pairs)])
    rows["Wiener, one NSR"] = mean_times([per_call(lambda p=p: baselines.wiener_deconvolve(p.blurry_hu, p.psf, 1e-3), 3)
                                          for p in pairs])
    rows["Wiener, 9-value tuning grid"] = mean_times(
        [per_call(lambda p=p: baselines.wiener_filter_all(p.blurry_hu, p.psf, config.wiener_nsr), 1) for p in pairs])
    for dtype in (np.float32, np.float64):
        ten = mean_times([per_call(lambda p=p, d=dtype: baselines.richardson_lucy_all(p.blurry_hu, p.psf, [10], d), 1)
                          for p in pairs])
        rows[f"Richardson-Lucy, one iteration ({np.dtype(dtype).name})"] = (ten[0] / 10, ten[1] / 10)
    if args.model:
        with tempfile.TemporaryDirectory() as directory:
            paper = TrainConfig()
            export_generator(build_generator(paper), paper, directory, {"model": "paper-untrained"})
            model = load_exported_generator(directory)
            batch = np.stack([p.blurry_hu.astype(np.float32) for p in pairs[:4]])
            for size in (1, len(batch)):
                wall, cpu = per_call(lambda s=size: model.deblur(batch[:s]), 2)
                rows[f"paper generator, batch {size} (per slice)"] = (wall / size, cpu / size)

    print(f"{args.pairs} phantom pairs {args.size}x{args.size}, paper motion kernels (PSF sizes {psf_sizes}); "
          f"1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores\n")
    print("| step | ms per pair, wall | ms per pair, CPU |\n|---|---:|---:|")
    for name, (wall, cpu) in rows.items():
        print(f"| {name} | {wall * 1000:.1f} | {cpu * 1000:.1f} |")
    cpu = {name: times[1] for name, times in rows.items()}
    rl32, rl64 = cpu["Richardson-Lucy, one iteration (float32)"], cpu["Richardson-Lucy, one iteration (float64)"]
    print(f"\nRL float64 / float32 CPU time per iteration: {rl64 / rl32:.2f}x")

    methods = 4 if args.model else 3
    per_pair = {
        "prepare + score (CPU)": cpu["prepare pair (body mask, reference statistics)"]
        + methods * cpu["score one method (2 windows x full/body)"],
        "Wiener (CPU)": cpu["Wiener, one NSR"],
        f"Richardson-Lucy, {args.rl_iterations} iterations (CPU)": args.rl_iterations * rl32,
    }
    if args.model:
        per_pair["paper generator, batch 4 (wall)"] = rows[f"paper generator, batch {len(batch)} (per slice)"][0]
    tuning = 16 * (cpu["Wiener, 9-value tuning grid"] + args.rl_iterations * rl32)
    print(f"\n| 300-pair split, {'one model' if args.model else 'baselines only'} | minutes |\n|---|---:|")
    for name, seconds in per_pair.items():
        print(f"| {name} | {300 * seconds / 60:.1f} |")
    print(f"| tuning on 16 validation pairs (CPU) | {tuning / 60:.1f} |")
    print(f"| total | {(300 * sum(per_pair.values()) + tuning) / 60:.1f} |")


if __name__ == "__main__":
    main()

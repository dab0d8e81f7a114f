"""Dataset pipeline benchmark: end-to-end pairs/s, ratio to the bare maths, peak RSS vs size.

Usage: .venv/bin/python bench/pipeline_throughput.py [--sizes 1000 5000] [--workdir DIR]

For each size N it writes N phantom slices (512x512 DICOM, all with body), then in one run:
  pipeline: `ctdeblur-make-dataset --source dicom-dir` on them (DirectRunner, 2 worker processes),
            wall time and the peak summed RSS of the whole process tree;
  bare:     the same pairs' kernel + blur maths (sample params, trajectory, PSF, FFT blur) in 2
            plain processes, no I/O.
and prints a Markdown table of pairs/s and the ratio pipeline time / bare time.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil

from pipeline.config import PipelineConfig
from pipeline.kernels import (
    blur_hu,
    motion_psf,
    motion_trajectory,
    sample_motion_params,
)
from pipeline.pairs import kernel_rng
from pipeline.phantom import phantom_hu, phantom_series
from pipeline.sources import write_phantom_series

SLICES_PER_PATIENT = 100


def write_inputs(root: str, slices: int) -> None:
    patients = (slices + SLICES_PER_PATIENT - 1) // SLICES_PER_PATIENT
    for patient in range(patients):
        count = min(SLICES_PER_PATIENT, slices - patient * SLICES_PER_PATIENT)
        write_phantom_series(phantom_series(patient, count, 512, seed=0), root)


def run_pipeline(inputs: str, output: str, pairs: int) -> tuple[float, float]:
    """(seconds, peak RSS in MiB of the process tree) of one pipeline run."""
    command = [os.path.join(os.path.dirname(sys.executable), "ctdeblur-make-dataset"), "--source", "dicom-dir",
               "--input", inputs, "--output", output, "--target_pairs", str(pairs), "--test_pairs", "300",
               "--min_body_fraction", "0", "--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]
    started = time.monotonic()
    process = psutil.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while process.poll() is None:
        try:
            tree = [process] + process.children(recursive=True)
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.2)
    seconds = time.monotonic() - started
    if process.returncode != 0:
        raise RuntimeError(f"pipeline failed with exit code {process.returncode}: {' '.join(command)}")
    return seconds, peak / 2**20


def _bare_pairs(args: tuple[int, int]) -> int:
    start, stop = args
    config = PipelineConfig()
    series = phantom_series(0, SLICES_PER_PATIENT, 512, seed=0)
    image = phantom_hu(series, SLICES_PER_PATIENT // 2)
    for index in range(start, stop):
        params = sample_motion_params(kernel_rng(config, "bench", index, 0), config.motion)
        psf, _ = motion_psf(motion_trajectory(params), params.exposure, config.motion.psf_max_size)
        blur_hu(image, psf)
    return stop - start


def run_bare(pairs: int, processes: int = 2) -> float:
    chunks = [(i, min(i + 50, pairs)) for i in range(0, pairs, 50)]
    started = time.monotonic()
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        done = sum(pool.map(_bare_pairs, chunks))
    assert done == pairs
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="ctdeblur-bench-")
    rows = []
    for size in args.sizes:
        inputs = os.path.join(workdir, f"dicom-{size}")
        output = os.path.join(workdir, f"dataset-{size}")
        shutil.rmtree(output, ignore_errors=True)
        if not os.path.isdir(inputs):
            write_inputs(inputs, size)
        seconds, peak_mib = run_pipeline(inputs, output, size)
        bare = run_bare(size)
        rows.append((size, seconds, size / seconds, bare, size / bare, seconds / bare, peak_mib))
        shutil.rmtree(output, ignore_errors=True)
    print(f"cores: {os.cpu_count()}, python {sys.version.split()[0]}, numpy {np.__version__}")
    print("| pairs (512x512) | pipeline s | pipeline pairs/s | bare maths s | bare pairs/s | pipeline / bare | peak RSS MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for size, seconds, rate, bare, bare_rate, ratio, peak in rows:
        print(f"| {size} | {seconds:.1f} | {rate:.1f} | {bare:.1f} | {bare_rate:.1f} | {ratio:.2f} | {peak:.0f} |")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

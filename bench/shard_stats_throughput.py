"""Shard statistics benchmark: pairs/s of the summary pass on 512x512 pairs, side by side with
plain reading, in one run.

Usage: .venv/bin/python bench/shard_stats_throughput.py [--pairs 1024] [--repeats 3] [--workdir DIR]

It writes a dataset of N 512x512 pairs (uncompressed shards of 128 pairs: one test shard, the
rest in train-0..), then times, round-robin `--repeats` times each (best run kept, after one
warm-up pass that fills the page cache and compiles the XLA kernels):
  read:         tf.data.TFRecordDataset over every shard, records only (I/O + CRC checks);
  parse:        the same + `parse_pair_tensors` (the schema's decoder, images decoded);
  table:        `read_dataset` over all shards with the default settings, i.e. the pass behind the
                terminal table (counts, PSF, HU histograms, PSNR, SSIM of every pair);
  table/8:      the same with --image_stride 8 (images measured on every 8th record);
  table/none:   the same with images measured on no record but the first of each shard
                (counts, patients, collections, PSF extent, trajectory lengths only);
  ssim only:    `pair_ssim` (the XLA-compiled SSIM the table runs) on the decoded images of every
                pair, one after the other in this thread: the floor that SSIM alone sets;
  histograms:   `hu_histogram` of both images of every pair (numpy, this thread);
and the HTML report (8 examples) once. Prints a Markdown table of pairs/s, ratios to `read`, and
the process CPU time per pair (all threads), from which the rate on two otherwise idle cores is
estimated as 2 / CPU time (the machine is shared, so wall-clock rates depend on its load).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from scipy.signal import fftconvolve  # noqa: E402

from pipeline.stats.config import StatsConfig  # noqa: E402
from pipeline.stats.metrics import hu_histogram, pair_ssim  # noqa: E402
from pipeline.stats.reader import find_shards, read_dataset, read_pairs  # noqa: E402
from pipeline.stats.report import choose_examples, collect, to_json  # noqa: E402
from pipeline.stats.report_html import Example, render_html  # noqa: E402
from tfrecords_schema import (  # noqa: E402
    MANIFEST_NAME,
    MOTION_PARAM_NAMES,
    Pair,
    encode_pair,
    parse_pair_tensors,
    shard_name,
    write_records,
)

SIZE = 512
PAIRS_PER_SHARD = 128
DISTINCT_IMAGES = 16


def _images(rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(sharp, blurry, psf): a noisy body ellipse with bone, blurred by a random line PSF."""
    rows, cols = np.mgrid[:SIZE, :SIZE]
    body = ((rows - 256) / 200.0) ** 2 + ((cols - 256) / 230.0) ** 2 < 1
    images = []
    for _ in range(DISTINCT_IMAGES):
        sharp = np.where(body, rng.normal(40, 120, (SIZE, SIZE)), -1000.0)
        sharp[body & (rng.random((SIZE, SIZE)) < 0.02)] = 1200.0
        psf = np.zeros((31, 31), np.float32)
        length = int(rng.integers(3, 31))
        psf[15, 15 - length // 2 : 15 - length // 2 + length] = 1.0
        psf /= psf.sum()
        blurry = fftconvolve(sharp, psf, mode="same")
        images.append((np.round(sharp).astype(np.int16), np.round(blurry).astype(np.int16), psf))
    return images


def write_dataset(root: str, pairs: int) -> None:
    rng = np.random.default_rng(0)
    images = _images(rng)
    shards = max(2, -(-pairs // PAIRS_PER_SHARD))
    manifest = {"schema_version": 1, "compression": "none", "splits": {}}
    for shard in range(shards):
        directory = "test" if shard == 0 else "train-0"
        count_in_directory = 1 if shard == 0 else shards - 1
        index_in_directory = 0 if shard == 0 else shard - 1
        os.makedirs(os.path.join(root, directory), exist_ok=True)
        records = []
        for index in range(shard * PAIRS_PER_SHARD, min((shard + 1) * PAIRS_PER_SHARD, pairs)):
            sharp, blurry, psf = images[index % DISTINCT_IMAGES]
            records.append(
                encode_pair(
                    Pair(
                        sharp_hu=sharp, blurry_hu=blurry, psf=psf, record_key=f"bench/{index}/0",
                        pixel_spacing_mm=(0.7, 0.7), slice_thickness_mm=1.0, slice_position_mm=float(index),
                        collection="BENCH", patient_key=f"p{shard:03d}-{index % 4}", patient_id="",
                        series_uid=f"1.2.{shard}.{index % 4}", sop_instance_uid=f"1.2.{index}", slice_index=index,
                        kernel_index=0, source_kind="synthetic", split="test" if shard == 0 else "train",
                        subdataset=-1 if shard == 0 else 0,
                        motion={name: 1.0 for name in MOTION_PARAM_NAMES},
                    )
                )
            )
        name = shard_name(index_in_directory, count_in_directory)
        with open(os.path.join(root, directory, name), "wb") as handle:
            write_records(handle, records)
    with open(os.path.join(root, MANIFEST_NAME), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle)


def time_read(root: str, shards) -> float:
    files = [os.path.join(root, shard.relative) for shard in shards]
    started = time.perf_counter()
    for _ in tf.data.TFRecordDataset(files, buffer_size=8 << 20).prefetch(tf.data.AUTOTUNE):
        pass
    return time.perf_counter() - started


def time_parse(root: str, shards) -> float:
    files = [os.path.join(root, shard.relative) for shard in shards]
    dataset = tf.data.TFRecordDataset(files, buffer_size=8 << 20).map(
        lambda record: parse_pair_tensors(record)["height"], num_parallel_calls=tf.data.AUTOTUNE
    )
    started = time.perf_counter()
    for _ in dataset.prefetch(tf.data.AUTOTUNE):
        pass
    return time.perf_counter() - started


def time_table(root: str, shards, config: StatsConfig) -> float:
    started = time.perf_counter()
    read_dataset(root, shards, config)
    return time.perf_counter() - started


def time_images(images, pairs: int, measure) -> float:
    """Seconds of `measure(sharp, blurry)` on the images of `pairs` pairs (cycling `images`)."""
    started = time.perf_counter()
    for index in range(pairs):
        sharp, blurry = images[index % len(images)]
        measure(sharp, blurry)
    return time.perf_counter() - started


def time_html(root: str, shards, config: StatsConfig) -> float:
    results = read_dataset(root, shards, config)
    started = time.perf_counter()
    stats = collect(root, config, shards, results, None, [])
    examples = []
    for choice in choose_examples(stats, 8):
        pair = read_pairs(root, choice.shard, [choice.record_index])[choice.record_index]
        examples.append(Example(choice.shard.relative, choice.record_index, pair, choice.psnr_db, choice.ssim))
    render_html(stats, to_json(stats), examples)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=1024, help="512x512 pairs in the benchmark dataset")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of each kind (best kept)")
    parser.add_argument("--workdir", help="where to write the dataset (default: a temporary directory)")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="shard-stats-bench-")
    root = os.path.join(workdir, "dataset")
    shutil.rmtree(root, ignore_errors=True)
    write_dataset(root, args.pairs)
    shards, _ = find_shards(root)
    default = StatsConfig()
    decoded = [(sharp, blurry) for sharp, blurry, _ in _images(np.random.default_rng(0))]
    tensors = [(tf.constant(sharp), tf.constant(blurry)) for sharp, blurry in decoded]
    kinds = {
        "read": lambda: time_read(root, shards),
        "parse": lambda: time_parse(root, shards),
        "table": lambda: time_table(root, shards, default),
        "table/8": lambda: time_table(root, shards, StatsConfig(image_stride=8)),
        "table/none": lambda: time_table(root, shards, StatsConfig(image_stride=PAIRS_PER_SHARD)),
        "ssim only": lambda: time_images(
            tensors, args.pairs, lambda sharp, blurry: pair_ssim(sharp, blurry, default.window_hu).numpy()
        ),
        "histograms": lambda: time_images(
            decoded, args.pairs, lambda sharp, blurry: (hu_histogram(sharp), hu_histogram(blurry))
        ),
    }
    for run in kinds.values():
        run()
    load_before = os.getloadavg()[0]
    best = {name: float("inf") for name in kinds}
    cpu = {name: float("inf") for name in kinds}
    for _ in range(args.repeats):
        for name, run in kinds.items():
            cpu_started = time.process_time()
            best[name] = min(best[name], run())
            cpu[name] = min(cpu[name], time.process_time() - cpu_started)
    html_seconds = time_html(root, shards, default)
    load_after = os.getloadavg()[0]

    print(f"{args.pairs} pairs of {SIZE}x{SIZE}, {len(shards)} uncompressed shards, {os.cpu_count()} cores, "
          f"best of {args.repeats}; 1-min load average {load_before:.1f} before, {load_after:.1f} after\n")
    print("| pass | pairs/s | time vs read | CPU ms per pair | est. pairs/s, 2 idle cores |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds in best.items():
        per_pair = cpu[name] / args.pairs
        print(f"| {name} | {args.pairs / seconds:.0f} | {seconds / best['read']:.1f}x | {1e3 * per_pair:.2f} | {2 / per_pair:.0f} |")
    print(f"\nHTML report with 8 example pairs (after the pass): {html_seconds:.1f} s")
    if not args.workdir:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()

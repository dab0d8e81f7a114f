"""Benchmark: the trainer's tf.data input pipeline in pairs/s, against what a train step consumes.

    .venv/bin/python bench/input_throughput.py [--pairs 128] [--epochs 8] [--data DIR] [--step_steps 2]
                                               [--start_up_epochs 1000]

Reads 512x512 pairs with the paper settings (256x256 crops, batch 2, shuffle) from an
uncompressed and a gzip copy of a synthetic dataset (or from --data DIR) on this machine's
cores, then times the paper train step (graph mode, batch 2 at 256x256) on the same CPU and
counts its floating-point operations, and prints the input rate as a multiple of the step's
consumption, measured here and for a GPU of a given effective speed (an estimate from the
FLOP count: `--gpu_tflops`). Then the start-up of a pipeline of `--start_up_epochs` epochs:
the seconds to build it and to its first batch.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import tensorflow as tf
from synthetic_dataset import write_dataset
from train_step import random_batch, step_gflop, time_steps

from model.config import preset_config
from model.data import InputShard, dataset_splits, epoch_seed, epochs_batches
from model.perceptual import load_vgg19
from model.train import build_model, distributed_step


def paper_batches(split, epochs: int) -> tf.data.Dataset:
    """The paper input pipeline over `epochs` epochs of `split`, as the trainer builds it (one
    pipeline for all the epochs of a sub-dataset, prefetched)."""
    config = preset_config("paper")
    return epochs_batches(
        split, crop_size=config.crop_size, hu_window=config.hu_window, shuffle_buffer=config.shuffle_buffer,
        seeds=[epoch_seed(config.seed, 0, epoch) for epoch in range(epochs)],
        shard=InputShard(batch=config.batch_per_replica), steps=split.pairs // config.batch_per_replica,
    ).prefetch(tf.data.AUTOTUNE)


def pairs_per_second(data_dir: str, epochs: int) -> tuple[float, int]:
    """Pairs/s of the paper input pipeline reading `epochs` epochs of train-0, start-up included."""
    train, _ = dataset_splits(data_dir, [0])
    started = time.perf_counter()
    count = sum(int(blurry.shape[0]) for blurry, _ in paper_batches(train[0], epochs))
    return count / (time.perf_counter() - started), count


def start_up_seconds(data_dir: str, epochs: int) -> tuple[float, float]:
    """(seconds to build the pipeline of `epochs` epochs of train-0, seconds to its first batch):
    what a run with a long schedule (e.g. `--epochs 1000` under a time budget) waits for."""
    train, _ = dataset_splits(data_dir, [0])
    started = time.perf_counter()
    batches = paper_batches(train[0], epochs)
    built = time.perf_counter()
    next(iter(batches))
    return built - started, time.perf_counter() - built


def paper_step_consumption(steps: int) -> tuple[float, float]:
    """(seconds per paper train step on this CPU, GFLOP per step)."""
    config = preset_config("paper")
    vgg, _ = load_vgg19("random-init")
    gan = build_model(config, vgg)
    batch = random_batch(config)
    _, seconds = time_steps(distributed_step(tf.distribute.get_strategy(), gan.train_step, False), batch, steps)
    return seconds, step_gflop(gan, batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=128, help="synthetic 512x512 pairs per copy")
    parser.add_argument("--epochs", type=int, default=8, help="epochs read per measurement")
    parser.add_argument("--data", help="measure this dataset directory instead of synthetic copies")
    parser.add_argument("--start_up_epochs", type=int, default=1000,
                        help="epochs of the pipeline whose start-up is timed (a long schedule under a time budget)")
    parser.add_argument("--step_steps", type=int, default=2, help="timed paper train steps (0: skip the step)")
    parser.add_argument("--gpu_tflops", type=float, nargs="+", default=[10.0, 50.0],
                        help="effective GPU speeds (TFLOP/s) for the estimated consumption")
    args = parser.parse_args()
    rows, start_up = [], []
    if args.data:
        rate, count = pairs_per_second(args.data, args.epochs)
        rows.append((args.data, rate, count))
        start_up.append((args.data, *start_up_seconds(args.data, args.start_up_epochs)))
    else:
        with tempfile.TemporaryDirectory(prefix="ctdeblur-bench-") as root:
            for compression in ("none", "gzip"):
                data = write_dataset(os.path.join(root, compression), pairs=args.pairs, compression=compression)
                rate, count = pairs_per_second(data, args.epochs)
                rows.append((f"synthetic 512x512, {compression}", rate, count))
                start_up.append((f"synthetic 512x512, {compression}", *start_up_seconds(data, args.start_up_epochs)))
    consumers = []
    if args.step_steps:
        seconds, gflop = paper_step_consumption(args.step_steps)
        consumers.append((f"paper train step on this CPU, measured ({seconds:.1f} s/step)", 2 / seconds))
        for tflops in args.gpu_tflops:
            step = gflop / (tflops * 1e3)
            consumers.append((f"paper train step on a GPU at {tflops:g} TFLOP/s effective (estimate: {gflop:.0f} GFLOP/step)", 2 / step))
        print(f"paper train step: {seconds:.2f} s on this CPU, {gflop:.0f} GFLOP")
    print(f"cores: {os.cpu_count()}; paper input settings (crop 256, batch 2, shuffle 2048)")
    print("| input | pairs read | pairs/s |")
    print("|---|---:|---:|")
    for name, rate, count in rows:
        print(f"| {name} | {count} | {rate:.0f} |")
    print(f"\n| input | pipeline of {args.start_up_epochs} epochs: build (s) | first batch (s) |")
    print("|---|---:|---:|")
    for name, build, first in start_up:
        print(f"| {name} | {build:.1f} | {first:.1f} |")
    if consumers:
        print("\n| consumer (batch 2 at 256x256) | pairs/s consumed |" + "".join(f" input / consumption, {n} |" for n, _, _ in rows))
        print("|---|---:|" + "---:|" * len(rows))
        for consumer, need in consumers:
            print(f"| {consumer} | {need:.2f} |" + "".join(f" {rate / need:.1f} |" for _, rate, _ in rows))


if __name__ == "__main__":
    main()

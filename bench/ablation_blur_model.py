"""Ablation: train on kernel-, projection- or respiratory-blurred data, evaluate each on every test set.

Usage: .venv/bin/python bench/ablation_blur_model.py [--workdir DIR] [--pairs 160] [--size 256]
           [--preset tiny] [--epochs 2] [--steps 20] [--blur_models kernel projection respiratory]
           [--geometry fan|cone] [--results ABLATION.md]

1. One dataset per blur model from the same phantom patients and seed: `--blur_model kernel`,
   `projection` and `respiratory` (with `--geometry`) (ctdeblur-make-dataset).
2. One generator trained on each (ctdeblur-train, `--perceptual_weights random-init` because the
   ImageNet VGG19 file cannot be downloaded here; pass --perceptual_weights PATH to use it).
3. Each exported generator evaluated on every test split: PSNR and SSIM (Wang et al., Gaussian
   window 11, sigma 1.5) on HU clipped to [-1000, 1000], data_range 2000, full field of view,
   mean over the test pairs, next to the blurry input.
Writes a Markdown results file with the trained-on x tested-on table and the commands.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

from model.metrics import psnr_hu, ssim_hu
from tfrecords_schema import decode_pair, read_records

WINDOW_HU = (-1000.0, 1000.0)
BLUR_MODELS = ("kernel", "projection", "respiratory")


def command(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def run(argv: list[str]) -> None:
    print("+", " ".join(argv), flush=True)
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def test_pairs(dataset: str):
    return [decode_pair(r) for path in sorted(glob.glob(os.path.join(dataset, "test", "pairs-*")))
            for r in read_records(open(path, "rb"))]


def scores(restored: list[np.ndarray], pairs) -> tuple[float, float]:
    psnr, ssim = [], []
    for image, pair in zip(restored, pairs, strict=True):
        sharp = tf.constant(pair.sharp_hu, tf.float32)[None, :, :, None]
        output = tf.constant(image, tf.float32)[None, :, :, None]
        psnr.append(float(psnr_hu(output, sharp, WINDOW_HU)[0]))
        ssim.append(float(ssim_hu(output, sharp, WINDOW_HU)[0]))
    return float(np.mean(psnr)), float(np.mean(ssim))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="ablation_runs")
    parser.add_argument("--pairs", type=int, default=160, help="pairs per dataset, test included")
    parser.add_argument("--test_pairs", type=int, default=20)
    parser.add_argument("--size", type=int, default=256, help="phantom matrix size (pixels)")
    parser.add_argument("--preset", default="tiny", help="trainer preset (tiny or small)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="max steps per epoch and sub-dataset")
    parser.add_argument("--perceptual_weights", default="random-init")
    parser.add_argument("--blur_models", nargs="+", choices=BLUR_MODELS, default=list(BLUR_MODELS))
    parser.add_argument("--geometry", choices=("fan", "cone"), default="cone", help="scanner of the respiratory dataset")
    parser.add_argument("--results", default="ABLATION.md")
    args = parser.parse_args()
    blur_models = args.blur_models
    started = time.monotonic()
    datasets, models, commands = {}, {}, []
    for blur in blur_models:
        datasets[blur] = os.path.join(args.workdir, f"data-{blur}")
        argv = [command("ctdeblur-make-dataset"), "--preset", "demo", "--source", "phantom", "--blur_model", blur,
                "--phantom_size", str(args.size), "--target_pairs", str(args.pairs), "--test_pairs", str(args.test_pairs),
                "--output", datasets[blur], "--overwrite", "--direct_num_workers", "2",
                "--direct_running_mode", "multi_processing"]
        argv += ["--geometry", args.geometry] if blur == "respiratory" else []
        run(argv)
        commands.append(argv)
    for blur in blur_models:
        models[blur] = os.path.join(args.workdir, f"generator-{blur}")
        argv = [command("ctdeblur-train"), "--data", datasets[blur], "--logdir", os.path.join(args.workdir, f"logs-{blur}"),
                "--preset", args.preset, "--epochs", str(args.epochs), "--max_steps_per_epoch", str(args.steps),
                "--perceptual_weights", args.perceptual_weights, "--export", models[blur]]
        run(argv)
        commands.append(argv)

    rows = []
    for test_blur in blur_models:
        pairs = test_pairs(datasets[test_blur])
        rows.append((test_blur, "blurry input", *scores([p.blurry_hu for p in pairs], pairs)))
        for train_blur in blur_models:
            deblur = tf.saved_model.load(models[train_blur]).signatures["serving_default"]
            restored = [deblur(hu=tf.constant(p.blurry_hu, tf.float32))["hu"].numpy() for p in pairs]
            rows.append((test_blur, f"trained on {train_blur}", *scores(restored, pairs)))
    minutes = (time.monotonic() - started) / 60
    lines = [
        f"# Ablation: {' vs '.join(blur_models)} blur (issues 7 and 14)",
        "",
        f"Command: `.venv/bin/python bench/ablation_blur_model.py --pairs {args.pairs} --test_pairs {args.test_pairs} "
        f"--size {args.size} --preset {args.preset} --epochs {args.epochs} --steps {args.steps} "
        f"--perceptual_weights {args.perceptual_weights} --blur_models {' '.join(blur_models)} "
        f"--geometry {args.geometry}` ({minutes:.0f} min on 2 CPU cores).",
        "",
        "PSNR / SSIM on HU clipped to [-1000, 1000] (data_range 2000), full field of view, mean over each "
        "test split (patient-disjoint, same phantom patients for every blur model).",
        "",
        "| test set | method | PSNR dB | SSIM |",
        "|---|---|---:|---:|",
        *[f"| {test} | {method} | {psnr:.2f} | {ssim:.4f} |" for test, method, psnr, ssim in rows],
        "",
        "Steps run:",
        "",
        *[f"    {' '.join(os.path.relpath(a) if a.startswith('/') else a for a in argv)}" for argv in commands],
        "",
    ]
    with open(args.results, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

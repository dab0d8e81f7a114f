"""Ablation: train on kernel-, projection- or respiratory-blurred data, evaluate each on every test set.

Usage: .venv/bin/python bench/ablation_blur_model.py [--workdir DIR] [--phantoms 16] [--slices 24]
           [--pairs 192] [--test_pairs 48] [--validation_pairs 24] [--size 256] [--minutes 8] [--model ours]
           [--blur_models kernel projection respiratory] [--geometry fan|cone] [--results ABLATION.md]

1. One dataset per blur model from the same phantom patients and seed: `--blur_model kernel`,
   `projection` and `respiratory` (with `--geometry`) (ctdeblur-make-dataset; `--phantoms`
   patients of `--slices` slices, whose body sites cycle head, thorax, abdomen, so the
   patient-disjoint test split holds breathing sites; the results list its sites).
2. One generator trained on each (ctdeblur-train, `small` preset, `--model` recipe), for the same
   wall-clock budget (`--minutes`; or `--epochs` x `--steps` when `--minutes 0`), with
   `--perceptual_weights none`: the ImageNet VGG19 file cannot be downloaded here, and random-init
   features are never used for a reported figure (pass a weights file to use it).
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

from cli_shell.quiet import apply_quiet

apply_quiet(verbose=False, console_script=True)  # before TensorFlow is imported

import tensorflow as tf  # noqa: E402

from model.metrics import psnr_hu, ssim_hu  # noqa: E402
from pipeline.phantom import phantom_series  # noqa: E402
from tfrecords_schema import decode_pair, read_records  # noqa: E402

WINDOW_HU = (-1000.0, 1000.0)
BLUR_MODELS = ("kernel", "projection", "respiratory")


def command(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def run(argv: list[str]) -> None:
    print("+", " ".join(argv), flush=True)
    if subprocess.run(argv, stdout=subprocess.DEVNULL).returncode != 0:
        raise SystemExit(f"ablation: {os.path.basename(argv[0])} failed (its error is above)")


def test_pairs(dataset: str):
    pairs = []
    for path in sorted(glob.glob(os.path.join(dataset, "test", "pairs-*"))):
        with open(path, "rb") as handle:
            pairs += [decode_pair(record) for record in read_records(handle)]
    return pairs


def phantom_sites(phantoms: int, slices: int, size: int, seed: int) -> dict[str, str]:
    """{series_uid: body site} of the phantom series the datasets are made from."""
    series = [phantom_series(index, slices, size, seed) for index in range(phantoms)]
    return {one.uid("series"): one.body_site for one in series}


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
    parser.add_argument("--phantoms", type=int, default=16, help="phantom patients (sites cycle head, thorax, abdomen)")
    parser.add_argument("--slices", type=int, default=24, help="slices per phantom series (spanning its body site)")
    parser.add_argument("--pairs", type=int, default=192, help="pairs per dataset, test included")
    parser.add_argument("--test_pairs", type=int, default=48)
    parser.add_argument("--validation_pairs", type=int, default=24, help="pairs of the validation split (training's export choice)")
    parser.add_argument("--size", type=int, default=256, help="phantom matrix size (pixels)")
    parser.add_argument("--preset", default="small", help="trainer preset (small, or tiny for a plumbing check)")
    parser.add_argument("--model", default="ours", help="training recipe (ours, paper, deblurgan, pix2pix)")
    parser.add_argument("--minutes", type=float, default=8.0,
                        help="wall-clock training budget per generator; 0 = train --epochs x --steps instead")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="max steps per epoch and sub-dataset (--minutes 0)")
    parser.add_argument("--perceptual_weights", default="none", help="none, imagenet or a VGG19 weights file")
    parser.add_argument("--blur_models", nargs="+", choices=BLUR_MODELS, default=list(BLUR_MODELS))
    parser.add_argument("--geometry", choices=("fan", "cone"), default="cone", help="scanner of the respiratory dataset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default="ABLATION.md")
    args = parser.parse_args()
    if args.perceptual_weights == "random-init":
        parser.error("--perceptual_weights random-init is for plumbing tests, never a reported figure; "
                     "use none, imagenet or a VGG19 weights file")
    blur_models = args.blur_models
    started = time.monotonic()
    datasets, models, commands = {}, {}, []
    for blur in blur_models:
        datasets[blur] = os.path.join(args.workdir, f"data-{blur}")
        argv = [command("ctdeblur-make-dataset"), "--preset", "demo", "--source", "phantom", "--blur_model", blur,
                "--seed", str(args.seed), "--phantom_patients", str(args.phantoms),
                "--phantom_slices", str(args.slices), "--phantom_size", str(args.size), "--kernels_per_slice", "1",
                "--target_pairs", str(args.pairs), "--test_pairs", str(args.test_pairs),
                "--validation_pairs", str(args.validation_pairs), "--output", datasets[blur], "--overwrite", "--direct_num_workers", "2",
                "--direct_running_mode", "multi_processing"]
        argv += ["--geometry", args.geometry] if blur == "respiratory" else []
        run(argv)
        commands.append(argv)
    for blur in blur_models:
        models[blur] = os.path.join(args.workdir, f"generator-{blur}")
        argv = [command("ctdeblur-train"), "--data", datasets[blur], "--logdir", os.path.join(args.workdir, f"logs-{blur}"),
                "--preset", args.preset, "--model", args.model, "--perceptual_weights", args.perceptual_weights,
                "--export", models[blur]]
        if args.minutes > 0:
            argv += ["--time_budget_minutes", f"{args.minutes:g}", "--epochs", "1000"]
        else:
            argv += ["--epochs", str(args.epochs), "--max_steps_per_epoch", str(args.steps)]
        run(argv)
        commands.append(argv)

    rows, sites = [], {}
    site_of = phantom_sites(args.phantoms, args.slices, args.size, args.seed)
    for test_blur in blur_models:
        pairs = test_pairs(datasets[test_blur])
        sites[test_blur] = {}
        for pair in pairs:
            site = site_of.get(pair.series_uid, "unknown")
            sites[test_blur][site] = sites[test_blur].get(site, 0) + 1
        rows.append((test_blur, "blurry input", *scores([p.blurry_hu for p in pairs], pairs)))
        for train_blur in blur_models:
            deblur = tf.saved_model.load(models[train_blur]).signatures["serving_default"]
            restored = [deblur(hu=tf.constant(p.blurry_hu, tf.float32))["hu"].numpy() for p in pairs]
            rows.append((test_blur, f"trained on {train_blur}", *scores(restored, pairs)))
    minutes = (time.monotonic() - started) / 60
    lines = [
        f"# Ablation: {' vs '.join(blur_models)} blur (issues 7 and 14)",
        "",
        f"Command: `.venv/bin/python bench/ablation_blur_model.py --phantoms {args.phantoms} --slices {args.slices} "
        f"--pairs {args.pairs} --test_pairs {args.test_pairs} --validation_pairs {args.validation_pairs} "
        f"--size {args.size} --preset {args.preset} "
        f"--model {args.model} --minutes {args.minutes:g} --epochs {args.epochs} --steps {args.steps} "
        f"--perceptual_weights {args.perceptual_weights} --blur_models {' '.join(blur_models)} "
        f"--geometry {args.geometry} --seed {args.seed}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
        f"({minutes:.0f} min on {os.cpu_count()} CPU cores).",
        "",
        "PSNR / SSIM on HU clipped to [-1000, 1000] (data_range 2000), full field of view, mean over each "
        "test split (patient-disjoint, same phantom patients for every blur model). Test pairs by body site: "
        + "; ".join(f"{blur}: " + ", ".join(f"{site} {count}" for site, count in sorted(counts.items()))
                    for blur, counts in sites.items()) + ".",
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

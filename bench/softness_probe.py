"""Does a model mistake softness for motion? ΔPSNR of a split's kernel pairs made anew from softer
and sharper versions of their sharp slices.

Usage: .venv/bin/python bench/softness_probe.py --model EXPORT [--model EXPORT ...] --data DATASET/test
           [--sigmas 2 1 0 -0.5 -1] [--json OUT.json]

For each pair with an image-space PSF, its sharp slice is first made softer (sigma > 0: a Gaussian
of that many pixels) or sharper (sigma < 0: an unsharp mask of weight |sigma| with a 1.5-pixel
Gaussian), then blurred again by the pair's own PSF, without noise; the model's output and that
blurred image are scored against the modified slice (HU window [-1000, 1000], full field). A
model that learnt what motion blur is gains about as much at every softness; one that learnt that
every soft edge is motion over-sharpens the softer slices and loses PSNR there. Printed per
collection and sigma: the mean ΔPSNR over the pairs, and over the mildest-blurred half (highest
blurry PSNR), where over-sharpening shows first.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

from cli_shell.quiet import apply_quiet

apply_quiet(verbose=False, console_script=True)

import numpy as np  # noqa: E402
from scipy.ndimage import gaussian_filter  # noqa: E402

from model.baselines import has_psf  # noqa: E402
from model.evaluation_engine import iter_pairs, load_models, open_split  # noqa: E402
from model.metrics import psnr  # noqa: E402
from pipeline.kernels import blur_hu  # noqa: E402

UNSHARP_SIGMA = 1.5
"""Gaussian sigma (pixels) of the unsharp mask that makes slices sharper (negative sigmas)."""


def modified_sharp(sharp_hu: np.ndarray, sigma: float) -> np.ndarray:
    """The slice softened by a Gaussian of `sigma` pixels (> 0), sharpened by an unsharp mask of
    weight -`sigma` (< 0), or as it is (0)."""
    if sigma > 0:
        return gaussian_filter(sharp_hu, sigma)
    if sigma < 0:
        return sharp_hu - sigma * (sharp_hu - gaussian_filter(sharp_hu, UNSHARP_SIGMA))
    return sharp_hu


def softness_gains(model_dirs: list[str], split_dir: str, sigmas: list[float]) -> dict:
    """{model: {collection: {sigma: {"pairs", "mean_gain_db", "mild_half_gain_db"}}}}."""
    models = load_models(model_dirs)
    gains: dict = {m.name: defaultdict(lambda: defaultdict(list)) for m in models}
    for pair in iter_pairs(open_split(split_dir)):
        if not has_psf(pair.psf):
            continue
        for sigma in sigmas:
            reference = modified_sharp(pair.sharp_hu.astype(np.float32), sigma)
            blurry = blur_hu(reference, pair.psf).astype(np.float32)
            blurry_db = psnr(blurry, reference)
            for method in models:
                output = method.model.deblur(blurry[np.newaxis])[0]
                gains[method.name][pair.collection][sigma].append((blurry_db, psnr(output, reference) - blurry_db))
    result: dict = {}
    for name, by_collection in gains.items():
        result[name] = {}
        for collection, by_sigma in sorted(by_collection.items()):
            result[name][collection] = {}
            for sigma, rows in by_sigma.items():
                mild = sorted(rows, key=lambda row: -row[0])[:max(1, len(rows) // 2)]
                result[name][collection][str(sigma)] = {
                    "pairs": len(rows), "mean_gain_db": float(np.mean([gain for _, gain in rows])),
                    "mild_half_gain_db": float(np.mean([gain for _, gain in mild]))}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="exported generator directory (repeatable)")
    parser.add_argument("--data", required=True, help="a split directory, e.g. DATASET/test")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[2.0, 1.0, 0.0, -0.5, -1.0],
                        help="softening Gaussian sigma in pixels (> 0), or unsharp-mask weight (< 0)")
    parser.add_argument("--json", help="write the gains here")
    args = parser.parse_args()
    result = softness_gains(args.model, args.data, args.sigmas)
    for name, by_collection in result.items():
        for collection, by_sigma in by_collection.items():
            cells = ", ".join(f"{sigma}: {row['mean_gain_db']:+.2f} ({row['mild_half_gain_db']:+.2f})"
                              for sigma, row in by_sigma.items())
            print(f"{name} on {collection}, ΔPSNR by sigma (mildest half): {cells}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()

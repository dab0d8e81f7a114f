"""bf16 against float32 inference of trained exports on a split's blurry slices (issue 13).

Usage: .venv/bin/python bench/precision.py --model EXPORT [--model EXPORT ...] --data DATASET/test
           [--max_pairs N] [--batch_size 4]

Each model deblurs every blurry slice of the split twice, as `ctdeblur-evaluate --precision
float32` and `--precision bf16` run it (same process, same batches). Printed per model: the 99th
percentile and the largest |bf16 - float32| in HU over pixels whose float32 output lies in
[-1000, 1000] (the goal: p99 <= 5 HU), the mean PSNR gain over blurry of both (window
[-1000, 1000], full field), and seconds per slice of each (the second pass of each precision is
timed; the first traces).
"""

from __future__ import annotations

import argparse
import time

from cli_shell.quiet import apply_quiet

apply_quiet(verbose=False, console_script=True)

import numpy as np  # noqa: E402

from model.evaluation_engine import iter_pairs, open_split  # noqa: E402
from model.export import load_exported_generator  # noqa: E402
from model.metrics import psnr  # noqa: E402


def deblur_all(model, blurry: list[np.ndarray], batch_size: int) -> tuple[list[np.ndarray], float]:
    """(outputs, seconds per slice of a second, timed pass)."""
    outputs = []
    for timed in (False, True):
        started, outputs = time.perf_counter(), []
        for start in range(0, len(blurry), batch_size):
            group = blurry[start:start + batch_size]
            if len({image.shape for image in group}) > 1:
                outputs += [model.deblur(image[np.newaxis])[0] for image in group]
            else:
                outputs += list(model.deblur(np.stack(group)))
        seconds = (time.perf_counter() - started) / len(blurry)
    return outputs, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="exported generator directory (repeatable)")
    parser.add_argument("--data", required=True, help="a split directory, e.g. DATASET/test")
    parser.add_argument("--max_pairs", type=int, default=0, help="only the first N pairs (0 = all)")
    parser.add_argument("--batch_size", type=int, default=4)
    args = parser.parse_args()
    pairs = list(iter_pairs(open_split(args.data)))
    pairs = pairs[: args.max_pairs] if args.max_pairs else pairs
    blurry = [pair.blurry_hu.astype(np.float32) for pair in pairs]
    sharp = [pair.sharp_hu.astype(np.float32) for pair in pairs]
    print("| model | pairs | p99 \\|bf16 - float32\\| (HU) | max (HU) | ΔPSNR float32 (dB) | ΔPSNR bf16 (dB) | "
          "s/slice float32 | s/slice bf16 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for directory in args.model:
        runs = {precision: deblur_all(load_exported_generator(directory, precision), blurry, args.batch_size)
                for precision in ("float32", "bf16")}
        full, half = runs["float32"][0], runs["bf16"][0]
        inside = np.concatenate([((f >= -1000) & (f <= 1000)).ravel() for f in full])
        difference = np.concatenate([np.abs(h - f).ravel() for h, f in zip(half, full)])[inside]
        gain = {precision: np.mean([psnr(out, s) - psnr(b, s) for out, s, b in zip(outputs, sharp, blurry)])
                for precision, (outputs, _) in runs.items()}
        print(f"| {directory} | {len(pairs)} | {np.percentile(difference, 99):.2f} | {difference.max():.1f} | "
              f"{gain['float32']:+.3f} | {gain['bf16']:+.3f} | {runs['float32'][1]:.3f} | {runs['bf16'][1]:.3f} |")


if __name__ == "__main__":
    main()

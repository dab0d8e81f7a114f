"""Does a model leave sharp CT alone? PSNR of model(sharp) against sharp on a split's slices.

Usage: .venv/bin/python bench/sharp_input.py --model EXPORT [--model EXPORT ...] --data DATASET/test
           [--json OUT.json]

A deblurring model meets unblurred slices in practice (most of a series is still). Each distinct
slice of the split (its kernels share one sharp image) is fed to the model as it is; the PSNR of
the output against that same image (HU window [-1000, 1000], full field) says how much the model
changes what needed no change: high is good (identity is infinite). Printed per collection
(phantom, pydicom-samples, ...) as mean and minimum over slices; `--json` keeps them.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

from cli_shell.quiet import apply_quiet

apply_quiet(verbose=False, console_script=True)

import numpy as np  # noqa: E402

from model.evaluation_engine import iter_pairs, load_models, open_split  # noqa: E402
from model.metrics import psnr  # noqa: E402


def sharp_input_psnr(model_dirs: list[str], split_dir: str) -> dict[str, dict[str, dict[str, float]]]:
    """{model: {collection: {"slices", "mean_db", "min_db"}}} of model(sharp) against sharp."""
    models = load_models(model_dirs)
    scores: dict[str, dict[str, list[float]]] = {m.name: defaultdict(list) for m in models}
    seen = set()
    for pair in iter_pairs(open_split(split_dir)):
        key = (pair.series_uid, pair.sop_instance_uid)
        if key in seen:
            continue
        seen.add(key)
        sharp = pair.sharp_hu.astype(np.float32)
        for method in models:
            output = method.model.deblur(sharp[np.newaxis])[0]
            scores[method.name][pair.collection].append(psnr(output, sharp))
    return {name: {collection: {"slices": len(values), "mean_db": float(np.mean(values)),
                                "min_db": float(np.min(values))}
                   for collection, values in sorted(by_collection.items())}
            for name, by_collection in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="exported generator directory (repeatable)")
    parser.add_argument("--data", required=True, help="a split directory, e.g. DATASET/test")
    parser.add_argument("--json", help="write the scores here")
    args = parser.parse_args()
    scores = sharp_input_psnr(args.model, args.data)
    for name, by_collection in scores.items():
        for collection, score in by_collection.items():
            print(f"{name} on sharp {collection} slices ({score['slices']}): PSNR against the input "
                  f"{score['mean_db']:.2f} dB mean, {score['min_db']:.2f} dB worst")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(scores, handle, indent=2)


if __name__ == "__main__":
    main()

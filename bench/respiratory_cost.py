"""Respiratory motion benchmark: CPU time of one `respiratory_pair` (fan and cone beam) against one
static reconstruction of the same geometry, on a 512x512 phantom thorax; optionally the docs figure.

Usage: .venv/bin/python bench/respiratory_cost.py [--slices 36] [--views 360] [--pairs 5]
                                                   [--volume_cache FILE.npy] [--figure docs/img/respiratory-motion.png]
                                                   [--step_accuracy 0.5 1 2 3]

The volume is the phantom thorax (patient 1, seed 0) as the pipeline writes it (slab average and
scanner PSF), `--slices` slices over its 280 mm. The slice measured is 2 slices above the diaphragm
that `breathing_anatomy` finds (lung bases, domes and chest wall in one plane). Times are CPU
seconds of this process (`time.process_time`, one thread), the median over `--pairs` breathing
traces drawn from seeds 0, 1, ...:
  static: `project` (no motion) + `filtered_back_projection` of the slice, the floor;
  fan, cone: `respiratory_pair` with the default config of that geometry (sharp and blurry).
`breathing_anatomy`, once per series, is timed separately.
`--step_accuracy 0.5 1 2 3` also measures what the state step costs in accuracy: for the first
3 traces of each geometry (seeds 0-2), the RMS (HU, inside the body) of the blurry image made with each
step minus the one made with a 0.25 mm step, next to the RMS breathing artifact (blurry - sharp).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np

from pipeline.phantom import phantom_hu, phantom_series, slice_level_mm
from pipeline.projection import ProjectionConfig, filtered_back_projection, hu_to_attenuation, project, scan_geometry
from pipeline.respiratory import RespiratoryConfig, body_of_slice, breathing_anatomy, respiratory_pair, sample_breathing

SIZE = 512


def thorax_volume(slices: int, cache: str | None) -> tuple[np.ndarray, tuple[float, float, float]]:
    """(HU float32 [slices, 512, 512], spacing (slice, row, column) mm) of the phantom thorax."""
    series = phantom_series(1, slices, SIZE, seed=0)
    spacing = (slice_level_mm(series, 0) - slice_level_mm(series, 1), series.pixel_spacing_mm,
               series.pixel_spacing_mm)
    if cache and os.path.exists(cache):
        return np.load(cache), spacing
    volume = np.stack([phantom_hu(series, index) for index in range(slices)])
    if cache:
        np.save(cache, volume)
    return volume, spacing


def cpu_seconds(function, *args, **kwargs):
    start = time.process_time()
    result = function(*args, **kwargs)
    return time.process_time() - start, result


def figure(path: str, volume, spacing, anatomy, index: int, pairs: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sharp = pairs["fan"][0]
    panels = [("phantom slice (input)", volume[index], (-1000, 400)),
              ("sharp target (static FBP)", sharp, (-1000, 400)),
              ("fan beam, 0.5 s rotation", pairs["fan"][1], (-1000, 400)),
              ("cone beam, 60 s arc", pairs["cone"][1], (-1000, 400)),
              ("fan - sharp", pairs["fan"][1] - sharp, (-200, 200)),
              ("cone - sharp", pairs["cone"][1] - sharp, (-200, 200))]
    fig, axes = plt.subplots(2, 3, figsize=(12, 8.4))
    for axis, (title, image, (low, high)) in zip(axes.ravel(), panels):
        shown = axis.imshow(image, cmap="gray" if low == -1000 else "RdBu_r", vmin=low, vmax=high)
        axis.set_title(title, fontsize=10)
        axis.set_axis_off()
        fig.colorbar(shown, ax=axis, fraction=0.046, pad=0.02, label="HU")
    level = anatomy.diaphragm_mm - index * spacing[0]
    fig.suptitle(f"Respiratory motion, phantom thorax 512x512, slice {level:.0f} mm above the detected diaphragm "
                 f"(one breathing trace, seed 0)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


REFERENCE_STEP_MM = 0.25
ACCURACY_TRACES = 3


def step_accuracy(volume, spacing, anatomy, index: int, views: int, traces: int, steps: list[float]) -> None:
    """Prints, per geometry and trace, the blurry image's RMS error (HU, in the body) at each state step
    against `REFERENCE_STEP_MM`, and as a share of the RMS breathing artifact."""
    body = body_of_slice(volume[index])
    for geometry_name in ("fan", "cone"):
        config = RespiratoryConfig(geometry=geometry_name, views=views)
        for seed in range(traces):
            trace = sample_breathing(np.random.default_rng(seed), config, config.scan_s + 1.0)

            def blurry(step: float):
                return respiratory_pair(volume, spacing, anatomy, index, trace,
                                        dataclasses.replace(config, state_step_mm=step), 0.5)

            sharp, reference = blurry(REFERENCE_STEP_MM)
            artifact = float(np.sqrt(np.mean((reference - sharp)[body] ** 2)))
            errors = []
            for step in steps:
                error = float(np.sqrt(np.mean((blurry(step)[1] - reference)[body] ** 2)))
                errors.append(f"{step:g} mm {error:.2f} HU ({100 * error / artifact:.1f}%)")
            print(f"{geometry_name} trace {seed}: artifact {artifact:.1f} HU RMS; vs a {REFERENCE_STEP_MM} mm step: "
                  + ", ".join(errors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=36)
    parser.add_argument("--views", type=int, default=360)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--volume_cache")
    parser.add_argument("--figure")
    parser.add_argument("--step_accuracy", nargs="*", type=float, default=[],
                        help="state steps (mm) whose accuracy to measure against a 0.25 mm step")
    args = parser.parse_args()

    volume, spacing = thorax_volume(args.slices, args.volume_cache)
    anatomy_s, anatomy = cpu_seconds(breathing_anatomy, volume, spacing, "thorax")
    index = round(anatomy.diaphragm_mm / spacing[0]) - 2
    print(f"volume {volume.shape} HU, spacing {tuple(round(s, 3) for s in spacing)} mm; diaphragm at slice "
          f"{anatomy.diaphragm_mm / spacing[0]:.0f}; measured slice {index}; breathing_anatomy {anatomy_s:.2f} s CPU")

    geometry = scan_geometry(volume.shape[1:], spacing[1:], ProjectionConfig(views=args.views))
    static_times = []
    for _ in range(args.pairs):
        seconds, _ = cpu_seconds(lambda: filtered_back_projection(
            project(hu_to_attenuation(volume[index]), geometry, np.zeros((args.views, 3))), geometry))
        static_times.append(seconds)
    static = float(np.median(static_times))
    print(f"static reconstruction (project + FBP, {args.views} views): {static:.3f} s CPU (median of {args.pairs})")

    shown = {}
    for geometry_name in ("fan", "cone"):
        config = RespiratoryConfig(geometry=geometry_name, views=args.views)
        times = []
        for seed in range(args.pairs):
            trace = sample_breathing(np.random.default_rng(seed), config, config.scan_s + 1.0)
            seconds, pair = cpu_seconds(respiratory_pair, volume, spacing, anatomy, index, trace, config, 0.5)
            times.append(seconds)
            if seed == 0:
                shown[geometry_name] = pair
        pair_s = float(np.median(times))
        print(f"{geometry_name}: respiratory_pair {pair_s:.3f} s CPU (median of {args.pairs}; "
              f"min {min(times):.3f}, max {max(times):.3f}) = {pair_s / static:.2f} x the static reconstruction")
    if args.step_accuracy:
        step_accuracy(volume, spacing, anatomy, index, args.views, ACCURACY_TRACES, args.step_accuracy)
    if args.figure:
        figure(args.figure, volume, spacing, anatomy, index, shown)
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()

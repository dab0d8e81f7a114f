"""Do the simulated breathing artifacts look like free breathing? Edge spread at the diaphragm and the
anterior wall, streak energy and HU bias in lung and liver (pipeline/respiratory_measures.py) of
respiratory pairs (fan, cone) against free-breathing-like references and the other blur models.

Usage:
  PYTHONPATH=. nice -n 19 .venv/bin/python bench/respiratory_validation.py [--amplitudes 5 10 20]
      [--size 256] [--slice_mm 2] [--views 360] [--seed 0] [--cache DIR] [--figure docs/img/...png]
  PYTHONPATH=. nice -n 19 .venv/bin/python bench/respiratory_validation.py --pairs_manifest pairs.csv

Phantom study (default): the phantom thorax (patient 1: lung bases, diaphragm domes, chest wall) and
abdomen (patient 2: lung bases over the liver) of seed 0, rendered as the pipeline renders them
(slab average, scanner PSF) every `--slice_mm` over the 110 mm around their diaphragm, `--size`
pixels square. The sharp reference is every slice's static FBP (360 parallel views). Per breathing
amplitude A (diaphragm superior-inferior, exhale to inhale; anterior wall A/4), one trace from
`sample_breathing` (seed `--seed`, period 3-5 s, irregularity and drift as the defaults) drives:
  fan:          `respiratory_pair`, geometry fan (0.5 s rotation), slice i starting at
                i * slice_mm / table speed (`--table_mm_per_s`, 40 = 20 mm collimation at pitch 1),
                each slice centred on its own mean breathing state (`centre_motion`, the default);
  fan-series:   the same without centring: the series as scanned, displaced slice by slice;
  cone:         `respiratory_pair`, geometry cone (one 60 s arc, 360 degrees), centred;
  time-average: the deformed volume averaged over 60 s of the trace, centred (an infinitely slow
                scan), through the same projector and FBP: no acquisition model involved;
  4D-CT bin:    the deformed volume averaged over the times in one of ten phase bins (30-40% of each
                cycle, on the way to end-inhale at 50%), centred on its mean, same FBP.
Without amplitude: `kernel` (DeblurGAN motion PSF, `--blur_model kernel`'s defaults, on the sharp
slices) and `projection` (rigid in-plane motion, `--blur_model projection`'s defaults), each slice
its own draw as the pipeline does.

Measures, per model, against the sharp volume: median 10-90% width (mm) over the diaphragm profiles
(normal to the dome's upper surface, within 30 degrees of the body axis) and over the anterior
skin profiles (central half of the body, in-plane); streak energy excess (HU^2, in-plane 3 mm
high-pass energy over homogeneous soft tissue of the sharp volume, image minus sharp); HU bias
(image - sharp) over lung parenchyma within 40 mm above the diaphragm and over liver-like tissue
within 60 mm below it (right half).

Registered FB/DIBH pairs (`--pairs_manifest`, the `pairs` source's CSV `patient_id,fb_series,
dibh_series[,transform]`, see docs/archives.md): each pair is read and registered exactly as the
`pairs` source does (`read_ct_series`, `register_fb_to_dibh`, default RegistrationConfig) and the
same measures are taken of FB against DIBH, edges placed on each image's own edges.

Prints one Markdown table with the command and date.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import sys

import numpy as np

from pipeline.kernels import MotionConfig, blur_hu, motion_psf, motion_trajectory, sample_motion_params
from pipeline.phantom import phantom_hu, phantom_series
from pipeline.projection import ProjectionConfig, hu_to_attenuation, project, projection_pair, reconstruct_pair, \
    sample_rigid_motion, scan_geometry
from pipeline.respiratory import BreathingAnatomy, RespiratoryConfig, breathing_anatomy, breathing_signal, \
    deform_volume, respiratory_pair, sample_breathing
from pipeline.respiratory_measures import anterior_wall_points, diaphragm_points, edge_normals, edge_profiles, \
    edge_width_mm, edge_widths_mm, homogeneous_tissue_mask, hu_bias_hu, liver_mask, lung_base_mask, \
    plateau_levels_hu, streak_energy_hu2

SITES = {"thorax": (1, 280.0, (0.0, 110.0)), "abdomen": (2, 360.0, (250.0, 360.0))}
"""Phantom patient, site length (mm) and the levels (mm above the site's lower end) simulated."""
CONE_S = 60.0
PHASE_BIN = (0.3, 0.4)
DIAPHRAGM_HALF_MM = 30.0
WALL_HALF_MM = 15.0
COLUMNS = ("diaphragm 10-90% (mm)", "anterior wall 10-90% (mm)", "streak energy excess (HU²)",
           "lung-base bias (HU)", "liver bias (HU)")


@dataclasses.dataclass(frozen=True)
class Study:
    """The sharp volume of one site and where breathing acts in it."""

    site: str
    volume_hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    anatomy: BreathingAnatomy

    @property
    def diaphragm_index(self) -> float:
        return self.anatomy.diaphragm_mm / self.spacing_mm[0]


def phantom_volume(site: str, size: int, slice_mm: float, seed: int) -> np.ndarray:
    """HU float32 [Z, size, size] of the phantom site's levels in `SITES`, slice 0 at the top."""
    patient, length, (bottom, top) = SITES[site]
    series = phantom_series(patient, int(round(length / slice_mm)) + 1, size, seed)
    first = int(round((length - top) / slice_mm))
    last = int(round((length - bottom) / slice_mm))
    return np.stack([phantom_hu(series, index) for index in range(first, last + 1)])


def phantom_spacing(site: str, size: int, slice_mm: float, seed: int) -> tuple[float, float, float]:
    """(slice, row, column) spacing (mm) of `phantom_volume`."""
    pixel_mm = phantom_series(SITES[site][0], 2, size, seed).pixel_spacing_mm
    return slice_mm, pixel_mm, pixel_mm


def level_weights(states: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Share float64 [levels] of the time each of the evenly spaced `levels` stands for, when the
    breathing `states` [T] (equally spaced in time) are split linearly between the two levels around
    them."""
    position = np.clip((states - levels[0]) / (levels[1] - levels[0]), 0, len(levels) - 1)
    lower = np.minimum(np.floor(position).astype(np.intp), len(levels) - 2)
    upper = position - lower
    return (np.bincount(lower, 1 - upper, len(levels)) + np.bincount(lower + 1, upper, len(levels))) / len(states)


def static_fbp(volume_hu: np.ndarray, spacing_mm, views: int, images: list[np.ndarray]) -> list[np.ndarray]:
    """The sharp volume and each of `images` [Z, H, W] through the static projector and FBP."""
    geometry = scan_geometry(volume_hu.shape[1:], spacing_mm[1:], ProjectionConfig(views=views))
    still = np.zeros((views, 3))
    outputs = [np.empty_like(volume_hu) for _ in range(1 + len(images))]
    for index in range(len(volume_hu)):
        sinogram = project(hu_to_attenuation(volume_hu[index]), geometry, still)
        if not images:
            outputs[0][index] = reconstruct_pair(sinogram, sinogram, geometry)[0]
        for number, image in enumerate(images):
            sharp, blurry = reconstruct_pair(sinogram, project(hu_to_attenuation(image[index]), geometry, still), geometry)
            outputs[0][index], outputs[1 + number][index] = sharp, blurry
    return outputs


def breathing_config(geometry: str, amplitude_mm: float, views: int, centre: bool = True) -> RespiratoryConfig:
    return RespiratoryConfig(geometry=geometry, views=views, si_amplitude_mm_min=amplitude_mm,
                             si_amplitude_mm_max=amplitude_mm, ap_amplitude_mm_min=amplitude_mm / 4,
                             ap_amplitude_mm_max=amplitude_mm / 4, centre_motion=centre)


def respiratory_volume(study: Study, config: RespiratoryConfig, seed: int, table_mm_per_s: float) -> np.ndarray:
    """Blurry volume [Z, H, W] (HU): `respiratory_pair` of every slice, one trace for the series."""
    slices = len(study.volume_hu)
    starts = (np.arange(slices) * study.spacing_mm[0] / table_mm_per_s if config.geometry == "fan"
              else np.zeros(slices))
    trace = sample_breathing(np.random.default_rng(seed), config, float(starts[-1]) + config.scan_s + 0.01)
    return np.stack([respiratory_pair(study.volume_hu, study.spacing_mm, study.anatomy, index, trace, config,
                                      float(start))[1] for index, start in enumerate(starts)])


def averaged_volumes(study: Study, amplitude_mm: float, seed: int, views: int) -> tuple[np.ndarray, np.ndarray]:
    """(time-average, 4D-CT phase bin) volumes [Z, H, W] (HU) through the static FBP, from the
    deformed volume at breathing states 1 mm apart, weighted by the time the 60 s trace spends there."""
    config = breathing_config("cone", amplitude_mm, views)
    trace = sample_breathing(np.random.default_rng(seed), config, CONE_S)
    times = np.linspace(0.0, CONE_S, 60001)
    states = breathing_signal(trace, times)
    starts = np.asarray(trace.cycle_starts_s)
    cycle = np.clip(np.searchsorted(starts, times, side="right") - 1, 0, len(starts) - 1)
    phase = (times - starts[cycle]) / np.asarray(trace.cycle_periods_s)[cycle]
    in_bin = (phase >= PHASE_BIN[0]) & (phase < PHASE_BIN[1])
    average_states = states - states.mean()
    bin_states = states[in_bin] - states[in_bin].mean()
    low = min(average_states.min(), bin_states.min())
    high = max(average_states.max(), bin_states.max())
    levels = np.linspace(low, high, 2 + math.ceil((high - low) * trace.si_amplitude_mm))
    weights = [level_weights(average_states, levels), level_weights(bin_states, levels)]
    sums = [np.zeros_like(study.volume_hu), np.zeros_like(study.volume_hu)]
    for number, level in enumerate(levels):
        if weights[0][number] == 0 and weights[1][number] == 0:
            continue
        deformed = deform_volume(study.volume_hu, study.spacing_mm, study.anatomy,
                                 (level * trace.si_amplitude_mm, level * trace.ap_amplitude_mm))
        for total, weight in zip(sums, weights):
            total += np.float32(weight[number]) * deformed
    return tuple(static_fbp(study.volume_hu, study.spacing_mm, views, sums)[1:])


def kernel_volume(sharp_hu: np.ndarray, seed: int) -> np.ndarray:
    """Each sharp slice blurred by its own DeblurGAN motion PSF (the kernel model's defaults)."""
    config = MotionConfig()
    blurred = []
    for index, plane in enumerate(sharp_hu):
        params = sample_motion_params(np.random.default_rng([seed, index]), config)
        psf, _ = motion_psf(motion_trajectory(params), params.exposure, config.psf_max_size)
        blurred.append(blur_hu(plane, psf))
    return np.stack(blurred)


def projection_volume(study: Study, seed: int, views: int) -> np.ndarray:
    """Each slice through the projection model (rigid in-plane motion, its defaults, own draw)."""
    config = ProjectionConfig(views=views)
    return np.stack([projection_pair(plane, study.spacing_mm[1:],
                                     sample_rigid_motion(np.random.default_rng([seed, index]), config), config)[1]
                     for index, plane in enumerate(study.volume_hu)])


def measures(image_hu: np.ndarray, sharp_hu: np.ndarray, spacing_mm, diaphragm_index: float, head_first: bool,
             image_edges: bool = False) -> dict[str, float]:
    """The table's measures of `image_hu` against `sharp_hu` (same grid). Edges and masks come from
    the sharp volume; with `image_edges` (registered pairs, whose anatomy differs) each image's
    edge widths are taken on its own edges and its streak energy on its own soft tissue."""
    result = {}
    for column, points_of, half in ((COLUMNS[0], lambda v: diaphragm_points(v, spacing_mm, diaphragm_index, head_first),
                                     DIAPHRAGM_HALF_MM),
                                    (COLUMNS[1], anterior_wall_points, WALL_HALF_MM)):
        reference = image_hu if image_edges else sharp_hu
        widths = edge_widths_mm(image_hu, reference, spacing_mm, points_of(reference), half)
        result[column] = float(np.nanmedian(widths)) if np.isfinite(widths).any() else math.nan
    sharp_tissue = homogeneous_tissue_mask(sharp_hu, spacing_mm)
    image_tissue = homogeneous_tissue_mask(image_hu, spacing_mm) if image_edges else sharp_tissue
    result[COLUMNS[2]] = (streak_energy_hu2(image_hu, image_tissue, spacing_mm)
                          - streak_energy_hu2(sharp_hu, sharp_tissue, spacing_mm))
    result[COLUMNS[3]] = hu_bias_hu(image_hu, sharp_hu, lung_base_mask(sharp_hu, spacing_mm, diaphragm_index, head_first))
    result[COLUMNS[4]] = hu_bias_hu(image_hu, sharp_hu, liver_mask(sharp_hu, spacing_mm, diaphragm_index, head_first))
    return result


def cached(cache: str | None, names: tuple[str, ...], make) -> list[np.ndarray]:
    """The arrays `make()` returns, one per name, or their copies saved as `cache`/<name>.npy by an
    earlier run."""
    paths = [os.path.join(cache, f"{name}.npy") for name in names] if cache else []
    if paths and all(os.path.exists(path) for path in paths):
        return [np.load(path) for path in paths]
    arrays = list(make())
    for path, array in zip(paths, arrays):
        np.save(path, array)
    return arrays


def phantom_rows(args) -> tuple[list[tuple[str, str, str, dict]], dict]:
    """Table rows (site, model, amplitude, measures) and the thorax diaphragm profiles for the figure."""
    rows, profiles = [], {}
    for site in SITES:
        volume, = cached(args.cache, (f"{site}_seed{args.seed}_volume",), lambda: [phantom_volume(site, args.size, args.slice_mm,
                                                                                   args.seed)])
        spacing = phantom_spacing(site, args.size, args.slice_mm, args.seed)
        study = Study(site, volume, spacing, breathing_anatomy(volume, spacing, site))
        print(f"{site}: volume {volume.shape}, spacing {tuple(round(s, 3) for s in spacing)} mm, diaphragm at slice "
              f"{study.diaphragm_index:.1f}", file=sys.stderr, flush=True)
        sharp, = cached(args.cache, (f"{site}_seed{args.seed}_sharp",), lambda: static_fbp(volume, spacing, args.views, []))
        measure = lambda image: measures(image, sharp, spacing, study.diaphragm_index, True)
        rows.append((site, "sharp (static FBP)", "0", measure(sharp)))
        shown = {"sharp": sharp}
        for amplitude in args.amplitudes:
            tag = f"{site}_{amplitude:g}mm_seed{args.seed}"
            models = {
                "fan": lambda: respiratory_volume(study, breathing_config("fan", amplitude, args.views), args.seed,
                                                  args.table_mm_per_s),
                "fan-series": lambda: respiratory_volume(study, breathing_config("fan", amplitude, args.views, False),
                                                         args.seed, args.table_mm_per_s),
                "cone": lambda: respiratory_volume(study, breathing_config("cone", amplitude, args.views), args.seed,
                                                   args.table_mm_per_s)}
            volumes = {name: cached(args.cache, (f"{tag}_{name}",), lambda: [make()])[0]
                       for name, make in models.items()}
            volumes["time-average"], volumes["4D-CT bin"] = cached(
                args.cache, (f"{tag}_average", f"{tag}_4dct"),
                lambda: averaged_volumes(study, amplitude, args.seed, args.views))
            for name, image in volumes.items():
                rows.append((site, name, f"{amplitude:g}", measure(image)))
                print(f"  {site} {name} {amplitude:g} mm done", file=sys.stderr, flush=True)
                if site == "thorax" and amplitude == args.figure_amplitude:
                    shown[name] = image
        for name, make in (("kernel", lambda: kernel_volume(sharp, args.seed)),
                           ("projection", lambda: projection_volume(study, args.seed, args.views))):
            blurry, = cached(args.cache, (f"{site}_seed{args.seed}_{name}",), lambda: [make()])
            rows.append((site, f"{name} (pipeline defaults)", "-", measure(blurry)))
        if site == "thorax":
            profiles = diaphragm_profiles(shown, spacing, study.diaphragm_index)
    return rows, profiles


def diaphragm_profiles(volumes: dict[str, np.ndarray], spacing_mm, diaphragm_index: float) -> dict[str, np.ndarray]:
    """Mean profile [L] (HU) of each volume over the sharp volume's clean diaphragm profiles, from
    30 mm inside the lung to 30 mm inside the dome (0.5 mm steps)."""
    sharp = volumes["sharp"]
    points = diaphragm_points(sharp, spacing_mm, diaphragm_index)
    normals = edge_normals(sharp, spacing_mm, points)
    reference = edge_profiles(sharp, spacing_mm, points, normals, DIAPHRAGM_HALF_MM, 0.5)
    clean = np.array([math.isfinite(edge_width_mm(profile, 0.5, *plateau_levels_hu(profile, 0.5)))
                      for profile in reference])
    return {name: edge_profiles(volume, spacing_mm, points[clean], normals[clean], DIAPHRAGM_HALF_MM, 0.5).mean(axis=0)
            for name, volume in volumes.items()}


def pair_rows(manifest: str) -> list[tuple[str, str, str, dict]]:
    """Table rows of registered FB/DIBH pairs: DIBH against itself, FB against DIBH."""
    from pipeline.archive_sources import read_pairs_manifest, registration_summary, series_paths
    from pipeline.archives.registration import RegistrationConfig, read_ct_series, read_series_volume, \
        register_fb_to_dibh, series_volume

    rows = []
    for row in read_pairs_manifest(manifest):
        dibh_series, dibh_hu = read_ct_series(series_paths(row.dibh_series))
        dibh = series_volume(dibh_series, dibh_hu)
        fb_hu, result = register_fb_to_dibh(read_series_volume(series_paths(row.fb_series)), dibh,
                                            RegistrationConfig(), row.transform or None)
        print(f"{row.patient_id}: {registration_summary(result)}; accepted={result.accepted} {result.reason}",
              file=sys.stderr)
        spacing = tuple(float(s) for s in reversed(dibh.GetSpacing()))
        head_first = dibh.GetDirection()[8] < 0
        dibh_hu = dibh_hu.astype(np.float32)
        anatomy = breathing_anatomy(dibh_hu, spacing, "thorax", head_first)
        index = anatomy.diaphragm_mm / spacing[0]
        rows.append((row.patient_id, "DIBH (breath-hold)", "-", measures(dibh_hu, dibh_hu, spacing, index, head_first)))
        rows.append((row.patient_id, "FB registered" + ("" if result.accepted else " (rejected by the gate)"), "-",
                     measures(fb_hu, dibh_hu, spacing, index, head_first, image_edges=True)))
    return rows


def markdown(rows: list[tuple[str, str, str, dict]]) -> str:
    lines = ["| site | model | SI amplitude (mm) | " + " | ".join(COLUMNS) + " |",
             "|---|---|---|" + "---|" * len(COLUMNS)]
    for site, model, amplitude, values in rows:
        cells = [f"{values[c]:.1f}" if c != COLUMNS[2] else f"{values[c]:.0f}" for c in COLUMNS]
        lines.append(f"| {site} | {model} | {amplitude} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(path: str, profiles: dict[str, np.ndarray], amplitude_mm: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(7.5, 4.2))
    for name, profile in profiles.items():
        offsets = (np.arange(profile.size) - (profile.size - 1) / 2) * 0.5
        axis.plot(offsets, profile, label=name, linewidth=2.2 if name == "sharp" else 1.3,
                  color="black" if name == "sharp" else None)
    axis.set_xlabel("distance along the normal to the dome (mm): lung < 0 < dome")
    axis.set_ylabel("HU (mean over the diaphragm profiles)")
    axis.set_title(f"Phantom thorax, diaphragm dome, breathing {amplitude_mm:g} mm superior-inferior", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--amplitudes", type=float, nargs="+", default=[5.0, 10.0, 20.0],
                        help="diaphragm superior-inferior amplitudes, exhale to inhale (mm)")
    parser.add_argument("--size", type=int, default=256, help="phantom matrix (pixels)")
    parser.add_argument("--slice_mm", type=float, default=2.0, help="phantom slice spacing (mm)")
    parser.add_argument("--views", type=int, default=360, help="parallel views per slice")
    parser.add_argument("--table_mm_per_s", type=float, default=40.0, help="fan beam: table speed (mm/s)")
    parser.add_argument("--seed", type=int, default=0, help="phantom, breathing trace and blur draws")
    parser.add_argument("--cache", help="directory for the simulated volumes, reused by a rerun; files are named by "
                                         "site, seed and amplitude only, so use one directory per --size, --slice_mm, "
                                         "--views and --table_mm_per_s")
    parser.add_argument("--figure", help="PNG of the mean diaphragm profiles (thorax)")
    parser.add_argument("--figure_amplitude", type=float, default=20.0, help="amplitude shown in the figure (mm)")
    parser.add_argument("--pairs_manifest", help="CSV of FB/DIBH pairs (the pairs source's) instead of the phantoms")
    args = parser.parse_args()
    if args.cache:
        os.makedirs(args.cache, exist_ok=True)
    if args.pairs_manifest:
        rows = pair_rows(args.pairs_manifest)
    else:
        rows, profiles = phantom_rows(args)
        if args.figure:
            figure(args.figure, profiles, args.figure_amplitude)
    print(f"`{' '.join(['bench/respiratory_validation.py', *sys.argv[1:]])}`, "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()

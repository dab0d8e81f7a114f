"""One slice in HU + its task -> one encoded blur-sharp pair (blur model, noise, record); one
shard's tasks -> its framed records (`shard_records`) and its manifest entry (`shard_info`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from ct_io.errors import CTInputError
from ct_io.hu import INT16_MAX, INT16_MIN
from pipeline.config import PipelineConfig
from pipeline.hashing import derive_rng, patient_key
from pipeline.kernels import (
    add_noise,
    blur_hu,
    motion_psf,
    motion_trajectory,
    path_length_px,
    sample_motion_params,
)
from pipeline.noise import add_pair_noise
from pipeline.planning import PairTask, Rejection, SliceBreathing
from pipeline.projection import projection_pair, sample_rigid_motion
from pipeline.respiratory import respiratory_pair, slice_motion_mm
from tfrecords_schema import MOTION_PARAM_NAMES, Pair, encode_pair, frame_record

NO_PSF = np.zeros((1, 1), np.float32)
"""The `psf` of pairs not blurred by a kernel."""


def to_int16_hu(hu: np.ndarray) -> np.ndarray:
    """Rounds HU to the nearest integer and clips to the int16 range."""
    return np.clip(np.rint(hu), INT16_MIN, INT16_MAX).astype(np.int16)


def kernel_rng(config: PipelineConfig, series_uid: str, slice_index: int, kernel_index: int) -> np.random.Generator:
    """The generator of one pair's blur and noise: seeded by (run seed, series uid, slice, kernel)."""
    return derive_rng(config.seed, "kernel", series_uid, slice_index, kernel_index)


def _kernel_blur(sharp: np.ndarray, rng: np.random.Generator, config: PipelineConfig) -> dict:
    params = sample_motion_params(rng, config.motion)
    trajectory = motion_trajectory(params)
    psf, scale = motion_psf(trajectory, params.exposure, config.motion.psf_max_size)
    motion = {
        "length_px": path_length_px(trajectory, params.exposure, scale),
        "anxiety": params.anxiety,
        "centripetal": params.centripetal,
        "jump_probability": params.jump_probability,
        "gaussian_shake": params.gaussian_shake,
        "exposure": params.exposure,
        "scale": scale,
    }
    return {"sharp_hu": sharp, "blurry": blur_hu(sharp.astype(np.float32), psf), "psf": psf, "motion": motion}


def _projection_blur(sharp: np.ndarray, spacing_mm: tuple[float, float], rng: np.random.Generator,
                     config: PipelineConfig) -> dict:
    motion = sample_rigid_motion(rng, config.projection)
    target, blurry = projection_pair(sharp.astype(np.float32), spacing_mm, motion, config.projection)
    return {"sharp_hu": to_int16_hu(target), "blurry": blurry, "psf": NO_PSF,
            "motion": dict.fromkeys(MOTION_PARAM_NAMES, 0.0),
            "blur_model": "projection", "projection_kind": motion.kind, "projection": motion.as_record()}


def _respiratory_blur(slab_hu: np.ndarray, spacing_mm: tuple[float, float], breathing: SliceBreathing,
                      slice_index: int, config: PipelineConfig) -> dict:
    config = config.respiratory
    local = slice_index - breathing.first_slice
    anatomy = breathing.anatomy.shifted(breathing.first_slice, breathing.slice_mm)
    target, blurry = respiratory_pair(slab_hu, (breathing.slice_mm, *spacing_mm), anatomy, local, breathing.trace,
                                      config, breathing.start_s)
    trace = breathing.trace
    above_mm = (breathing.anatomy.diaphragm_mm - slice_index * breathing.slice_mm) * (
        1.0 if breathing.anatomy.head_first else -1.0)
    record = {
        "si_amplitude_mm": trace.si_amplitude_mm, "ap_amplitude_mm": trace.ap_amplitude_mm,
        "period_s": trace.period_s, "shape_power": trace.shape_power, "drift_mm_per_min": trace.drift_mm_per_min,
        "trace_duration_s": trace.duration_s, "start_s": breathing.start_s, "scan_s": config.scan_s,
        "arc_deg": 360.0 if config.geometry == "fan" else config.cone_arc_deg, "views": config.views,
        "above_diaphragm_mm": above_mm,
        "slice_motion_mm": slice_motion_mm(trace, config, anatomy, local, breathing.slice_mm, breathing.start_s),
    }
    cycles = {"cycle_starts_s": trace.cycle_starts_s, "cycle_periods_s": trace.cycle_periods_s,
              "cycle_amplitudes": trace.cycle_amplitudes}
    return {"sharp_hu": to_int16_hu(target), "blurry": blurry, "psf": NO_PSF,
            "motion": dict.fromkeys(MOTION_PARAM_NAMES, 0.0), "blur_model": "respiratory",
            "respiratory_geometry": config.geometry, "body_site": breathing.anatomy.body_site,
            "respiratory": record, "respiratory_cycles": cycles}


def make_pair(task: PairTask, hu: np.ndarray, config: PipelineConfig, registered_fb_hu: np.ndarray | None = None) -> Pair:
    """Blurs `hu` (float32 [H, W], HU) with the task's random motion (kernel, projection or
    respiratory model), then applies the noise model (`pipeline.noise`) to both images.

    With `projection` and `respiratory`, the sharp target is the static reconstruction through the
    same projector and FBP, so the pair differs only by the motion; for `respiratory`, `hu` is the
    task's slab of slices [S, H, W] (`SliceBreathing.slab`), else one slice. For a registered task,
    `registered_fb_hu` (the free-breathing slice resampled onto this breath-hold slice, [H, W] HU)
    is the blurry image.
    """
    header = task.header
    rng = kernel_rng(config, header.series_uid, task.slice_index, task.kernel_index)
    breathing = task.breathing
    if breathing is not None:
        slab = to_int16_hu(hu)
        sharp = slab[task.slice_index - breathing.first_slice]
    else:
        sharp = to_int16_hu(hu)
    if task.registered_fb:
        if registered_fb_hu is None or registered_fb_hu.shape != sharp.shape:
            raise ValueError(f"{task.record_key}: registered task needs its FB slice of shape {sharp.shape}")
        blurred = {"sharp_hu": sharp, "blurry": registered_fb_hu, "psf": NO_PSF,
                   "motion": dict.fromkeys(MOTION_PARAM_NAMES, 0.0), "blur_model": "none"}
    elif breathing is not None:
        blurred = _respiratory_blur(slab.astype(np.float32), header.pixel_spacing_mm, breathing, task.slice_index,
                                    config)
    elif config.blur_model == "projection":
        blurred = _projection_blur(sharp, header.pixel_spacing_mm, rng, config)
    else:
        blurred = _kernel_blur(sharp, rng, config)
    blurry = blurred.pop("blurry")
    if not task.registered_fb:
        noisy_sharp, blurry, noise = add_pair_noise(blurred["sharp_hu"], blurry, header.pixel_spacing_mm, config.noise,
                                                    rng, input_hu=sharp)
        blurred.update(sharp_hu=to_int16_hu(noisy_sharp), noise=noise.as_record())
    if config.noise_sigma_hu or config.noise_poisson_counts_per_hu:
        blurry = add_noise(blurry, rng, config.noise_sigma_hu, config.noise_poisson_counts_per_hu)
    return Pair(
        blurry_hu=to_int16_hu(blurry),
        record_key=task.record_key,
        pixel_spacing_mm=header.pixel_spacing_mm,
        slice_thickness_mm=header.slice_thickness_mm,
        slice_position_mm=header.position_mm if header.position_mm is not None else float("nan"),
        collection=task.collection,
        patient_key=patient_key(task.patient_id, config.patient_salt),
        patient_id=task.patient_id if config.raw_patient_ids else "",
        series_uid=header.series_uid,
        sop_instance_uid=header.sop_instance_uid,
        slice_index=task.slice_index,
        kernel_index=task.kernel_index,
        source_kind=task.source_kind,
        split=task.split,
        subdataset=task.subdataset,
        noise_sigma_hu=config.noise_sigma_hu,
        **blurred,
    )


def encode_task(task: PairTask, hu: np.ndarray, config: PipelineConfig, registered_fb_hu: np.ndarray | None = None) -> bytes:
    """`make_pair` serialised with the schema."""
    return encode_pair(make_pair(task, hu, config, registered_fb_hu))


def shard_records(tasks: Iterable[PairTask | None], config: PipelineConfig, read_hu: Callable[[str], np.ndarray],
                  read_registered: Callable[[str], dict[str, np.ndarray]]) -> tuple[list[bytes], list[PairTask], list[Rejection]]:
    """(framed records, tasks written, rejections) of one shard's tasks in record-key order.

    `read_hu(path)` gives a file's HU float32 [frames, H, W]; `read_registered(path)` the
    registered free-breathing slices by SOPInstanceUID (`archive_sources.registered_slices`).
    A task reads its slice's file, or for a respiratory task the files of its slab; files stay
    cached while consecutive tasks need them (a slab moves by one slice from task to task). A task
    whose files cannot be read again (CTInputError, OSError) is rejected once per slice file, with
    the first error; its other tasks are left out. `None` tasks (placeholders of empty shards) are
    skipped.
    """
    records, written, rejections = [], [], []
    cached: dict[str, np.ndarray | None] = {}
    rejected: set[str] = set()
    registered: dict[str, dict[str, np.ndarray]] = {}
    for task in sorted((t for t in tasks if t is not None), key=lambda t: t.record_key):
        header = task.header
        needed = task.breathing.slab if task.breathing is not None else (header,)
        needed_paths = {h.path for h in needed}
        cached = {path: hu for path, hu in cached.items() if path in needed_paths}
        for other in needed:
            if other.path in cached:
                continue
            try:
                cached[other.path] = read_hu(other.path)
            except (CTInputError, OSError) as error:
                cached[other.path] = None
                if header.path in rejected:
                    continue
                rejected.add(header.path)
                reason = error.reason if isinstance(error, CTInputError) else "unreadable_file"
                where = "" if other.path == header.path else f"slab slice {other.path} "
                rejections.append(Rejection(header.path, reason, f"{where}on re-read for writing: {error}", "write",
                                            header.series_uid, header.sop_instance_uid, task.slice_index))
        if any(cached[h.path] is None for h in needed):
            continue
        hu = (np.stack([cached[h.path][h.frame_index or 0] for h in needed]) if task.breathing is not None
              else cached[header.path][header.frame_index or 0])
        fb_hu = None
        if task.registered_fb:
            if task.registered_fb not in registered:
                registered[task.registered_fb] = read_registered(task.registered_fb)
            fb_hu = registered[task.registered_fb][header.sop_instance_uid]
        records.append(frame_record(encode_task(task, hu, config, fb_hu)))
        written.append(task)
    return records, written, rejections


def shard_info(split_dir: str, file_name: str, written: list[PairTask], sha256: str, patient_salt: str) -> dict:
    """The manifest entry of one written shard: its file, pair count, sha256 and what it holds."""
    return {
        "split": split_dir,
        "file": f"{split_dir}/{file_name}",
        "pairs": len(written),
        "sha256": sha256,
        "patient_keys": sorted({patient_key(t.patient_id, patient_salt) for t in written}),
        "series": sorted({t.header.series_uid for t in written}),
        "slices": sorted({f"{t.header.series_uid}/{t.slice_index}" for t in written}),
    }

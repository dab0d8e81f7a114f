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
from pipeline.planning import PairTask, Rejection
from pipeline.projection import projection_pair, sample_rigid_motion
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


def make_pair(task: PairTask, hu: np.ndarray, config: PipelineConfig, registered_fb_hu: np.ndarray | None = None) -> Pair:
    """Blurs `hu` (float32 [H, W], HU) with the task's random motion (kernel or projection model),
    then applies the noise model (`pipeline.noise`) to both images.

    With `projection`, the sharp target is the static reconstruction through the same projector and
    FBP, so the pair differs only by the motion. For a registered task, `registered_fb_hu` (the
    free-breathing slice resampled onto this breath-hold slice, [H, W] HU) is the blurry image.
    """
    header = task.header
    rng = kernel_rng(config, header.series_uid, task.slice_index, task.kernel_index)
    sharp = to_int16_hu(hu)
    if task.registered_fb:
        if registered_fb_hu is None or registered_fb_hu.shape != sharp.shape:
            raise ValueError(f"{task.record_key}: registered task needs its FB slice of shape {sharp.shape}")
        blurred = {"sharp_hu": sharp, "blurry": registered_fb_hu, "psf": NO_PSF,
                   "motion": dict.fromkeys(MOTION_PARAM_NAMES, 0.0), "blur_model": "none"}
    elif config.blur_model == "projection":
        blurred = _projection_blur(sharp, header.pixel_spacing_mm, rng, config)
    else:
        blurred = _kernel_blur(sharp, rng, config)
    blurry = blurred.pop("blurry")
    if not task.registered_fb:
        noisy_sharp, blurry, noise = add_pair_noise(blurred["sharp_hu"], blurry, header.pixel_spacing_mm, config.noise, rng)
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
    Each file is read once for its consecutive tasks. A file that cannot be read again
    (CTInputError, OSError) is rejected once, on its first task; its other tasks are left out.
    `None` tasks (placeholders of empty shards) are skipped.
    """
    records, written, rejections = [], [], []
    cached_path, cached_hu = None, None
    registered: dict[str, dict[str, np.ndarray]] = {}
    for task in sorted((t for t in tasks if t is not None), key=lambda t: t.record_key):
        header = task.header
        if header.path != cached_path:
            cached_path, cached_hu = header.path, None
            try:
                cached_hu = read_hu(header.path)
            except (CTInputError, OSError) as error:
                reason = error.reason if isinstance(error, CTInputError) else "unreadable_file"
                rejections.append(Rejection(header.path, reason, f"on re-read for writing: {error}", "write",
                                            header.series_uid, header.sop_instance_uid, task.slice_index))
        if cached_hu is None:
            continue
        fb_hu = None
        if task.registered_fb:
            if task.registered_fb not in registered:
                registered[task.registered_fb] = read_registered(task.registered_fb)
            fb_hu = registered[task.registered_fb][header.sop_instance_uid]
        records.append(frame_record(encode_task(task, cached_hu[header.frame_index or 0], config, fb_hu)))
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

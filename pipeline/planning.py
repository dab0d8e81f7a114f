"""Series assembly, slice selection, patient-disjoint split and shard assignment (pure functions).

The dataset is planned from lightweight slice headers only:
1. `assemble_series`: one SeriesInstanceUID's headers -> ordered, de-duplicated, validated slices.
2. `make_plan`: all series' eligible-slice counts -> which patients are test, how many slices each
   series gives (spread evenly in z, exact totals by largest remainder), sub-dataset offsets and
   shard counts. Patients are ordered by a seeded hash of their key, so the split is random but
   reproducible.
3. `pair_tasks`: a series and its plan -> one task per (slice, kernel), each with its shard.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Iterable, Mapping, Sequence

from ct_io.series import slice_order_key
from pipeline.config import PipelineConfig
from pipeline.hashing import derive_rng, patient_key, stable_hash
from pipeline.respiratory import (
    BreathingAnatomy,
    BreathingTrace,
    body_site_of,
    diaphragm_anatomy,
    reach_slices,
    sample_breathing,
    slice_start_s,
    trace_duration_s,
)
from pipeline.slice_scan import SliceHeader
from tfrecords_schema import split_dir


@dataclasses.dataclass(frozen=True)
class InputFile:
    """One file to read: path (local or gs://), the collection it belongs to and its source kind."""

    path: str
    collection: str
    source_kind: str = "synthetic"
    registered_fb: str = ""
    """For registered pairs (the file is a breath-hold slice): the file holding the registered
    free-breathing slices (`archive_sources.registered_slices`)."""


@dataclasses.dataclass(frozen=True)
class Rejection:
    """One input not written, with a stable reason code and a human detail.

    unit: "file" for one input file (a slice candidate), "series" for a whole series that never
    yielded files (download failed, filtered out, registration rejected); series rejections are
    counted apart from the slice accounting. unselected: the input is valid but deliberately not
    used (little body, z stride, series filters); such lines go to a separate dead-letter file.
    """

    path: str
    reason: str
    detail: str
    stage: str
    series_uid: str = ""
    sop_instance_uid: str = ""
    slice_index: int = -1
    unselected: bool = False
    unit: str = "file"

    def to_dict(self) -> dict:
        row = dataclasses.asdict(self)
        row.pop("unselected")
        return row


@dataclasses.dataclass(frozen=True)
class SeriesSlices:
    """A validated series: slices ordered along the slice normal (slice_index = position in it)."""

    series_uid: str
    patient_id: str
    collection: str
    source_kind: str
    slices: tuple[SliceHeader, ...]
    eligible: tuple[int, ...]
    """Indices into `slices` with enough body to be used."""
    registered_fb: str = ""


@dataclasses.dataclass(frozen=True)
class SeriesPlan:
    split: str
    quota: int
    """Slices to take from the series."""
    offset: int
    """Train slices planned before this series (sub-dataset rotation); 0 for test."""


@dataclasses.dataclass(frozen=True)
class Plan:
    series: Mapping[str, SeriesPlan]
    pairs_per_split: Mapping[str, int]
    """Planned pairs per split directory (test, train-0 ..)."""
    shards_per_split: Mapping[str, int]
    test_patients: int
    train_patients: int
    warnings: tuple[str, ...]
    validation_patients: int = 0


@dataclasses.dataclass(frozen=True)
class SliceBreathing:
    """What a respiratory pair needs besides its own slice: the series' anatomy and breathing trace,
    the slab of slices it reads (`slab[slice_index - first_slice]` is its own), slice spacing (mm)
    and the time its scan starts (s into the trace)."""

    anatomy: BreathingAnatomy
    trace: BreathingTrace
    slab: tuple[SliceHeader, ...]
    first_slice: int
    slice_mm: float
    start_s: float


@dataclasses.dataclass(frozen=True)
class PairTask:
    """Everything needed to make and place one pair, without pixels."""

    record_key: str
    split: str
    subdataset: int
    shard: int
    kernel_index: int
    slice_index: int
    collection: str
    source_kind: str
    patient_id: str
    header: SliceHeader
    registered_fb: str = ""
    """Set for the real pair (kernel 0) of a registered slice: the FB file to take blurry from."""
    breathing: SliceBreathing | None = None
    """Set for a respiratory pair."""

    @property
    def split_dir(self) -> str:
        return split_dir(self.split, self.subdataset)


def assemble_series(
    series_uid: str, members: Iterable[tuple[InputFile, SliceHeader]], min_body_fraction: float
) -> tuple[SeriesSlices | None, list[Rejection]]:
    """Orders and validates one series' slices; returns (series or None, rejections).

    Duplicate SOP instances (frames of one) keep the first file by path; mixed matrix sizes or
    patient IDs reject the whole series; slices are ordered by `ct_io.series.slice_order_key`;
    slices with a body fraction below `min_body_fraction` are unselected.
    """
    ordered = sorted(members, key=lambda member: (member[0].path, member[1].frame_index or 0))
    rejections: list[Rejection] = []
    kept: list[tuple[InputFile, SliceHeader]] = []
    seen: dict[tuple[str, int | None], str] = {}
    for source, header in ordered:
        instance = (header.sop_instance_uid, header.frame_index)
        if instance in seen:
            rejections.append(Rejection(
                header.path, "duplicate_sop_instance",
                f"SOPInstanceUID {header.sop_instance_uid} already read from {seen[instance]}",
                "series", series_uid, header.sop_instance_uid,
            ))
            continue
        seen[instance] = header.path
        kept.append((source, header))
    if not kept:
        return None, rejections

    def reject_all(reason: str, detail: str) -> tuple[None, list[Rejection]]:
        return None, rejections + [
            Rejection(h.path, reason, detail, "series", series_uid, h.sop_instance_uid) for _, h in kept
        ]

    sizes = collections.Counter((h.rows, h.columns) for _, h in kept)
    if len(sizes) > 1:
        described = ", ".join(f"{r}x{c} ({n} slices)" for (r, c), n in sorted(sizes.items()))
        return reject_all("mixed_matrix_sizes", f"series {series_uid} mixes matrix sizes: {described}")
    patients = sorted({h.patient_id for _, h in kept})
    if len(patients) > 1:
        return reject_all("mixed_patient_ids", f"series {series_uid} mixes PatientIDs {patients}")

    kept.sort(key=lambda m: slice_order_key(m[1].position_mm, m[1].instance_number, m[1].path, m[1].frame_index))
    slices = tuple(h for _, h in kept)
    eligible = []
    for index, header in enumerate(slices):
        if header.body_fraction >= min_body_fraction:
            eligible.append(index)
        else:
            rejections.append(Rejection(
                header.path, "low_body_fraction",
                f"body fraction {header.body_fraction:.3f} < {min_body_fraction}",
                "selection", series_uid, header.sop_instance_uid, index, unselected=True,
            ))
    first = kept[0][0]
    return SeriesSlices(series_uid, patients[0], first.collection, first.source_kind, slices, tuple(eligible),
                        first.registered_fb), rejections


SPACING_TOLERANCE = 0.01
"""Largest relative deviation of a slice gap from the series' mean gap for the respiratory model."""


def breathing_trace_of(series: SeriesSlices, config: PipelineConfig) -> BreathingTrace:
    """The series' breathing (one patient, one scan): seeded by (run seed, series uid)."""
    return sample_breathing(derive_rng(config.seed, "breathing", series.series_uid), config.respiratory,
                            trace_duration_s(config.respiratory, len(series.slices)))


def _slice_mm(series: SeriesSlices) -> tuple[float, str]:
    """(slice spacing mm, "") of a series with uniform slice gaps, else (nan, why not)."""
    positions = [h.position_mm for h in series.slices]
    if len(positions) < 2 or None in positions:
        return math.nan, "the respiratory model needs >= 2 slices with ImagePositionPatient"
    gaps = [b - a for a, b in zip(positions, positions[1:])]
    mean = sum(gaps) / len(gaps)
    if mean <= 0 or max(abs(gap - mean) for gap in gaps) > SPACING_TOLERANCE * mean:
        return math.nan, (f"slice gaps {min(gaps):.3f}-{max(gaps):.3f} mm are not uniform (the respiratory model "
                          f"needs a regular volume, tolerance {SPACING_TOLERANCE:.0%})")
    return mean, ""


def breathing_rejections(series: SeriesSlices, config: PipelineConfig) -> list[Rejection]:
    """Rejections of a series' eligible slices when the respiratory model cannot use the series (no
    positions or non-uniform slice gaps; fewer than 2 x reach + 1 slices, where reach is
    `respiratory.reach_slices` of its trace), else []."""
    slice_mm, problem = _slice_mm(series)
    reason = "breathing_irregular_volume"
    if not problem:
        reach = reach_slices(breathing_trace_of(series, config), slice_mm)
        if len(series.slices) < 2 * reach + 1:
            reason, problem = "breathing_too_few_slices", (
                f"{len(series.slices)} slices {slice_mm:.2f} mm apart, fewer than the {2 * reach + 1} its breathing "
                f"needs (anatomy up to {reach} slices away passes through a slice)")
    if not problem:
        return []
    return [Rejection(series.slices[index].path, reason, f"series {series.series_uid}: {problem}", "series",
                      series.series_uid, series.slices[index].sop_instance_uid, index) for index in series.eligible]


def series_breathing(series: SeriesSlices, config: PipelineConfig) -> list[SliceBreathing]:
    """Per slice of a series that passes `breathing_rejections`: its respiratory context. Body site
    `respiratory.body_site_of` (BodyPartExamined, else lungs -> thorax, else by body area: head or
    abdomen); slice 0 is superior if its patient z is larger; a fan-beam scan runs from head to feet."""
    slices = series.slices
    slice_mm, _ = _slice_mm(series)
    trace = breathing_trace_of(series, config)
    air = [h.air_fraction for h in slices]
    head_first = slices[0].patient_z_mm > slices[-1].patient_z_mm
    areas = [h.body_fraction * h.rows * h.columns * h.pixel_spacing_mm[0] * h.pixel_spacing_mm[1] for h in slices]
    site = body_site_of(slices[0].body_part, air, areas)
    anatomy = diaphragm_anatomy(air, slice_mm, site, head_first, config.respiratory.move_head)
    reach = reach_slices(trace, slice_mm)
    contexts = []
    for index in range(len(slices)):
        first = max(0, index - reach)
        position = index if head_first else len(slices) - 1 - index
        contexts.append(SliceBreathing(anatomy, trace, slices[first: index + reach + 1], first, slice_mm,
                                       slice_start_s(config.respiratory, position)))
    return contexts


def _largest_remainder(total: int, weights: Sequence[tuple[str, int]], seed: int) -> dict[str, int]:
    """Splits `total` into integers proportional to the weights, exactly summing to `total`."""
    available = sum(w for _, w in weights)
    if available == 0 or total == 0:
        return {name: 0 for name, _ in weights}
    total = min(total, available)
    exact = {name: total * w / available for name, w in weights}
    quotas = {name: math.floor(value) for name, value in exact.items()}
    left = total - sum(quotas.values())
    by_remainder = sorted(weights, key=lambda item: (-(exact[item[0]] - quotas[item[0]]), stable_hash(seed, "tie", item[0])))
    for name, _ in by_remainder[:left]:
        quotas[name] += 1
    return quotas


def make_plan(summaries: Iterable[tuple[str, str, int]], config: PipelineConfig) -> Plan:
    """Plans the dataset from (series_uid, patient_key, eligible slice count) of every series."""
    series = sorted(summaries)
    warnings: list[str] = []
    per_patient: dict[str, int] = collections.defaultdict(int)
    for _, key, eligible in series:
        per_patient[key] += eligible
    patients = sorted(per_patient, key=lambda key: (stable_hash(config.seed, "split", key), key))

    held_out: dict[str, set[str]] = {"test": set(), "validation": set()}
    remaining = list(patients)
    for split, wanted in (("test", config.test_slices), ("validation", config.validation_slices)):
        eligible = 0
        while remaining and eligible < wanted and len(remaining) > 1:
            key = remaining.pop(0)
            held_out[split].add(key)
            eligible += per_patient[key]
        if wanted and not held_out[split]:
            needed = 2 if split == "test" else 2 + bool(held_out["test"])
            warnings.append(f"{split} split is empty: a patient-disjoint {split} split needs >= {needed} patients, "
                            f"found {len(patients)}")
    test_keys, validation_keys = held_out["test"], held_out["validation"]

    test_series = [(uid, n) for uid, key, n in series if key in test_keys]
    validation_series = [(uid, n) for uid, key, n in series if key in validation_keys]
    train_series = sorted(((uid, n) for uid, key, n in series if key not in test_keys | validation_keys),
                          key=lambda item: (stable_hash(config.seed, "series", item[0]), item[0]))
    test_quota = _largest_remainder(config.test_slices, test_series, config.seed)
    validation_quota = _largest_remainder(config.validation_slices, validation_series, config.seed)
    train_quota = _largest_remainder(config.target_slices - config.test_slices - config.validation_slices,
                                     train_series, config.seed)

    written = {"test": sum(test_quota.values()), "validation": sum(validation_quota.values())}
    for split, wanted, pairs in (("test", config.test_slices, config.test_pairs),
                                 ("validation", config.validation_slices, config.validation_pairs)):
        if written[split] < wanted:
            warnings.append(f"{split} split has {written[split] * config.kernels_per_slice} pairs, {pairs} requested: "
                            f"not enough eligible slices in {split} patients")
    train_written = sum(train_quota.values())
    train_wanted = config.target_slices - config.test_slices - config.validation_slices
    if train_written < train_wanted:
        warnings.append(f"train splits have {train_written * config.kernels_per_slice} pairs, "
                        f"{train_wanted * config.kernels_per_slice} requested: not enough eligible slices")

    plans: dict[str, SeriesPlan] = {uid: SeriesPlan("test", test_quota[uid], 0) for uid, _ in test_series}
    plans.update({uid: SeriesPlan("validation", validation_quota[uid], 0) for uid, _ in validation_series})
    offset = 0
    for uid, _ in train_series:
        plans[uid] = SeriesPlan("train", train_quota[uid], offset)
        offset += train_quota[uid]

    k = config.kernels_per_slice
    train_pairs = train_written * k
    pairs_per_split = {split_dir("test", -1): written["test"] * k}
    if config.validation_pairs:
        pairs_per_split[split_dir("validation", -1)] = written["validation"] * k
    for index in range(config.subdatasets):
        pairs_per_split[split_dir("train", index)] = train_pairs // config.subdatasets + (
            1 if index < train_pairs % config.subdatasets else 0)
    shards = {name: max(1, math.ceil(pairs / config.pairs_per_shard)) for name, pairs in pairs_per_split.items()}
    return Plan(plans, pairs_per_split, shards, len(test_keys), len(patients) - len(test_keys) - len(validation_keys),
                tuple(warnings), len(validation_keys))


def evenly_spaced(count: int, quota: int) -> list[int]:
    """`quota` distinct indices of range(count), spread evenly (centres of equal z intervals)."""
    if not 0 <= quota <= count:
        raise ValueError(f"quota {quota} must be in [0, {count}]")
    return [math.floor((j + 0.5) * count / quota) for j in range(quota)]


def shard_of(record_key: str, shards: int) -> int:
    """Shard index of a record: a stable hash of its key."""
    return stable_hash("shard", record_key) % shards


def record_key(series_uid: str, slice_index: int, kernel_index: int) -> str:
    """Unique, sortable key of a pair."""
    return f"{series_uid}/{slice_index:05d}/{kernel_index:02d}"


def pair_tasks(series: SeriesSlices, plan: Plan, config: PipelineConfig) -> tuple[list[PairTask], list[Rejection]]:
    """The pairs a series contributes under `plan`, and the eligible slices it leaves out.

    A registered series' slices give their real FB/DIBH pair as kernel 0 and, when
    `kernels_per_slice` > 1, synthetic pairs of the breath-hold slice as kernels 1.. . With the
    respiratory model each synthetic task carries its `SliceBreathing`.
    """
    series_plan = plan.series[series.series_uid]
    chosen = set(evenly_spaced(len(series.eligible), series_plan.quota))
    breathing = series_breathing(series, config) if config.blur_model == "respiratory" else None
    tasks: list[PairTask] = []
    rejections: list[Rejection] = []
    rank = 0
    for position, index in enumerate(series.eligible):
        header = series.slices[index]
        if position not in chosen:
            rejections.append(Rejection(
                header.path, "not_selected_z_stride",
                f"z stride keeps {series_plan.quota} of {len(series.eligible)} eligible slices of this series",
                "selection", series.series_uid, header.sop_instance_uid, index, unselected=True,
            ))
            continue
        for kernel_index in range(config.kernels_per_slice):
            if series_plan.split != "train":
                subdataset = -1
            else:
                global_pair = (series_plan.offset + rank) * config.kernels_per_slice + kernel_index
                subdataset = global_pair % config.subdatasets
            key = record_key(series.series_uid, index, kernel_index)
            shards = plan.shards_per_split[split_dir(series_plan.split, subdataset)]
            real_pair = series.source_kind == "registered" and kernel_index == 0
            tasks.append(PairTask(
                key, series_plan.split, subdataset, shard_of(key, shards), kernel_index, index,
                series.collection, "registered" if real_pair else "synthetic", series.patient_id, header,
                series.registered_fb if real_pair else "", breathing[index] if breathing and not real_pair else None,
            ))
        rank += 1
    return tasks, rejections


def series_summary(series: SeriesSlices, salt: str) -> tuple[str, str, int]:
    """(series_uid, patient_key, eligible slices): what `make_plan` needs of a series."""
    return series.series_uid, patient_key(series.patient_id, salt), len(series.eligible)

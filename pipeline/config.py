"""`PipelineConfig`: the dataset stage's one frozen config, from presets, YAML and flags.

Precedence: named preset (default `paper`, the reference paper's dataset) < YAML file < flags.
Every field carries its help text (with units) in its metadata, and flags are generated from the
fields, so `--help` documents each of them.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Mapping

from cli_shell.settings import add_config_flags as add_settings_flags
from cli_shell.settings import config_from_layers, flag_settings, read_yaml_settings, setting
from ct_io.dicom import LOSSY_RATIO_LIMIT
from pipeline.archives.registration import RegistrationConfig
from pipeline.archives.series import SeriesFilter
from pipeline.archives.tcia import DEFAULT_COLLECTIONS, TciaConfig
from pipeline.kernels import MotionConfig
from pipeline.noise import NoiseConfig
from pipeline.projection import ProjectionConfig
from pipeline.respiratory import RespiratoryConfig


BLUR_MODELS = ("kernel", "projection", "respiratory")


@dataclasses.dataclass(frozen=True)
class PhantomConfig:
    """Size of the embedded procedural phantom source (`--source phantom`)."""

    patients: int = setting(6, "phantom patients (body sites cycle head, thorax, abdomen/pelvis)")
    slices: int = setting(40, "axial slices per phantom series, spread evenly over the body site (head 140, thorax "
                              "280, abdomen/pelvis 360 mm): 40 slices are 3.6-9.2 mm apart")
    size: int = setting(512, "phantom matrix size (pixels, square)")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything that decides the content of a dataset (with the inputs)."""

    seed: int = setting(0, "run seed: kernels, noise, phantoms, split and shard order derive from it and stable ids")
    target_pairs: int = setting(14329, "pairs to write in total, test included (spread evenly over all series in z)")
    test_pairs: int = setting(300, "pairs in the patient-disjoint test split")
    validation_pairs: int = setting(0, "pairs in the validation/ split, patient-disjoint from test and train: the "
                                       "trainer's validation and best-checkpoint choice; 0 = no validation split")
    subdatasets: int = setting(7, "train sub-datasets (train-0 .. train-N-1), fed one after another to the trainer")
    kernels_per_slice: int = setting(1, "motion kernels (pairs) per selected slice; target_pairs and test_pairs must be multiples")
    min_body_fraction: float = setting(0.10, "skip slices where less than this fraction of pixels is body (HU > body_hu_threshold)")
    body_hu_threshold: float = setting(-500.0, "HU above which a pixel counts as body")
    max_lossy_ratio: float = setting(LOSSY_RATIO_LIMIT, "refuse slices compressed lossily at a higher ratio "
                                                        "(LossyImageCompressionRatio, or measured from JPEG / JPEG 2000 "
                                                        "data) as sharp references; 0 = accept any")
    pairs_per_shard: int = setting(128, "pairs per TFRecord shard (about 1 MB per 512x512 pair uncompressed)")
    compression: str = setting("none", "shard compression: none or gzip", choices=("none", "gzip"))
    patient_salt: str = setting("ctdeblur-v1", "salt of the patient_key hash; set a secret one for non-public data")
    raw_patient_ids: bool = setting(False, "also store the raw PatientID in each record (off: only the salted patient_key)")
    noise_sigma_hu: float = setting(0.0, "std of extra white Gaussian noise on the blurry image (HU), on top of the "
                                         "noise model (noise_*); 0 = off")
    noise_poisson_counts_per_hu: float = setting(0.0, "extra signal-dependent Poisson noise on the blurry image, counts "
                                                      "per HU above -1024, on top of the noise model; 0 = off")
    collection: str = setting("local", "collection name recorded for --source dicom-dir inputs")
    blur_model: str = setting("kernel", "kernel: image-space motion PSF (the paper's); projection: rigid patient motion "
                             "during the scan, forward-projected and reconstructed by FBP; respiratory: the series "
                             "volume breathing during a fan- or cone-beam scan (--geometry)", choices=BLUR_MODELS)
    collections: tuple[str, ...] = setting(DEFAULT_COLLECTIONS, "archive collections for --source tcia and idc (TCIA names, "
                                          "e.g. CPTAC-LUAD; IDC ids such as cptac_luad also work for idc)")
    idc_bucket_root: str = setting("", "root holding <crdc_series_uuid>/ directories for --source idc; empty = the public "
                                      "bucket (gs://idc-open-data); a local mirror or another bucket otherwise")
    idc_index: str = setting("", "IDC index file (CSV or parquet, local or gs://) for --source idc; empty = the index "
                                "bundled with the idc-index-data package (offline)")
    registered_collection: str = setting("fb-dibh", "collection name recorded for --source pairs")
    motion: MotionConfig = dataclasses.field(default_factory=MotionConfig)
    noise: NoiseConfig = dataclasses.field(default_factory=NoiseConfig)
    projection: ProjectionConfig = dataclasses.field(default_factory=ProjectionConfig)
    respiratory: RespiratoryConfig = dataclasses.field(default_factory=RespiratoryConfig)
    series_filter: SeriesFilter = dataclasses.field(default_factory=SeriesFilter)
    tcia: TciaConfig = dataclasses.field(default_factory=TciaConfig)
    registration: RegistrationConfig = dataclasses.field(default_factory=RegistrationConfig)

    def tcia_config(self) -> TciaConfig:
        """The TCIA client settings with this config's collections and series filter."""
        return dataclasses.replace(
            self.tcia, collections=tuple(self.collections), min_slices=self.series_filter.min_slices,
            description_include=tuple(self.series_filter.description_include),
            description_exclude=tuple(self.series_filter.description_exclude),
            max_series_per_patient=self.series_filter.max_series_per_patient)
    phantom: PhantomConfig = dataclasses.field(default_factory=PhantomConfig)

    @property
    def test_slices(self) -> int:
        return self.test_pairs // self.kernels_per_slice

    @property
    def validation_slices(self) -> int:
        return self.validation_pairs // self.kernels_per_slice

    @property
    def target_slices(self) -> int:
        return self.target_pairs // self.kernels_per_slice

    def validate(self) -> "PipelineConfig":
        """Returns self, or raises ValueError naming the bad setting."""
        if self.kernels_per_slice < 1:
            raise ValueError(f"kernels_per_slice must be >= 1, got {self.kernels_per_slice}")
        for name in ("target_pairs", "test_pairs", "validation_pairs"):
            value = getattr(self, name)
            if value < 0 or value % self.kernels_per_slice:
                raise ValueError(f"{name}={value} must be >= 0 and a multiple of kernels_per_slice={self.kernels_per_slice}")
        if self.test_pairs + self.validation_pairs > self.target_pairs:
            raise ValueError(f"test_pairs={self.test_pairs} + validation_pairs={self.validation_pairs} exceeds "
                             f"target_pairs={self.target_pairs}")
        if self.subdatasets < 1:
            raise ValueError(f"subdatasets must be >= 1, got {self.subdatasets}")
        if self.pairs_per_shard < 1:
            raise ValueError(f"pairs_per_shard must be >= 1, got {self.pairs_per_shard}")
        if not 0.0 <= self.min_body_fraction <= 1.0:
            raise ValueError(f"min_body_fraction must be in [0, 1], got {self.min_body_fraction}")
        if self.compression not in ("none", "gzip"):
            raise ValueError(f"compression must be none or gzip, got {self.compression!r}")
        if self.noise_sigma_hu < 0 or self.noise_poisson_counts_per_hu < 0:
            raise ValueError("noise settings must be >= 0")
        if self.blur_model not in BLUR_MODELS:
            raise ValueError(f"blur_model must be one of {BLUR_MODELS}, got {self.blur_model!r}")
        if self.phantom.patients < 1 or self.phantom.slices < 1 or self.phantom.size < 32:
            raise ValueError(f"phantom needs >= 1 patient, >= 1 slice and size >= 32, got {self.phantom}")
        self.motion.validate()
        self.noise.validate()
        self.projection.validate()
        self.respiratory.validate()
        self.series_filter.validate()
        self.registration.validate()
        if not self.collections:
            raise ValueError("collections is empty: name at least one archive collection, e.g. CPTAC-LUAD")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: Mapping[str, Mapping[str, Any]] = {
    "paper": {},
    "demo": {
        "target_pairs": 240,
        "test_pairs": 40,
        "validation_pairs": 24,
        "pairs_per_shard": 32,
        "phantom": {"patients": 6, "slices": 48},
    },
    "tiny": {
        "target_pairs": 24,
        "test_pairs": 6,
        "pairs_per_shard": 4,
        "phantom": {"patients": 4, "slices": 8, "size": 96},
        "motion": {"samples": 200, "length_px_min": 4.0, "length_px_max": 16.0, "psf_max_size": 17},
        "projection": {"views": 90},
        "respiratory": {"views": 90},
    },
}
"""Named settings: `paper` (the reference paper's 14,329 pairs), `demo` (minutes on a laptop),
`tiny` (seconds, for tests)."""


def config_from_dict(values: Mapping[str, Any]) -> PipelineConfig:
    """Builds a validated config from a (possibly partial) nested mapping over the paper defaults."""
    return config_from_layers(PipelineConfig, [("config", values)])


_SERIES_FILTER_HELP = {
    "min_slices": "archive series with fewer images than this are not fetched",
    "description_include": "fetch only archive series whose SeriesDescription matches one of these regexes "
                           "(case-insensitive); none = all",
    "description_exclude": "never fetch archive series whose SeriesDescription matches one of these regexes "
                           "(scouts, localizers, dose reports by default)",
    "max_series_per_patient": "fetch at most this many archive series per patient, most slices first; 0 = all",
}
_DERIVED_FLAGS = {"tcia_collections", "tcia_min_slices", "tcia_description_include", "tcia_description_exclude",
                  "tcia_max_series_per_patient"}
"""TCIA client fields set from `collections` and `series_filter` (no flags of their own)."""


def _help(group_name: str | None, f: dataclasses.Field) -> str:
    if group_name == "series_filter":
        return _SERIES_FILTER_HELP[f.name]
    raise KeyError(f"setting {group_name}.{f.name} has no help text")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Adds --preset, --config and one flag per setting (default: unset, i.e. preset/YAML value)."""
    add_settings_flags(parser, PipelineConfig, "dataset settings (preset < --config YAML < these flags)", PRESETS,
                       "named settings: paper (14,329 pairs, the reference paper), demo (minutes), tiny (tests)",
                       "YAML file with settings (same names; motion: and phantom: nested)",
                       exclude=_DERIVED_FLAGS, help_of=_help)


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """The config named by --preset, updated by --config YAML, then by explicit flags."""
    layers = [(f"preset {args.preset}", PRESETS[args.preset])]
    if args.config:
        layers.append((args.config, read_yaml_settings(args.config)))
    layers.append(("flags", flag_settings(args, PipelineConfig, _DERIVED_FLAGS)))
    return config_from_layers(PipelineConfig, layers)

"""`ctdeblur-evaluate`: PSNR/SSIM of exported models against the blurry input and the classical
oracles (Wiener, Richardson-Lucy with the true PSF) on a test split: the paper's Table 1.

    ctdeblur-evaluate --model DIR [--model DIR ...] --data DATASET/test [--json F] [--report DIR]
                      [--validation DATASET/train-0] [--preset paper|quick] [--config YAML] [...]

Pairs are streamed from the shards (memory does not grow with the split), the models are called
in batches, and every pair is scored at two HU windows, on the full field of view and inside the
body mask (see `model.metrics`). The Wiener NSR and Richardson-Lucy iterations are chosen on
pairs of a train sub-dataset (`--validation`, default: the test split's sibling `train-0`).
"""

from __future__ import annotations

import cli_shell.quiet_start  # noqa: F401  (first: quiets TensorFlow / absl / Google noise unless --verbose)

import argparse
import dataclasses
import gzip
import hashlib
import json
import math
import posixpath
import sys
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import yaml
from tqdm import tqdm

from cli_shell.quiet import add_verbose_flag
from model import metrics
from model.baselines import (
    DEFAULT_RL_ITERATIONS_GRID,
    DEFAULT_WIENER_NSR_GRID,
    BaselineSettings,
    has_psf,
    tune_baselines,
)
from model.data import DatasetError, join, read_manifest
from model.evaluation_report import (
    BASELINES,
    BLURRY,
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    PAIR_COLUMNS,
    RL,
    SCOPES,
    WIENER,
    results_json,
    score_columns,
    screen_tables,
    write_report,
)
from model.export import ExportedGenerator, ExportError, load_exported_generator
from tfrecords_schema import (
    MANIFEST_NAME,
    TEST_DIR,
    Pair,
    PairDecodeError,
    SchemaVersionError,
    TFRecordCorruptionError,
    decode_pair,
    read_records,
    train_dir,
)

EXIT_USER_ERROR = 2
STATUS_OK = "ok"
STATUS_NO_PSF = "no_psf"


class EvaluationError(ValueError):
    """Bad user input (directory, shard, model, settings); the message says what and what to do."""


def _field(default: Any, help: str) -> Any:
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Everything that decides an evaluation (with the data and the models); protocol defaults."""

    window_hu: tuple[float, float] = _field(metrics.DEFAULT_WINDOW_HU, "main HU window: both images clipped to it, data range = its width")
    full_range_hu: tuple[float, float] = _field(metrics.FULL_RANGE_WINDOW_HU, "second HU window, the full CT range")
    body_threshold_hu: float = _field(metrics.BODY_THRESHOLD_HU, "body mask: HU above this (before hole filling)")
    body_component_fraction: float = _field(
        metrics.BODY_COMPONENT_FRACTION, "body mask: keep components of at least this fraction of the largest one's area")
    baselines: bool = _field(True, "the Wiener and Richardson-Lucy oracles (true PSF)")
    wiener_nsr: tuple[float, ...] = _field(
        DEFAULT_WIENER_NSR_GRID, "Wiener noise-to-signal ratios to choose from by mean PSNR on the validation pairs (one value: used as given)")
    rl_iterations: tuple[int, ...] = _field(
        DEFAULT_RL_ITERATIONS_GRID, "Richardson-Lucy iteration counts to choose from likewise (one value: used as given)")
    tune_pairs: int = _field(16, "validation pairs with an image-space PSF used to choose the Wiener NSR and RL iterations")
    batch_size: int = _field(4, "pairs per model call")
    max_pairs: int = _field(0, "evaluate only the first N pairs of the split (0 = all)")
    figure_pairs: int = _field(3, "pairs (rows) in figure.png, those with the smallest SHA-256 of their record_key")
    figure_difference_hu: float = _field(200.0, "difference maps (method - sharp) are shown from -D to +D HU")
    bootstrap_resamples: int = _field(
        BOOTSTRAP_RESAMPLES, "resamples of the test patients for the CIs (patient-clustered percentile bootstrap)")
    bootstrap_seed: int = _field(BOOTSTRAP_SEED, "seed of the bootstrap's draws (fixed, so a report is reproducible)")

    def validate(self) -> EvalConfig:
        """Returns self, or raises ValueError naming the bad setting."""
        for name in ("window_hu", "full_range_hu"):
            metrics.window_bounds(getattr(self, name))
        if not 0 < self.body_component_fraction <= 1:
            raise ValueError(f"body_component_fraction must be in (0, 1], got {self.body_component_fraction}")
        if not self.wiener_nsr or any(not v > 0 for v in self.wiener_nsr):
            raise ValueError(f"wiener_nsr must be one or more values > 0, got {self.wiener_nsr}")
        if not self.rl_iterations or any(v < 1 for v in self.rl_iterations):
            raise ValueError(f"rl_iterations must be one or more counts >= 1, got {self.rl_iterations}")
        for name in ("tune_pairs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_pairs", "figure_pairs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.figure_difference_hu > 0:
            raise ValueError(f"figure_difference_hu must be > 0, got {self.figure_difference_hu}")
        if self.bootstrap_resamples < 100:
            raise ValueError(f"bootstrap_resamples must be >= 100 for a 95% percentile interval, "
                             f"got {self.bootstrap_resamples}")
        if self.bootstrap_seed < 0:
            raise ValueError(f"bootstrap_seed must be >= 0, got {self.bootstrap_seed}")
        return self

    @property
    def windows(self) -> dict[str, tuple[float, float]]:
        """{"window": main window, "fullrange": full-range window}, the keys of the score columns."""
        return {"window": tuple(self.window_hu), "fullrange": tuple(self.full_range_hu)}

    def to_dict(self) -> dict[str, Any]:
        """Plain values (tuples as lists) for YAML and JSON."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


PRESETS: Mapping[str, Mapping[str, Any]] = {
    "paper": {},
    "quick": {"wiener_nsr": (1e-4, 1e-3, 1e-2), "rl_iterations": (10, 30), "tune_pairs": 4, "figure_pairs": 2},
}
"""`paper`: the protocol's full grids; `quick`: small grids and few tuning pairs (demos, smoke runs)."""


def config_from_dict(values: Mapping[str, Any], base: EvalConfig | None = None, where: str = "config") -> EvalConfig:
    """`base` (default: protocol values) updated by `values`, validated; unknown names are an error."""
    hints = typing.get_type_hints(EvalConfig)
    merged = dataclasses.asdict(base or EvalConfig())
    for name, value in values.items():
        if name not in hints:
            raise ValueError(f"unknown setting {name!r} in {where}; known: {', '.join(sorted(hints))}")
        hint = hints[name]
        if typing.get_origin(hint) is tuple:
            items = typing.get_args(hint)
            fixed = items[-1] is not Ellipsis
            if not isinstance(value, (list, tuple)) or (fixed and len(value) != len(items)):
                count = f"{len(items)} values" if fixed else "a list"
                raise ValueError(f"setting {name!r} in {where} must be {count}, got {value!r}")
            try:
                value = tuple(items[0](v) for v in value)
            except (TypeError, ValueError) as error:
                raise ValueError(f"setting {name!r} in {where} must hold {items[0].__name__} values, got {value!r}") from error
        elif hint is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ValueError(f"setting {name!r} in {where} must be {hint.__name__}, got {value!r}")
        merged[name] = value
    return EvalConfig(**merged).validate()


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """--preset, --config and one flag per `EvalConfig` field (unset = the preset's / YAML's value)."""
    group = parser.add_argument_group("evaluation settings (preset < --config YAML < these flags)")
    group.add_argument("--preset", choices=tuple(PRESETS), default="paper",
                       help="named settings: paper (the protocol's grids), quick (small grids, for demos)")
    group.add_argument("--config", metavar="YAML", help="YAML file of settings with the flag names below as keys")
    hints = typing.get_type_hints(EvalConfig)
    defaults = EvalConfig()
    for f in dataclasses.fields(EvalConfig):
        hint, default = hints[f.name], getattr(defaults, f.name)
        shown = " ".join(f"{v:g}" for v in default) if isinstance(default, tuple) else default
        help_text = f"{f.metadata['help']} (default: {shown})"
        if hint is bool:
            group.add_argument(f"--{f.name}", dest=f.name, action="store_const", const=True, default=None,
                               help=f"run {f.metadata['help']} (default: {'on' if default else 'off'})")
            group.add_argument(f"--no_{f.name}", dest=f.name, action="store_const", const=False,
                               help=f"skip {f.metadata['help']}")
        elif typing.get_origin(hint) is tuple:
            items = typing.get_args(hint)
            fixed = items[-1] is not Ellipsis
            group.add_argument(f"--{f.name}", type=items[0], nargs=len(items) if fixed else "+", default=None,
                               metavar=("LOW", "HIGH") if fixed else "VALUE", help=help_text)
        else:
            group.add_argument(f"--{f.name}", type=hint, default=None, metavar=f.name.upper(), help=help_text)


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """The config named by --preset, updated by --config YAML, then by explicit flags."""
    config = config_from_dict(PRESETS[args.preset], where=f"preset {args.preset}")
    if args.config:
        try:
            with tf.io.gfile.GFile(args.config, "r") as handle:
                loaded = yaml.safe_load(handle.read()) or {}
        except (tf.errors.OpError, OSError, yaml.YAMLError) as error:
            raise ValueError(f"cannot read the settings file {args.config}: {error}") from error
        if not isinstance(loaded, Mapping):
            raise ValueError(f"{args.config} must hold a mapping of setting: value, got {type(loaded).__name__}")
        config = config_from_dict(loaded, base=config, where=args.config)
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(EvalConfig) if getattr(args, f.name) is not None}
    return config_from_dict(flags, base=config, where="flags")


@dataclasses.dataclass(frozen=True)
class SplitSource:
    """The shard files of one split directory, in order, and its pair count (None if unknown)."""

    directory: str
    files: tuple[str, ...]
    pairs: int | None


def open_split(split_dir: str) -> SplitSource:
    """The shards of a split directory (`DATASET/test`, `DATASET/train-K`); EvaluationError if unusable.

    The shards and pair count are those the dataset's manifest.json lists for the split, else the
    directory's `pairs-*.tfrecord[.gz]` files (count unknown until read).
    """
    split_dir = split_dir.rstrip("/") or "/"
    try:
        if not tf.io.gfile.isdir(split_dir):
            raise EvaluationError(f"split directory {split_dir} does not exist")
        if tf.io.gfile.exists(join(split_dir, MANIFEST_NAME)):
            raise EvaluationError(f"{split_dir} is a dataset root, not a split: pass its test split, "
                                  f"e.g. --data {join(split_dir, TEST_DIR)}")
        root, name = posixpath.dirname(split_dir) or ".", posixpath.basename(split_dir)
        manifest = read_manifest(root) or {}
        listed = ((manifest.get("splits") or {}).get(name) or {})
        if listed.get("shards"):
            files = tuple(join(root, shard["file"]) for shard in listed["shards"])
            missing = [path for path in files if not tf.io.gfile.exists(path)]
            if missing:
                raise EvaluationError(f"{join(root, MANIFEST_NAME)} lists shards that do not exist: {', '.join(missing)}")
            return SplitSource(split_dir, files, int(listed["pairs"]) if "pairs" in listed else None)
        files = tuple(sorted(tf.io.gfile.glob(join(split_dir, "pairs-*.tfrecord"))
                             + tf.io.gfile.glob(join(split_dir, "pairs-*.tfrecord.gz"))))
    except DatasetError as error:
        raise EvaluationError(str(error)) from error
    except tf.errors.OpError as error:
        raise EvaluationError(f"cannot read {split_dir}: {error.message.strip()}") from error
    if not files:
        raise EvaluationError(f"no shards match {join(split_dir, 'pairs-*.tfrecord[.gz]')}: is {split_dir} the split "
                              "directory of a ctdeblur dataset (e.g. DATASET/test)?")
    return SplitSource(split_dir, files, None)


def iter_pairs(source: SplitSource, limit: int = 0) -> Iterator[Pair]:
    """The decoded pairs of `source`, shard after shard (at most `limit` when > 0).

    EvaluationError naming the shard and record index for a damaged shard or an unreadable record.
    """
    count = 0
    for path in source.files:
        index = -1
        try:
            with tf.io.gfile.GFile(path, "rb") as handle:
                stream = gzip.GzipFile(fileobj=handle, mode="rb") if path.endswith(".gz") else handle
                for index, record in enumerate(read_records(stream)):
                    yield decode_pair(record)
                    count += 1
                    if limit and count >= limit:
                        return
        except TFRecordCorruptionError as error:
            raise EvaluationError(f"shard {path} is damaged: {error}; rebuild the dataset "
                                  "(ctdeblur-shard-stats lists every damaged shard)") from error
        except (PairDecodeError, SchemaVersionError) as error:
            raise EvaluationError(f"shard {path}, record {index + 1}: {error}") from error
        except (OSError, EOFError, gzip.BadGzipFile, tf.errors.OpError) as error:
            raise EvaluationError(f"cannot read shard {path} (after record {index}): {error}") from error


@dataclasses.dataclass(frozen=True)
class ModelMethod:
    """An exported model under its (unique) method name."""

    name: str
    model: ExportedGenerator


def unique_names(names: Sequence[str], reserved: Sequence[str] = (BLURRY, *BASELINES)) -> list[str]:
    """`names` made distinct from each other and from `reserved`: repeats get -2, -3, ... suffixes."""
    taken = set(reserved)
    unique = []
    for name in names:
        candidate, number = name, 1
        while candidate in taken:
            number += 1
            candidate = f"{name}-{number}"
        taken.add(candidate)
        unique.append(candidate)
    return unique


def load_models(directories: Sequence[str]) -> list[ModelMethod]:
    """Loads each exported generator; EvaluationError for a directory that is not one."""
    loaded = []
    for directory in directories:
        try:
            loaded.append(load_exported_generator(directory))
        except ExportError as error:
            raise EvaluationError(str(error)) from error
    return [ModelMethod(name, model) for name, model in zip(unique_names([m.name for m in loaded]), loaded)]


class Scorer:
    """Scores restorations of one pair against its sharp image: every (window, region) scope."""

    def __init__(self, pair: Pair, config: EvalConfig):
        self.pair = pair
        self.mask = metrics.body_mask(pair.sharp_hu, config.body_threshold_hu, config.body_component_fraction)
        self.ssim_mask = metrics.ssim_region(self.mask)
        self.references = {key: metrics.WindowedReference(pair.sharp_hu, window) for key, window in config.windows.items()}

    def scores(self, restored_hu: np.ndarray | None) -> dict[str, float]:
        """{column: value} for every scope; NaN everywhere when `restored_hu` is None (n/a)."""
        if restored_hu is None:
            return {column: math.nan for scope in SCOPES for column in score_columns(*scope)}
        row = {}
        for window_key, reference in self.references.items():
            squared = reference.squared_error(restored_hu)
            local_ssim = reference.ssim_map(restored_hu)
            for region, mask, ssim_mask in (("full", None, None), ("body", self.mask, self.ssim_mask)):
                psnr_column, ssim_column = score_columns(window_key, region)
                row[psnr_column] = metrics.psnr_from_mse(metrics.mean_over(squared, mask), reference.width)
                row[ssim_column] = metrics.mean_over(local_ssim, ssim_mask)
        return row


def restore_batch(models: Sequence[ModelMethod], pairs: Sequence[Pair]) -> list[dict[str, np.ndarray]]:
    """Each model's restored HU for each pair (pairs of one shape share a model call)."""
    restored: list[dict[str, np.ndarray]] = [{} for _ in pairs]
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, pair in enumerate(pairs):
        by_shape.setdefault(pair.sharp_hu.shape, []).append(i)
    for method in models:
        for indices in by_shape.values():
            batch = np.stack([pairs[i].blurry_hu.astype(np.float32) for i in indices])
            try:
                output = method.model.deblur(batch)
            except (tf.errors.OpError, ValueError) as error:
                keys = ", ".join(pairs[i].record_key for i in indices)
                raise EvaluationError(f"model {method.name} ({method.model.path}) failed on {keys}: {error}") from error
            for i, image in zip(indices, output):
                restored[i][method.name] = image
    return restored


@dataclasses.dataclass
class FigurePanel:
    """Images of one figure row: blurry, sharp and each method's restoration (None: n/a)."""

    key: str
    digest: str
    sharp_hu: np.ndarray
    mask: np.ndarray
    restored: dict[str, np.ndarray | None]
    scores: dict[str, tuple[float, float]]


class Evaluation:
    """One run: tunes the baselines when first needed, streams the split, keeps rows and figure rows."""

    def __init__(self, config: EvalConfig, source: SplitSource, models: Sequence[ModelMethod], validation_dir: str):
        self.config = config
        self.source = source
        self.models = list(models)
        self.validation_dir = validation_dir
        self.methods = [BLURRY, *(BASELINES if config.baselines else ()), *(m.name for m in self.models)]
        self.rows: list[dict[str, Any]] = []
        self.settings: BaselineSettings | None = None
        self.figure: list[FigurePanel] = []
        self.pairs = 0

    def baseline_settings(self) -> BaselineSettings:
        """The Wiener/RL settings, tuned on the validation split on first use."""
        if self.settings is None:
            config = self.config
            if len(set(config.wiener_nsr)) == 1 and len(set(config.rl_iterations)) == 1:
                self.settings = tune_baselines([], config.wiener_nsr, config.rl_iterations, config.window_hu)
            else:
                self.settings = self._tune()
        return self.settings

    def _tune(self) -> BaselineSettings:
        config = self.config
        try:
            source = open_split(self.validation_dir)
        except EvaluationError as error:
            raise EvaluationError(f"cannot tune the Wiener NSR and Richardson-Lucy iterations: {error}. Pass --validation "
                                  "DIR (a train split of the same dataset), or one value each of --wiener_nsr and "
                                  "--rl_iterations") from error
        progress = tqdm(total=config.tune_pairs, desc=f"tuning baselines on {source.directory}", unit="pair",
                        file=sys.stderr, dynamic_ncols=True, leave=False)

        def kernel_pairs():
            found = 0
            for pair in iter_pairs(source):
                if has_psf(pair.psf):
                    found += 1
                    progress.update(1)
                    yield pair.blurry_hu, pair.sharp_hu, pair.psf
                    if found >= config.tune_pairs:
                        return

        try:
            settings = tune_baselines(kernel_pairs(), config.wiener_nsr, config.rl_iterations, config.window_hu)
        except EvaluationError:
            raise
        except ValueError as error:
            raise EvaluationError(f"{source.directory}: {error}; pass --validation DIR with kernel-blurred pairs, or one "
                                  "value each of --wiener_nsr and --rl_iterations") from error
        finally:
            progress.close()
        self.validation_dir = source.directory
        return settings

    def run(self) -> None:
        """Scores every pair of the split (streamed, `batch_size` pairs at a time)."""
        total = self.source.pairs
        if self.config.max_pairs:
            total = min(total, self.config.max_pairs) if total is not None else self.config.max_pairs
        progress = tqdm(total=total, desc="evaluating", unit="pair", file=sys.stderr, dynamic_ncols=True)
        chunk: list[Pair] = []
        for pair in iter_pairs(self.source, self.config.max_pairs):
            chunk.append(pair)
            if len(chunk) == self.config.batch_size:
                self._score_chunk(chunk, progress)
                chunk = []
        if chunk:
            self._score_chunk(chunk, progress)
        progress.close()
        if not self.pairs:
            raise EvaluationError(f"no pairs in {self.source.directory} ({len(self.source.files)} shard file(s), all empty)")

    def _score_chunk(self, pairs: Sequence[Pair], progress: tqdm) -> None:
        restored = restore_batch(self.models, pairs)
        for pair, by_model in zip(pairs, restored):
            images: dict[str, np.ndarray | None] = {BLURRY: pair.blurry_hu}
            if self.config.baselines:
                if has_psf(pair.psf):
                    settings = self.baseline_settings()
                    try:
                        images.update(settings.restore(pair.blurry_hu, pair.psf))
                    except ValueError as error:
                        raise EvaluationError(f"{pair.record_key}: {error}") from error
                else:
                    images.update(dict.fromkeys(BASELINES))
            images.update(by_model)
            self._score_pair(pair, images)
            progress.update(1)

    def _score_pair(self, pair: Pair, images: dict[str, np.ndarray | None]) -> None:
        try:
            scorer = Scorer(pair, self.config)
        except ValueError as error:
            raise EvaluationError(f"{pair.record_key}: {error}") from error
        scores = {}
        for method in self.methods:
            image = images[method]
            row = {"pair_index": self.pairs, **{column: getattr(pair, column) for column in PAIR_COLUMNS}}
            row.update(method=method, status=STATUS_OK if image is not None else STATUS_NO_PSF,
                       body_fraction=float(scorer.mask.mean()))
            row.update(scorer.scores(image))
            self.rows.append(row)
            scores[method] = (row["psnr_db"], row["ssim"])
        self.pairs += 1
        self._consider_for_figure(pair, scorer.mask, images, scores)

    def _consider_for_figure(self, pair: Pair, mask: np.ndarray, images: dict, scores: dict) -> None:
        if not self.config.figure_pairs:
            return
        digest = hashlib.sha256(pair.record_key.encode("utf-8")).hexdigest()
        if len(self.figure) >= self.config.figure_pairs and digest >= self.figure[-1].digest:
            return
        self.figure.append(FigurePanel(pair.record_key, digest, pair.sharp_hu, mask, dict(images), scores))
        self.figure.sort(key=lambda panel: panel.digest)
        del self.figure[self.config.figure_pairs:]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctdeblur-evaluate",
        description="PSNR/SSIM of exported deblurring models against the blurry input and the Wiener and "
        "Richardson-Lucy oracles (true PSF) on a test split: Table 1 on stdout, and optionally a JSON "
        "file and a report directory (evaluation.md, per_image.csv, figure.png).",
        epilog="See docs/evaluation.md for the protocol and what every number means.",
    )
    parser.add_argument("--model", action="append", default=[], metavar="DIR",
                        help="an exported generator (ctdeblur-train --export DIR); repeat for several; none = baselines only")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="the test split directory of a dataset, e.g. DATASET/test (local or gs://)")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON here")
    parser.add_argument("--report", metavar="DIR", help="write evaluation.md, per_image.csv and figure.png here")
    parser.add_argument("--validation", metavar="DIR",
                        help="split whose kernel-blurred pairs choose the Wiener NSR and RL iterations "
                        "(default: train-0 beside the test split)")
    add_verbose_flag(parser)
    add_config_flags(parser)
    return parser


def evaluate(config: EvalConfig, data_dir: str, model_dirs: Sequence[str], validation_dir: str | None) -> Evaluation:
    """Loads the models, streams and scores the split; returns the finished `Evaluation`."""
    source = open_split(data_dir)
    models = load_models(model_dirs)
    validation = validation_dir or join(posixpath.dirname(source.directory) or ".", train_dir(0))
    if validation.rstrip("/") == source.directory:
        raise EvaluationError(f"--validation {validation} is the test split: choose the baselines' settings on a "
                              "train split (e.g. train-0) or give one value each of --wiener_nsr and --rl_iterations")
    evaluation = Evaluation(config, source, models, validation)
    for method in models:
        print(f"model {method.name}: {method.model.path}")
    evaluation.run()
    return evaluation


def print_settings(evaluation: Evaluation) -> None:
    """One line on how the Wiener NSR and RL iterations were set."""
    settings = evaluation.settings
    if settings is None:
        if evaluation.config.baselines:
            print(f"{WIENER}, {RL}: n/a for all pairs (no record has an image-space PSF)")
        return
    if settings.tuning_pairs:
        print(f"baselines chosen by mean PSNR on {settings.tuning_pairs} pairs of {evaluation.validation_dir}: "
              f"Wiener NSR {settings.wiener_nsr:g}, Richardson-Lucy {settings.rl_iterations} iterations")
    else:
        print(f"baselines as given: Wiener NSR {settings.wiener_nsr:g}, Richardson-Lucy {settings.rl_iterations} iterations")


def _write_text(path: str, text: str) -> None:
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(text)


def write_output(path: str, write: Callable[[], Any]) -> Any:
    """`write()`'s result; EvaluationError naming `path` when it cannot be written."""
    try:
        return write()
    except (tf.errors.OpError, OSError) as error:
        message = error.message if isinstance(error, tf.errors.OpError) else str(error)
        raise EvaluationError(f"cannot write {path}: {message.strip()} (does its directory exist, is it writable?)") from error


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of `ctdeblur-evaluate`."""
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"ctdeblur-evaluate: error: invalid settings: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        evaluation = evaluate(config, args.data, args.model, args.validation)
        print_settings(evaluation)
        print()
        print(screen_tables(evaluation))
        if args.json:
            document = json.dumps(results_json(evaluation, args.data), indent=2, allow_nan=False)
            write_output(args.json, lambda: _write_text(args.json, document))
            print(f"\nJSON: {args.json}")
        if args.report:
            paths = write_output(args.report, lambda: write_report(evaluation, args.data, args.report))
            print(f"\nreport: {paths['report']}\nper-image CSV: {paths['csv']}")
            print(f"figure: {paths['figure']}" if paths["figure"] else "figure: none (--figure_pairs 0)")
    except EvaluationError as error:
        print(f"ctdeblur-evaluate: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())

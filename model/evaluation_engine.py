"""The evaluation engine of `ctdeblur-evaluate`: stream a test split's pairs, restore them with
each model and the classical oracles, and score every pair at every scope of the protocol
(`model.evaluation_protocol`). Pairs are streamed from the shards (memory does not grow with the
split), the models are called in batches. The report (`model.evaluation_report`) reads the
finished `Evaluation`; this module does not import it.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import posixpath
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from cli_shell.command import UserError
from model import metrics
from model.baselines import BaselineSettings, has_psf, tune_baselines
from model.data import DatasetError, read_manifest
from model.evaluation_protocol import (
    BASELINES,
    BLURRY,
    PAIR_COLUMNS,
    SCOPES,
    STATUS_NO_PSF,
    STATUS_OK,
    EvalConfig,
    score_columns,
)
from model.export import ExportedGenerator, ExportError, load_exported_generator
from tfrecords_schema import (
    MANIFEST_NAME,
    TEST_DIR,
    Pair,
    PairDecodeError,
    SchemaVersionError,
    SplitNotFound,
    TFRecordCorruptionError,
    decode_pair,
    find_split_shards,
    join_path,
    read_records,
    train_dir,
)


class EvaluationError(UserError):
    """Bad user input (directory, shard, model, settings); the message says what and what to do."""


@dataclasses.dataclass(frozen=True)
class SplitSource:
    """The shard files of one split directory, in order, and its pair count (None if unknown)."""

    directory: str
    files: tuple[str, ...]
    pairs: int | None


def open_split(split_dir: str) -> SplitSource:
    """The shards of a split directory (`DATASET/test`, `DATASET/train-K`); EvaluationError if unusable.

    The shards and pair count are those the dataset's manifest.json lists for the split, else the
    directory's shard files (count unknown until read): `tfrecords_schema.find_split_shards`.
    """
    split_dir = split_dir.rstrip("/") or "/"
    try:
        if not tf.io.gfile.isdir(split_dir):
            raise EvaluationError(f"split directory {split_dir} does not exist")
        if tf.io.gfile.exists(join_path(split_dir, MANIFEST_NAME)):
            raise EvaluationError(f"{split_dir} is a dataset root, not a split: pass its test split, "
                                  f"e.g. --data {join_path(split_dir, TEST_DIR)}")
        root, name = posixpath.dirname(split_dir) or ".", posixpath.basename(split_dir)
        shards = find_split_shards(root, name, read_manifest(root), tf.io.gfile.listdir, tf.io.gfile.exists)
    except (DatasetError, SplitNotFound) as error:
        raise EvaluationError(str(error)) from error
    except tf.errors.OpError as error:
        raise EvaluationError(f"cannot read {split_dir}: {error.message.strip()}") from error
    return SplitSource(split_dir, shards.files, shards.pairs)


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


def load_models(directories: Sequence[str], precision: str = "float32") -> list[ModelMethod]:
    """Loads each exported generator to run at `precision`; EvaluationError for a directory that is not one."""
    loaded = []
    for directory in directories:
        try:
            loaded.append(load_exported_generator(directory, precision))
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
            if config.tunes_baselines:
                self.settings = self._tune()
            else:
                self.settings = tune_baselines([], config.wiener_nsr, config.rl_iterations, config.window_hu)
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


def evaluate(config: EvalConfig, data_dir: str, model_dirs: Sequence[str], validation_dir: str | None) -> Evaluation:
    """Loads the models, streams and scores the split; returns the finished `Evaluation`."""
    source = open_split(data_dir)
    models = load_models(model_dirs, config.precision)
    validation = validation_dir or join_path(posixpath.dirname(source.directory) or ".", train_dir(0))
    if config.tunes_baselines and validation.rstrip("/") == source.directory:
        raise EvaluationError(f"--validation {validation} is the test split: choose the baselines' settings on a "
                              "train split (e.g. train-0) or give one value each of --wiener_nsr and --rl_iterations")
    evaluation = Evaluation(config, source, models, validation)
    for method in models:
        print(f"model {method.name}: {method.model.path}")
    evaluation.run()
    return evaluation

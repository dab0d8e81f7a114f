"""Choosing the tf.distribute strategy, and what each worker of a run is responsible for."""

from __future__ import annotations

import json
import os

import tensorflow as tf

from cli_shell.command import UserError


class StrategyError(UserError):
    """The strategy asked for cannot run here; the message says why."""


def _cluster_workers() -> int:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except json.JSONDecodeError as error:
        raise StrategyError(f"TF_CONFIG is not valid JSON: {error}") from error
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def make_strategy(name: str) -> tf.distribute.Strategy:
    """`auto`: multi_worker if TF_CONFIG names several workers, else mirrored over 2+ GPUs,
    else default. `default`: one device. `mirrored`: all local GPUs (the CPU if none).
    `multi_worker`: MultiWorkerMirroredStrategy from TF_CONFIG (required).

    Create it before any other TensorFlow work: multi-worker set-up must come first.
    """
    if name == "auto":
        if _cluster_workers() > 1:
            name = "multi_worker"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if _cluster_workers() < 1:
            raise StrategyError(
                "--strategy multi_worker needs TF_CONFIG with a cluster of workers, e.g. "
                '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise StrategyError(f"unknown strategy {name!r}; choose auto, default, mirrored or multi_worker")


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """Short description: strategy and replica count."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        name = "MultiWorkerMirroredStrategy"
    elif isinstance(strategy, tf.distribute.MirroredStrategy):
        name = "MirroredStrategy"
    else:
        name = "default strategy"
    return f"{name} ({strategy.num_replicas_in_sync} replica(s))"


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that writes summaries, checkpoints and the export (the only one
    outside multi-worker training)."""
    return bool(strategy.extended.should_checkpoint)


def task_id(strategy: tf.distribute.Strategy) -> int:
    """This worker's index in the cluster (0 outside multi-worker training)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return int(resolver.task_id) if resolver is not None and resolver.task_id is not None else 0


def chief_seconds(strategy: tf.distribute.Strategy, seconds: float) -> float:
    """The chief's `seconds` on every worker (a collective in multi-worker training; `seconds`
    itself otherwise), so that decisions taken from a clock (the time budget, its learning-rate
    decay, moving to the next sub-dataset) are the same on all workers. Every worker must call it
    at the same point of the loop."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return seconds
    value = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(seconds if context.replica_id_in_sync_group == 0 else 0.0, tf.float64))
    return float(strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None))

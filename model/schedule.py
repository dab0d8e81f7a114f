"""The training schedule: train sub-datasets one after another, `epochs` epochs each, and the
learning rate along it.

A position (stage, epoch, step) names the next step to run: `stage` indexes the configured
sub-dataset order, `step` counts global batches within the epoch. The position is what the
checkpoints store, so a restarted run continues exactly where the saved one stopped.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import keras
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Position:
    """Next step to run: sub-dataset `stage` (index into the order), `epoch`, `step` (0-based)."""

    stage: int = 0
    epoch: int = 0
    step: int = 0


def steps_per_epoch(pairs: int, global_batch: int, max_steps: int = 0) -> int:
    """Full global batches in `pairs` pairs, capped at `max_steps` (0 = no cap)."""
    steps = pairs // global_batch
    return min(steps, max_steps) if max_steps else steps


def normalise(position: Position, steps: Sequence[int], epochs: int) -> Position:
    """`position` moved past a finished epoch, a finished sub-dataset and empty sub-datasets."""
    stage, epoch, step = position.stage, position.epoch, position.step
    while stage < len(steps):
        if step >= steps[stage]:
            epoch, step = epoch + 1, 0
        if steps[stage] and epoch < epochs:
            break
        stage, epoch, step = stage + 1, 0, 0
    return Position(stage, epoch, step)


def advance(position: Position, steps: Sequence[int], epochs: int) -> Position:
    """The position after running the step at `position`."""
    return normalise(dataclasses.replace(position, step=position.step + 1), steps, epochs)


def finished(position: Position, steps: Sequence[int]) -> bool:
    """True when no step is left."""
    return position.stage >= len(steps)


def total_steps(steps: Sequence[int], epochs: int) -> int:
    """Steps of the whole schedule."""
    return sum(steps) * epochs


def steps_done(position: Position, steps: Sequence[int], epochs: int) -> int:
    """Steps before `position` in the schedule."""
    done = sum(steps[: position.stage]) * epochs
    if position.stage < len(steps):
        done += position.epoch * steps[position.stage] + position.step
    return done



class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate at optimizer step t (0-based) of `total`: `peak` x a factor rising linearly
    from 1/`warmup` to 1 over the first `warmup` steps, then falling along a cosine from 1 to
    `final_fraction` at step `total` (and staying there). The step count is the optimizer's, so
    a resumed run continues the same curve across sub-datasets.

    `budget_fraction` (a scalar variable in [0, 1], optional): the part of a time budget used so
    far; the cosine is then as far along as the larger of the step and budget fractions, so a run
    stopped by its time budget ends at `final_fraction` however many steps fitted.
    """

    def __init__(self, peak: float, total: int, warmup: int = 0, final_fraction: float = 0.01,
                 budget_fraction: tf.Variable | None = None):
        self.peak = peak
        self.total = total
        self.warmup = warmup
        self.final_fraction = final_fraction
        self.budget_fraction = budget_fraction

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = float(max(self.warmup, 1))
        span = float(max(self.total - self.warmup, 1))
        progress = tf.clip_by_value((step - self.warmup) / span, 0.0, 1.0)
        if self.budget_fraction is not None:
            progress = tf.maximum(progress, tf.clip_by_value(tf.cast(self.budget_fraction, tf.float32), 0.0, 1.0))
        cosine = self.final_fraction + (1.0 - self.final_fraction) * 0.5 * (1.0 + tf.cos(math.pi * progress))
        rising = (step + 1.0) / warmup
        factor = tf.where(step < self.warmup, rising, cosine)
        return self.peak * factor

    def get_config(self):
        return {"peak": self.peak, "total": self.total, "warmup": self.warmup, "final_fraction": self.final_fraction}


def budget_fraction(start_fraction: float, elapsed_s: float, budget_s: float) -> float:
    """Part of a time budget used after `elapsed_s` of a run of `budget_s` seconds that resumed
    at `start_fraction` (0 for a new run): the rest of the budget is this run's."""
    return min(1.0, start_fraction + (1.0 - start_fraction) * elapsed_s / budget_s)


def stages_left(position: Position, steps: Sequence[int]) -> int:
    """Sub-datasets with steps from `position`'s on (its own included)."""
    return sum(1 for count in steps[position.stage:] if count)


def stage_share_used(elapsed_s: float, stage_started_s: float, budget_s: float, stages: int) -> bool:
    """True when the sub-dataset that started at `stage_started_s` has used its equal share of
    what was left of the `budget_s` budget for the `stages` sub-datasets still to train then."""
    return stages > 1 and elapsed_s - stage_started_s >= (budget_s - stage_started_s) / stages


def next_stage(position: Position, steps: Sequence[int], epochs: int) -> Position:
    """The first step of the sub-dataset after `position`'s."""
    return normalise(Position(position.stage + 1, 0, 0), steps, epochs)

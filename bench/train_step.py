"""Benchmark: train-step time of the WGAN-GP model on this CPU, eager vs compiled, per preset.

    .venv/bin/python bench/train_step.py [--steps 3] [--presets paper small tiny] [--models ours paper] [--no-xla]
                                         [--perceptual_weights random-init|none] [--dtype_policy float32|mixed_bfloat16]

Each preset's model (each of `--models`: the recipe changes the step) is built as the trainer
builds it (VGG19 random-init: the weights do not change the cost) and fed random batches of its
own crop size and per-replica batch; the step timed is the adversarial train step. For `paper`
(batch 2 at 256x256) the same step runs eagerly, as a tf.function (graph) and as a tf.function
compiled with XLA; the table gives seconds per step after one warm-up call, the warm-up (trace /
compile) time and the ratios to the compiled graph, all measured in one run.
"""

from __future__ import annotations

import argparse
import os
import time

import keras
import tensorflow as tf

from model.config import config_from_dict, preset_config
from model.perceptual import load_vgg19
from model.train import build_model, distributed_step


def random_batch(config, seed: int = 0) -> tuple[tf.Tensor, tf.Tensor]:
    shape = (config.batch_per_replica, config.crop_size, config.crop_size, 1)
    sharp = tf.random.stateless_uniform(shape, seed=[seed, 1], minval=-1.0, maxval=1.0)
    return tf.nn.avg_pool2d(sharp, 5, 1, "SAME"), sharp


def time_steps(step, batch, steps: int) -> tuple[float, float]:
    """(warm-up seconds, mean seconds per step over `steps` further steps)."""
    started = time.perf_counter()
    float(step(batch)["generator/total"])
    warmup = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        float(step(batch)["generator/total"])
    return warmup, (time.perf_counter() - started) / steps


def step_gflop(gan, batch) -> float:
    """Floating-point operations of one `train_step` (GFLOP, multiply-add = 2), from its graph."""
    graph = tf.function(gan.train_step).get_concrete_function(batch).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return tf.compat.v1.profiler.profile(graph, options=options).total_float_ops / 1e9


def modes_for(preset: str, xla: bool) -> list[str]:
    if preset != "paper":
        return ["graph"]
    return ["eager", "graph"] + (["xla"] if xla else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement (after one warm-up)")
    parser.add_argument("--presets", nargs="+", default=["paper", "small", "tiny"])
    parser.add_argument("--models", nargs="+", default=["ours", "paper"])
    parser.add_argument("--xla", action=argparse.BooleanOptionalAction, default=True, help="also time XLA for paper")
    parser.add_argument("--perceptual_weights", default="random-init",
                        help="random-init (VGG19 of the same cost as ImageNet's) or none (no perceptual term)")
    parser.add_argument("--dtype_policy", default="float32", choices=("float32", "mixed_bfloat16"),
                        help="Keras dtype policy of the models (mixed_bfloat16: bfloat16 compute, float32 weights)")
    args = parser.parse_args()
    keras.config.set_dtype_policy(args.dtype_policy)
    vgg = load_vgg19("random-init")[0] if args.perceptual_weights == "random-init" else None
    strategy = tf.distribute.get_strategy()
    rows, gflop = [], {}
    for preset in args.presets:
        for model in args.models:
            config = preset_config(preset, model)
            if vgg is None:
                config = config_from_dict({"perceptual_weights": "none"}, base=config, where="--perceptual_weights")
            batch = random_batch(config)
            steps = args.steps if preset == "paper" else args.steps * 10
            for mode in modes_for(preset, args.xla):
                gan = build_model(config, vgg)
                if mode == "eager":
                    step = gan.train_step
                else:
                    step = distributed_step(strategy, gan.train_step, jit_compile=mode == "xla")
                warmup, seconds = time_steps(step, batch, steps)
                rows.append((preset, model, mode, config, warmup, seconds))
                print(f"{preset} {model} {mode}: warm-up {warmup:.1f} s, {seconds:.3f} s/step", flush=True)
            gflop[preset, model] = step_gflop(gan, batch)
    graph_seconds = {(preset, model): seconds for preset, model, mode, _, _, seconds in rows if mode == "graph"}
    print(f"\ncores: {os.cpu_count()}; {args.steps} timed steps for paper, {args.steps * 10} for the others")
    print("| preset | model | batch x crop | GFLOP/step | mode | warm-up (s) | s/step | steps/s | pairs/s | GFLOP/s | s/step / graph |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for preset, model, mode, config, warmup, seconds in rows:
        print(f"| {preset} | {model} | {config.batch_per_replica} x {config.crop_size}^2 | {gflop[preset, model]:.0f} | "
              f"{mode} | {warmup:.1f} | {seconds:.3f} | {1 / seconds:.2f} | {config.batch_per_replica / seconds:.2f} | "
              f"{gflop[preset, model] / seconds:.0f} | {seconds / graph_seconds[preset, model]:.2f} |")


if __name__ == "__main__":
    main()

"""Benchmark: inference of the paper generator on 512x512 slices on this CPU, and `ctdeblur-deblur`.

    .venv/bin/python bench/inference.py [--rounds 3] [--e2e_slices 20]

Every setting runs in a fresh process, as `ctdeblur-deblur` does (one process, one batch shape):
import, build or load, one first call (tracing and graph optimisation, or XLA compilation), one
timed call; the process reports seconds per slice, its peak resident memory (VmHWM) and its
output for a fixed input. The machine is shared with other jobs, so the settings run in
`--rounds` interleaved round-robin rounds and the median per setting is reported: a burst of
foreign load hits every setting alike instead of one row.

Settings (the paper generator: 9 ResBlocks, 64 filters, with seeded random weights, the last
layer included, so outputs can be compared; the cost does not depend on the weights):
- call kind, batch 1/2/4/8: eager Keras call (batch 1, 2: eager calls keep about 2 GB per slice
  resident), Keras call in `tf.function` (graph), the exported SavedModel's serving signature
  (what `ctdeblur-deblur` runs, HU in and out), `tf.function(jit_compile=True)` (XLA, batch
  1, 2, 4). The `small` preset's generator (32 filters, 6 blocks) through its SavedModel: the
  effect of the channel count. One 3x3 256->256 convolution at 128x128 (the ResBlock
  convolution): the rate this CPU reaches on pure convolution.
- Settings fixed before TensorFlow starts (graph, batch 1 unless stated): intra-op threads 1,
  inter-op threads 2 (TensorFlow's default on 2 cores), oneDNN off (batch 1 and 4), and oneDNN's
  automatic bfloat16. The main rows use 2 intra-op threads and 1 inter-op thread, as the CLI.
- bfloat16 on the hot operation: the ResBlock convolution with input and kernel cast to bfloat16,
  next to float32; and `--precision bf16` of `ctdeblur-deblur`/`ctdeblur-evaluate` (the SavedModel
  loaded with `load_exported_generator(..., "bf16")`: bfloat16 convolutions, float32 skip,
  normalisation and HU mapping), batch 1 and 4, paper and small generators. These rows run with
  `ONEDNN_VERBOSE=1` and list the oneDNN kernels that executed (e.g. `brgconv:avx512_core_amx`
  on a CPU with AMX).
  `--bf16_check` runs only the bfloat16 settings and their float32 twins.
Output differences to graph batch 1 on the same input: the largest absolute HU difference, and
the 99th percentile of |difference| over pixels whose reference lies in [-1000, 1000] HU.
Then `ctdeblur-deblur` end to end (default settings, then `--precision bf16`) on a 512x512
phantom series of `--e2e_slices` slices with the paper generator exported: wall time per slice,
start-up included.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 512
HU_WINDOW = (-1024.0, 3071.0)
RESBLOCK_CONV_GFLOP = 128 * 128 * 256 * 256 * 9 * 2 / 1e9


@dataclasses.dataclass(frozen=True)
class Setting:
    """One measured configuration (run in its own process)."""

    call: str
    batch: int = 1
    intra: int = 2
    inter: int = 1
    onednn: str = "on"
    precision: str = "float32"

    def args(self) -> list[str]:
        return [self.call, str(self.batch), str(self.intra), str(self.inter), self.precision]

    def label(self) -> list[str]:
        return [self.call, str(self.batch), str(self.intra), str(self.inter), self.onednn, self.precision]


SETTINGS = (
    *(Setting("eager", b) for b in (1, 2)),
    *(Setting("graph", b) for b in (1, 2, 4, 8)),
    *(Setting("savedmodel", b) for b in (1, 2, 4, 8)),
    *(Setting("xla", b) for b in (1, 2, 4)),
    Setting("savedmodel small"),
    Setting("resblock conv"),
    Setting("graph", intra=1),
    Setting("graph", inter=2),
    Setting("graph", onednn="off"),
    Setting("graph", batch=4, onednn="off"),
    Setting("graph", precision="bfloat16"),
    Setting("resblock conv", precision="bfloat16"),
    *(Setting("savedmodel", b, precision="bf16") for b in (1, 4)),
    Setting("savedmodel small", precision="bf16"),
)
REFERENCE = Setting("graph")


def seeded_generator(preset: str):
    """The preset's generator with weights drawn from seed 0, the last conv included."""
    import keras
    import numpy as np

    from model.config import preset_config
    from model.networks import build_generator

    keras.utils.set_random_seed(0)
    generator = build_generator(preset_config(preset))
    tail = generator.get_layer("tail_conv")
    kernel, bias = tail.get_weights()
    tail.set_weights([np.random.default_rng(0).normal(0, 0.02, kernel.shape).astype(np.float32), bias])
    return generator


def export(root: str) -> None:
    """Exports the seeded paper and small generators to ROOT/paper and ROOT/small."""
    from model.config import preset_config
    from model.export import export_generator

    for preset in ("paper", "small"):
        export_generator(seeded_generator(preset), preset_config(preset), os.path.join(root, preset),
                         {"model": f"bench-{preset}"})


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM, MiB)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_setting(call_kind: str, batch: int, intra: int, inter: int, precision: str, root: str, save: str) -> None:
    """Child process: times one setting; prints JSON; saves the output of image 0 as HU."""
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    if precision == "bfloat16" and call_kind != "resblock conv":
        tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": True})
    from model.data import unit_to_hu
    from model.export import load_exported_generator

    unit = tf.tile(tf.random.stateless_uniform((1, SIZE, SIZE, 1), seed=[7, 0], minval=-1.0, maxval=1.0),
                   [batch, 1, 1, 1])
    if call_kind == "resblock conv":
        dtype = tf.bfloat16 if precision == "bfloat16" else tf.float32
        kernel = tf.cast(tf.random.stateless_normal((3, 3, 256, 256), seed=[3, 4], stddev=0.01), dtype)
        images = tf.cast(tf.random.stateless_uniform((1, 128, 128, 256), seed=[1, 2]), dtype)

        def call(x):
            return tf.nn.conv2d(x, kernel, 1, "SAME")

        call = tf.function(call)
    elif call_kind.startswith("savedmodel"):
        signature = load_exported_generator(os.path.join(root, "small" if "small" in call_kind else "paper"),
                                            "bf16" if precision == "bf16" else "float32").signature
        images = unit_to_hu(unit, HU_WINDOW)

        def call(x):
            return signature(hu=x)["hu"]
    else:
        generator = seeded_generator("paper")
        images = unit

        def call(x):
            return unit_to_hu(generator(x, training=False), HU_WINDOW)

        if call_kind != "eager":
            call = tf.function(call, jit_compile=call_kind == "xla")
    started = time.perf_counter()
    call(images).numpy()
    first = time.perf_counter() - started
    started = time.perf_counter()
    output = call(images).numpy()
    seconds = (time.perf_counter() - started) / batch
    saved = None
    if call_kind not in ("resblock conv", "savedmodel small"):
        np.save(save, output[0, ..., 0])
        saved = save
    print(json.dumps({"first": first, "seconds": seconds, "peak_mib": peak_rss_mib(), "output": saved}))


def onednn_kernels(output: str) -> list[str]:
    """The distinct `kind:implementation (data types)` of the oneDNN primitives that executed,
    from `ONEDNN_VERBOSE=1` output (e.g. `convolution:brgconv:avx512_core_amx (src_bf16 ...)`)."""
    kernels = set()
    for line in output.splitlines():
        fields = line.split(",")
        if line.startswith("onednn_verbose,") and len(fields) > 7 and fields[2] == "exec":
            types = " ".join(part.split(":")[0] for part in fields[7].split())
            kernels.add(f"{fields[4]}:{fields[5] or '-'} ({types})")
    return sorted(kernels)


def measure(setting: Setting, root: str, index: int) -> dict:
    """Runs `setting` in a fresh process; returns its JSON (with the oneDNN kernels that ran, for
    the ResBlock convolution)."""
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="1" if setting.onednn == "on" else "0", PYTHONPATH=REPO)
    if setting.call == "resblock conv" or setting.precision == "bf16":
        env["ONEDNN_VERBOSE"] = "1"
    save = os.path.join(root, f"output-{index}.npy")
    done = subprocess.run([sys.executable, __file__, "--child", *setting.args(), root, save],
                          capture_output=True, text=True, env=env, cwd=REPO, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{setting} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["kernels"] = onednn_kernels(done.stdout)
    return result


def generator_gflop() -> float:
    """FLOPs of one paper-generator call on one 512x512 slice (GFLOP, multiply-add = 2)."""
    import tensorflow as tf

    from model.networks import build_resnet_generator

    generator = build_resnet_generator()
    function = tf.function(lambda x: generator(x, training=False))
    graph = function.get_concrete_function(tf.TensorSpec((1, SIZE, SIZE, 1), tf.float32)).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return tf.compat.v1.profiler.profile(graph, options=options).total_float_ops / 1e9


def write_phantom(directory: str, slices: int) -> None:
    import io

    from pipeline.phantom import phantom_dataset, phantom_series

    series = phantom_series(1, slices, SIZE, 0)
    os.makedirs(directory)
    for index in range(slices):
        buffer = io.BytesIO()
        phantom_dataset(series, index).save_as(buffer, enforce_file_format=True)
        with open(os.path.join(directory, f"{index:05d}.dcm"), "wb") as handle:
            handle.write(buffer.getvalue())


def end_to_end(root: str, slices: int, precision: str) -> tuple[float, str]:
    """(wall seconds, first summary lines) of `ctdeblur-deblur --precision P` on a 512x512 phantom series."""
    series_dir = os.path.join(root, "phantom")
    if not os.path.isdir(series_dir):
        write_phantom(series_dir, slices)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "model.deblur", series_dir, os.path.join(root, f"deblurred-{precision}"),
                           "--model", os.path.join(root, "paper"), "--no-progress", "--precision", precision],
                          capture_output=True, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"ctdeblur-deblur failed:\n{done.stderr[-2000:]}")
    return seconds, "\n  ".join(done.stdout.splitlines()[:2])


def print_table(runs: dict[Setting, list[dict]], gflop: float) -> None:
    import numpy as np

    def median_seconds(setting: Setting) -> float:
        return statistics.median(run["seconds"] for run in runs[setting])

    reference = np.load(runs[REFERENCE][0]["output"])
    graph = {s.batch: median_seconds(s) for s in runs if s.call == "graph" and s == Setting("graph", s.batch)}
    print("| call | batch | intra-op | inter-op | oneDNN | precision | first call (s) | ms/slice (median) | "
          "ms/slice (each round) | GFLOP/s | / graph, same batch | max abs HU diff | "
          "p99 abs HU diff in [-1000, 1000] | peak RSS (MiB) |")
    print("|---|---:|---:|---:|---|---|---:|---:|---|---:|---:|---:|---:|---:|")
    window = (reference >= -1000) & (reference <= 1000)
    for setting, results in runs.items():
        seconds = median_seconds(setting)
        work = {"resblock conv": RESBLOCK_CONV_GFLOP, "savedmodel small": None}.get(setting.call, gflop)
        rate = f"{work / seconds:.0f}" if work else "-"
        ratio = f"{seconds / graph[setting.batch]:.2f}" if setting.batch in graph and work == gflop else "-"
        output = results[0]["output"]
        difference = np.abs(np.load(output) - reference) if output else None
        diff = f"{float(difference.max()):.2f}" if output else "-"
        p99 = f"{float(np.percentile(difference[window], 99)):.2f}" if output else "-"
        each = ", ".join(f"{r['seconds'] * 1000:.0f}" for r in results)
        first = statistics.median(r["first"] for r in results)
        peak = max(r["peak_mib"] for r in results)
        print(f"| {' | '.join(setting.label())} | {first:.1f} | {seconds * 1000:.0f} | {each} | {rate} | {ratio} | "
              f"{diff} | {p99} | {peak:.0f} |")
    for setting, results in runs.items():
        if results[0]["kernels"]:
            print(f"\noneDNN kernels of {' '.join(setting.label())}: {'; '.join(results[0]['kernels'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (one fresh process per setting each)")
    parser.add_argument("--e2e_slices", type=int, default=20, help="slices of the end-to-end phantom series; 0 = skip")
    parser.add_argument("--calls", nargs="*", help="only the settings of these call kinds (default: all)")
    parser.add_argument("--bf16_check", action="store_true",
                        help="only the bfloat16 settings and their float32 twins (and the reference)")
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        call_kind, batch, intra, inter, precision, root, save = args.child
        run_setting(call_kind, int(batch), int(intra), int(inter), precision, root, save)
        return
    load = os.getloadavg()
    print(f"cores: {os.cpu_count()}; load average at start {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}", flush=True)
    settings = [s for s in SETTINGS if not args.calls or s.call in args.calls or s == REFERENCE]
    if args.bf16_check:
        twins = {dataclasses.replace(s, precision="float32") for s in SETTINGS if s.precision != "float32"}
        settings = [s for s in settings if s.precision != "float32" or s in twins or s == REFERENCE]
    with tempfile.TemporaryDirectory(prefix="ctdeblur-bench-inference-") as root:
        export(root)
        runs: dict[Setting, list[dict]] = {setting: [] for setting in settings}
        for round_index in range(args.rounds):
            for index, setting in enumerate(settings):
                runs[setting].append(measure(setting, root, index + round_index * len(settings)))
                print(f"round {round_index + 1}: {' '.join(setting.label())}: first {runs[setting][-1]['first']:.1f} s, "
                      f"{runs[setting][-1]['seconds'] * 1000:.0f} ms/slice", flush=True)
        e2e = {precision: end_to_end(root, args.e2e_slices, precision) for precision in ("float32", "bf16")
               if args.e2e_slices}
        gflop = generator_gflop()
        load = os.getloadavg()
        print(f"\nload average at end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; "
              f"paper generator {gflop:.0f} GFLOP per 512x512 slice\n")
        print_table(runs, gflop)
        for precision, (seconds, summary) in e2e.items():
            print(f"\nctdeblur-deblur --precision {precision} end to end, {args.e2e_slices} slices 512x512: "
                  f"{seconds:.1f} s wall, {seconds / args.e2e_slices:.2f} s/slice (start-up included)\n  {summary}")


if __name__ == "__main__":
    main()

"""The quality run (`make quality`): dataset, `ours` at the `small` preset, evaluation with the baselines.

Usage: .venv/bin/python bench/quality_run.py [--workdir quality_run] [--minutes 60] [--compare MODEL ...]
           [--perceptual_weights none|imagenet|PATH] [--results RESULTS.md] [--resume]

On 2 CPU cores, in at most `--minutes` wall-clock minutes for the default run:
1. A kernel-blur dataset (ctdeblur-make-dataset): `--phantoms` procedural phantom patients (head,
   thorax, abdomen in turn) plus pydicom's real CT, `--kernels` motion kernels per slice, the noise
   forward model at its defaults, a patient-disjoint test split and a validation split (the
   trainer's checkpoint choice), disjoint from both.
2. A projection-blur dataset of the same patients and seed (its test split holds the same
   patients): the CT-physics motion the model was not trained on. Only its test split is used,
   so its train splits are kept to a minimum.
3. A real-CT dataset: pydicom's CT slices (three scanners and patients), 8 kernels each; the
   pipeline refuses 693_J2KI.dcm, compressed lossily at 338:1 (`--max_lossy_ratio`), so one
   patient is the test split and one the train split; the test split is real CT that the quality
   model never trained on when the kernel dataset put that patient in its test split (the summary
   says where they went).
4. `ctdeblur-train --model ours --preset small`, with `--time_budget_minutes` set to what is left
   of the budget after the evaluation's share and enough epochs (`TRAIN_EPOCHS`) that the budget,
   not the epoch count, ends training on any CPU: each of the 7 sub-datasets gets an equal share of
   the time and the learning rate decays over all of it. Validation (and a checkpoint) every
   `TRAIN_VALIDATION_EVERY` steps; the export is the best validation step's.
5. `ctdeblur-evaluate` of the export with the blurry input and the Wiener / Richardson-Lucy oracles
   on the three test splits: evaluation-kernel.json (the existing format), evaluation-projection.json
   and evaluation-realct.json, with Markdown reports, per-image CSVs and figures beside them.
6. bench/sharp_input.py: each model on the unblurred slices of the kernel and real-CT test splits
   (sharp-input-*.json): a deblurring model must leave a sharp slice nearly as it is.
`--compare paper deblurgan pix2pix` then trains each listed model at the same wall-clock budget
as `ours` took (one after another, each alone on the machine) and evaluates all models together.
`--resume` reuses every step that finished in an earlier run of the same workdir with the same
command (so `--resume --compare pix2pix` adds pix2pix to a finished default run, and an interrupted
run continues); the training budgets are decided once per workdir and recorded
(WORKDIR/logs/training-budget.json, compare-budget.json), so a resumed run asks the same of each
step even when a step it re-runs (one whose marker was removed) takes another time. A training step
run again continues from the checkpoints in its logdir (WORKDIR/logs-MODEL): remove that directory
to train afresh. `--results FILE` writes the Markdown summary (tables with patient-clustered bootstrap CIs, the
commands, the timings) to FILE, e.g. RESULTS.md.

The perceptual term needs ImageNet VGG19 weights (`--perceptual_weights imagenet` or a file); this
machine cannot download them, so the default is `none` (no perceptual term). `paper` and
`deblurgan` are defined by their perceptual loss: without ImageNet weights they are not run (their
rows say why), since random-init features are never used for a reported figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from cli_shell.quiet import apply_quiet

PERCEPTUAL_MODELS = ("paper", "deblurgan")


def code_commit() -> str | None:
    """The git commit of this checkout (`git describe --always --dirty`), or None outside git."""
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__)), timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def command(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def shown(argv: list[str]) -> str:
    return " ".join(os.path.relpath(a) if a.startswith("/") else a for a in argv)


class Run:
    """The steps of one quality run, with their commands and wall-clock times.

    With `resume`, a step that finished in an earlier run of the same workdir with the same command
    (WORKDIR/logs/<label>.done.json), after every step whose results it reads, is not run again: its
    recorded minutes count instead, and its record (`steps`) says that it was reused and at which
    commit of this code it ran.
    """

    def __init__(self, workdir: str, resume: bool = False):
        self.workdir = workdir
        self.resume = resume
        self.steps: list[tuple[str, list[str], float]] = []
        self.provenance: dict[str, dict] = {}

    def path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)

    def minutes(self) -> float:
        """Wall-clock minutes of the steps so far (recorded minutes for reused ones)."""
        return sum(minutes for _, _, minutes in self.steps)

    def _reused(self, label: str, argv: list[str], inputs: tuple[str, ...]) -> float | None:
        marker = self.path("logs", f"{label}.done.json")
        if not (self.resume and os.path.exists(marker)):
            return None
        with open(marker, encoding="utf-8") as handle:
            done = json.load(handle)
        if done["command"] != argv:
            return None
        finished = done.get("finished")
        for step in inputs:
            made = self.provenance.get(step, {}).get("finished")
            if finished and made and made > finished:
                return None
        self.provenance[label] = {"reused": True, "commit": done.get("commit"), "finished": finished}
        return done["minutes"]

    def run(self, label: str, argv: list[str], inputs: tuple[str, ...] = ()) -> float:
        """Runs `argv` (its output to WORKDIR/logs/<label>.log); returns its wall-clock minutes.
        `inputs` are the labels of the earlier steps whose results it reads: a step made after its
        own result (re-run since) makes it run again when resumed."""
        os.makedirs(self.path("logs"), exist_ok=True)
        log = self.path("logs", f"{label}.log")
        minutes = self._reused(label, argv, inputs)
        if minutes is not None:
            made_at, now = self.provenance[label].get("commit"), code_commit()
            other_code = f"; made at {made_at}, this code is {now}: remove {self.path('logs', label + '.done.json')} " \
                         "to make it with this code" if made_at and now and made_at != now else ""
            print(f"[{self.minutes():5.1f} min] {label}: done in an earlier run ({minutes:.1f} min), reused{other_code}",
                  flush=True)
            self.steps.append((label, argv, minutes))
            return minutes
        print(f"[{self.minutes():5.1f} min] {label}: {shown(argv)}  (log: {log})", flush=True)
        began = time.monotonic()
        with open(log, "w", encoding="utf-8") as handle:
            done = subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT)
        minutes = (time.monotonic() - began) / 60.0
        if done.returncode != 0:
            raise SystemExit(f"quality run: {label} failed (exit {done.returncode}); see {log}")
        self.provenance[label] = {"reused": False, "commit": code_commit(),
                                  "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with open(self.path("logs", f"{label}.done.json"), "w", encoding="utf-8") as handle:
            json.dump({"command": argv, "minutes": minutes, "commit": self.provenance[label]["commit"],
                       "finished": self.provenance[label]["finished"]}, handle)
        self.steps.append((label, argv, minutes))
        return minutes

    def decided(self, name: str, value: float) -> float:
        """`value`, recorded as WORKDIR/logs/<name>.json; a resumed run gets the recorded value back,
        so a step re-run at another speed (a dataset) does not change what later steps are asked."""
        record = self.path("logs", f"{name}.json")
        if self.resume and os.path.exists(record):
            with open(record, encoding="utf-8") as handle:
                return json.load(handle)["value"]
        os.makedirs(self.path("logs"), exist_ok=True)
        with open(record, "w", encoding="utf-8") as handle:
            json.dump({"value": value}, handle)
        return value

    def step_records(self) -> list[dict]:
        """The steps for quality_run.json: label, command, minutes, and where each result came from."""
        return [{"label": label, "command": shown(argv), "minutes": minutes, **self.provenance.get(label, {})}
                for label, argv, minutes in self.steps]


BEAM_LOCAL = ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]
TEST_SETS = ("kernel", "projection", "realct")
REALCT_KERNELS = 8
REALCT_SLICES = 2
"""pydicom's CT slices that are sharp references: CT_small.dcm and J2K_pixelrep_mismatch.dcm (the
third, 693_J2KI.dcm, is refused as lossy_compressed)."""


def dataset_argv(args: argparse.Namespace, output: str, test_set: str) -> list[str]:
    """The dataset command of one test set: kernel (also the training data), projection, realct."""
    if test_set == "realct":
        return [command("ctdeblur-make-dataset"), "--preset", "demo", "--source", "pydicom-samples",
                "--seed", str(args.seed), "--kernels_per_slice", str(REALCT_KERNELS),
                "--target_pairs", str(REALCT_SLICES * REALCT_KERNELS), "--test_pairs", str(REALCT_KERNELS),
                "--validation_pairs", "0", "--subdatasets", "1", "--output", output, "--overwrite", *BEAM_LOCAL]
    kernel = test_set == "kernel"
    pairs = args.pairs if kernel else args.test_pairs + 7 * args.kernels
    return [
        command("ctdeblur-make-dataset"), "--preset", "demo", "--source", "phantom", "--source", "pydicom-samples",
        "--blur_model", test_set, "--seed", str(args.seed), "--phantom_patients", str(args.phantoms),
        "--phantom_slices", str(args.slices), "--kernels_per_slice", str(args.kernels),
        "--target_pairs", str(pairs), "--test_pairs", str(args.test_pairs),
        "--validation_pairs", str(args.validation_pairs if kernel else 0),
        "--output", output, "--overwrite", *BEAM_LOCAL,
    ]


TRAIN_EPOCHS = 1000
"""Epochs per sub-dataset: more than fit in its share of the budget (~100 do on 2 cores of 2026)."""
TRAIN_VALIDATION_EVERY = 250
"""Steps between validations: ~3 s each, so ~1.5 of 40 minutes at ~3 steps/s."""


def train_argv(args: argparse.Namespace, run: Run, model: str, minutes: float) -> list[str]:
    argv = [command("ctdeblur-train"), "--data", run.path("data-kernel"), "--logdir", run.path(f"logs-{model}"),
            "--preset", "small", "--model", model, "--export", run.path(f"model-{model}"),
            "--time_budget_minutes", f"{minutes:.2f}", "--epochs", str(TRAIN_EPOCHS),
            "--validation_every", str(TRAIN_VALIDATION_EVERY), "--checkpoint_every", str(TRAIN_VALIDATION_EVERY)]
    if model != "pix2pix":
        argv += ["--perceptual_weights", args.perceptual_weights]
    return argv


def evaluate_argv(run: Run, models: list[str], test_set: str) -> list[str]:
    argv = [command("ctdeblur-evaluate")]
    for model in models:
        argv += ["--model", run.path(f"model-{model}")]
    name = f"evaluation-{test_set}" + ("-all" if len(models) > 1 else "")
    return argv + ["--data", run.path(f"data-{test_set}", "test"), "--validation", run.path("data-kernel", "train-0"),
                   "--json", run.path(f"{name}.json"), "--report", run.path(name)]


SHARP_INPUT_SETS = ("kernel", "realct")


def sharp_input_argv(run: Run, models: list[str], test_set: str) -> list[str]:
    """bench/sharp_input.py on the sharp slices of a test split: how much each model changes them."""
    argv = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "sharp_input.py")]
    for model in models:
        argv += ["--model", run.path(f"model-{model}")]
    return argv + ["--data", run.path(f"data-{test_set}", "test"), "--json", run.path(f"sharp-input-{test_set}.json")]


def real_ct_in_training(run: Run) -> list[str]:
    """Split directories of the kernel dataset that hold pydicom's real CT other than test/."""
    from tfrecords_schema import decode_pair, read_records

    splits = set()
    for split in sorted(os.listdir(run.path("data-kernel"))):
        if not split.startswith("train-"):
            continue
        for name in sorted(os.listdir(run.path("data-kernel", split))):
            with open(run.path("data-kernel", split, name), "rb") as handle:
                if any(decode_pair(record).collection != "phantom" for record in read_records(handle)):
                    splits.add(split)
    return sorted(splits)


def export_info(run: Run, model: str) -> dict:
    with open(run.path(f"model-{model}", "ctdeblur_generator.json"), encoding="utf-8") as handle:
        return json.load(handle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="quality_run")
    parser.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget of the default run")
    parser.add_argument("--phantoms", type=int, default=60,
                        help="phantom patients (>= 20); many patients of few slices give the test split many patients")
    parser.add_argument("--slices", type=int, default=8, help="slices per phantom series (spanning its body site)")
    parser.add_argument("--kernels", type=int, default=2, help="motion kernels (pairs) per slice")
    parser.add_argument("--pairs", type=int, default=966, help="pairs of the kernel dataset, test and validation included")
    parser.add_argument("--test_pairs", type=int, default=128)
    parser.add_argument("--validation_pairs", type=int, default=64)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--evaluation_minutes", type=float, default=12.0,
                        help="minutes of the budget kept for the three evaluations (the rest after the datasets trains)")
    parser.add_argument("--perceptual_weights", default="none")
    parser.add_argument("--compare", nargs="*", default=[], choices=("paper", "deblurgan", "pix2pix"))
    parser.add_argument("--results", help="write the Markdown summary here (e.g. RESULTS.md)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the steps that finished in an earlier run of this workdir with the same command "
                             "(e.g. add --compare to a finished default run); their recorded minutes count")
    args = parser.parse_args()
    apply_quiet(verbose=False)  # before TensorFlow is imported (the split check reads records)
    if args.phantoms < 20:
        parser.error("--phantoms must be >= 20")
    run = Run(args.workdir, resume=args.resume)
    os.makedirs(args.workdir, exist_ok=True)

    for test_set in TEST_SETS:
        run.run(f"dataset-{test_set}", dataset_argv(args, run.path(f"data-{test_set}"), test_set))
    training_minutes = run.decided("training-budget", round(args.minutes - args.evaluation_minutes - run.minutes(), 2))
    if training_minutes < 5:
        raise SystemExit(f"quality run: the datasets took {run.minutes():.1f} min, leaving "
                         f"{training_minutes:.1f} min to train; raise --minutes")
    ours_minutes = run.run("train-ours", train_argv(args, run, "ours", training_minutes), inputs=("dataset-kernel",))
    compare_minutes = run.decided("compare-budget", round(ours_minutes, 2))
    for test_set in TEST_SETS:
        run.run(f"evaluate-{test_set}", evaluate_argv(run, ["ours"], test_set),
                inputs=(f"dataset-{test_set}", "dataset-kernel", "train-ours"))
    default_minutes = run.minutes()

    skipped = {}
    compared = ["ours"]
    for model in args.compare:
        if model in PERCEPTUAL_MODELS and args.perceptual_weights in ("none", "random-init"):
            skipped[model] = (f"not run: its recipe is defined by the VGG19 perceptual loss, which needs ImageNet "
                              f"weights (--perceptual_weights imagenet or a file); random-init features are never "
                              f"used for a reported figure")
            continue
        run.run(f"train-{model}", train_argv(args, run, model, compare_minutes), inputs=("dataset-kernel",))
        compared.append(model)
    if len(compared) > 1:
        for test_set in TEST_SETS:
            run.run(f"evaluate-{test_set}-all", evaluate_argv(run, compared, test_set),
                    inputs=(f"dataset-{test_set}", "dataset-kernel", *(f"train-{model}" for model in compared)))
    for test_set in SHARP_INPUT_SETS:
        run.run(f"sharp-input-{test_set}", sharp_input_argv(run, compared, test_set),
                inputs=(f"dataset-{test_set}", *(f"train-{model}" for model in compared)))

    summary = {
        "default_run_minutes": default_minutes,
        "total_minutes": run.minutes(),
        "steps": run.step_records(),
        "models": {model: export_info(run, model) for model in compared},
        "skipped": skipped,
        "perceptual_weights": args.perceptual_weights,
        "real_ct_in_training": real_ct_in_training(run),
    }
    with open(run.path("quality_run.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    print(f"quality run: default run {default_minutes:.1f} min (budget {args.minutes:g}), total "
          f"{run.minutes():.1f} min; evaluations: "
          + ", ".join(run.path(f"evaluation-{test_set}.json") for test_set in TEST_SETS)
          + f"; summary: {run.path('quality_run.json')}")
    if args.results:
        from quality_report import write_results

        write_results(args.results, run.workdir, summary)
        print(f"quality run: wrote {args.results}")


if __name__ == "__main__":
    main()

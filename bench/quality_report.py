"""RESULTS.md from a quality run's evaluation JSONs (`bench/quality_run.py --results RESULTS.md`).

Every figure is read from the run's files: evaluation-kernel.json and evaluation-projection.json
(`ctdeblur-evaluate`, patient-clustered bootstrap CIs), quality_run.json (commands, timings,
exports). Nothing is typed in by hand.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any

TEST_SETS = (("kernel", "Kernel-blur test split (the blur family trained on)"),
             ("projection", "Projection-blur test split (CT-physics rigid motion, never trained on)"),
             ("realct", "Real CT: pydicom's CT slices, 8 kernels each (test split of their own dataset)"))
MAIN_SCOPES = (("[-1000, 1000] full", "full field"), ("[-1000, 1000] body", "inside the body mask"))


def _interval(summary: dict[str, Any] | None, digits: int, signed: bool = False) -> str:
    if not summary or summary.get("mean") is None:
        return "n/a"
    sign = "+" if signed else ""
    text = f"{summary['mean']:{sign}.{digits}f}"
    if summary.get("ci95"):
        low, high = summary["ci95"]
        return f"{text} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"
    return f"{text} (CI n/a: {summary.get('patients', '?')} patient)"


def _table(scope: dict[str, Any], methods: list[str]) -> list[str]:
    lines = ["| method | PSNR (dB) | ΔPSNR vs blurry (dB) | SSIM | ΔSSIM vs blurry |", "|---|---|---|---|---|"]
    for method in methods:
        parts = scope.get(method)
        if parts is None:
            continue
        lines.append(f"| {method} | {_interval(parts.get('psnr'), 2)} | {_interval(parts.get('psnr_gain'), 2, True)} | "
                     f"{_interval(parts.get('ssim'), 4)} | {_interval(parts.get('ssim_gain'), 4, True)} |")
    return lines


def _load(workdir: str, blur_model: str, compared: bool) -> dict[str, Any] | None:
    for name in ((f"evaluation-{blur_model}-all.json",) if compared else ()) + (f"evaluation-{blur_model}.json",):
        path = os.path.join(workdir, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                return json.load(handle)
    return None


def _sharp_input_lines(workdir: str) -> list[str]:
    """The table of bench/sharp_input.py's scores (model on unblurred slices), if the run made them."""
    rows = []
    for test_set, _ in TEST_SETS:
        path = os.path.join(workdir, f"sharp-input-{test_set}.json")
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as handle:
            for model, by_collection in json.load(handle).items():
                for collection, score in by_collection.items():
                    rows.append(f"| {test_set} | {model} | {collection} | {score['slices']} | {score['mean_db']:.2f} | "
                                f"{score['min_db']:.2f} |")
    if not rows:
        return []
    return ["", "## Sharp input: does the model leave an unblurred slice alone?", "",
            "Each distinct slice of the test split fed to the model unblurred; PSNR of the output against that "
            "same slice ([-1000, 1000] HU, full field; identity would be infinite, 40 dB is a ~20 HU change).", "",
            "| test split | model | collection | slices | mean PSNR (dB) | worst (dB) |", "|---|---|---|---|---|---|",
            *rows]


def machine() -> str:
    """The CPU this runs on, as the figures depend on it: model, vector units, matrix units, cores."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return f"{os.cpu_count()} cores"
    flags = fields.get("flags", "").split()
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    matrix = "AMX" if "amx_bf16" in flags else "no AMX"
    return f"{fields.get('model name', 'unknown CPU')} ({vector}, {matrix}), {os.cpu_count()} cores"


def _real_ct_line(workdir: str, compared: bool) -> list[str]:
    """The headline of the second goal: ours on the real-CT test split (> 0 dB)."""
    document = _load(workdir, "realct", compared)
    if document is None:
        return []
    scopes = document["scopes"]
    full = scopes["[-1000, 1000] full"]["all"]["ours"]["psnr_gain"]
    body = scopes["[-1000, 1000] body"]["all"]["ours"]["psnr_gain"]
    met = full["mean"] > 0
    return ["", f"**On real CT (pydicom's CT slices blurred by kernels of the same family, the real-CT test split) "
                f"`ours` changes PSNR by {_interval(full, 2, True)} dB** (inside the body {_interval(body, 2, True)} dB). "
                f"The goal (> 0 dB) is {'met' if met else 'NOT met'}.{_refused_line(workdir)}"]


def _refused_line(workdir: str) -> str:
    """The slices the real-CT dataset refused, by reason (its manifest), as a sentence; "" if none."""
    path = os.path.join(workdir, "data-realct", "manifest.json")
    if not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8") as handle:
        rejected = json.load(handle).get("rejected") or {}
    if not rejected:
        return ""
    counts = ", ".join(f"{count} {reason}" for reason, count in sorted(rejected.items()))
    return f" The real-CT dataset refused {counts} (its dead_letter.jsonl says which and why)."


def _provenance(step: dict[str, Any]) -> str:
    """Where a step's result came from, for its line under Commands: the commit it ran at, and
    whether an earlier run of the same workdir made it (`--resume`)."""
    when = f" on {step['finished'][:10]}" if step.get("finished") else ""
    at = f" at {step['commit']}{when}" if step.get("commit") else when
    if step.get("reused"):
        return f", reused from an earlier run{at}"
    return f", run{at}" if at else ""


def _reused_line(summary: dict[str, Any]) -> list[str]:
    """Says which steps an earlier run made, when the run was resumed."""
    reused = [step["label"] for step in summary["steps"] if step.get("reused")]
    if not reused:
        return []
    return ["", f"Resumed run (`--resume`): {len(reused)} of its {len(summary['steps'])} steps were reused from an "
                f"earlier run of the same commands in the same workdir ({', '.join(reused)}); the commit each "
                f"step ran at is under Commands."]


def results_markdown(workdir: str, summary: dict[str, Any]) -> str:
    """The Markdown of RESULTS.md for the quality run in `workdir` with its `summary`."""
    models = list(summary["models"])
    compared = len(models) > 1
    kernel = _load(workdir, "kernel", compared)
    ours = kernel["scopes"]["[-1000, 1000] full"]["all"]["ours"]["psnr_gain"]
    goal_met = ours["mean"] >= 3.0 and ours.get("ci95") and ours["ci95"][0] > 2.0
    ci = f"[{ours['ci95'][0]:+.2f}, {ours['ci95'][1]:+.2f}]" if ours.get("ci95") else "(no interval)"
    lines = [
        "# Quality run: `make quality` on 2 CPU cores (issue 16)",
        "",
        f"**Result: `ours` gains {ours['mean']:+.2f} dB PSNR {ci} over its blurry input** on the patient-disjoint "
        f"kernel-blur test split ([-1000, 1000] HU, full field, 95% patient-clustered bootstrap CI). The goal "
        f"(≥ +3.0 dB with the CI's lower bound above +2 dB) is {'met' if goal_met else 'NOT met'}.",
        *_real_ct_line(workdir, compared),
        "",
        f"Run on {datetime.date.today().isoformat()} on {machine()}; the default run took {summary['default_run_minutes']:.1f} min "
        f"wall clock (datasets, training, two evaluations), everything {summary['total_minutes']:.1f} min. "
        f"Perceptual weights: `{summary['perceptual_weights']}`.",
        *_reused_line(summary),
        "",
        "## What was trained",
        "",
        "| model | exported step | final step | validation ΔPSNR at the exported step |",
        "|---|---|---|---|",
    ]
    for model, info in summary["models"].items():
        gain = info.get("validation_delta_psnr_db")
        lines.append(f"| {model} | {info.get('global_step')} | {info.get('final_step')} | "
                     f"{'n/a' if gain is None else f'{gain:+.2f} dB'} |")
    for model, reason in summary["skipped"].items():
        lines.append(f"| {model} | {reason} | | |")
    seen = summary.get("real_ct_in_training") or []
    lines += ["", "pydicom's real CT in the training splits: " + (", ".join(seen) if seen else
              "none (all of it fell in the kernel dataset's test split: the real-CT rows are CT the model never saw)")]
    for test_set, title in TEST_SETS:
        document = _load(workdir, test_set, compared)
        if document is None:
            continue
        methods = list(document["methods"])
        patients = document["methods"]["blurry"]["patients"]
        lines += ["", f"## {title}", "", f"{document['pairs']} pairs from {patients} patient{'' if patients == 1 else 's'}.", ""]
        for scope_key, scope_title in MAIN_SCOPES:
            lines += [f"### {scope_title}, HU window [-1000, 1000]", "", *_table(document["scopes"][scope_key]["all"], methods), ""]
        collections = document["scopes"]["[-1000, 1000] full"].get("collection", {})
        for collection, scope in sorted(collections.items()):
            if collection == "phantom":
                continue
            lines += [f"### {collection} only (real CT), full field", "", *_table(scope, methods), ""]
        baselines = document.get("baselines")
        if baselines:
            lines.append(f"Oracles tuned on {baselines['tuning_pairs']} pairs of `{os.path.relpath(baselines['chosen_on'])}`: "
                         f"Wiener NSR {baselines['wiener_nsr']:g}, Richardson-Lucy {baselines['rl_iterations']} iterations. "
                         "They know each pair's true PSF (an upper bound, not a competitor); projection-blur pairs have "
                         "no image-space PSF, so no oracle.")
    lines += _sharp_input_lines(workdir)
    lines += ["", "## Commands", "", "```sh"]
    lines += [f"{step['command']}    # {step['minutes']:.1f} min{_provenance(step)}" for step in summary["steps"]]
    lines += ["```", "", "Everything above is regenerated by `make quality` (bench/quality_run.py); the recipe "
              "choices behind `ours` and their measurements are in docs/training.md.", ""]
    return "\n".join(lines)


def write_results(path: str, workdir: str, summary: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(results_markdown(workdir, summary))

"""bench/quality_run.py's steps: a resumed run reuses the steps that finished with the same command."""

import json
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
from quality_run import Run, code_commit  # noqa: E402


def count_step(workdir: str, name: str) -> list[str]:
    """A step that appends a line to WORKDIR/<name> each time it really runs."""
    return [sys.executable, "-c", f"open({os.path.join(workdir, name)!r}, 'a').write('ran\\n')"]


def test_resume_reuses_finished_steps_with_the_same_command_only(tmp_path):
    workdir = str(tmp_path)
    first = Run(workdir)
    first.run("a", count_step(workdir, "a"))
    first.run("b", count_step(workdir, "b"))
    recorded = first.minutes()

    again = Run(workdir, resume=True)
    assert again.run("a", count_step(workdir, "a")) == pytest.approx(first.steps[0][2])
    again.run("b", count_step(workdir, "b") + ["changed"])
    assert open(os.path.join(workdir, "a")).read() == "ran\n"
    assert open(os.path.join(workdir, "b")).read() == "ran\nran\n"
    assert again.minutes() > first.steps[0][2] and recorded > 0

    fresh = Run(workdir)
    fresh.run("a", count_step(workdir, "a"))
    assert open(os.path.join(workdir, "a")).read() == "ran\nran\n"

    first_a, = [step for step in first.step_records() if step["label"] == "a"]
    reused_a, changed_b = again.step_records()
    assert first_a["reused"] is False and first_a["commit"] == code_commit() and first_a["finished"].endswith("Z")
    assert reused_a["reused"] is True and reused_a["commit"] == first_a["commit"]
    assert reused_a["finished"] == first_a["finished"]
    assert changed_b["reused"] is False


def test_a_step_reused_from_other_code_says_so(tmp_path, capsys):
    workdir = str(tmp_path)
    Run(workdir).run("a", count_step(workdir, "a"))
    marker = tmp_path / "logs" / "a.done.json"
    done = json.loads(marker.read_text())
    marker.write_text(json.dumps({**done, "commit": "0123abc"}))
    capsys.readouterr()
    again = Run(workdir, resume=True)
    again.run("a", count_step(workdir, "a"))
    out = capsys.readouterr().out
    assert open(os.path.join(workdir, "a")).read() == "ran\n"
    assert f"reused; made at 0123abc, this code is {code_commit()}: remove {marker}" in out


def test_a_step_whose_input_was_made_again_runs_again(tmp_path):
    workdir = str(tmp_path)
    first = Run(workdir)
    first.run("data", count_step(workdir, "data"))
    first.run("train", count_step(workdir, "train"), inputs=("data",))
    first.run("other", count_step(workdir, "other"))
    os.remove(tmp_path / "logs" / "data.done.json")
    time.sleep(1.1)

    again = Run(workdir, resume=True)
    again.run("data", count_step(workdir, "data"))
    again.run("train", count_step(workdir, "train"), inputs=("data",))
    again.run("other", count_step(workdir, "other"), inputs=("train-never-run",))
    assert open(os.path.join(workdir, "data")).read() == "ran\nran\n"
    assert open(os.path.join(workdir, "train")).read() == "ran\nran\n"
    assert open(os.path.join(workdir, "other")).read() == "ran\n"

    third = Run(workdir, resume=True)
    third.run("data", count_step(workdir, "data"))
    third.run("train", count_step(workdir, "train"), inputs=("data",))
    assert open(os.path.join(workdir, "train")).read() == "ran\nran\n"


def test_a_resumed_run_gets_the_recorded_decision_back(tmp_path):
    assert Run(str(tmp_path)).decided("training-budget", 44.43) == 44.43
    assert Run(str(tmp_path), resume=True).decided("training-budget", 44.92) == 44.43
    assert Run(str(tmp_path)).decided("training-budget", 44.92) == 44.92


def test_a_failed_step_stops_the_run_and_is_not_marked_done(tmp_path):
    run = Run(str(tmp_path), resume=True)
    with pytest.raises(SystemExit, match="quality run: bad failed"):
        run.run("bad", [sys.executable, "-c", "raise SystemExit(3)"])
    assert not os.path.exists(tmp_path / "logs" / "bad.done.json")


def evaluation(ours_gain: float, body_gain: float) -> dict:
    """An evaluation JSON of `ctdeblur-evaluate`'s shape, reduced to what RESULTS.md reads."""
    def scope(gain):
        blurry = {"psnr": {"mean": 30.0, "ci95": [29.0, 31.0]}}
        ours = {"psnr": {"mean": 30.0 + gain, "ci95": [29.0 + gain, 31.0 + gain]},
                "psnr_gain": {"mean": gain, "ci95": [gain - 1.0, gain + 1.0]}}
        return {"all": {"blurry": blurry, "ours": ours}, "collection": {}}
    return {"pairs": 16, "methods": {"blurry": {"patients": 2}, "ours": {}},
            "scopes": {"[-1000, 1000] full": scope(ours_gain), "[-1000, 1000] body": scope(body_gain)}}


@pytest.mark.parametrize("real_ct_gain, verdict", [(-0.51, "NOT met"), (0.2, "met")])
def test_results_state_both_goals_and_the_cpu(tmp_path, real_ct_gain, verdict):
    import json

    from quality_report import results_markdown

    for test_set, gain in (("kernel", 3.49), ("realct", real_ct_gain)):
        (tmp_path / f"evaluation-{test_set}.json").write_text(json.dumps(evaluation(gain, gain - 0.7)))
    summary = {"models": {"ours": {"global_step": 7971, "final_step": 7971, "validation_delta_psnr_db": 3.55}},
               "skipped": {}, "default_run_minutes": 50.4, "total_minutes": 50.4, "perceptual_weights": "none",
               "real_ct_in_training": [], "steps": []}
    text = results_markdown(str(tmp_path), summary)
    assert "gains +3.49 dB PSNR [+2.49, +4.49]" in text and "+2 dB) is met." in text
    assert f"changes PSNR by {real_ct_gain:+.2f} [{real_ct_gain - 1:+.2f}, {real_ct_gain + 1:+.2f}] dB" in text
    assert f"The goal (> 0 dB) is {verdict}." in text
    assert f"{os.cpu_count()} cores" in text.split("## What was trained")[0]
    assert "Resumed run" not in text


def test_results_say_which_steps_an_earlier_run_made(tmp_path):
    import json

    from quality_report import results_markdown

    for test_set in ("kernel", "realct"):
        (tmp_path / f"evaluation-{test_set}.json").write_text(json.dumps(evaluation(3.0, 2.0)))
    steps = [{"label": "train-ours", "command": "ctdeblur-train ...", "minutes": 44.6, "reused": True,
              "commit": "483e870", "finished": "2026-12-03T07:41:00Z"},
             {"label": "evaluate-projection", "command": "ctdeblur-evaluate ...", "minutes": 0.5, "reused": False,
              "commit": "5dc2344-dirty", "finished": "2026-12-03T16:20:00Z"}]
    summary = {"models": {"ours": {"global_step": 10, "final_step": 10, "validation_delta_psnr_db": 1.0}},
               "skipped": {}, "default_run_minutes": 45.1, "total_minutes": 45.1, "perceptual_weights": "none",
               "real_ct_in_training": [], "steps": steps}
    text = results_markdown(str(tmp_path), summary)
    assert "Resumed run (`--resume`): 1 of its 2 steps were reused from an earlier run" in text
    assert "(train-ours)" in text
    assert "ctdeblur-train ...    # 44.6 min, reused from an earlier run at 483e870 on 2026-12-03" in text
    assert "ctdeblur-evaluate ...    # 0.5 min, run at 5dc2344-dirty on 2026-12-03" in text

"""bench/quality_run.py's steps: a resumed run reuses the steps that finished with the same command."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
from quality_run import Run  # noqa: E402


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


def test_a_failed_step_stops_the_run_and_is_not_marked_done(tmp_path):
    run = Run(str(tmp_path), resume=True)
    with pytest.raises(SystemExit, match="quality run: bad failed"):
        run.run("bad", [sys.executable, "-c", "raise SystemExit(3)"])
    assert not os.path.exists(tmp_path / "logs" / "bad.done.json")

"""Quiet console scripts (cli_shell.quiet): the absl line filter, and a command run as an
installed `ctdeblur-*` script with and without --verbose, its own lines untouched."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap

import pytest

from cli_shell.quiet import apply_quiet, drop_absl_noise, is_console_script, verbose_requested

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XLA_INFO = b"I0000 00:00:1796093400.261133   14853 service.cc:145] XLA service 0x7f44 initialized for platform Host\n"
ABSL_PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
ABSL_ERROR = b"E0000 00:00:1796093400.261133   14853 service.cc:9] a real error\n"


def test_absl_info_and_warning_lines_are_dropped_errors_and_text_pass():
    passed, held, at_start = drop_absl_noise(ABSL_PREAMBLE + XLA_INFO + b"our line\n" + ABSL_ERROR)
    assert passed == b"our line\n" + ABSL_ERROR and held == b"" and at_start
    assert drop_absl_noise(b"W1201 12:00:01.123456 99 x.cc:1] w\nIt is fine\n")[0] == b"It is fine\n"
    assert drop_absl_noise(b"prefix " + XLA_INFO)[0] == b"prefix " + XLA_INFO
    assert drop_absl_noise(XLA_INFO, at_line_start=False)[0] == XLA_INFO


def test_partial_lines_are_held_only_while_they_may_become_noise():
    assert drop_absl_noise(XLA_INFO[:30]) == (b"", XLA_INFO[:30], True)
    assert drop_absl_noise(XLA_INFO[:30] + XLA_INFO[30:])[0] == b""
    assert drop_absl_noise(b"\r 50%|#####     ") == (b"\r 50%|#####     ", b"", False)
    assert drop_absl_noise(b"It is", final=False)[0] == b"It is"
    assert drop_absl_noise(b"I0000 00:00:17", final=True)[0] == b"I0000 00:00:17"


def test_command_line_detection():
    assert verbose_requested(["DIR", "--verbose"]) and not verbose_requested(["DIR", "--verbose_x"])
    assert is_console_script("/opt/venv/bin/ctdeblur-train")
    assert not is_console_script("/opt/venv/bin/pytest") and not is_console_script("/repo/model/train.py")


def test_python_side_filters(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.setenv("PYTHONWARNINGS", "default::DeprecationWarning")
    apply_quiet(verbose=True)
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    apply_quiet(verbose=False)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
    assert os.environ["PYTHONWARNINGS"].split(",") == [
        "default::DeprecationWarning", "ignore::FutureWarning:google.api_core._python_version_support",
        "ignore::FutureWarning:google.auth.transport.grpc"]
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    apply_quiet(verbose=False)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"


PROBE = textwrap.dedent("""\
    import os, sys, warnings
    import cli_shell.quiet_start
    os.write(2, {noise!r})
    os.write(2, b"a C library line\\n")
    warnings.warn_explicit("python too old", FutureWarning, "x.py", 1, module="google.api_core.x")
    warnings.warn("our own warning", UserWarning)
    print("our progress", file=sys.stderr)
    print("our result")
    sys.stdout.flush()
    if "--crash" in sys.argv:
        os.write(2, b"F0000 00:00:1796093400.261133   14853 x.cc:1] fatal: about to abort\\n")
        os.abort()
""")


def run_probe(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """Runs the probe as an installed command would run (its file is named ctdeblur-probe)."""
    script = tmp_path / "ctdeblur-probe"
    script.write_text(PROBE.format(noise=ABSL_PREAMBLE + XLA_INFO))
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")}
    env["PYTHONPATH"] = REPO
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=60)


def test_console_script_hides_library_noise_and_keeps_its_own_lines(tmp_path):
    result = run_probe(tmp_path)
    assert result.returncode == 0 and result.stdout == "our result\n"
    lines = result.stderr.splitlines()
    assert "a C library line" in lines and "our progress" in lines
    assert any("UserWarning: our own warning" in line for line in lines)
    assert not any("XLA" in line or "absl" in line or "FutureWarning" in line for line in lines)


def test_verbose_shows_everything(tmp_path):
    result = run_probe(tmp_path, "--verbose")
    assert result.returncode == 0
    for text in ("XLA service", "absl::InitializeLog", "FutureWarning: python too old", "a C library line",
                 "our own warning", "our progress"):
        assert text in result.stderr, text


def test_a_crash_still_reaches_the_terminal(tmp_path):
    result = run_probe(tmp_path, "--crash")
    assert result.returncode != 0
    assert "F0000 00:00:1796093400.261133   14853 x.cc:1] fatal: about to abort" in result.stderr
    assert "XLA" not in result.stderr


@pytest.mark.parametrize("module", ["pipeline.make_dataset", "pipeline.phantom_cli", "pipeline.stats.cli",
                                    "model.train", "model.evaluate", "model.deblur"])
def test_every_entry_point_imports_the_quieting_first_and_takes_verbose(module, capsys):
    path = os.path.join(REPO, *module.split(".")) + ".py"
    with open(path, encoding="utf-8") as handle:
        imports = [line for line in handle if line.startswith(("import ", "from ")) and "__future__" not in line]
    assert imports[0].startswith("import cli_shell.quiet_start"), (module, imports[0])
    with pytest.raises(SystemExit) as exited:
        importlib.import_module(module).main(["--help"])
    assert exited.value.code == 0 and "--verbose" in capsys.readouterr().out

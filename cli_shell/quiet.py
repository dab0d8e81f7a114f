"""Quiet consoles: a command prints its own lines, not its libraries' start-up noise.

Without `--verbose` a console script hides, from its own process and the worker processes it
starts:
- TensorFlow's C++ logs (`TF_CPP_MIN_LOG_LEVEL=3`: the CUDA / cuDNN / TensorRT / CPU-feature
  lines it prints on import), unless the user set the variable;
- the INFO and WARNING lines XLA writes through absl's C++ logging ("XLA service ...
  initialized", "Compiled cluster using XLA!", "All log messages before absl::InitializeLog()
  ..."), which no setting reaches: a small filter process between the command's file descriptor
  2 and the terminal drops those lines (`drop_absl_noise`) and passes everything else on,
  errors included, even when the command crashes (console scripts only, see `quiet_start`);
- absl's Python logs below ERROR;
- `FutureWarning`s raised inside Google's client libraries (google-api-core's Python-version
  notice, google-auth's grpcio notice) that apache-beam[gcp] imports;
- the worker log lines Beam's local job service relays below ERROR (DirectRunner
  multi_processing: "Discarding unparseable args", "No semi_persistent_directory").

Everything else stays: our own warnings and errors, Python warnings from other code (numpy,
pydicom, ...), Beam's own warnings in the launching process (a mistyped Beam flag), and errors
from any library. `--verbose` hides nothing. TensorFlow reads its variable once, when it is
first imported, so `apply_quiet` must run before that: `cli_shell.quiet_start` does it.
"""

from __future__ import annotations

import argparse
import atexit
import io
import logging
import os
import re
import sys
import time
import warnings
from typing import Sequence

VERBOSE_FLAG = "--verbose"
VERBOSE_HELP = ("also show the logs and warnings that TensorFlow, XLA, absl, Beam's workers and Google's client "
                "libraries print (hidden by default)")
TF_LOG_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
TF_QUIET_LEVEL = "3"
"""3 hides TensorFlow's INFO, WARNING and ERROR C++ lines: its CUDA plugin registration prints
ERROR lines on every CPU-only import."""
GOOGLE_MODULES = r"google(\.|$)"
"""Modules whose FutureWarnings are hidden (a regular expression over the warning's module)."""
GOOGLE_FUTURE_WARNING_MODULES = ("google.api_core._python_version_support", "google.auth.transport.grpc")
"""The same for worker processes, by exact module name (PYTHONWARNINGS takes no regex)."""
RELAY_LOGGERS = ("apache_beam.runners.portability.local_job_service",)
"""Loggers that only relay Beam worker processes' own log lines."""
ABSL_NOISE = re.compile(
    rb"(?:[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ \]]+:\d+\] [^\n]*"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR)\r?\n")
"""A whole INFO or WARNING line of absl's C++ logging (ERROR and FATAL lines are kept)."""
_NOISE_START = re.compile(rb"[IW]\d{0,4}(?: [\d:. ]*(?:\d [^ \]]*)?)?\Z|WARNING: All log messages before absl")
_FILTER_WAIT_S = 2.0


def add_verbose_flag(parser: argparse.ArgumentParser, also: str = "") -> None:
    """Adds `--verbose` (read before parsing by `cli_shell.quiet_start`); `also` extends its help."""
    parser.add_argument(VERBOSE_FLAG, action="store_true", help=VERBOSE_HELP + (f"; {also}" if also else ""))


def verbose_requested(argv: Sequence[str]) -> bool:
    """True when the command line asks for `--verbose`."""
    return VERBOSE_FLAG in argv


def drop_absl_noise(data: bytes, final: bool = False, at_line_start: bool = True) -> tuple[bytes, bytes, bool]:
    """Filters a stretch of stderr output: (bytes to pass on, bytes to hold, whether the next
    byte starts a line).

    Whole absl INFO / WARNING lines that start a line are dropped; all other bytes pass. An
    unterminated tail that could still become such a line is held (unless `final`); any other
    tail passes at once (a progress bar redraws after `\r` without a newline). `at_line_start`
    says whether `data` begins a line.
    """
    passed, position = [], 0
    for match in ABSL_NOISE.finditer(data):
        start = match.start()
        if (data[start - 1:start] in (b"\n", b"\r")) if start else at_line_start:
            passed.append(data[position:start])
            position = match.end()
    rest = data[position:]
    cut = max(rest.rfind(b"\n"), rest.rfind(b"\r")) + 1
    tail = rest[cut:]
    tail_starts_line = cut > 0 or position > 0 or at_line_start
    if tail and not final and tail_starts_line and _NOISE_START.match(tail):
        return b"".join(passed) + rest[:cut], tail, True
    if rest:
        return b"".join(passed) + rest, b"", rest[-1:] in (b"\n", b"\r")
    return b"".join(passed), b"", position > 0 or at_line_start


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _filter_process(read_fd: int, out_fd: int) -> None:
    """The filter's loop: read the pipe until every writer closed it, pass on all but the noise."""
    pending, at_line_start = b"", True
    while True:
        try:
            chunk = os.read(read_fd, 1 << 16)
        except InterruptedError:
            continue
        if not chunk:
            break
        passed, pending, at_line_start = drop_absl_noise(pending + chunk, at_line_start=at_line_start)
        _write_all(out_fd, passed)
    _write_all(out_fd, drop_absl_noise(pending, final=True, at_line_start=at_line_start)[0])


def _close_all_but(keep: set[int]) -> None:
    """Closes every file descriptor but `keep`, so the filter holds no pipe its parent's caller
    waits on (stdout of `subprocess.run(capture_output=True)`, the pipe's own write end)."""
    low = 0
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, min(os.sysconf("SC_OPEN_MAX"), 1 << 16))


def filter_stderr() -> None:
    """Routes file descriptor 2 (C/C++ code, child processes) through a forked filter process
    that drops absl's INFO / WARNING lines, and points Python's `sys.stderr` straight at the real
    stderr (so a terminal stays a terminal for progress bars). At exit descriptor 2 is restored
    and the filter drains. Does nothing where fork or a pipe is not available."""
    if not hasattr(os, "fork"):
        return
    try:
        sys.stderr.flush()
        real = os.dup(2)
        read_fd, write_fd = os.pipe()
        pid = os.fork()
    except OSError:
        return
    if pid == 0:
        _close_all_but({read_fd, real})
        try:
            _filter_process(read_fd, real)
        finally:
            os._exit(0)
    os.close(read_fd)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    sys.stderr = io.TextIOWrapper(io.FileIO(real, "w", closefd=False), encoding=sys.stderr.encoding,
                                  errors="backslashreplace", line_buffering=True)

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(real, 2)
        deadline = time.monotonic() + _FILTER_WAIT_S
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:
                return
            time.sleep(0.01)

    atexit.register(restore)


def apply_quiet(verbose: bool, console_script: bool = False) -> None:
    """Hides the libraries' noise listed in the module docstring, unless `verbose`; with
    `console_script` also starts the stderr filter (never in a process that only imports a CLI
    module, such as a test run).

    Call before TensorFlow is imported (its C++ log level is read once).
    """
    if verbose:
        return
    os.environ.setdefault(TF_LOG_VARIABLE, TF_QUIET_LEVEL)
    worker_filters = [f"ignore::FutureWarning:{module}" for module in GOOGLE_FUTURE_WARNING_MODULES]
    inherited = [item for item in os.environ.get("PYTHONWARNINGS", "").split(",") if item]
    os.environ["PYTHONWARNINGS"] = ",".join(dict.fromkeys([*inherited, *worker_filters]))
    warnings.filterwarnings("ignore", category=FutureWarning, module=GOOGLE_MODULES)
    for name in (*RELAY_LOGGERS, "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if console_script:
        filter_stderr()


def is_console_script(argv0: str) -> bool:
    """True for the ctdeblur-* commands setup.py installs (not `python -m`, not pytest)."""
    return os.path.basename(argv0).startswith("ctdeblur-")


def apply_from_command_line(argv: Sequence[str] | None = None) -> bool:
    """`apply_quiet` for this process' command line (`sys.argv` by default); returns verbose."""
    argv = list(sys.argv if argv is None else argv)
    verbose = verbose_requested(argv[1:])
    apply_quiet(verbose, console_script=bool(argv) and is_console_script(argv[0]))
    return verbose

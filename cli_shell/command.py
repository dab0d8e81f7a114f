"""How every console script runs: user errors as one line without a traceback, exit codes, and
Ctrl-C / SIGTERM.

Exit codes: 0 done; 1 done, but what was made is not right (a dataset that fails its checks); 2
the command could not do what was asked (`UserError`: bad settings, input, output); 130
interrupted by Ctrl-C; 143 stopped by SIGTERM.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_SIGTERM = 143


class UserError(Exception):
    """A problem with what the user asked for (settings, input, output); the message says what is
    wrong, with which file or setting, and what to do. Reported without a traceback."""


class Terminated(Exception):
    """SIGTERM arrived; raised in the main thread so that the command can clean up."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def run_command(prog: str, body: Callable[[], int], user_errors: tuple[type[BaseException], ...] = (),
                handle_sigterm: bool = True, aborted_note: str = "") -> int:
    """`body()`'s exit code, or the code of how it ended: `UserError` and `user_errors` print
    `prog: error: MESSAGE` (plus `aborted_note`) and give 2; Ctrl-C gives 130 and SIGTERM 143,
    each with one line. With `handle_sigterm` False the body handles SIGTERM itself (the trainer
    saves a checkpoint first). The previous SIGTERM handler is restored at the end."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if handle_sigterm else None
    note = f"\n{aborted_note}" if aborted_note else ""
    try:
        return body()
    except (UserError, *user_errors) as error:
        print(f"{prog}: error: {error}{note}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted{note}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print(f"{prog}: stopped by SIGTERM{note}", file=sys.stderr)
        return EXIT_SIGTERM
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

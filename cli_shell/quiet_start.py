"""Import this first in a console-script module: it quiets TensorFlow, XLA, absl and Google's
client libraries for this process' command line before any of them is imported (see
`cli_shell.quiet`). Importing a CLI module elsewhere (tests) only sets the environment and
warning filters; the stderr filter starts only for the installed `ctdeblur-*` commands.
"""

from cli_shell.quiet import apply_from_command_line

apply_from_command_line()

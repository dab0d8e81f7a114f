"""What every console script shares, beside `pipeline/` and `model/` and importing neither.

- `command`: `run_command` (user errors as one line, exit codes, Ctrl-C and SIGTERM) and the
  `UserError` base of every error a user can fix.
- `settings`: config dataclasses -> flags, preset < YAML (local or gs://) < flags, validation
  naming the setting.
- `quiet`: hides what TensorFlow, absl, Beam's worker relay and Google's client libraries print
  on their own (C++ logs, FutureWarnings) unless `--verbose` is given.
- `quiet_start`: imported first by each console-script module, applies `quiet` to the command
  line before TensorFlow or Beam is imported.
"""

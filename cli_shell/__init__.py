"""What every console script shares, beside `pipeline/` and `model/` and importing neither.

- `quiet`: hides what TensorFlow, absl, Beam's worker relay and Google's client libraries print
  on their own (C++ logs, FutureWarnings) unless `--verbose` is given.
- `quiet_start`: imported first by each console-script module, applies `quiet` to the command
  line before TensorFlow or Beam is imported.
"""

"""The error of the CT I/O layer."""

from __future__ import annotations


class CTInputError(ValueError):
    """A CT input that cannot be read as asked. `reason` is a short stable code (dead letters,
    counters); `detail` names the file or series and says what is wrong."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail

    def __reduce__(self):
        return CTInputError, (self.reason, self.detail)

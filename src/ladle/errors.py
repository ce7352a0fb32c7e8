"""One exception for every bad input, so the CLI can print one line and exit 2."""

from __future__ import annotations


class LadleError(Exception):
    """Bad input or usage: the message names the file and, where there is one, the tensor or field."""

    def __init__(self, message: str, *, file: object = None, key: str | None = None):
        self.file = None if file is None else str(file)
        self.key = key
        where = ": ".join(part for part in (self.file, f"tensor '{key}'" if key else None) if part)
        super().__init__(f"{where}: {message}" if where else message)

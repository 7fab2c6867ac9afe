"""One error type that says where the problem is and what to do about it.

Every stage and the scorer raise :class:`PipelineError` for problems a user can fix (bad input, bad params,
missing data). The CLI prints it as one readable message and exits with its code; it never shows a traceback
for these.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path


class ExitCode(IntEnum):
    """Process exit codes, documented in ``trd --help`` and the README."""

    OK = 0
    INTERNAL = 1  # a bug: please report it with the traceback
    USAGE = 2  # wrong command-line usage (Click's own code)
    INPUT = 3  # input missing, unreadable, corrupt, or not matching the contract
    MODEL = 4  # model missing, tampered with, or unsafe to load
    ROWS_REJECTED = 5  # the run finished but some rows were rejected (see the rejects file)
    CONFIG = 6  # params.yaml or a configs/ file is invalid
    OUTPUT = 7  # the output could not be written (disk full, no permission, storage gone)


@dataclass
class PipelineError(Exception):
    """A problem the user can fix, with its location (file, row, column) and a hint."""

    message: str
    file: str | Path | None = None
    row: int | None = None
    column: str | None = None
    hint: str | None = None
    exit_code: ExitCode = ExitCode.INPUT

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        where = []
        if self.file is not None:
            where.append(str(self.file))
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column '{self.column}'")
        text = f"{', '.join(where)}: {self.message}" if where else self.message
        if self.hint:
            text += f"\n  what to do: {self.hint}"
        return text


class ConfigError(PipelineError):
    """Invalid params.yaml or configs/ content."""

    def __init__(self, message: str, *, file: str | Path | None = None, hint: str | None = None) -> None:
        super().__init__(message, file=file, hint=hint, exit_code=ExitCode.CONFIG)


class ModelError(PipelineError):
    """A model that cannot or must not be loaded."""

    def __init__(self, message: str, *, file: str | Path | None = None, hint: str | None = None) -> None:
        super().__init__(message, file=file, hint=hint, exit_code=ExitCode.MODEL)

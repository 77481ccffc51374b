"""The exception tree. Every error flowtrail raises on purpose is a FlowtrailError.

FlowtrailError
├── InputError            bad input: a file, a row, a column, a flag (names which)
│   └── ContractError     a table breaks CONTRACT.md (missing column, wrong type, bad value)
├── CapabilityError       the machine lacks what is needed (root, CAP_BPF, BTF, a tracepoint)
└── ExportError           an exporter could not deliver (after its retries)
"""

from __future__ import annotations


class FlowtrailError(Exception):
    """Base of every error flowtrail raises on purpose."""


class InputError(FlowtrailError):
    """Bad input: the message names the file, row, column or flag at fault."""


class ContractError(InputError):
    """A table does not follow CONTRACT.md."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        row: int | None = None,
        column: str | None = None,
    ) -> None:
        self.path, self.row, self.column = path, row, column
        where = []
        if path is not None:
            where.append(f"file {path}")
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class CapabilityError(FlowtrailError):
    """Something the machine must provide is missing; the message says exactly what."""


class ExportError(FlowtrailError):
    """An exporter gave up delivering a batch."""

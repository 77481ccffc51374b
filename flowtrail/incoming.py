"""What a flowtrail server takes from senders: the contract, plus extra columns it can store.

The contract lets a flows batch carry extra columns, passed through untouched; the store
folds them into its `extra` JSON column and the Parquet sink writes them as they are. An
extra column either of them cannot hold would be acknowledged and then fail every write,
so it is refused up front, naming the column. The collector's door and a cluster node call
`validate_incoming`, so both accept exactly the same batches.

An extra column of a flows batch must:
- have a non-empty name without control characters, not starting with `_flowtrail` or
  `__flowtrail` (the servers' own working columns);
- not be named, in any letter case, like a stored column (the attributed table's columns,
  `extra`, `row_key`) or like another column of the batch (SQL names ignore case);
- be of a plain type: null, boolean, integer, float32/float64, decimal128, text, binary,
  date, time, timestamp, duration, or a dictionary of one of these (not string_view: the
  engine's take and filter have no kernel for it).

Extra columns of an `events` batch are not stored anywhere and are not restricted.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import pyarrow as pa

from flowtrail.errors import ContractError
from flowtrail.schema import ATTRIBUTED, FLOWS, Table
from flowtrail.tables import validate

RESERVED_PREFIXES = ("_flowtrail", "__flowtrail")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PLAIN: tuple[Callable[[pa.DataType], bool], ...] = (
    pa.types.is_null,
    pa.types.is_boolean,
    pa.types.is_integer,
    lambda t: t in (pa.float32(), pa.float64()),
    pa.types.is_decimal128,
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_binary,
    pa.types.is_large_binary,
    pa.types.is_fixed_size_binary,
    pa.types.is_date,
    pa.types.is_time,
    pa.types.is_timestamp,
    pa.types.is_duration,
)


@functools.cache
def _stored_names() -> frozenset[str]:
    """The store's column names, case-folded (imported here: the store imports this module)."""
    from flowtrail.store.columns import RESERVED

    return frozenset(n.lower() for n in (*ATTRIBUTED.names, *RESERVED))


class ExtraColumnError(ContractError):
    """An extra column the servers cannot store (its name or its type)."""


def validate_incoming(data: pa.Table, table: Table, *, path: str | None = None) -> pa.Table:
    """The contract's checks (`tables.validate`), then the extra-column rule above."""
    data = validate(data, table, path=path)
    if table.name == FLOWS.name:
        check_extra_columns(data, table, path=path)
    return data


def check_extra_columns(data: pa.Table, table: Table, *, path: str | None = None) -> None:
    known = set(table.names)
    seen: dict[str, str] = {}
    for field in data.schema:
        name = field.name
        folded = name.lower()
        if name in known:
            seen[folded] = name
            continue
        problem = _name_problem(name, folded, seen) or _type_problem(field.type)
        if problem:
            raise ExtraColumnError(f"extra column: {problem}", path=path, column=name)
        seen[folded] = name


def _name_problem(name: str, folded: str, seen: dict[str, str]) -> str:
    if not name:
        return "an empty name"
    if _CONTROL.search(name):
        return "its name has a control character"
    if name.startswith(RESERVED_PREFIXES):
        return f"names starting {RESERVED_PREFIXES[0]!r} are the servers' own"
    if folded in _stored_names():
        return "a name reserved by the store (its own columns; names ignore letter case)"
    if folded in seen:
        return f"named like column {seen[folded]!r} (names ignore letter case)"
    return ""


def _type_problem(dtype: pa.DataType) -> str:
    if isinstance(dtype, pa.BaseExtensionType):
        return f"type {dtype} (an extension type) cannot be stored"
    if pa.types.is_dictionary(dtype):
        inner = _type_problem(dtype.value_type)
        return f"dictionary of {inner}" if inner else ""
    if any(ok(dtype) for ok in _PLAIN):
        return ""
    return (
        f"type {dtype} cannot be stored; use null, boolean, integer, float32/64, decimal128, "
        "text, binary, date, time, timestamp or duration"
    )

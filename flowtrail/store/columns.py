"""The stored shape of an attributed flow, derived from flowtrail.schema (never restated).

Stored = every column of the contract's ATTRIBUTED table, in contract order, plus:

    extra    JSON text: the input's extra columns (passed through, as the contract asks),
             one object per row; null when the batch had none
    row_key  128-bit md5 of (exporter, flow_id, state, end_ns): what makes a write
             idempotent (the primary key in a DuckDB store kept idempotent per row; a
             store kept idempotent per batch has no such column)

Both are computed by DuckDB over an Arrow scan of the batch (vectorised, no Python per row).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from flowtrail.errors import ContractError
from flowtrail.schema import ATTRIBUTED, Column

EXTRA = "extra"
ROW_KEY = "row_key"
KEY_COLUMNS = ("exporter", "flow_id", "state", "end_ns")
RESERVED = (EXTRA, ROW_KEY)

_SQL_TYPES = {pa.string(): "VARCHAR", pa.int32(): "INTEGER", pa.int64(): "BIGINT"}


def sql_type(col: Column) -> str:
    return _SQL_TYPES[col.type]


def quote(name: str) -> str:
    """A SQL identifier, quoted so that any column name is safe."""
    return '"' + name.replace('"', '""') + '"'


def row_key_sql(alias: str = "b") -> str:
    """md5 over length-prefixed parts: no two different keys can render the same text."""
    ex, fid = f"{alias}.exporter", f"{alias}.flow_id"
    return (
        f"md5_number(concat(length({ex}), ':', {ex}, length({fid}), ':', {fid}, "
        f"{alias}.state, ':', {alias}.end_ns))"
    )


def extra_columns(table: pa.Table) -> list[str]:
    known = set(ATTRIBUTED.names)
    return [n for n in table.column_names if n not in known]


def projection_sql(table: pa.Table, alias: str = "b", *, with_key: bool = True) -> str:
    """SELECT list turning a batch (aliased `alias`) into the stored columns, in stored order.

    Optional contract columns the batch lacks become typed nulls; extra columns fold into
    `extra`. A batch whose extra column is named like a stored one is refused.
    """
    clash = [n for n in table.column_names if n in RESERVED]
    if clash:
        raise ContractError(f"column name(s) {clash} are reserved by the store")
    parts = []
    for col in ATTRIBUTED.columns:
        if col.name in table.column_names:
            parts.append(f"{alias}.{quote(col.name)}::{sql_type(col)} AS {quote(col.name)}")
        else:
            parts.append(f"NULL::{sql_type(col)} AS {quote(col.name)}")
    extras = extra_columns(table)
    if extras:
        fields = ", ".join(f"{_sql_string(n)}: {alias}.{quote(n)}" for n in extras)
        parts.append(f"to_json({{{fields}}})::VARCHAR AS {EXTRA}")
    else:
        parts.append(f"NULL::VARCHAR AS {EXTRA}")
    if with_key:
        parts.append(f"{row_key_sql(alias)} AS {ROW_KEY}")
    return ", ".join(parts)


def create_table_sql(name: str, *, with_key: bool = True) -> str:
    """The flows table; `with_key` adds `row_key` as its primary key (per-row idempotence)."""
    cols = [f"{quote(c.name)} {sql_type(c)}" for c in ATTRIBUTED.columns]
    cols.append(f"{EXTRA} VARCHAR")
    if with_key:
        cols.append(f"{ROW_KEY} UHUGEINT PRIMARY KEY")
    return f"CREATE TABLE IF NOT EXISTS {name} ({', '.join(cols)})"


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def query_arrow(con: Any, sql: str, params: list[Any] | None = None) -> pa.Table:
    """Run a query and return its result as an Arrow table (relation API: no extra copy)."""
    rel = con.sql(sql, params=params) if params else con.sql(sql)
    # DuckDB 2 renamed fetch_arrow_table to to_arrow_table.
    method = getattr(rel, "to_arrow_table", None) or rel.fetch_arrow_table
    table = method()
    assert isinstance(table, pa.Table)
    return table

"""Printing query results: an aligned text table, JSON (an array of objects) or CSV.

JSON and CSV keep times as the contract has them (ns since the epoch) for programs; the table
is for people and shows them as UTC (2026-12-07T19:08:01.123Z), its header without `_ns`.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pyarrow as pa

from flowtrail.schema import TABLES, Kind
from flowtrail.units import format_time_ns
from flowtrail.vocabulary import FORMATS as FORMATS

# Points in time (not durations such as a wait): the contract's time columns.
TIME_COLUMNS = frozenset(
    {c.name for t in TABLES.values() for c in t.columns if c.kind is Kind.TIME}
    | {"last_end_ns", "last_received_ns"}  # the exporters query's
)


def render(table: pa.Table, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(table.to_pylist(), indent=1) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(table.column_names)
        for row in table.to_pylist():
            writer.writerow(["" if v is None else v for v in row.values()])
        return out.getvalue()
    if fmt == "table":
        return _text_table(table)
    raise ValueError(f"unknown format {fmt!r}")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if abs(value) < 1e15 else f"{value:.6g}"
    return str(value)


def _is_time(field: pa.Field) -> bool:
    return field.name in TIME_COLUMNS and pa.types.is_integer(field.type)


def _text_table(table: pa.Table) -> str:
    times = [_is_time(f) for f in table.schema]
    names = [
        n.removesuffix("_ns") if t else n for n, t in zip(table.column_names, times, strict=True)
    ]
    rows = [
        [
            format_time_ns(v) if t and v is not None else _cell(v)
            for v, t in zip(row.values(), times, strict=True)
        ]
        for row in table.to_pylist()
    ]
    numeric = [
        (pa.types.is_integer(f.type) or pa.types.is_floating(f.type)) and not t
        for f, t in zip(table.schema, times, strict=True)
    ]
    widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]

    def line(cells: list[str]) -> str:
        parts = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(cells, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(names), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    if not rows:
        out.append("(no rows)")
    return "\n".join(out) + "\n"

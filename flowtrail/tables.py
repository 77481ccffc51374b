"""Reading and writing the contract's tables: strict on the way in, atomic on the way out.

Input may be Parquet, CSV or JSON Lines (by file suffix). Known columns are cast to their
contract type; extra columns pass through untouched. Every problem raises ContractError naming
the file, the row (1-based, header not counted) and the column.
"""

from __future__ import annotations

import functools
import ipaddress
import os
from collections.abc import Collection, Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from flowtrail.errors import ContractError
from flowtrail.schema import Column, Kind, Table

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv",)
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")

_INT_RE = r"^[+-]?[0-9]+$"


def read_table(
    path: str | os.PathLike[str], table: Table, *, dictionaries: Collection[str] = ()
) -> pa.Table:
    """Read one contract table from a file and validate it; raises ContractError.

    `dictionaries`: text columns to keep dictionary-encoded, as Parquet stores columns of
    repeating values (names, addresses, enums): no string is made per row, and validation
    checks each distinct value once. Other formats, and other columns, are read as text.
    """
    p = Path(path)
    name = str(p)
    if not p.exists():
        raise ContractError("no such file", path=name)
    if p.is_dir():
        raise ContractError("is a directory, expected a file", path=name)
    suffix = p.suffix.lower()
    try:
        if suffix in PARQUET_SUFFIXES:
            data = pq.read_table(p, read_dictionary=list(dictionaries) or None)
            if dictionaries:
                data = data.unify_dictionaries()  # one dictionary per column, not per row group
        elif suffix in CSV_SUFFIXES:
            # Known columns are read as text and cast here, so a bad value is reported by row.
            # Only an empty cell is null: "NA", "null", "NaN" are values (a workload may be
            # called NA; NaN in an integer column is an error, not a missing value).
            text_types = {c.name: pa.string() for c in table.columns}
            data = pacsv.read_csv(
                p,
                convert_options=pacsv.ConvertOptions(
                    column_types=text_types, null_values=[""], strings_can_be_null=True
                ),
            )
        elif suffix in JSONL_SUFFIXES:
            data = pajson.read_json(p)
        else:
            raise ContractError(
                f"unknown file type {suffix!r}: use .parquet, .csv or .jsonl", path=name
            )
    except ContractError:
        raise
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise ContractError(f"cannot read {table.name} table: {exc}", path=name) from exc
    return validate(data, table, path=name, dictionaries=dictionaries)


def validate(
    data: pa.Table, table: Table, *, path: str | None = None, dictionaries: Collection[str] = ()
) -> pa.Table:
    """Cast known columns to contract types and check their values; extra columns untouched.

    Text columns named in `dictionaries` that are dictionary-encoded text stay so (each
    distinct value checked once); any other dictionary column is decoded.
    """
    names = data.column_names
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ContractError(f"duplicate column(s) {sorted(dupes)}", path=path)
    missing = [c.name for c in table.required if c.name not in names]
    if missing:
        raise ContractError(
            f"missing required column(s) {missing} of the {table.name} table", path=path
        )
    for col in table.columns:
        if col.name not in names:
            continue
        idx = names.index(col.name)
        given = data.column(idx)
        if col.name in dictionaries and _text_dictionary(given, col):
            _check_values(given, col, path)
            field = pa.field(col.name, given.type, nullable=True)
            if data.schema.field(idx) != field:
                data = data.set_column(idx, field, given)
            continue
        arr = _coerce(given, col, path)
        _check_values(arr, col, path)
        if arr is not given or data.schema.field(idx) != col.field:
            data = data.set_column(idx, col.field, arr)
    for earlier, later in table.ordered:
        _check_order(data, earlier, later, path)
    return data


def _text_dictionary(arr: pa.ChunkedArray, col: Column) -> bool:
    """Whether `arr` is dictionary-encoded text of a text column, with no null among the
    dictionary's values (a row is null only by its index: null_count tells)."""
    return (
        pa.types.is_dictionary(arr.type)
        and pa.types.is_string(col.type)
        and arr.type.value_type == col.type
        and all(chunk.dictionary.null_count == 0 for chunk in arr.chunks)
    )


def _check_order(data: pa.Table, earlier: str, later: str, path: str | None) -> None:
    """Refuse rows whose `later` value is below their `earlier` one (nulls are not compared)."""
    if earlier not in data.column_names or later not in data.column_names:
        return
    first, last = data.column(earlier), data.column(later)
    backwards = pc.less(last, first)
    if not pc.any(backwards).as_py():
        return
    m = pc.fill_null(backwards, False).to_numpy(zero_copy_only=False)
    row = int(np.flatnonzero(m)[0])
    raise ContractError(
        f"{last[row].as_py()} is before {earlier} {first[row].as_py()}",
        path=path, row=row + 1, column=later,
    )  # fmt: skip


def _coerce_bool(arr: pa.ChunkedArray, col: Column, path: str | None) -> pa.ChunkedArray:
    """true/false, or the integers 1/0 (CSV readers may give either)."""
    if pa.types.is_integer(arr.type):
        bad = pc.invert(pc.fill_null(pc.is_in(arr, value_set=pa.array([0, 1], arr.type)), True))
        _raise_first(bad, "expected true or false (or 1/0)", path, col, arr)
        return arr.cast(pa.bool_())
    raise ContractError(f"expected true or false, got {arr.type}", path=path, column=col.name)


def _coerce(arr: pa.ChunkedArray, col: Column, path: str | None) -> pa.ChunkedArray:
    have, want = arr.type, col.type
    if have == want:
        return arr
    if pa.types.is_null(have):
        return arr.cast(want)
    if pa.types.is_large_string(have) or pa.types.is_string_view(have):
        arr = arr.cast(pa.string())
        have = arr.type
        if have == want:
            return arr
    if pa.types.is_dictionary(have):
        arr = arr.cast(have.value_type)
        return _coerce(arr, col, path)
    if pa.types.is_string(want):
        raise ContractError(f"expected text, got {have}", path=path, column=col.name)
    if pa.types.is_boolean(want):
        return _coerce_bool(arr, col, path)
    # Integer columns.
    if pa.types.is_string(have):
        text = pc.utf8_trim_whitespace(arr)
        bad = pc.invert(pc.fill_null(pc.match_substring_regex(text, _INT_RE), True))
        _raise_first(bad, f"expected an integer ({want})", path, col, arr)
        arr = text
    elif not pa.types.is_integer(have):
        raise ContractError(f"expected an integer ({want}), got {have}", path=path, column=col.name)
    try:
        return arr.cast(want)
    except (pa.ArrowInvalid, OverflowError):
        # Integer text or another integer type: the only way the cast fails is a value out
        # of range. No float detour: it rounds, and fails itself beyond 2**53.
        row = _first_failing_cast(arr, want)
        raise ContractError(
            f"value out of range for {want} (value {arr[row].as_py()!r})",
            path=path, row=row + 1, column=col.name,
        ) from None  # fmt: skip


def _first_failing_cast(arr: pa.ChunkedArray, want: pa.DataType) -> int:
    """Index of the first value that does not cast to `want` (one exists): halving the
    range keeps the work linear, without a Python object per row."""
    lo, hi = 0, len(arr)  # the first failure is in [lo, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            arr.slice(lo, mid - lo).cast(want)
        except (pa.ArrowInvalid, OverflowError):
            hi = mid
        else:
            lo = mid
    return lo


def _check_values(arr: pa.ChunkedArray, col: Column, path: str | None) -> None:
    if col.required and arr.null_count:
        _raise_first(pc.is_null(arr), "required value is missing (null)", path, col, arr)
    if pa.types.is_dictionary(arr.type):
        _check_distinct(arr, col, path)
    elif col.kind in (Kind.PORT, Kind.TIME, Kind.COUNT):
        # One min/max pass; the row at fault is looked for only when there is one.
        low, high = _min_max(arr)
        if low is None or high is None:  # all null
            return
        if col.kind is Kind.PORT and (low < 0 or high > 65535):
            bad = pc.or_(pc.less(arr, 0), pc.greater(arr, 65535))
            _raise_first(bad, "port must be 0..65535", path, col, arr)
        elif low < 0:
            _raise_first(pc.less(arr, 0), "must not be negative", path, col, arr)
    elif col.kind is Kind.ENUM:
        bad = pc.invert(pc.is_in(arr, value_set=_choice_set(col.choices)))
        bad = pc.and_(bad, pc.is_valid(arr))
        _raise_first(bad, _choice_problem(col), path, col, arr)
    elif col.kind is Kind.IP:
        bad_values = invalid_ips(arr)
        if bad_values:
            value = next(iter(bad_values))
            mask = pc.is_in(arr, value_set=pa.array([value]))
            _raise_first(mask, _ip_problem(value), path, col, arr)
    elif col.kind is Kind.CIDR:
        for value in pc.unique(arr.drop_null()).to_pylist():
            problem = _cidr_problem(value)
            if problem:
                mask = pc.is_in(arr, value_set=pa.array([value]))
                _raise_first(mask, problem, path, col, arr)


def _check_distinct(arr: pa.ChunkedArray, col: Column, path: str | None) -> None:
    """_check_values of dictionary-encoded text: each dictionary value is checked once; where
    some are bad, the first row holding one is reported, as for plain text (a value no row
    holds is no error)."""
    if col.kind not in (Kind.ENUM, Kind.IP, Kind.CIDR):
        return
    values = _dictionary_values(arr)
    if col.kind is Kind.ENUM:
        bad = values.filter(pc.invert(pc.is_in(values, value_set=_choice_set(col.choices))))
    elif col.kind is Kind.IP:
        bad = pa.array(invalid_ips(values), pa.string())
    else:
        bad = pa.array([v for v in values.to_pylist() if _cidr_problem(v)], pa.string())
    if not len(bad):
        return
    m = pc.fill_null(pc.is_in(arr, value_set=bad), False).to_numpy(zero_copy_only=False)
    if not m.any():
        return
    row = int(np.flatnonzero(m)[0])
    value = arr[row].as_py()
    problem = {Kind.ENUM: _choice_problem(col), Kind.IP: _ip_problem(value)}
    message = problem.get(col.kind) or _cidr_problem(value)
    raise ContractError(f"{message} (value {value!r})", path=path, row=row + 1, column=col.name)


def _dictionary_values(arr: pa.ChunkedArray) -> pa.Array:
    """The distinct values of a dictionary-encoded column's dictionaries (chunks read from one
    file share theirs: each is taken once)."""
    parts: list[pa.Array] = []
    for chunk in arr.chunks:
        if not parts or not chunk.dictionary.equals(parts[-1]):
            parts.append(chunk.dictionary)
    return pc.unique(pa.chunked_array(parts, arr.type.value_type))


def _choice_problem(col: Column) -> str:
    return "must be " + " or ".join(repr(c) for c in col.choices)


@functools.cache
def _choice_set(choices: tuple[str, ...]) -> pa.Array:
    """Made once: converting Python values to Arrow tries to import dateutil every time
    (~0.25 ms per call where it is not installed), which is per batch here."""
    return pa.array(choices, pa.string())


def _min_max(arr: pa.ChunkedArray) -> tuple[int | None, int | None]:
    mm = pc.min_max(arr)
    return mm["min"].as_py(), mm["max"].as_py()


def invalid_ips(values: pa.Array | pa.ChunkedArray) -> list[str]:
    """The distinct values that are not canonical IPv4 / IPv6 text, in first-seen order.

    Canonical IPv4 (nearly every row) is recognised in one compiled pass and needs no more;
    only the rest are checked one distinct value at a time.
    """
    from flowtrail.ipv4text import parse_ipv4  # numba: only where addresses are checked

    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    rest = []
    for chunk in chunks:
        _, ok = parse_ipv4(chunk)
        if not ok.all():
            rest.append(chunk.filter(pa.array(~ok)).drop_null())
    if not rest:
        return []
    others = pc.unique(pa.chunked_array(rest, values.type)).to_pylist()
    return [v for v in others if _ip_problem(v)]


def _ip_problem(value: str) -> str:
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return f"{value!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return f"{value!r}: write an IPv4-mapped address as IPv4 ({ip.ipv4_mapped})"
    if str(ip) != value:
        return f"{value!r} is not in canonical form (expected {ip})"
    return ""


def _cidr_problem(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        return f"{value!r} is not a valid prefix: {exc}"
    return ""


def _raise_first(
    mask: pa.ChunkedArray | pa.Array,
    message: str,
    path: str | None,
    col: Column,
    values: pa.ChunkedArray,
) -> None:
    m = pc.fill_null(mask, False)
    if not pc.any(m).as_py():
        return
    row = int(np.flatnonzero(m.to_numpy(zero_copy_only=False))[0])
    shown = values[row].as_py() if isinstance(values, pa.ChunkedArray) else None
    raise ContractError(f"{message} (value {shown!r})", path=path, row=row + 1, column=col.name)


# Rows per Parquet row group: pyarrow's default, and the unit a table with dictionary columns
# is decoded in while it is written.
ROW_GROUP_ROWS = 1 << 20


def write_table(data: pa.Table, path: str | os.PathLike[str]) -> None:
    """Write Parquet atomically: a reader never sees a half-written file at `path`.

    Dictionary-encoded columns are written as their values (a reader gets the types the
    contract gives them), decoded one row group at a time, so the whole table is never held
    as text.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    plain = decoded_schema(data.schema)
    try:
        if plain == data.schema:
            pq.write_table(data, tmp, compression="snappy")
        else:
            with pq.ParquetWriter(tmp, plain, compression="snappy") as writer:
                for start in range(0, max(data.num_rows, 1), ROW_GROUP_ROWS):
                    part = data.slice(start, ROW_GROUP_ROWS).cast(plain)
                    writer.write_table(part, row_group_size=ROW_GROUP_ROWS)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()


def decoded_schema(schema: pa.Schema) -> pa.Schema:
    """`schema` with each dictionary column typed as its values."""
    fields = [
        f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in schema
    ]
    return pa.schema(fields, metadata=schema.metadata)


def write_batches(
    batches: Iterable[pa.RecordBatch], schema: pa.Schema, path: str | os.PathLike[str]
) -> int:
    """Stream record batches into one Parquet file atomically; returns rows written."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    rows = 0
    try:
        with pq.ParquetWriter(tmp, schema, compression="snappy") as writer:
            for batch in batches:
                writer.write_batch(batch)
                rows += batch.num_rows
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return rows

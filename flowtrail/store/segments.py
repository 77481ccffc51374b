"""Segment files: each named batch of a per-batch store as one immutable Parquet file.

A write builds the stored columns in Arrow (no per-row work in Python, no DuckDB append),
writes them under a hidden temporary name, fsyncs, renames into the store's segment
directory and fsyncs the directory; only then does the caller commit the file's name in the
DuckDB catalog. So a committed segment is always a whole, durable file, and a file the
catalog does not name (a crash between rename and commit) is removed at the next open.

Why Parquet rather than a DuckDB table append: DuckDB's append costs 3.5-4.4 µs per row into
a file on this kind of CPU (docs/benchmarks.md, "Store writes"); a Parquet file of the same
rows costs well under 1 µs, and DuckDB reads the files back in place.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flowtrail.errors import ContractError
from flowtrail.schema import ATTRIBUTED
from flowtrail.store.columns import EXTRA, RESERVED, extra_columns

SUFFIX = ".parquet"
TEMP_PREFIX = ".tmp-"
# Columns with few distinct values per batch: dictionary-encoded (smaller, and DuckDB scans
# them as dictionaries). Near-unique ones (flow ids, ports, times, counters) are not: a
# dictionary there only costs time.
DICTIONARY_COLUMNS = (
    "exporter", "region", "local_ip", "remote_ip", "nat_remote_ip", "direction", "state",
    "local_workload", "remote_workload", "remote_source", "outcome", EXTRA,
)  # fmt: skip
# Statistics only where a reader prunes by them (the time window); computing them for every
# text column was a fifth of a write.
STATISTICS_COLUMNS = ["end_ns", "start_ns"]
# DuckDB's own row group size: a reader's threads split a scan by row groups, and a window
# skips row groups by their end_ns statistics, as in a DuckDB table.
ROW_GROUP_ROWS = 122_880
# Up to this many distinct values of an extra column are rendered as JSON in Python; more go
# through DuckDB (a per-row column: one vectorised query beats a Python loop).
PYTHON_JSON_MAX = 256
STORED_SCHEMA = pa.schema(
    [pa.field(c.name, c.type) for c in ATTRIBUTED.columns] + [pa.field(EXTRA, pa.string())]
)


def segment_directory(db_path: Path) -> Path:
    """Where a store's segment files live: beside its database file."""
    return db_path.with_name(db_path.name + ".segments")


def stored_table(table: pa.Table, scratch: duckdb.DuckDBPyConnection) -> pa.Table:
    """A batch in the stored shape: every contract column in contract order with its contract
    type (absent optional columns as nulls), the extra columns folded into one JSON text
    column `extra` (DuckDB's `to_json` over those columns only, on a cursor of `scratch`)."""
    clash = [n for n in table.column_names if n in RESERVED]
    if clash:
        raise ContractError(f"column name(s) {clash} are reserved by the store")
    n = table.num_rows
    columns: list[pa.ChunkedArray] = []
    for field in STORED_SCHEMA:
        if field.name == EXTRA:
            columns.append(_extra_json(table, scratch))
        elif field.name in table.column_names:
            col = table.column(field.name)
            if col.type != field.type:
                try:
                    col = col.cast(field.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise ContractError(
                        f"store write: column {field.name!r} ({col.type}) cannot be stored as "
                        f"{field.type}: {exc}"
                    ) from exc
            columns.append(col)
        else:
            columns.append(pa.chunked_array([pa.nulls(n, field.type)]))
    # `extra` may be dictionary-encoded text: the same column to every reader of the file.
    return pa.Table.from_arrays(columns, names=STORED_SCHEMA.names)


def _extra_json(table: pa.Table, scratch: duckdb.DuckDBPyConnection) -> pa.ChunkedArray:
    """Each row's extras as a JSON object, exactly as DuckDB's `to_json` of a struct of them
    renders it. Extras repeat (a reason code, a tag), so each column is dictionary-encoded
    and only its distinct values are rendered (by DuckDB, one `"name":value` fragment per
    value); the row's object is the fragments taken by index and joined."""
    extras = extra_columns(table)
    if not extras:
        return pa.chunked_array([pa.nulls(table.num_rows, pa.string())])
    parts = [_json_fragments(table.column(n), n, scratch) for n in extras]
    if len(parts) == 1:  # the usual case: the objects stay a dictionary, nothing per row
        indices, fragments = parts[0]
        objects = pc.binary_join_element_wise("{", fragments, "}", "")
        return pa.chunked_array([pa.DictionaryArray.from_arrays(indices, objects)])
    texts = [pc.take(fragments, indices) for indices, fragments in parts]
    out = pc.binary_join_element_wise("{", pc.binary_join_element_wise(*texts, ","), "}", "")
    return pa.chunked_array([out])


def _json_fragments(
    column: pa.ChunkedArray, name: str, scratch: duckdb.DuckDBPyConnection
) -> tuple[pa.Array, pa.Array]:
    """The column dictionary-encoded: (indices, `"name":value` per distinct value), the value
    rendered as DuckDB's to_json renders it (a null as null)."""
    encoded = pc.dictionary_encode(column, null_encoding="encode").combine_chunks()
    values = encoded.dictionary
    if len(values) <= PYTHON_JSON_MAX and _python_renders(values.type):
        # Few values of a type Python's json renders exactly as DuckDB does (tested against
        # it): no DuckDB query per write.
        key = json.dumps(name, ensure_ascii=False)
        texts = [f"{key}:{json.dumps(v, ensure_ascii=False)}" for v in values.to_pylist()]
        return encoded.indices, pa.array(texts, pa.string())
    con = scratch.cursor()  # one per call: writers on several threads
    try:
        con.register("_extras", pa.table({"v": values}))
        key = name.replace("'", "''")
        rendered = _to_arrow(con.sql(f"SELECT to_json({{'{key}': v}})::VARCHAR AS j FROM _extras"))
    finally:
        con.close()
    # {"name":value} -> "name":value
    text = rendered.column(0).combine_chunks()
    return encoded.indices, pc.utf8_slice_codeunits(text, 1, -1)


def _python_renders(t: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_integer(t)
        or pa.types.is_boolean(t)
        or pa.types.is_null(t)
    )


def _to_arrow(rel: duckdb.DuckDBPyRelation) -> pa.Table:
    # DuckDB 2 renamed fetch_arrow_table to to_arrow_table.
    method = getattr(rel, "to_arrow_table", None) or rel.fetch_arrow_table
    table = method()
    assert isinstance(table, pa.Table)
    return table


def write_segment(directory: Path, table: pa.Table) -> tuple[str, tuple[int, int, int, int]]:
    """Write a stored-shape table as a new segment file, durably; returns (file name, (min
    end_ns, max end_ns, min start_ns, max start_ns)). The file appears whole under its name
    or not at all."""
    name = f"{uuid.uuid4().hex}{SUFFIX}"
    tmp = directory / f"{TEMP_PREFIX}{name}"
    try:
        pq.write_table(
            table,
            tmp,
            compression="none",
            use_dictionary=list(DICTIONARY_COLUMNS),
            write_statistics=STATISTICS_COLUMNS,
            row_group_size=ROW_GROUP_ROWS,
        )
        _fsync(tmp)
        os.replace(tmp, directory / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(directory)
    end, start = pc.min_max(table.column("end_ns")), pc.min_max(table.column("start_ns"))
    span = (end["min"].as_py(), end["max"].as_py(), start["min"].as_py(), start["max"].as_py())
    return name, (int(span[0]), int(span[1]), int(span[2]), int(span[3]))


def read_segments(directory: Path, files: Iterable[str]) -> pa.Table:
    """The rows of several segments, in order (for merging them)."""
    tables = []
    for f in files:
        # Text kept as dictionaries (as written): no per-row strings made, and the merged
        # file is written from dictionaries again. One thread: merging runs beside writes.
        got = pq.read_table(directory / f, read_dictionary=DICTIONARY_COLUMNS, use_threads=False)
        # A segment written under an older contract lacks the columns added since: nulls.
        tables.append(
            pa.Table.from_arrays(
                [
                    got.column(c.name)
                    if c.name in got.column_names
                    else pa.nulls(got.num_rows, pa.dictionary(pa.int32(), c.type))
                    if c.name in DICTIONARY_COLUMNS
                    else pa.nulls(got.num_rows, c.type)
                    for c in STORED_SCHEMA
                ],
                names=STORED_SCHEMA.names,
            )
        )
    # Dictionaries of the parts are unified, the indices remapped (no text copied per row).
    return pa.concat_tables(tables, promote_options="permissive").unify_dictionaries()


def stray_files(directory: Path, known: set[str]) -> list[Path]:
    """Files in the segment directory that no committed segment names: temporary files and
    segments whose commit never happened (a crash in between)."""
    if not directory.is_dir():
        return []
    return [p for p in directory.iterdir() if p.is_file() and p.name not in known]


def scan_sql(directory: Path, files: list[str]) -> str:
    """A read_parquet over the given segments (absolute paths), all of one schema."""
    paths = ", ".join("'" + str(directory / f).replace("'", "''") + "'" for f in files)
    return f"read_parquet([{paths}])"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

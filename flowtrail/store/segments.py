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
from flowtrail.store.columns import EXTRA, extra_columns, quote

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
    return pa.Table.from_arrays(columns, schema=STORED_SCHEMA)


def _extra_json(table: pa.Table, scratch: duckdb.DuckDBPyConnection) -> pa.ChunkedArray:
    extras = extra_columns(table)
    if not extras:
        return pa.chunked_array([pa.nulls(table.num_rows, pa.string())])
    fields = ", ".join(f"'{n.replace(chr(39), chr(39) * 2)}': {quote(n)}" for n in extras)
    con = scratch.cursor()  # one per call: writers on several threads
    try:
        con.register("_extras", table.select(extras))
        got = con.sql(f"SELECT to_json({{{fields}}})::VARCHAR AS j FROM _extras")
        return _to_arrow(got).column(0)
    finally:
        con.close()


def _to_arrow(rel: duckdb.DuckDBPyRelation) -> pa.Table:
    # DuckDB 2 renamed fetch_arrow_table to to_arrow_table.
    method = getattr(rel, "to_arrow_table", None) or rel.fetch_arrow_table
    table = method()
    assert isinstance(table, pa.Table)
    return table


def write_segment(directory: Path, table: pa.Table) -> tuple[str, int, int]:
    """Write a stored-shape table as a new segment file, durably; returns (file name, min
    end_ns, max end_ns). The file appears whole under its name or not at all."""
    name = f"{uuid.uuid4().hex}{SUFFIX}"
    tmp = directory / f"{TEMP_PREFIX}{name}"
    try:
        pq.write_table(
            table,
            tmp,
            compression="none",
            use_dictionary=list(DICTIONARY_COLUMNS),
            write_statistics=STATISTICS_COLUMNS,
            row_group_size=max(1, table.num_rows),
        )
        _fsync(tmp)
        os.replace(tmp, directory / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(directory)
    bounds = pc.min_max(table.column("end_ns"))
    return name, int(bounds["min"].as_py()), int(bounds["max"].as_py())


def read_segments(directory: Path, files: Iterable[str]) -> pa.Table:
    """The rows of several segments, in order (for merging them)."""
    tables = [pq.read_table(directory / f, schema=STORED_SCHEMA) for f in files]
    return pa.concat_tables(tables).combine_chunks()


def stray_files(directory: Path, known: set[str]) -> list[Path]:
    """Files in the segment directory that no committed segment names: temporary files and
    segments whose commit never happened (a crash in between)."""
    if not directory.is_dir():
        return []
    return [p for p in directory.iterdir() if p.is_file() and p.name not in known]


def scan_sql(directory: Path, files: list[str]) -> str | None:
    """A read_parquet over the given segments (absolute paths), or None for none."""
    if not files:
        return None
    paths = ", ".join("'" + str(directory / f).replace("'", "''") + "'" for f in files)
    return f"read_parquet([{paths}], union_by_name = true)"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""The DuckDB catalog of a segment store (store format 3): which segment files hold rows,
which batch names were stored, and the `flows` view that reads them.

    flows_table          native DuckDB table: rows stored before segments (a format-2 store
                         migrated in place keeps its rows here); empty in a new store
    flowtrail_segments   one row per committed segment file: seq, file, rows, min/max end_ns
                         and start_ns (a windowed query reads only the segments it overlaps)
    flowtrail_retired    files no longer in the view (merged or expired), unlinked after a
                         grace period so that a query already running can finish reading them
    flowtrail_batches    batch names, as in format 2
    flows (view)         flows_table and every committed segment, rows with end_ns before
                         the retention cut hidden

A write commits its segment's row, its batch name and the new view in one transaction, so a
reader sees a batch whole or not at all, and `has(name)` holds exactly when its rows are
visible.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Protocol

import duckdb

from flowtrail.schema import CONTRACT_VERSION
from flowtrail.store.columns import create_table_sql
from flowtrail.store.segments import scan_sql

FLOWS_VIEW = "flows"
BASE_TABLE = "flows_table"
SEGMENTS_TABLE = "flowtrail_segments"
RETIRED_TABLE = "flowtrail_retired"
VISIBLE_FROM = "visible_from_ns"  # meta key: the retention cut (rows before it are hidden)


class Segment(NamedTuple):
    seq: int  # write order
    file: str  # name in the segment directory
    rows: int
    # The span of its rows' times: a query's window (on end_ns) opens only the segments
    # whose span overlaps it.
    min_end_ns: int
    max_end_ns: int
    min_start_ns: int
    max_start_ns: int
    contract_version: int  # its columns: the contract's at the time of writing


class Span(Protocol):
    """A query's window: rows with since_ns <= end_ns < until_ns (flowtrail.query.queries)."""

    @property
    def since_ns(self) -> int: ...
    @property
    def until_ns(self) -> int: ...


def lay_out(con: duckdb.DuckDBPyConnection, meta_table: str) -> None:
    """The segment store's own tables (inside the caller's transaction)."""
    con.execute(create_table_sql(BASE_TABLE, with_key=False))
    con.execute(
        f"CREATE TABLE IF NOT EXISTS {SEGMENTS_TABLE} (seq BIGINT PRIMARY KEY, "
        "file VARCHAR UNIQUE, rows BIGINT, min_end_ns BIGINT, max_end_ns BIGINT, "
        "min_start_ns BIGINT, max_start_ns BIGINT, contract_version INTEGER)"
    )
    con.execute(f"CREATE TABLE IF NOT EXISTS {RETIRED_TABLE} (file VARCHAR, retired_ns BIGINT)")
    con.execute(f"INSERT OR IGNORE INTO {meta_table} VALUES ('{VISIBLE_FROM}', NULL)")


def segments(con: duckdb.DuckDBPyConnection) -> list[Segment]:
    """Committed segments in write order."""
    columns = ", ".join(Segment._fields)
    rows = con.execute(f"SELECT {columns} FROM {SEGMENTS_TABLE} ORDER BY seq").fetchall()
    return [Segment(int(r[0]), str(r[1]), *(int(v) for v in r[2:])) for r in rows]


def insert(con: duckdb.DuckDBPyConnection, seg: Segment) -> None:
    columns = ", ".join(Segment._fields)
    marks = ", ".join("?" for _ in Segment._fields)
    con.execute(f"INSERT INTO {SEGMENTS_TABLE} ({columns}) VALUES ({marks})", [*seg])


def in_window(segs: list[Segment], window: Span) -> list[Segment]:
    """The segments that can hold rows of `window`: their end_ns span overlaps it."""
    return [s for s in segs if s.max_end_ns >= window.since_ns and s.min_end_ns < window.until_ns]


def visible_from(con: duckdb.DuckDBPyConnection, meta_table: str) -> int | None:
    rows = con.execute(f"SELECT value FROM {meta_table} WHERE key = ?", [VISIBLE_FROM]).fetchall()
    return int(rows[0][0]) if rows and rows[0][0] is not None else None


def view_sql(
    directory: Path,
    segs: list[Segment],
    cut: int | None,
    *,
    temp: bool = False,
    name: str = FLOWS_VIEW,
) -> str:
    """CREATE VIEW `name` (default: flows) over the native table and the given segments
    (absolute paths under `directory`: where the segments are now, wherever the store was
    written), rows before the retention cut `cut` hidden.

    One read_parquet per contract version: within one, every file has the same columns, so
    DuckDB reads one file's schema to bind the view (with `union_by_name` it would read
    every file's, per write); across versions, UNION ALL BY NAME gives older files the
    columns added since as nulls.

    Files are listed newest first (by max end_ns): DuckDB reads them roughly in that order,
    so a newest-first top-N (the flows page, its floor) fills with the newest rows early and
    rejects the rest cheaply; oldest first it kept replacing its heap (about 3x the CPU)."""
    relation = f"SELECT * FROM {BASE_TABLE}"
    newest_first = sorted(segs, key=lambda s: (-s.max_end_ns, s.seq))
    for version in sorted({s.contract_version for s in segs}):
        files = [s.file for s in newest_first if s.contract_version == version]
        scan = scan_sql(directory, files)
        relation += f" UNION ALL BY NAME SELECT * FROM {scan}"
    where = f" WHERE end_ns >= {int(cut)}" if cut is not None else ""
    kind = "TEMP VIEW" if temp else "VIEW"
    return f"CREATE OR REPLACE {kind} {name} AS SELECT * FROM ({relation}){where}"


def stored_view_sql(
    con: duckdb.DuckDBPyConnection, directory: Path, meta_table: str, *, temp: bool = False
) -> str:
    """view_sql for what the catalog holds now."""
    return view_sql(directory, segments(con), visible_from(con, meta_table), temp=temp)


def new_segment(seq: int, file: str, rows: int, span: tuple[int, int, int, int]) -> Segment:
    """A segment written now; `span` is (min end_ns, max end_ns, min start_ns, max start_ns)."""
    return Segment(seq, file, rows, *span, CONTRACT_VERSION)


def migrate_batch_table(con: duckdb.DuckDBPyConnection, meta_table: str) -> None:
    """A format-2 store (rows in a native `flows` table) becomes format 3 in place: its rows
    stay where they are, as the view's native part (inside the caller's transaction)."""
    con.execute(f"ALTER TABLE {FLOWS_VIEW} RENAME TO {BASE_TABLE}")
    lay_out(con, meta_table)
    con.execute(f"UPDATE {meta_table} SET value = '3' WHERE key = 'store_format'")

"""The embedded store: attributed flows in one DuckDB database file (and, for a store kept
idempotent per batch, the Parquet segment files beside it).

Why DuckDB: one file, no server, columnar storage that answers the dependency and top-talker
aggregations quickly, Arrow in and out without copying row by row, and ACID commits with a
write-ahead log, so a write that returned survives kill -9 and a half-done write vanishes.

Writes are idempotent, one of two ways, fixed when the file is created:
- per row (store format 1): the primary key is a 128-bit hash of (exporter, flow_id, state,
  end_ns), and rows whose key is already stored (or repeated inside the batch) are skipped;
- per batch (store format 3): a write names its batch; its rows become one immutable Parquet
  segment file (flowtrail/store/segments.py), and the file, the name and the `flows` view
  over every segment are committed in one DuckDB transaction (flowtrail/store/catalog.py);
  a batch whose name is stored is skipped whole. No key is computed or indexed per row and
  DuckDB appends nothing per row. The writer (the collector) records the name in its own log
  before writing, so after a crash it knows exactly which batches were stored. Format 2 (the
  same idempotence, rows appended to a DuckDB table) is migrated to 3 in place on opening.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import duckdb
import pyarrow as pa

from flowtrail.errors import InputError
from flowtrail.incoming import check_extra_columns
from flowtrail.schema import ATTRIBUTED, CONTRACT_VERSION
from flowtrail.store import catalog, segments
from flowtrail.store.columns import (
    EXTRA,
    create_table_sql,
    projection_sql,
    query_arrow,
    quote,
    sql_type,
)
from flowtrail.tables import validate

FLOWS_TABLE = "flows"
WINDOW_VIEW = "flows_in_window"  # a reader's temporary view: the segments its window overlaps
META_TABLE = "flowtrail_meta"
BATCHES_TABLE = "flowtrail_batches"  # names of the batches stored, with when
DEFAULT_RETENTION_NS = 7 * 24 * 3600 * 1_000_000_000
PER_ROW, PER_BATCH = "row", "batch"
# The stored layouts this code reads, by how writes are made idempotent; a new layout gets a
# new number. Format 2 (per batch, rows in a DuckDB table) is read as it is and migrated to 3
# (per batch, Parquet segments) when a Store opens it.
STORE_FORMATS = {"1": PER_ROW, "2": PER_BATCH, "3": PER_BATCH}
FORMAT_OF = {PER_ROW: "1", PER_BATCH: "3"}
SEGMENT_FORMAT = "3"
# Small segments (a writer of small batches) are merged, 8 of similar size at a time, until
# they reach this many rows; larger ones are never rewritten (each row is written once).
MERGE_BELOW_ROWS = 8**5
MERGE_FAN_IN = 8
# A file that left the view (merged, expired) is unlinked this much later, so a query that
# had already started reading it finishes.
RETIRED_GRACE_NS = 10 * 60 * 1_000_000_000


def open_database(
    path: str | os.PathLike[str], *, read_only: bool, label: str = "--db"
) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB file with errors a person can act on (missing, locked, not DuckDB).

    `label` names the source in messages: the flag (--db) or, for the collector, "store".
    """
    p = Path(path)
    if read_only and not p.exists():
        raise InputError(f"{label} {p}: no such database file")
    if p.is_dir():
        raise InputError(f"{label} {p}: is a directory, expected a DuckDB database file")
    if not read_only:
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{label} {p}: cannot create its directory: {exc}") from exc
    try:
        return duckdb.connect(str(p), read_only=read_only)
    except duckdb.IOException as exc:
        text = str(exc)
        if "lock" in text.lower():
            raise InputError(
                f"{label} {p}: in use by another process (DuckDB allows one writer process; "
                f"query a running collector over its HTTP API, or its Parquet lake): {text}"
            ) from exc
        raise InputError(f"{label} {p}: cannot open: {text}") from exc
    except duckdb.Error as exc:
        raise InputError(f"{label} {p}: not a usable DuckDB database: {exc}") from exc


def store_format(con: duckdb.DuckDBPyConnection, path: str, label: str = "--db") -> str:
    """The store format of a flowtrail store ("1", "2" or "3"); anything else is refused."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    if META_TABLE not in tables or not tables & {FLOWS_TABLE, catalog.BASE_TABLE}:
        raise InputError(f"{label} {path}: not a flowtrail store (no {FLOWS_TABLE!r} table)")
    rows = con.execute(f"SELECT value FROM {META_TABLE} WHERE key = 'store_format'").fetchall()
    row = rows[0] if rows else None
    if row is None or row[0] not in STORE_FORMATS:
        raise InputError(
            f"{label} {path}: store format {row[0] if row else None!r}, this flowtrail reads "
            f"{', '.join(repr(f) for f in STORE_FORMATS)}"
        )
    want = {catalog.BASE_TABLE, catalog.SEGMENTS_TABLE} if row[0] == "3" else {FLOWS_TABLE}
    if not want <= tables:
        raise InputError(
            f"{label} {path}: store format {row[0]!r} without its table(s) "
            f"{sorted(want - tables)}: not a usable flowtrail store"
        )
    return str(row[0])


def check_layout(con: duckdb.DuckDBPyConnection, path: str, label: str = "--db") -> str:
    """Refuse a database that is not a flowtrail store, or one of another layout; returns how
    its writes are idempotent (PER_ROW or PER_BATCH)."""
    return STORE_FORMATS[store_format(con, path, label)]


def reading_relation(
    con: duckdb.DuckDBPyConnection, path: str | os.PathLike[str], window: catalog.Span
) -> str:
    """The relation a query of `window` reads in a store opened with `open_database` (after
    `check_layout`): in a segment store, a temporary view over the segments whose end_ns
    span overlaps the window, where they are now (the stored view names them where they
    were written, and every one of them)."""
    p = Path(path)
    if store_format(con, str(p)) != SEGMENT_FORMAT:
        return FLOWS_TABLE
    directory = segments.segment_directory(p.absolute())
    segs = catalog.in_window(catalog.segments(con), window)
    cut = catalog.visible_from(con, META_TABLE)
    con.execute(catalog.view_sql(directory, segs, cut, temp=True, name=WINDOW_VIEW))
    return WINDOW_VIEW


def add_missing_columns(con: duckdb.DuckDBPyConnection, table: str = FLOWS_TABLE) -> None:
    """Bring a store written under an older contract up to this one: its optional columns
    added later (all nullable) are added as null columns, and the contract version noted.

    Writes go in BY NAME, so the added columns' place at the end of the table is no matter.
    """
    have = {
        r[0]
        for r in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = ?", [table]
        ).fetchall()
    }
    missing = [c for c in ATTRIBUTED.columns if c.name not in have]
    if not missing:
        return
    con.execute("BEGIN")
    for col in missing:
        con.execute(f"ALTER TABLE {table} ADD COLUMN {quote(col.name)} {sql_type(col)}")
    con.execute(
        f"UPDATE {META_TABLE} SET value = ? WHERE key = 'contract_version'", [str(CONTRACT_VERSION)]
    )
    con.execute("COMMIT")


class Store:
    """Attributed flows in a DuckDB file: `write_named` / `write`, `apply_retention`, queries.

    `idempotence` (PER_ROW or PER_BATCH) applies when the file is created; an existing store
    keeps its own (`self.idempotence`). Thread-safe: writes are serialised; `cursor()` gives
    a thread its own query handle. Every write is committed before it returns.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        retention_ns: int | None = DEFAULT_RETENTION_NS,
        validate_rows: bool = True,
        idempotence: str = PER_ROW,
    ) -> None:
        if idempotence not in FORMAT_OF:
            raise InputError(f"store idempotence {idempotence!r}: choose {PER_ROW} or {PER_BATCH}")
        if retention_ns is not None and retention_ns <= 0:
            raise InputError(f"store retention {retention_ns} ns: must be positive (or None)")
        self.path = Path(path)
        self.retention_ns = retention_ns
        self.validate_rows = validate_rows
        self._lock = threading.Lock()
        self._con = open_database(self.path, read_only=False, label="store")
        self.stats = {
            "batches": 0,
            "rows_in": 0,
            "rows_stored": 0,
            "rows_duplicate": 0,
            "rows_expired": 0,
            "write_seconds_total": 0,
            "merge_failures": 0,
        }
        self.last_merge_error: str | None = None
        self.write_seconds = 0.0
        self._seq = 0
        self._segments = segments.segment_directory(self.path.absolute())
        self._segs: list[catalog.Segment] = []
        self._cut: int | None = None
        # The extras' JSON is built on a connection of its own (one thread: a small
        # projection), so that building it needs no lock.
        self._scratch = duckdb.connect()
        self._scratch.execute("SET threads = 1")
        try:
            self.format = self._init_schema(idempotence)
        except BaseException:
            self._con.close()
            self._scratch.close()
            raise
        self.idempotence = STORE_FORMATS[self.format]

    def _init_schema(self, idempotence: str) -> str:
        con = self._con
        tables = con.execute("SELECT count(*) FROM duckdb_tables()").fetchall()[0][0]
        if tables == 0:  # a new file: lay it out; any other database is only checked
            fmt = FORMAT_OF[idempotence]
            con.execute("BEGIN")
            con.execute(f"CREATE TABLE {META_TABLE} (key VARCHAR PRIMARY KEY, value VARCHAR)")
            con.execute(
                f"INSERT INTO {META_TABLE} VALUES ('store_format', "
                f"'{fmt}'), ('contract_version', '{CONTRACT_VERSION}')"
            )
            if fmt == SEGMENT_FORMAT:
                catalog.lay_out(con, META_TABLE)
            else:
                con.execute(create_table_sql(FLOWS_TABLE, with_key=True))
            con.execute("COMMIT")
        fmt = store_format(con, str(self.path), "store")
        if fmt == "2":  # per batch, rows in a DuckDB table: kept there, new ones in segments
            con.execute("BEGIN")
            catalog.migrate_batch_table(con, META_TABLE)
            con.execute("COMMIT")
            fmt = SEGMENT_FORMAT
        add_missing_columns(con, catalog.BASE_TABLE if fmt == SEGMENT_FORMAT else FLOWS_TABLE)
        # Stores made before batch names existed gain the (empty) table of names.
        con.execute(
            f"CREATE TABLE IF NOT EXISTS {BATCHES_TABLE} "
            "(name VARCHAR PRIMARY KEY, stored_rows BIGINT, stored_ns BIGINT)"
        )
        if fmt == SEGMENT_FORMAT:
            self._open_segments()
        return fmt

    def _open_segments(self) -> None:
        """Nobody reads yet: files the catalog does not name (cut off before their commit,
        or retired) go, and the view is made over the segments where they are now."""
        con = self._con
        try:
            self._segments.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"store {self.path}: cannot create {self._segments}: {exc}") from exc
        # The catalog, mirrored here: this process is its only writer.
        self._segs = catalog.segments(con)
        self._cut = catalog.visible_from(con, META_TABLE)
        known = {s.file for s in self._segs}
        for stray in segments.stray_files(self._segments, known):
            stray.unlink(missing_ok=True)
        con.execute("BEGIN")
        con.execute(f"DELETE FROM {catalog.RETIRED_TABLE}")
        con.execute(self._view_sql(self._segs, self._cut))
        con.execute("COMMIT")

    def _view_sql(self, segs: list[catalog.Segment], cut: int | None, **options: Any) -> str:
        return catalog.view_sql(self._segments, segs, cut, **options)

    # -- writing ---------------------------------------------------------------------------

    def next_name(self) -> str:
        """A fresh batch name (wall-clock ns, pid, sequence) for `write_named`."""
        self._seq += 1
        return f"{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}"

    def has(self, name: str) -> bool:
        """Was a batch of this name stored (and not yet aged out by retention)?"""
        with self._lock:
            return self._has(name)

    def _has(self, name: str) -> bool:
        rows = self._con.execute(
            f"SELECT count(*) FROM {BATCHES_TABLE} WHERE name = ?", [name]
        ).fetchall()
        return bool(rows[0][0])

    def write(self, table: pa.Table) -> int:
        """Store an attributed-flows table (CONTRACT.md); returns rows newly stored.

        Per-row store: rows already stored (same exporter, flow_id, state, end_ns) are skipped
        and counted as duplicates. Per-batch store: the rows are a new batch (a caller that
        may write the same rows again names them: `write_named`). Committed (durable) on
        return. Raises ContractError on a bad table.
        """
        return self.write_named(table, self.next_name())

    def write_named(self, table: pa.Table, name: str) -> int:
        """Store a table as the batch `name`; returns rows newly stored.

        The rows and the name are committed together: afterwards `has(name)`, before it not,
        and a crash in between leaves neither. A name already stored stores nothing again
        (all its rows count as duplicates). Per-row stores also skip rows stored before
        under any name.
        """
        if self.validate_rows:
            table = validate(table, ATTRIBUTED, path="store write")
            check_extra_columns(table, ATTRIBUTED, path="store write")
        began = time.perf_counter()
        if self.format == SEGMENT_FORMAT:
            stored = self._write_segment(table, name)
        else:
            stored = self._write_keyed(table, name)
        self.write_seconds += time.perf_counter() - began
        self.stats["batches"] += 1
        self.stats["rows_in"] += table.num_rows
        self.stats["rows_stored"] += stored
        self.stats["rows_duplicate"] += table.num_rows - stored
        self.stats["write_seconds_total"] = int(self.write_seconds)
        return stored

    def _write_keyed(self, table: pa.Table, name: str) -> int:
        """Per row: one INSERT OR IGNORE keyed by row_key, with the name, in one commit."""
        select = projection_sql(table, "b", with_key=True)
        with self._lock:
            con = self._con
            con.register("_flowtrail_batch", table)
            try:
                return self._insert_named(con, select, name, table.num_rows)
            finally:  # after the transaction ended: an aborted one refuses even this
                con.unregister("_flowtrail_batch")

    def _insert_named(
        self, con: duckdb.DuckDBPyConnection, select: str, name: str, rows: int
    ) -> int:
        """One transaction: the batch's rows (unless its name is stored) and its name."""
        con.execute("BEGIN")
        try:
            stored = 0
            if not self._has(name):
                if rows:
                    # DuckDB reports the rows actually inserted (duplicates excluded).
                    got = con.execute(
                        f"INSERT OR IGNORE INTO {FLOWS_TABLE} BY NAME "
                        f"SELECT {select} FROM _flowtrail_batch b"
                    ).fetchall()
                    stored = int(got[0][0])
                con.execute(
                    f"INSERT INTO {BATCHES_TABLE} VALUES (?, ?, ?)", [name, stored, time.time_ns()]
                )
            con.execute("COMMIT")
        except BaseException:
            _rollback(con)
            raise
        return stored

    def _write_segment(self, table: pa.Table, name: str) -> int:
        """Per batch: the rows as a new segment file, then its name, the batch's name and the
        view in one commit. A crash before the commit leaves a file nobody names (removed at
        the next open); after it, both."""
        rows = segments.stored_table(table, self._scratch)  # no lock: writers on two threads
        with self._lock:
            con = self._con
            if self._has(name):
                return 0
            segs = self._segs
            if rows.num_rows:
                file, span = segments.write_segment(self._segments, rows)
                seq = max((s.seq for s in segs), default=0) + 1
                segs = [*segs, catalog.new_segment(seq, file, rows.num_rows, span)]
            con.execute("BEGIN")
            try:
                if segs is not self._segs:
                    catalog.insert(con, segs[-1])
                con.execute(
                    f"INSERT INTO {BATCHES_TABLE} VALUES (?, ?, ?)",
                    [name, rows.num_rows, time.time_ns()],
                )
                if segs is not self._segs:
                    con.execute(self._view_sql(segs, self._cut))
                con.execute("COMMIT")
            except BaseException:
                _rollback(con)
                if segs is not self._segs:
                    (self._segments / segs[-1].file).unlink(missing_ok=True)
                raise
            if segs is not self._segs:
                self._segs = segs
                try:
                    self._merge_small_segments()
                except Exception as exc:  # the batch is stored; merging can wait
                    # Raising would tell the writer its committed batch failed, and it would
                    # write the rows again under a new name.
                    self.stats["merge_failures"] += 1
                    self.last_merge_error = f"{type(exc).__name__}: {exc}"
        return int(rows.num_rows)

    def _merge_small_segments(self) -> None:
        """Once 8 small segments of one size class (within a factor of 8) exist, they are
        rewritten as one: a writer of small batches leaves few files for queries to open,
        and each row is rewritten at most a few times on its way to MERGE_BELOW_ROWS."""
        con = self._con
        classes: dict[int, list[catalog.Segment]] = {}
        for seg in self._segs:
            if seg.rows < MERGE_BELOW_ROWS:
                classes.setdefault(seg.rows.bit_length() // 3, []).append(seg)
        group = next((g for g in classes.values() if len(g) >= MERGE_FAN_IN), None)
        if group is None:
            return
        merged = segments.read_segments(self._segments, [s.file for s in group])
        file, span = segments.write_segment(self._segments, merged)
        now = time.time_ns()
        seqs = [s.seq for s in group]
        new = catalog.new_segment(min(seqs), file, merged.num_rows, span)
        segs = sorted([s for s in self._segs if s.seq not in seqs] + [new])
        con.execute("BEGIN")
        try:
            con.execute(f"DELETE FROM {catalog.SEGMENTS_TABLE} WHERE list_contains(?, seq)", [seqs])
            catalog.insert(con, new)
            con.executemany(
                f"INSERT INTO {catalog.RETIRED_TABLE} VALUES (?, ?)", [[s.file, now] for s in group]
            )
            con.execute(self._view_sql(segs, self._cut))
            con.execute("COMMIT")
        except BaseException:
            _rollback(con)
            (self._segments / file).unlink(missing_ok=True)
            raise
        self._segs = segs
        self._unlink_retired(now)

    def _unlink_retired(self, now_ns: int) -> None:
        """Files retired more than the grace period ago: no query can still be reading them."""
        con = self._con
        cut = now_ns - RETIRED_GRACE_NS
        old = con.execute(
            f"SELECT file FROM {catalog.RETIRED_TABLE} WHERE retired_ns < ?", [cut]
        ).fetchall()
        for (file,) in old:
            (self._segments / file).unlink(missing_ok=True)
        if old:
            con.execute(f"DELETE FROM {catalog.RETIRED_TABLE} WHERE retired_ns < ?", [cut])

    def _count(self) -> int:
        return int(self._con.execute(f"SELECT count(*) FROM {FLOWS_TABLE}").fetchall()[0][0])

    def apply_retention(self, now_ns: int) -> int:
        """Delete rows whose end_ns is older than now - retention; returns how many.

        Batch names written before the cutoff go too: a writer re-checks names only for
        batches it wrote recently (the collector: its log, minutes), never a retention ago.
        In a segment store the rows are gone from the view at once; a segment's file goes
        once all of its rows are past the cut (after the grace period of retired files).
        """
        if self.retention_ns is None:
            return 0
        cutoff = now_ns - self.retention_ns
        with self._lock:
            if self.format == SEGMENT_FORMAT:
                deleted = self._expire_segments(cutoff, now_ns)
            else:
                rows = self._con.execute(
                    f"DELETE FROM {FLOWS_TABLE} WHERE end_ns < ?", [cutoff]
                ).fetchall()
                deleted = int(rows[0][0])
                self._con.execute(f"DELETE FROM {BATCHES_TABLE} WHERE stored_ns < ?", [cutoff])
        self.stats["rows_expired"] += deleted
        return deleted

    def _expire_segments(self, cutoff: int, now_ns: int) -> int:
        con = self._con
        before = self._cut
        segs = [s for s in self._segs if s.max_end_ns >= cutoff]
        con.execute("BEGIN")
        try:
            deleted = 0
            if before is None or cutoff > before:
                deleted = int(
                    con.execute(
                        f"SELECT count(*) FROM {FLOWS_TABLE} WHERE end_ns < ?", [cutoff]
                    ).fetchall()[0][0]
                )
                con.execute(f"DELETE FROM {catalog.BASE_TABLE} WHERE end_ns < ?", [cutoff])
                con.execute(
                    f"INSERT INTO {catalog.RETIRED_TABLE} SELECT file, ? "
                    f"FROM {catalog.SEGMENTS_TABLE} WHERE max_end_ns < ?",
                    [now_ns, cutoff],
                )
                con.execute(f"DELETE FROM {catalog.SEGMENTS_TABLE} WHERE max_end_ns < ?", [cutoff])
                con.execute(
                    f"UPDATE {META_TABLE} SET value = ? WHERE key = ?",
                    [str(cutoff), catalog.VISIBLE_FROM],
                )
                con.execute(self._view_sql(segs, cutoff))
            con.execute(f"DELETE FROM {BATCHES_TABLE} WHERE stored_ns < ?", [cutoff])
            con.execute("COMMIT")
        except BaseException:
            _rollback(con)
            raise
        if before is None or cutoff > before:
            self._segs, self._cut = segs, cutoff
        self._unlink_retired(now_ns)
        return deleted

    # -- reading ---------------------------------------------------------------------------

    def count(self) -> int:
        with self._lock:
            return self._count()

    def relation(self, con: duckdb.DuckDBPyConnection, window: catalog.Span) -> str:
        """What a query of `window` reads on `con` (a `cursor()`): in a segment store, a
        temporary view over the committed segments whose end_ns span overlaps the window
        (those alone are opened), taken from the catalog as of one commit; in a per-row
        store, the table."""
        if self.format != SEGMENT_FORMAT:
            return FLOWS_TABLE
        with self._lock:  # the mirror changes only with a commit, under this lock
            segs, cut = self._segs, self._cut
        con.execute(
            self._view_sql(catalog.in_window(segs, window), cut, temp=True, name=WINDOW_VIEW)
        )
        return WINDOW_VIEW

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A query handle for the calling thread (DuckDB cursors are per-thread)."""
        return self._con.cursor()

    def read(self, where: str = "TRUE", params: list[Any] | None = None) -> pa.Table:
        """Stored rows as Arrow (contract columns + extra), for tests and exports."""
        cur = self.cursor()
        try:
            names = ", ".join(quote(n) for n in (*ATTRIBUTED.names, EXTRA))
            return query_arrow(cur, f"SELECT {names} FROM {FLOWS_TABLE} WHERE {where}", params)
        finally:
            cur.close()

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._con.close()
            self._scratch.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    # A COMMIT that failed (a full disk) has ended the transaction already; the error to
    # report is the first one.
    with contextlib.suppress(duckdb.Error):
        con.execute("ROLLBACK")

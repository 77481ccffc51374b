"""The embedded store: attributed flows in one DuckDB database file.

Why DuckDB: one file, no server, columnar storage that answers the dependency and top-talker
aggregations quickly, Arrow in and out without copying row by row, and ACID commits with a
write-ahead log, so a write that returned survives kill -9 and a half-done write vanishes.

A write is idempotent: the primary key is a 128-bit hash of (exporter, flow_id, state, end_ns),
and rows whose key is already stored (or repeated inside the batch) are skipped, so a collector
that replays its recent input after a crash stores nothing twice.
"""

from __future__ import annotations

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
META_TABLE = "flowtrail_meta"
DEFAULT_RETENTION_NS = 7 * 24 * 3600 * 1_000_000_000
STORE_FORMAT = "1"  # bump when the stored layout changes


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


def check_layout(con: duckdb.DuckDBPyConnection, path: str, label: str = "--db") -> None:
    """Refuse a database that is not a flowtrail store, or one of another layout."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    if META_TABLE not in tables or FLOWS_TABLE not in tables:
        raise InputError(f"{label} {path}: not a flowtrail store (no {FLOWS_TABLE!r} table)")
    rows = con.execute(f"SELECT value FROM {META_TABLE} WHERE key = 'store_format'").fetchall()
    row = rows[0] if rows else None
    if row is None or row[0] != STORE_FORMAT:
        raise InputError(
            f"{label} {path}: store format {row[0] if row else None!r}, this flowtrail reads "
            f"{STORE_FORMAT!r}"
        )


def add_missing_columns(con: duckdb.DuckDBPyConnection) -> None:
    """Bring a store written under an older contract up to this one: its optional columns
    added later (all nullable) are added as null columns, and the contract version noted.

    Writes go in BY NAME, so the added columns' place at the end of the table is no matter.
    """
    have = {
        r[0]
        for r in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = ?", [FLOWS_TABLE]
        ).fetchall()
    }
    missing = [c for c in ATTRIBUTED.columns if c.name not in have]
    if not missing:
        return
    con.execute("BEGIN")
    for col in missing:
        con.execute(f"ALTER TABLE {FLOWS_TABLE} ADD COLUMN {quote(col.name)} {sql_type(col)}")
    con.execute(
        f"UPDATE {META_TABLE} SET value = ? WHERE key = 'contract_version'", [str(CONTRACT_VERSION)]
    )
    con.execute("COMMIT")


class Store:
    """Attributed flows in a DuckDB file: `write` (idempotent), `apply_retention`, queries.

    Thread-safe: writes are serialised; `cursor()` gives a thread its own query handle.
    Every write is committed before it returns.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        retention_ns: int | None = DEFAULT_RETENTION_NS,
        validate_rows: bool = True,
    ) -> None:
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
        }
        self.write_seconds = 0.0
        self._init_schema()

    def _init_schema(self) -> None:
        con = self._con
        tables = con.execute("SELECT count(*) FROM duckdb_tables()").fetchall()[0][0]
        if tables == 0:  # a new file: lay it out; any other database is only checked
            con.execute("BEGIN")
            con.execute(f"CREATE TABLE {META_TABLE} (key VARCHAR PRIMARY KEY, value VARCHAR)")
            con.execute(create_table_sql(FLOWS_TABLE))
            con.execute(
                f"INSERT INTO {META_TABLE} VALUES "
                f"('store_format', '{STORE_FORMAT}'), ('contract_version', '{CONTRACT_VERSION}')"
            )
            con.execute("COMMIT")
        try:
            check_layout(con, str(self.path), "store")
        except InputError:
            con.close()
            raise
        add_missing_columns(con)

    # -- writing ---------------------------------------------------------------------------

    def write(self, table: pa.Table) -> int:
        """Store an attributed-flows table (CONTRACT.md); returns rows newly stored.

        Rows already stored (same exporter, flow_id, state, end_ns) are skipped and counted as
        duplicates. Committed (durable) on return. Raises ContractError on a bad table.
        """
        if self.validate_rows:
            table = validate(table, ATTRIBUTED, path="store write")
            check_extra_columns(table, ATTRIBUTED, path="store write")
        if table.num_rows == 0:
            return 0
        select = projection_sql(table, "b")
        began = time.perf_counter()
        with self._lock:
            self._con.register("_flowtrail_batch", table)
            try:
                # DuckDB reports the rows actually inserted (skipped duplicates excluded).
                rows = self._con.execute(
                    f"INSERT OR IGNORE INTO {FLOWS_TABLE} BY NAME "
                    f"SELECT {select} FROM _flowtrail_batch b"
                ).fetchall()
            finally:
                self._con.unregister("_flowtrail_batch")
            stored = int(rows[0][0])
        self.write_seconds += time.perf_counter() - began
        self.stats["batches"] += 1
        self.stats["rows_in"] += table.num_rows
        self.stats["rows_stored"] += stored
        self.stats["rows_duplicate"] += table.num_rows - stored
        self.stats["write_seconds_total"] = int(self.write_seconds)
        return stored

    def _count(self) -> int:
        return int(self._con.execute(f"SELECT count(*) FROM {FLOWS_TABLE}").fetchall()[0][0])

    def apply_retention(self, now_ns: int) -> int:
        """Delete rows whose end_ns is older than now - retention; returns how many."""
        if self.retention_ns is None:
            return 0
        cutoff = now_ns - self.retention_ns
        with self._lock:
            rows = self._con.execute(
                f"DELETE FROM {FLOWS_TABLE} WHERE end_ns < ?", [cutoff]
            ).fetchall()
            deleted = int(rows[0][0])
        self.stats["rows_expired"] += deleted
        return deleted

    # -- reading ---------------------------------------------------------------------------

    def count(self) -> int:
        with self._lock:
            return self._count()

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

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

"""The embedded store: attributed flows in one DuckDB database file.

Why DuckDB: one file, no server, columnar storage that answers the dependency and top-talker
aggregations quickly, Arrow in and out without copying row by row, and ACID commits with a
write-ahead log, so a write that returned survives kill -9 and a half-done write vanishes.

Writes are idempotent, one of two ways, fixed when the file is created:
- per row (store format 1): the primary key is a 128-bit hash of (exporter, flow_id, state,
  end_ns), and rows whose key is already stored (or repeated inside the batch) are skipped;
- per batch (store format 2): a write names its batch, and the rows and the name are
  committed in one transaction; a batch whose name is stored is skipped whole. No key is
  computed or indexed per row, which is most of a per-row write's cost. The writer (the
  collector) records the name in its own log before writing, so after a crash it knows
  exactly which batches were stored.
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
BATCHES_TABLE = "flowtrail_batches"  # names of the batches stored, with when
DEFAULT_RETENTION_NS = 7 * 24 * 3600 * 1_000_000_000
PER_ROW, PER_BATCH = "row", "batch"
# The stored layouts this code reads and writes, by how writes are made idempotent; a new
# layout gets a new number.
STORE_FORMATS = {"1": PER_ROW, "2": PER_BATCH}
FORMAT_OF = {mode: fmt for fmt, mode in STORE_FORMATS.items()}


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


def check_layout(con: duckdb.DuckDBPyConnection, path: str, label: str = "--db") -> str:
    """Refuse a database that is not a flowtrail store, or one of another layout; returns how
    its writes are idempotent (PER_ROW or PER_BATCH)."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    if META_TABLE not in tables or FLOWS_TABLE not in tables:
        raise InputError(f"{label} {path}: not a flowtrail store (no {FLOWS_TABLE!r} table)")
    rows = con.execute(f"SELECT value FROM {META_TABLE} WHERE key = 'store_format'").fetchall()
    row = rows[0] if rows else None
    if row is None or row[0] not in STORE_FORMATS:
        raise InputError(
            f"{label} {path}: store format {row[0] if row else None!r}, this flowtrail reads "
            f"{' and '.join(repr(f) for f in STORE_FORMATS)}"
        )
    return STORE_FORMATS[row[0]]


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
        }
        self.write_seconds = 0.0
        self._seq = 0
        self.idempotence = self._init_schema(idempotence)

    def _init_schema(self, idempotence: str) -> str:
        con = self._con
        tables = con.execute("SELECT count(*) FROM duckdb_tables()").fetchall()[0][0]
        if tables == 0:  # a new file: lay it out; any other database is only checked
            con.execute("BEGIN")
            con.execute(f"CREATE TABLE {META_TABLE} (key VARCHAR PRIMARY KEY, value VARCHAR)")
            con.execute(create_table_sql(FLOWS_TABLE, with_key=idempotence == PER_ROW))
            con.execute(
                f"INSERT INTO {META_TABLE} VALUES ('store_format', "
                f"'{FORMAT_OF[idempotence]}'), ('contract_version', '{CONTRACT_VERSION}')"
            )
            con.execute("COMMIT")
        try:
            mode = check_layout(con, str(self.path), "store")
        except InputError:
            con.close()
            raise
        add_missing_columns(con)
        # Stores made before batch names existed gain the (empty) table of names.
        con.execute(
            f"CREATE TABLE IF NOT EXISTS {BATCHES_TABLE} "
            "(name VARCHAR PRIMARY KEY, stored_rows BIGINT, stored_ns BIGINT)"
        )
        return mode

    # -- writing ---------------------------------------------------------------------------

    def next_name(self) -> str:
        """A fresh batch name (wall-clock ns, pid, sequence) for `write_named`."""
        self._seq += 1
        return f"{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}"

    def has(self, name: str) -> bool:
        """Was a batch of this name stored (and not yet aged out by retention)?"""
        with self._lock:
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
        keyed = self.idempotence == PER_ROW
        select = projection_sql(table, "b", with_key=keyed)
        insert = "INSERT OR IGNORE INTO" if keyed else "INSERT INTO"
        began = time.perf_counter()
        with self._lock:
            con = self._con
            con.register("_flowtrail_batch", table)
            try:
                stored = self._insert_named(con, insert, select, name, table.num_rows)
            finally:  # after the transaction ended: an aborted one refuses even this
                con.unregister("_flowtrail_batch")
        self.write_seconds += time.perf_counter() - began
        self.stats["batches"] += 1
        self.stats["rows_in"] += table.num_rows
        self.stats["rows_stored"] += stored
        self.stats["rows_duplicate"] += table.num_rows - stored
        self.stats["write_seconds_total"] = int(self.write_seconds)
        return stored

    def _insert_named(
        self, con: duckdb.DuckDBPyConnection, insert: str, select: str, name: str, rows: int
    ) -> int:
        """One transaction: the batch's rows (unless its name is stored) and its name."""
        con.execute("BEGIN")
        try:
            seen = con.execute(
                f"SELECT count(*) FROM {BATCHES_TABLE} WHERE name = ?", [name]
            ).fetchall()[0][0]
            stored = 0
            if not seen:
                if rows:
                    # DuckDB reports the rows actually inserted (duplicates excluded).
                    got = con.execute(
                        f"{insert} {FLOWS_TABLE} BY NAME SELECT {select} FROM _flowtrail_batch b"
                    ).fetchall()
                    stored = int(got[0][0])
                con.execute(
                    f"INSERT INTO {BATCHES_TABLE} VALUES (?, ?, ?)", [name, stored, time.time_ns()]
                )
            con.execute("COMMIT")
        except BaseException:
            # A COMMIT that failed (a full disk) has ended the transaction already; the
            # error to report is the first one.
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise
        return stored

    def _count(self) -> int:
        return int(self._con.execute(f"SELECT count(*) FROM {FLOWS_TABLE}").fetchall()[0][0])

    def apply_retention(self, now_ns: int) -> int:
        """Delete rows whose end_ns is older than now - retention; returns how many.

        Batch names written before the cutoff go too: a writer re-checks names only for
        batches it wrote recently (the collector: its log, minutes), never a retention ago.
        """
        if self.retention_ns is None:
            return 0
        cutoff = now_ns - self.retention_ns
        with self._lock:
            rows = self._con.execute(
                f"DELETE FROM {FLOWS_TABLE} WHERE end_ns < ?", [cutoff]
            ).fetchall()
            deleted = int(rows[0][0])
            self._con.execute(f"DELETE FROM {BATCHES_TABLE} WHERE stored_ns < ?", [cutoff])
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

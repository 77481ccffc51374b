"""Queries over the Parquet lake (flowtrail/store/lake.py's layout) whose cost follows the
window asked, not the lake's size, and that count every row once however many nodes wrote it.

- **Pruning.** The lake is partitioned by the hour of each row's end_ns, and a query's window
  is on end_ns, so only the hour directories the window overlaps can hold its rows: the
  relation a query reads is a view over exactly those files, listed from the directory names
  (no file outside them is opened, not even for its footer).
- **Once per row.** After a cluster node dies, the node that takes over its work may store some
  of its rows again (identical copies in two nodes' files). The view keeps one row per
  (exporter, flow_id, state, end_ns), the identity of a row in the contract, so every answer
  counts each row once whether or not compaction has removed the copies.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from flowtrail.errors import InputError
from flowtrail.query.queries import Window
from flowtrail.schema import ATTRIBUTED
from flowtrail.store.columns import EXTRA, quote, sql_type
from flowtrail.store.lake import HOUR_NS

ROW_IDENTITY = ("exporter", "flow_id", "state", "end_ns")
_HIVE_TYPES = "{'region': VARCHAR, 'date': DATE, 'hour': INTEGER}"
MAX_NS = 2**63 - 1


def check_lake(root: str | os.PathLike[str]) -> Path:
    path = Path(root)
    if not path.is_dir():
        raise InputError(f"--lake {path}: no such directory")
    if not any(path.glob("region=*/date=*/hour=*")):
        raise InputError(f"--lake {path}: holds no partitions (region=*/date=*/hour=*)")
    return path


def _hours(window: Window) -> list[tuple[str, str]]:
    """(date=…, hour=…) directory names of every hour [since, until) overlaps."""
    first = window.since_ns // HOUR_NS
    last = (min(window.until_ns, MAX_NS) - 1) // HOUR_NS
    if last < first:
        return []
    start = datetime.fromtimestamp(first * 3600, UTC)
    return [
        (f"date={t:%Y-%m-%d}", f"hour={t.hour}")
        for t in (start + timedelta(hours=i) for i in range(last - first + 1))
    ]


def files_in_window(root: Path, window: Window) -> list[str]:
    """The lake's Parquet files that can hold rows of `window`, from directory names only.

    A window wider than the lake's own span is walked over the lake's hours rather than the
    window's (an "all time" question lists what exists, not 2**63 ns of hours)."""
    regions = sorted(p for p in root.glob("region=*") if p.is_dir())
    present = sorted(
        {(d.name, h.name) for r in regions for d in r.glob("date=*") for h in d.glob("hour=*")}
    )
    wanted = present if len(present) < _span_hours(window) else None
    hours = (
        [(d, h) for d, h in present if _in_window(d, h, window)]
        if wanted is not None
        else _hours(window)
    )
    out: list[str] = []
    for region in regions:
        for date, hour in hours:
            directory = region / date / hour
            if directory.is_dir():
                out += sorted(str(p) for p in directory.glob("*.parquet"))
    return out


def _span_hours(window: Window) -> int:
    return (min(window.until_ns, MAX_NS) - window.since_ns) // HOUR_NS + 1


def _in_window(date: str, hour: str, window: Window) -> bool:
    try:
        day = datetime.strptime(date.removeprefix("date="), "%Y-%m-%d").replace(tzinfo=UTC)
        h = int(hour.removeprefix("hour="))
    except ValueError:
        return False
    start = (int(day.timestamp()) + h * 3600) * 1_000_000_000
    return start < window.until_ns and start + HOUR_NS > window.since_ns


class LakeSource:
    """A lake directory as the relation of `flowtrail query` and the API (`relation(...)`)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = check_lake(root)

    def relation(self, con: duckdb.DuckDBPyConnection, window: Window) -> str:
        """A temporary view on `con` (and a temporary table of the copied identities): the
        window's rows, read from its partitions only, one per row identity."""
        files = files_in_window(self.root, window)
        if not files:
            empty = ", ".join(f"NULL::{sql_type(c)} AS {quote(c.name)}" for c in ATTRIBUTED.columns)
            empty += f", NULL::VARCHAR AS {EXTRA}"
            con.execute(f"CREATE OR REPLACE TEMP VIEW lake_window AS SELECT {empty} LIMIT 0")
            return "lake_window"
        listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        scan = (
            f"read_parquet([{listed}], hive_partitioning = true, union_by_name = true, "
            f"hive_types = {_HIVE_TYPES}) r"
        )
        keys = ", ".join(ROW_IDENTITY)
        where = window.sql()
        # Copies are rare: find the row identities held more than once (a scan of the key
        # columns only), keep every other row as it is and one of each copied one. A
        # DISTINCT ON over every row would carry each row's whole payload through a hash
        # table: 5-10x slower over a million rows.
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE lake_copied AS SELECT {keys} FROM {scan} "
            f"WHERE {where} GROUP BY ALL HAVING count(*) > 1"
        )
        con.execute(
            f"""CREATE OR REPLACE TEMP VIEW lake_window AS
            SELECT r.* FROM {scan} ANTI JOIN lake_copied USING ({keys}) WHERE {where}
            UNION ALL
            SELECT DISTINCT ON ({keys}) r.* FROM {scan} SEMI JOIN lake_copied USING ({keys})
            WHERE {where}"""
        )
        return "lake_window"


def with_current_columns(con: duckdb.DuckDBPyConnection, relation: str) -> str:
    """`relation`, or a view of it with the contract's columns it lacks as nulls: a store or
    lake written under an older contract version answers the queries too (read-only here).
    So does a file without `extra` (nothing beyond the contract's columns): the queries read
    unattributed_reason and remote_dns from there."""
    have = {r[0] for r in con.execute(f"DESCRIBE {relation}").fetchall()}
    missing = [c for c in ATTRIBUTED.columns if c.name not in have]
    if not missing and EXTRA in have:
        return relation
    nulls = ", ".join(
        [f"NULL::{sql_type(c)} AS {quote(c.name)}" for c in missing]
        + ([] if EXTRA in have else [f"NULL::VARCHAR AS {EXTRA}"])
    )
    con.execute(f"CREATE OR REPLACE TEMP VIEW current_flows AS SELECT *, {nulls} FROM {relation}")
    return "current_flows"

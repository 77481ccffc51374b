"""The Parquet lake: attributed flows as hour-partitioned Parquet files that DuckDB, Spark and
Trino read with Hive partitioning, for when one machine's store is outgrown.

    <root>/region=<region>/date=<YYYY-MM-DD>/hour=<H>/part-<batch_id>.parquet

The partition is chosen by the row's end_ns (UTC; the hour unpadded, 0..23, so readers type it
as an integer) and its region (a null region is Hive's `__HIVE_DEFAULT_PARTITION__`, read back
as null); region text is percent-encoded as Hive does.
The files hold the store's columns (contract columns + `extra` JSON) minus `region`, which
lives in the path. Each file is written atomically (temp name, then rename); the same
batch_id rewrites the same files, so a resent batch replaces rather than duplicates.
`apply_retention` deletes whole hours once they are past the retention.
"""

from __future__ import annotations

import itertools
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote as percent_encode

import duckdb
import numpy as np
import pyarrow as pa

from flowtrail.collector.wal import fsync_path
from flowtrail.errors import InputError
from flowtrail.incoming import check_extra_columns
from flowtrail.schema import ATTRIBUTED
from flowtrail.store.columns import projection_sql, query_arrow
from flowtrail.tables import validate, write_table

HOUR_NS = 3600 * 1_000_000_000
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
_SEQ = itertools.count(1)


def lake_glob(root: str | os.PathLike[str]) -> str:
    """The pattern to give read_parquet(..., hive_partitioning = true)."""
    return str(Path(root) / "**" / "*.parquet")


class Lake:
    """Writes attributed-flows batches into an hour-partitioned Parquet directory."""

    def __init__(self, root: str | os.PathLike[str], *, validate_rows: bool = True) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"lake {self.root}: exists and is not a directory")
        self.root.mkdir(parents=True, exist_ok=True)
        self.validate_rows = validate_rows
        self._con = duckdb.connect()  # in-memory: only shapes batches, stores nothing
        self.stats = {"batches": 0, "rows": 0, "files": 0}

    def write(self, table: pa.Table, batch_id: str | None = None) -> list[Path]:
        """Write one batch; returns the files written (one per region and hour it touches)."""
        if self.validate_rows:
            table = validate(table, ATTRIBUTED, path="lake write")
            check_extra_columns(table, ATTRIBUTED, path="lake write")
        if table.num_rows == 0:
            return []
        if batch_id is None:
            batch_id = f"{time.time_ns():020d}-{os.getpid()}-{next(_SEQ):06d}"
        if not batch_id or "/" in batch_id or batch_id.startswith("."):
            raise InputError(f"lake batch_id {batch_id!r}: must be a plain file-name part")
        shaped = self._shape(table)
        hours = np.asarray(shaped.column("end_ns").to_numpy(), np.int64) // HOUR_NS
        regions = shaped.column("region")
        region_codes = regions.dictionary_encode().combine_chunks()
        codes = np.asarray(region_codes.indices.fill_null(-1).to_numpy(), np.int64)
        order = np.lexsort((hours, codes))
        cut = np.flatnonzero((np.diff(hours[order]) != 0) | (np.diff(codes[order]) != 0)) + 1
        body = shaped.drop_columns(["region"])
        written = []
        for rows in np.split(order, cut):
            first = int(rows[0])
            code = int(codes[first])
            region = None if code < 0 else str(region_codes.dictionary[code].as_py())
            path = self._partition(region, int(hours[first])) / f"part-{batch_id}.parquet"
            write_table(body.take(pa.array(rows)), path)
            written.append(path)
        self.stats["batches"] += 1
        self.stats["rows"] += table.num_rows
        self.stats["files"] += len(written)
        return written

    def _shape(self, table: pa.Table) -> pa.Table:
        self._con.register("_flowtrail_batch", table)
        try:
            select = projection_sql(table, "b", with_key=False)
            return query_arrow(self._con, f"SELECT {select} FROM _flowtrail_batch b")
        finally:
            self._con.unregister("_flowtrail_batch")

    def _partition(self, region: str | None, hour: int) -> Path:
        when = datetime.fromtimestamp(hour * 3600, UTC)
        region_part = NULL_PARTITION if region is None else percent_encode(region, safe="")
        return self.root / f"region={region_part}" / f"date={when:%Y-%m-%d}" / f"hour={when.hour}"

    def apply_retention(self, now_ns: int, retention_ns: int) -> int:
        """Delete whole hour partitions that end at or before now - retention; returns files.

        An hour is kept while any moment of it is within the retention, so no row younger
        than the retention is ever deleted (older rows may live up to an hour longer).
        """
        if retention_ns <= 0:
            raise InputError(f"lake retention {retention_ns} ns: must be positive")
        cutoff = now_ns - retention_ns
        removed = 0
        for hour_dir in sorted(self.root.glob("region=*/date=*/hour=*")):
            start = _partition_start_ns(hour_dir)
            if start is None or start + HOUR_NS > cutoff:
                continue  # not ours (unparseable name) or still within the retention
            for part in hour_dir.glob("*.parquet"):
                part.unlink(missing_ok=True)
                removed += 1
            _remove_empty(hour_dir, stop=self.root)
        self.stats["files_expired"] = self.stats.get("files_expired", 0) + removed
        return removed

    def close(self) -> None:
        self._con.close()


class LakeSink:
    """A node's (or a collector's) sink into a lake several nodes share: every file name holds
    the writer's name, so no two writers ever write one file, and each write is on disk
    (files and directories fsynced) when `write` returns, before the batch is acknowledged.

    A batch redelivered after its node died is decided and written again by the node that
    takes it over: those copies are identical rows under another name, and lake queries
    count each row identity once (flowtrail/query/lake.py)."""

    idempotent = False

    def __init__(self, root: str | os.PathLike[str], writer: str) -> None:
        if not writer.strip():
            raise InputError("lake writer name: must not be empty")
        self.lake = Lake(root)
        self.writer = percent_encode(writer, safe="")
        self._seq = itertools.count(1)

    def write(self, table: pa.Table) -> int:
        name = f"{self.writer}-{time.time_ns():020d}-{next(self._seq):06d}"
        files = self.lake.write(table, batch_id=name)
        for path in files:
            fsync_path(path)
        for directory in {p.parent for p in files}:
            fsync_path(directory)
        return int(table.num_rows)

    def close(self) -> None:
        self.lake.close()


def _partition_start_ns(hour_dir: Path) -> int | None:
    """The first ns of a `date=YYYY-MM-DD/hour=H` directory, or None for a foreign name."""
    try:
        day = datetime.strptime(hour_dir.parent.name.removeprefix("date="), "%Y-%m-%d")
        hour = int(hour_dir.name.removeprefix("hour="))
    except ValueError:
        return None
    if not 0 <= hour <= 23:
        return None
    return (int(day.replace(tzinfo=UTC).timestamp()) + hour * 3600) * 1_000_000_000


def _remove_empty(directory: Path, stop: Path) -> None:
    """Remove `directory` and its parents up to `stop` (exclusive) while they are empty."""
    while directory != stop:
        try:
            directory.rmdir()
        except OSError:
            return  # not empty (another batch, a temp file): leave it
        directory = directory.parent

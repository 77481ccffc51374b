"""Where decided rows go: anything with `write(table) -> int` that is durable when it returns.

    Sink          the protocol the collector writes through
    ParquetSink   the fallback: one Parquet file per write, hour-partitioned, fsynced
    StoreSink     flowtrail.store's DuckDB Store (idempotent on exporter, flow_id, state, end_ns)

The collector marks rows as stored in its write-ahead log only after `write` returns, so a
crash between the two re-writes those rows on replay: harmless for an idempotent sink
(the Store), a duplicate for the Parquet fallback (see docs/collector.md).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.parquet as pq


class Sink(Protocol):
    def write(self, table: pa.Table) -> int:
        """Store the rows durably (or raise); returns how many were written."""
        ...

    def close(self) -> None: ...


class ParquetSink:
    """`<dir>/date=YYYY-MM-DD/hour=HH/<ns>-<pid>-<seq>.parquet`, by the collector's clock."""

    idempotent = False

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._seq = 0

    def write(self, table: pa.Table) -> int:
        if table.num_rows == 0:
            return 0
        now = time.time_ns()
        part = self.directory / time.strftime("date=%Y-%m-%d/hour=%H", time.gmtime(now / 1e9))
        part.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        final = part / f"{now:020d}-{os.getpid()}-{self._seq:06d}.parquet"
        tmp = part / f".{final.name}.tmp"
        pq.write_table(table, tmp, compression="zstd")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        dfd = os.open(part, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return int(table.num_rows)

    def close(self) -> None:
        return None


def read_parquet_sink(directory: str | os.PathLike[str]) -> pa.Table:
    """Every row a ParquetSink wrote (tests and small tools)."""
    files = sorted(p for p in Path(directory).rglob("*.parquet") if not p.name.startswith("."))
    if not files:
        return pa.table({})
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")

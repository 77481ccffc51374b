"""Exporters: where the agent's interval batches go, and what happens when they can't.

    Exporter      the pluggable destination: `export(table, batch_id)` delivers or raises
    ParquetDir    a Parquet file per batch, written atomically into a directory (the contract)
    NullExporter  discards (for --stdout only runs); still counts
    Spool         bounded on-disk queue of batches not yet delivered; oldest dropped first
    Delivery      exporter + spool + exponential backoff: what the agent loop talks to

A destination that fails sends batches to the spool; the spool is retried (oldest first, so
order is kept) with backoff doubling from `backoff_s` up to `backoff_max_s`, reset on success.
Spooled batches survive an agent restart: a new Delivery finds and sends them. Whatever the
spool must drop to stay under its byte bound is counted (batches and rows), never silent.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from flowtrail.errors import ExportError, InputError

# Columns with few distinct values per batch: dictionary-encoded. flow_id, ports, times and
# counters are near-unique, where a dictionary only costs time (measured: 0.63 → 0.34 µs/row).
DICTIONARY_COLUMNS = (
    "exporter",
    "region",
    "local_ip",
    "remote_ip",
    "nat_remote_ip",
    "direction",
    "state",
    "local_workload",
    "outcome",
)


def write_parquet(table: pa.Table, path: Path) -> None:
    """Write atomically (temp file + rename): a reader never sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(
            table,
            tmp,
            compression="snappy",
            use_dictionary=[c for c in DICTIONARY_COLUMNS if c in table.column_names],
        )
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class Exporter(Protocol):
    name: str

    def export(self, table: pa.Table, batch_id: str) -> None:
        """Deliver one batch or raise (OSError / ExportError); must be idempotent per batch_id."""
        ...


class ParquetDir:
    """`<directory>/flows-<batch_id>.parquet`, atomically (readers never see a partial file)."""

    name = "parquet"

    def __init__(self, directory: str | os.PathLike[str], prefix: str = "flows") -> None:
        self.directory = Path(directory)
        self.prefix = prefix

    def export(self, table: pa.Table, batch_id: str) -> None:
        write_parquet(table, self.directory / f"{self.prefix}-{batch_id}.parquet")


class NullExporter:
    """Accepts and forgets every batch (the human view needs no destination)."""

    name = "none"

    def export(self, table: pa.Table, batch_id: str) -> None:
        return None


class TableExporter:
    """One contract table through an exporter that sends several: `export(table, batch_id,
    kind)` (the collector client)."""

    def __init__(self, inner: Exporter, kind: str) -> None:
        self.inner, self.kind, self.name = inner, kind, inner.name

    @property
    def stats(self) -> dict[str, int]:
        """The inner exporter's own counters (a collector's refusals among them), if any."""
        stats = getattr(self.inner, "stats", None)
        return dict(stats) if isinstance(stats, dict) else {}

    def export(self, table: pa.Table, batch_id: str) -> None:
        self.inner.export(table, batch_id, self.kind)  # type: ignore[call-arg]

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()


class Refusing:
    """For a sink that cannot take a table: every export fails, so its batches wait in the
    spool (counted, bounded) instead of being dropped unsaid."""

    def __init__(self, name: str, kind: str) -> None:
        self.name, self.kind = name, kind

    def export(self, table: pa.Table, batch_id: str) -> None:
        raise ExportError(f"--sink {self.name} cannot take the {self.kind} table")


EXPORTERS: dict[str, Callable[[str | None], Exporter]] = {}


def register_exporter(name: str, factory: Callable[[str | None], Exporter]) -> None:
    """Plug in a destination: `factory(target)` gets the --out value (may be None)."""
    EXPORTERS[name] = factory


def _parquet(target: str | None) -> Exporter:
    if not target:
        raise InputError("--sink parquet needs --out DIR")
    return ParquetDir(target)


register_exporter("parquet", _parquet)
register_exporter("none", lambda _target: NullExporter())


def make_exporter(name: str, target: str | None) -> Exporter:
    try:
        factory = EXPORTERS[name]
    except KeyError:
        raise InputError(f"--sink {name!r}: unknown; choose from {', '.join(EXPORTERS)}") from None
    return factory(target)


class Spool:
    """Batches waiting for delivery, one Parquet file each, named so that name order = age."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int) -> None:
        if max_bytes <= 0:
            raise InputError(f"spool max_bytes={max_bytes}: must be positive")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.directory.mkdir(parents=True, exist_ok=True)
        self.stats = {
            "spooled_batches": 0,
            "spooled_rows": 0,
            "spool_dropped_batches": 0,
            "spool_dropped_rows": 0,
            "spool_write_failed_rows": 0,
        }

    def pending(self) -> list[Path]:
        return sorted(p for p in self.directory.glob("*.parquet") if not p.name.startswith("."))

    def bytes_used(self) -> int:
        total = 0
        for p in self.pending():
            try:
                total += p.stat().st_size
            except FileNotFoundError:
                continue
        return total

    def put(self, table: pa.Table, batch_id: str) -> bool:
        """Keep `table` for later; False when it could not be kept (counted as dropped)."""
        try:
            write_parquet(table, self.directory / f"{batch_id}.parquet")
        except OSError:
            self.stats["spool_write_failed_rows"] += table.num_rows
            return False
        self.stats["spooled_batches"] += 1
        self.stats["spooled_rows"] += table.num_rows
        self._enforce_bound()
        return True

    def _enforce_bound(self) -> None:
        files = self.pending()
        sizes = {p: p.stat().st_size for p in files}
        total = sum(sizes.values())
        for p in files:  # oldest first
            if total <= self.max_bytes:
                break
            self.stats["spool_dropped_rows"] += _rows_in(p)
            self.stats["spool_dropped_batches"] += 1
            p.unlink(missing_ok=True)
            total -= sizes[p]

    @staticmethod
    def read(path: Path) -> pa.Table:
        return pq.read_table(path)


def _rows_in(path: Path) -> int:
    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except (OSError, pa.ArrowInvalid):
        return 0


class Delivery:
    """Sends batches through an exporter, spooling and retrying with backoff when it fails."""

    def __init__(
        self,
        exporter: Exporter,
        spool: Spool | None = None,
        *,
        backoff_s: float = 1.0,
        backoff_max_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.exporter = exporter
        self.spool = spool
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.clock = clock
        self._delay = backoff_s
        self._next_try = 0.0
        self._seq = 0
        self.last_error: str | None = None
        self.stats = {
            "exported_batches": 0,
            "exported_rows": 0,
            "export_failures": 0,
            "export_dropped_rows": 0,  # failed with no spool to keep them
        }

    def new_batch_id(self) -> str:
        """Sortable and unique within this host: wall-clock ns, then a sequence number."""
        self._seq += 1
        return f"{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}"

    def _try(self, table: pa.Table, batch_id: str) -> bool:
        try:
            self.exporter.export(table, batch_id)
        except (OSError, ExportError) as exc:
            self.stats["export_failures"] += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._next_try = self.clock() + self._delay
            self._delay = min(self._delay * 2, self.backoff_max_s)
            return False
        self._delay = self.backoff_s
        self.stats["exported_batches"] += 1
        self.stats["exported_rows"] += table.num_rows
        return True

    def submit(self, table: pa.Table, batch_id: str | None = None) -> None:
        """Deliver now if nothing older waits and the destination is not in backoff; else spool."""
        batch_id = batch_id or self.new_batch_id()
        if self.spool is not None and (self.spool.pending() or self.clock() < self._next_try):
            self.spool.put(table, batch_id)  # keep order behind what already waits
            self.retry()
            return
        if self._try(table, batch_id):
            return
        if self.spool is None:
            self.stats["export_dropped_rows"] += table.num_rows
            return
        self.spool.put(table, batch_id)

    def retry(self, force: bool = False) -> int:
        """Send spooled batches, oldest first, if the backoff allows; returns how many went."""
        if self.spool is None or (not force and self.clock() < self._next_try):
            return 0
        sent = 0
        for path in self.spool.pending():
            try:
                table = Spool.read(path)
            except (OSError, pa.ArrowInvalid):
                self.spool.stats["spool_dropped_batches"] += 1  # unreadable: cannot be sent
                path.unlink(missing_ok=True)
                continue
            if not self._try(table, path.stem):
                break
            path.unlink(missing_ok=True)
            sent += 1
        return sent

    def metrics(self) -> dict[str, int]:
        out = dict(self.stats)
        if self.spool is not None:
            out.update(self.spool.stats)
            out["spool_pending_batches"] = len(self.spool.pending())
            out["spool_bytes"] = self.spool.bytes_used()
        return out

"""The write-ahead log: an accepted batch is on disk (fsync) before the sender hears "ok".

Segments `<seq>.wal` in one directory; each holds records framed as

    magic "FTW1" | header length u32 | body length u64 | crc32 of header+body u32 | header | body

The header is JSON (kind, exporter, batch id, receive time, first row id); the body is the
batch's Arrow IPC stream exactly as received, or for a `stored` record the runs of row ids
the sink has durably taken. A torn record at a segment's tail (a crash mid-write) fails its
length or CRC check and ends that segment's replay: it was never acknowledged.

Writers append under a lock and then call `sync(position)`; one fsync covers every append
made before it started (group commit), so concurrent senders share the cost.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAGIC = b"FTW1"
_PREFIX = struct.Struct("<4sIQI")
SUFFIX = ".wal"


@dataclass(frozen=True)
class Record:
    segment: int
    header: dict[str, Any]
    body: bytes


@dataclass(frozen=True)
class Appended:
    segment: int
    position: int  # bytes ever appended, across segments: what `sync` waits for
    first_row: int


def fsync_path(path: Path) -> None:
    """Make a file's data, or a directory's entries, durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriteAheadLog:
    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        segment_bytes: int = 64 << 20,
        segment_age_ns: int = 60 * 10**9,
        fsync: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.segment_age_ns = segment_age_ns
        self.fsync = fsync
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._fd = -1
        self._segment = 0
        self._segment_size = 0
        self._segment_opened_ns = 0
        self._written = 0
        self._synced = 0
        self.next_row = 0
        self.torn_records = 0  # records that failed their checks on replay (never acked)
        self.syncs = 0

    # -- replay ------------------------------------------------------------------------
    def segments(self) -> list[int]:
        out = []
        for p in self.directory.glob(f"*{SUFFIX}"):
            try:
                out.append(int(p.stem))
            except ValueError:
                continue
        return sorted(out)

    def path(self, segment: int) -> Path:
        return self.directory / f"{segment:012d}{SUFFIX}"

    def replay(self) -> Iterator[Record]:
        """Every intact record of every segment, oldest first (before `open`)."""
        for seg in self.segments():
            data = self.path(seg).read_bytes()
            pos = 0
            while pos < len(data):
                if len(data) - pos < _PREFIX.size:
                    self.torn_records += 1
                    break
                magic, hlen, blen, crc = _PREFIX.unpack_from(data, pos)
                start = pos + _PREFIX.size
                end = start + hlen + blen
                if magic != MAGIC or end > len(data) or zlib.crc32(data[start:end]) != crc:
                    self.torn_records += 1
                    break
                header = json.loads(data[start : start + hlen])
                yield Record(seg, header, data[start + hlen : end])
                pos = end

    # -- writing -----------------------------------------------------------------------
    def open(self, now_ns: int, next_row: int) -> None:
        """Start writing a fresh segment after the last one found (never append to old ones)."""
        self.next_row = next_row
        with self._lock:
            existing = self.segments()
            self._start_segment((existing[-1] + 1) if existing else 1, now_ns)

    def _start_segment(self, segment: int, now_ns: int) -> None:
        fd = os.open(self.path(segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        if self.fsync:
            fsync_path(self.directory)
        old = self._fd
        self._fd, self._segment = fd, segment
        self._segment_size, self._segment_opened_ns = 0, now_ns
        if old >= 0:
            if self.fsync:
                os.fsync(old)  # everything written to the old segment is now durable
            os.close(old)

    @property
    def current_segment(self) -> int:
        return self._segment

    def append(self, header: dict[str, Any], body: bytes, rows: int, now_ns: int) -> Appended:
        """Write one record (not yet durable: call `sync`). Assigns `rows` row ids."""
        with self._lock:
            if self._fd < 0:
                raise RuntimeError("write-ahead log is not open")
            if self._segment_size and (
                self._segment_size >= self.segment_bytes
                or now_ns - self._segment_opened_ns >= self.segment_age_ns
            ):
                self._start_segment(self._segment + 1, now_ns)
            first = self.next_row
            self.next_row += rows
            head = json.dumps({**header, "row": first}, separators=(",", ":")).encode()
            crc = zlib.crc32(body, zlib.crc32(head))
            frame = _PREFIX.pack(MAGIC, len(head), len(body), crc) + head
            try:
                _write_all(self._fd, frame)
                _write_all(self._fd, body)
            except OSError:
                # A part-written record ends its segment's replay; later records must not
                # follow it there, so they go to a fresh segment.
                self._start_segment(self._segment + 1, now_ns)
                raise
            size = len(frame) + len(body)
            self._segment_size += size
            self._written += size
            return Appended(self._segment, self._written, first)

    def sync(self, position: int) -> None:
        """Return once every byte up to `position` is on disk."""
        if not self.fsync:
            return
        with self._sync_lock:
            if self._synced >= position:
                return
            with self._lock:
                target = self._written
                fd = os.dup(self._fd)  # rotation may close the original meanwhile
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self.syncs += 1
            self._synced = max(self._synced, target)

    def delete(self, segment: int) -> None:
        if segment == self._segment:
            raise ValueError("cannot delete the segment being written")
        self.path(segment).unlink(missing_ok=True)

    def bytes_on_disk(self) -> int:
        total = 0
        for seg in self.segments():
            try:
                total += self.path(seg).stat().st_size
            except FileNotFoundError:
                continue
        return total

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                if self.fsync:
                    os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]

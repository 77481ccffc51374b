"""Flows waiting for evidence, retrievable by row handle (their other end arrived) and deadline.

A collector may hold many waiting flows (those bound for the event fallback wait for the
feed's watermark, minutes), so nothing here costs O(waiting) per tick: flows are appended to
a store, found by row handle through a bounded ring and by deadline through ten-second
buckets, and taken out by marking them dead. The store is compacted once the dead outnumber
the living, which keeps every operation O(1) amortised per flow.
"""

from __future__ import annotations

import heapq

import numpy as np
import numpy.typing as npt

from flowtrail.engine import records

Rec = npt.NDArray[np.void]
I64 = npt.NDArray[np.int64]

RING_CAP = 1 << 22  # 32 MiB of positions at most

BUCKET_NS = 10_000_000_000  # coarse: few buckets per tick; exact deadlines are checked


def _ring_size(top: int, current: int) -> int:
    """The ring size for handles below `top`: a power of two, at most RING_CAP."""
    want = 1 << max(int(top - 1).bit_length(), 12)
    return max(current, min(want, RING_CAP))


class PendingPool:
    def __init__(self, dtype: np.dtype) -> None:  # type: ignore[type-arg]
        self._dtype = dtype
        self._reset(np.zeros(0, dtype))

    def _reset(self, rec: Rec) -> None:
        cap = max(2 * len(rec), 1 << 12)
        self._store = np.zeros(cap, self._dtype)
        records.put(self._store, 0, rec)
        self._alive = np.zeros(cap, bool)
        self._alive[: len(rec)] = True
        self._size = len(rec)
        self._live = len(rec)
        # Where each row handle sits in the store: a ring indexed by handle mod its size,
        # so memory is bounded however many handles are issued. Should a newer flow take an
        # older one's slot, the older one is still decided, at its deadline (same answer).
        top = int(rec["row"].max()) + 1 if len(rec) else 0
        self._ring = np.full(_ring_size(top, 0), -1, np.int64)
        self._buckets: dict[int, list[I64]] = {}
        self._heap: list[int] = []
        if len(rec):
            rows = np.arange(len(rec), dtype=np.int64)
            self._index(rec["row"], rows)
            self._file(rows)

    def _index(self, handles: I64, rows: I64) -> None:
        size = _ring_size(int(handles.max()) + 1, len(self._ring))
        if size > len(self._ring):  # grow (up to the cap): re-index the living
            self._ring = np.full(size, -1, np.int64)
            live = np.flatnonzero(self._alive[: self._size])
            self._ring[self._store["row"][live] & (size - 1)] = live
        self._ring[handles & (len(self._ring) - 1)] = rows

    def __len__(self) -> int:
        return self._live

    @property
    def nbytes(self) -> int:
        return self._store.nbytes + self._alive.nbytes + self._ring.nbytes

    def _file(self, rows: I64) -> None:
        """Put rows into the bucket of their deadline."""
        bucket = self._store["deadline"][rows] // BUCKET_NS
        order = np.argsort(bucket, kind="stable")
        rows, bucket = rows[order], bucket[order]
        cuts = np.flatnonzero(np.diff(bucket)) + 1
        for b, part in zip(bucket[np.concatenate([[0], cuts])], np.split(rows, cuts), strict=True):
            key = int(b)
            if key not in self._buckets:
                self._buckets[key] = []
                heapq.heappush(self._heap, key)
            self._buckets[key].append(part)

    def add(self, rec: Rec) -> None:
        n = len(rec)
        if n == 0:
            return
        if self._size + n > len(self._store):
            cap = max(2 * len(self._store), self._size + n)
            store = np.empty(cap, self._dtype)  # only [:size] is ever read
            records.put(store, 0, self._store[: self._size])
            alive = np.zeros(cap, bool)
            alive[: self._size] = self._alive[: self._size]
            self._store, self._alive = store, alive
        a, z = self._size, self._size + n
        records.put(self._store, a, rec)  # appended as one block: a copy, not a scatter
        self._alive[a:z] = True
        rows = np.arange(a, z, dtype=np.int64)
        self._size += n
        self._live += n
        self._index(rec["row"], rows)
        self._file(rows)

    def take_due(self, now: int) -> Rec:
        """Remove and return the flows whose deadline is <= now."""
        parts: list[I64] = []
        last = now // BUCKET_NS
        kept: I64 | None = None
        while self._heap and self._heap[0] <= last:
            key = heapq.heappop(self._heap)
            rows = np.concatenate(self._buckets.pop(key))
            if key == last:  # the current bucket: only what is due by now
                later = self._store["deadline"][rows] > now
                kept, rows = rows[later], rows[~later]
            parts.append(rows)
        if kept is not None and len(kept):
            self._buckets[last] = [kept]
            heapq.heappush(self._heap, last)
        return self._remove(np.concatenate(parts) if parts else np.empty(0, np.int64))

    def take_rows(self, handles: I64) -> Rec:
        """Remove and return the waiting flows among these row handles."""
        if len(handles) == 0 or self._live == 0:
            return np.zeros(0, self._dtype)
        handles = handles[handles >= 0]
        rows = self._ring[handles & (len(self._ring) - 1)]
        hit = rows >= 0
        rows, handles = rows[hit], handles[hit]
        # A slot may hold a flow already taken out, or a newer flow with another handle.
        rows = rows[self._store["row"][rows] == handles]
        return self._remove(np.unique(rows))

    def _remove(self, rows: I64) -> Rec:
        rows = rows[self._alive[rows]]
        self._alive[rows] = False
        self._live -= len(rows)
        out = records.take(self._store, rows)
        if self._size > (1 << 16) and self._live < self._size // 2:
            self._reset(records.take(self._store[: self._size], self._alive[: self._size]))
        return out

    def next_deadline(self) -> int | None:
        while self._heap:
            key = self._heap[0]
            rows = np.concatenate(self._buckets[key])
            rows = rows[self._alive[rows]]
            if len(rows):
                self._buckets[key] = [rows]
                return int(self._store["deadline"][rows].min())
            heapq.heappop(self._heap)
            del self._buckets[key]
        return None

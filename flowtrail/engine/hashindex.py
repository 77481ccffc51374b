"""A vectorised open-addressing hash multimap: uint64 hash → row numbers.

Binary search over large sorted runs costs ~20 cache misses per probe; linear probing in a
half-empty table costs one or two. Inserts and lookups are done for a whole batch at once,
in rounds: every round moves all unfinished probes one slot along, in a few numpy steps.
Equal hashes may be stored many times (the same connection's snapshots); a lookup returns
every stored row whose hash equals the query's. Callers check their keys exactly.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

_EMPTY = np.uint64(0)


def _nonzero(h: U64) -> U64:
    # 0 marks an empty slot, so a stored hash is never 0.
    return h | np.uint64(1)


class HashMultimap:
    def __init__(self, capacity: int = 1 << 12) -> None:
        size = 1 << max(int(capacity - 1).bit_length(), 4)
        self._hash = np.zeros(size, np.uint64)
        self._row = np.zeros(size, np.int64)
        self.count = 0

    @property
    def capacity(self) -> int:
        return len(self._hash)

    @property
    def nbytes(self) -> int:
        return self._hash.nbytes + self._row.nbytes

    def insert(self, hashes: U64, rows: I64) -> None:
        if len(hashes) == 0:
            return
        if 2 * (self.count + len(hashes)) > self.capacity:
            self._grow(2 * (self.count + len(hashes)))
        self._place(_nonzero(hashes), rows)

    def _place(self, hashes: U64, rows: I64) -> None:
        mask = np.uint64(self.capacity - 1)
        slot = (hashes & mask).astype(np.int64)
        todo = np.arange(len(hashes))
        while len(todo):
            s = slot[todo]
            free = self._hash[s] == _EMPTY
            cand, cs = todo[free], s[free]
            # Several probes may aim at one free slot: all write, one write survives, and
            # reading the slot back (rows are unique) tells each probe whether it won.
            self._hash[cs] = hashes[cand]
            self._row[cs] = rows[cand]
            won = self._row[cs] == rows[cand]
            self.count += int(np.count_nonzero(won))
            placed = np.zeros(len(todo), bool)
            placed[np.flatnonzero(free)[won]] = True
            todo = todo[~placed]
            slot[todo] = (slot[todo] + 1) & int(mask)

    def _grow(self, need: int) -> None:
        keep = self._hash != _EMPTY
        hashes, rows = self._hash[keep], self._row[keep]
        size = 1 << int(max(need, 16) - 1).bit_length()
        self._hash = np.zeros(size, np.uint64)
        self._row = np.zeros(size, np.int64)
        self.count = 0
        self._place(hashes, rows)

    def rebuild(self, hashes: U64, rows: I64) -> None:
        """Replace the whole contents (used to forget rows past their retention)."""
        size = 1 << int(max(2 * len(hashes), 16) - 1).bit_length()
        self._hash = np.zeros(size, np.uint64)
        self._row = np.zeros(size, np.int64)
        self.count = 0
        self._place(_nonzero(hashes), rows)

    def lookup(self, hashes: U64) -> tuple[I64, I64]:
        """Every (query index, stored row) pair whose hashes are equal."""
        h = _nonzero(hashes)
        mask = self.capacity - 1
        slot = (h & np.uint64(mask)).astype(np.int64)
        todo = np.arange(len(h))
        out_q: list[I64] = []
        out_r: list[I64] = []
        while len(todo):
            s = slot[todo]
            stored = self._hash[s]
            hit = stored == h[todo]
            if hit.any():
                out_q.append(todo[hit])
                out_r.append(self._row[s[hit]])
            go_on = stored != _EMPTY
            todo = todo[go_on]
            slot[todo] = (slot[todo] + 1) & mask
        if not out_q:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return np.concatenate(out_q), np.concatenate(out_r)

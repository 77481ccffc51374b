"""A vectorised open-addressing hash multimap: uint64 hash → row numbers.

Binary search over large sorted runs costs ~20 cache misses per probe; linear probing in a
half-empty table costs one or two. Inserts and lookups take a whole batch at once and run in
a compiled kernel (flowtrail.engine.kernels).
Equal hashes may be stored many times (the same connection's snapshots); a lookup returns
every stored row whose hash equals the query's. Callers check their keys exactly.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from flowtrail.engine import kernels

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

_EMPTY = np.uint64(0)  # an empty slot; stored hashes have their low bit set, so never 0


_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)


def mix64(x: npt.NDArray[np.integer]) -> U64:  # type: ignore[type-arg]
    """A 64-bit finaliser (splitmix64's): keys in sequence must not land in sequence, or
    linear probing builds one long cluster."""
    with np.errstate(over="ignore"):
        h = x.astype(np.uint64)
        h = (h ^ (h >> np.uint64(30))) * _M2
        h = (h ^ (h >> np.uint64(27))) * _M3
        return h ^ (h >> np.uint64(31))


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
    def arrays(self) -> tuple[U64, I64]:
        """The raw table (hashes, rows), for compiled kernels that probe it themselves."""
        return self._hash, self._row

    @property
    def nbytes(self) -> int:
        return self._hash.nbytes + self._row.nbytes

    def insert(self, hashes: U64, rows: I64) -> None:
        if len(hashes) == 0:
            return
        self.reserve(len(hashes))
        self._place(hashes, rows)

    def reserve(self, n: int) -> None:
        """Room for n more entries at a load of at most one half."""
        if 2 * (self.count + n) > self.capacity:
            self._grow(2 * (self.count + n))

    def _place(self, hashes: U64, rows: I64) -> None:
        kernels.hash_place(
            self._hash, self._row, np.ascontiguousarray(hashes), rows.astype(np.int64)
        )
        self.count += len(hashes)

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
        self._place(hashes, rows)

    def lookup(self, hashes: U64) -> tuple[I64, I64]:
        """Every (query index, stored row) pair whose hashes are equal."""
        if len(hashes) == 0 or self.count == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        q, r = kernels.hash_lookup(self._hash, self._row, np.ascontiguousarray(hashes))
        return q, r

"""The other end's own record of the same connection: the most exact heartbeat there is.

When both ends run an agent, the server's inbound row for a connection names the server's
workload, and its 4-tuple is the client's row reversed. Finding it by the pairing rule
(flowtrail/pairing.py: reversed 4-tuple, pair times within the tolerance) names the remote side
of the very same connection, even for connections too short for ownership ranges to cover
safely under clock skew. Rows come in any order here, so the rule's one-to-one part becomes:
every row the rule admits must name the same owner, else the answer is CONFLICT.

Matching is by hash of the 4-tuple, then checked exactly, so a hash collision never matches.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from flowtrail.engine import kernels, records
from flowtrail.engine.hashindex import HashMultimap, mix64

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]

NO_MATCH = -1
CONFLICT = -2

_M1 = np.uint64(0x9E3779B97F4A7C15)


def tuple_hash(a_key: U64, a_port: I32, b_key: U64, b_port: I32) -> U64:
    """Hash of an ordered 4-tuple (a end, b end); collisions are checked exactly later."""
    with np.errstate(over="ignore"):
        h = mix64(a_key * _M1 + a_port.astype(np.uint64))
        h = mix64(h ^ (b_key * _M1 + b_port.astype(np.uint64)))
    return h


PEER_DTYPE = np.dtype(
    [
        ("hash", np.uint64),
        ("pair", np.int64),  # pair time (flowtrail/pairing.py)
        ("local_key", np.uint64),
        ("remote_key", np.uint64),
        ("seen", np.int64),
        ("row", np.int64),  # the caller's handle of the row, to wake it when its peer comes
        ("local_port", np.int32),
        ("remote_port", np.int32),
        ("owner", np.int32),
        ("exporter", np.int32),  # who sent it: two hosts' rows of one end never agree
    ]
)


class PeerIndex:
    """Recent attributed rows, findable by their 4-tuple and pair time.

    Rows are appended to a growing store; a vectorised hash multimap finds them by 4-tuple
    hash in O(1) expected probes. Rows past the retention are forgotten in bulk.
    """

    def __init__(self, *, retention_ns: int) -> None:
        self.retention_ns = retention_ns
        self._store = np.zeros(1 << 12, PEER_DTYPE)
        self._size = 0
        self._table = HashMultimap()
        self._compacted_size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        return self._store.nbytes + self._table.nbytes

    def add(
        self,
        local_key: U64,
        local_port: I32,
        remote_key: U64,
        remote_port: I32,
        pair: I64,
        owner: I32,
        now: int | I64,
        rows: I64,
        exporter: I32 | None = None,
    ) -> None:
        """Index attributed rows seen at `now` (one time, or one per row); `rows`: the
        caller's handles; `exporter` None: all one."""
        n = len(local_key)
        if n == 0:
            return
        if self._size + n > len(self._store):
            grown = np.empty(max(2 * len(self._store), self._size + n), PEER_DTYPE)
            records.put(grown, 0, self._store[: self._size])  # only [:size] is ever read
            self._store = grown
        self._table.reserve(n)
        table_hash, table_row = self._table.arrays
        # One compiled pass writes the records and indexes them (field by field, numpy
        # made ten strided passes over the new records and one more to place their hashes).
        kernels.peer_append(
            self._store, self._size, table_hash, table_row,
            local_key, local_port, remote_key, remote_port, pair, owner,
            np.atleast_1d(np.asarray(now, np.int64)), rows,
            np.zeros(1, np.int32) if exporter is None else exporter,
        )  # fmt: skip
        self._table.count += n
        self._size += n

    def evict(self, now: int) -> None:
        """Forget rows first seen more than the retention ago.

        Compacting rebuilds the table, so it happens only once the index has doubled since
        the last compaction: O(1) amortised per row.
        """
        if self._size < 2 * max(self._compacted_size, 1 << 16):
            return
        live = self._store[: self._size]
        kept = records.take(live, live["seen"] >= now - self.retention_ns)
        self._store = np.zeros(max(2 * len(kept), 1 << 12), PEER_DTYPE)
        records.put(self._store, 0, kept)
        self._size = len(kept)
        self._compacted_size = len(kept)
        self._table.rebuild(
            np.ascontiguousarray(kept["hash"]), np.arange(len(kept), dtype=np.int64)
        )

    def match(
        self,
        local_key: U64,
        local_port: I32,
        remote_key: U64,
        remote_port: I32,
        pair: I64,
        tolerance_ns: int,
    ) -> tuple[I32, I64]:
        """The owner named by the other end's row of each connection, and those rows' handles.

        Returns the owner where every matching row agrees, CONFLICT where they disagree or
        come from more than one exporter (the other end is one host: two claiming it is a
        lie or a misconfiguration, and neither is believed), NO_MATCH where no row matches; and
        the handles of all matching rows.
        """
        n = len(local_key)
        if n == 0 or self._size == 0:
            return np.full(n, NO_MATCH, np.int32), np.empty(0, np.int64)
        table_hash, table_row = self._table.arrays
        out, partners = kernels.peer_match(
            table_hash, table_row, self._store,
            tuple_hash(remote_key, remote_port, local_key, local_port),
            local_key, local_port, remote_key, remote_port, pair, tolerance_ns,
        )  # fmt: skip
        return out, partners

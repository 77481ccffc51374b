"""Addresses that source-translate other hosts' connections: no time range speaks for them.

A NAT gateway's address (a router's masquerade, a Docker host's uplink, a NAT instance) is
its own workload's address for the gateway's own sockets, and at the same moment the source
of every connection it translates for hosts behind it. A server's row of a translated
connection names the gateway's address and a port the gateway's workload never owned, so the
gateway's heartbeat (or an event naming its owner) would name the wrong caller. The gateway's
agent marks its rows `local_translating`; from then on the address is named only by the other
end's own row of the very same connection (an exact 4-tuple), never by ranges or events.

Kept per address with the last time (collector clock) a row said so, and forgotten after the
engine's retention like the ranges are.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]


class TranslatingAddresses:
    """A sorted set of address keys, each with when it was last said to translate."""

    def __init__(self) -> None:
        self._key: U64 = np.empty(0, np.uint64)
        self._seen: I64 = np.empty(0, np.int64)

    def __len__(self) -> int:
        return len(self._key)

    @property
    def nbytes(self) -> int:
        return self._key.nbytes + self._seen.nbytes

    def add(self, key: U64, now: int | I64) -> None:
        """Addresses said to translate at `now` (one time, or one per address)."""
        if len(key) == 0:
            return
        keys = np.concatenate([self._key, np.asarray(key, np.uint64)])
        seen = np.concatenate([self._seen, np.broadcast_to(np.asarray(now, np.int64), len(key))])
        order = np.lexsort((-seen, keys))  # per key, the latest first
        keys, seen = keys[order], seen[order]
        first = np.ones(len(keys), dtype=bool)
        first[1:] = keys[1:] != keys[:-1]
        self._key, self._seen = keys[first], seen[first]

    def contains(self, key: U64) -> npt.NDArray[np.bool_]:
        if len(self._key) == 0 or len(key) == 0:
            return np.zeros(len(key), dtype=bool)
        at = np.minimum(np.searchsorted(self._key, key), len(self._key) - 1)
        return self._key[at] == key  # type: ignore[no-any-return]

    def evict(self, before: int) -> int:
        """Forget addresses last said to translate before `before`; returns how many."""
        keep = self._seen >= before
        dropped = int(len(keep) - np.count_nonzero(keep))
        if dropped:
            self._key, self._seen = self._key[keep], self._seen[keep]
        return dropped

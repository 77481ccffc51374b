"""The other end's own record of the same connection: the most exact heartbeat there is.

When both ends run an agent, the server's inbound row for a connection names the server's
workload, and its 4-tuple is the client's row reversed. Matching the reversed 4-tuple within a
start-time tolerance names the remote side of the very same connection, even for connections
too short for ownership ranges to cover safely under clock skew.

Rows are kept in two sorted levels (a small recent one, re-sorted every update, and a large
base one merged into rarely), so an update costs little however large the index grows.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from flowtrail.engine.keyed_search import expand_ranges, key_blocks, search_in_blocks

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]

NO_MATCH = -1
CONFLICT = -2

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)


def _mix(x: U64) -> U64:
    x = x ^ (x >> np.uint64(30))
    x = x * _M2
    x = x ^ (x >> np.uint64(27))
    x = x * _M3
    return x ^ (x >> np.uint64(31))


def tuple_hash(a_key: U64, a_port: I32, b_key: U64, b_port: I32) -> U64:
    """Hash of an ordered 4-tuple (a end, b end); collisions are checked exactly later."""
    with np.errstate(over="ignore"):
        h = _mix(a_key * _M1 + a_port.astype(np.uint64))
        h = _mix(h ^ (b_key * _M1 + b_port.astype(np.uint64)))
    return h


_FIELDS = ("hash", "start", "local_key", "local_port", "remote_key", "remote_port", "owner", "seen")


class _Level:
    def __init__(self, cols: dict[str, np.ndarray] | None = None) -> None:
        self.cols: dict[str, np.ndarray] = cols if cols is not None else _empty()

    def __len__(self) -> int:
        return len(self.cols["hash"])

    @staticmethod
    def build(cols: dict[str, np.ndarray]) -> _Level:
        order = np.lexsort((cols["start"], cols["hash"]))
        return _Level({k: v[order] for k, v in cols.items()})


def _empty() -> dict[str, np.ndarray]:
    return {
        "hash": np.empty(0, np.uint64),
        "start": np.empty(0, np.int64),
        "local_key": np.empty(0, np.uint64),
        "local_port": np.empty(0, np.int32),
        "remote_key": np.empty(0, np.uint64),
        "remote_port": np.empty(0, np.int32),
        "owner": np.empty(0, np.int32),
        "seen": np.empty(0, np.int64),
    }


class PeerIndex:
    """Recent attributed rows, findable by their 4-tuple and start time."""

    def __init__(self, *, retention_ns: int, recent_limit: int = 1 << 16) -> None:
        self.retention_ns = retention_ns
        self.recent_limit = recent_limit
        self._base = _Level()
        self._recent = _Level()

    def __len__(self) -> int:
        return len(self._base) + len(self._recent)

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for lvl in (self._base, self._recent) for v in lvl.cols.values())

    def add(
        self,
        local_key: U64,
        local_port: I32,
        remote_key: U64,
        remote_port: I32,
        start: I64,
        owner: I32,
        now: int,
    ) -> None:
        if len(local_key) == 0:
            return
        new = {
            "hash": tuple_hash(local_key, local_port, remote_key, remote_port),
            "start": start,
            "local_key": local_key,
            "local_port": local_port,
            "remote_key": remote_key,
            "remote_port": remote_port,
            "owner": owner,
            "seen": np.full(len(local_key), now, np.int64),
        }
        merged = {k: np.concatenate([self._recent.cols[k], new[k]]) for k in _FIELDS}
        self._recent = _Level.build(merged)
        if len(self._recent) > max(self.recent_limit, len(self._base) // 4):
            self._compact(now)

    def _compact(self, now: int) -> None:
        both = {k: np.concatenate([self._base.cols[k], self._recent.cols[k]]) for k in _FIELDS}
        keep = both["seen"] >= now - self.retention_ns
        self._base = _Level.build({k: v[keep] for k, v in both.items()})
        self._recent = _Level()

    def evict(self, now: int) -> None:
        self._compact(now)

    def match(
        self,
        local_key: U64,
        local_port: I32,
        remote_key: U64,
        remote_port: I32,
        start: I64,
        tolerance_ns: int,
    ) -> I32:
        """The owner named by the other end's row of each connection.

        Returns the owner where every matching row agrees, CONFLICT where they disagree,
        NO_MATCH where no row matches.
        """
        n = len(local_key)
        q_hash = tuple_hash(remote_key, remote_port, local_key, local_port)
        o_min = np.full(n, np.iinfo(np.int32).max, np.int64)
        o_max = np.full(n, np.iinfo(np.int32).min, np.int64)
        for level in (self._base, self._recent):
            c = level.cols
            if len(level) == 0:
                continue
            b_lo, b_hi = key_blocks(c["hash"], q_hash)
            found = b_hi > b_lo
            if not found.any():
                continue
            qi = np.flatnonzero(found)
            lo = search_in_blocks(
                c["start"], b_lo[qi], b_hi[qi], start[qi] - tolerance_ns, side="left"
            )
            hi = search_in_blocks(
                c["start"], b_lo[qi], b_hi[qi], start[qi] + tolerance_ns, side="right"
            )
            q, pos = expand_ranges(lo, hi)
            if len(pos) == 0:
                continue
            query = qi[q]
            exact = (
                (c["local_key"][pos] == remote_key[query])
                & (c["local_port"][pos] == remote_port[query])
                & (c["remote_key"][pos] == local_key[query])
                & (c["remote_port"][pos] == local_port[query])
            )
            query, pos = query[exact], pos[exact]
            np.minimum.at(o_min, query, c["owner"][pos])
            np.maximum.at(o_max, query, c["owner"][pos])
        out = np.full(n, NO_MATCH, np.int32)
        hit = o_max >= o_min
        agree = hit & (o_min == o_max)
        out[agree] = o_min[agree].astype(np.int32)
        out[hit & ~agree] = CONFLICT
        return out

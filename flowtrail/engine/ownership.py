"""IP ownership time ranges built from heartbeats (who owned this IP during this window?).

Every flow row with a local_workload says: this workload owned local_ip during
[start_ns, end_ns], and the row's exporter (host) says it was there. Per address we keep
ascending, non-overlapping segments (start, end, owner, exporter). Evidence from the same
owner on the same exporter merges; anything else gets its own segment; where two claimants
claim the same instant the stretch becomes AMBIGUOUS, so it can never answer a lookup. A
claimant is an (owner, exporter) pair: one address held by two hosts at once is a conflict
even when both name the same workload (one of them is lying, or misconfigured, and nothing
says which), so a host that spoofs an address can never win it, only spoil it. Late evidence
simply lands in its place: the segments of each touched address are recomputed from
scratch, vectorised over all touched addresses at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from flowtrail.engine import kernels
from flowtrail.engine.keyed_search import expand_ranges, key_blocks

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]

AMBIGUOUS = -1  # owner value of a stretch claimed by more than one workload or exporter
NOT_COVERED = -1  # lookup answer: no single owner covers the window
CONFLICT = -2  # lookup answer: the window touches an ambiguous stretch or another owner


@dataclass(frozen=True)
class Segments:
    """Segments sorted by (key, start); per key non-overlapping and maximally merged."""

    key: U64
    start: I64
    end: I64
    owner: I32
    exporter: I32  # who claimed it (meaningless where owner is AMBIGUOUS)

    @staticmethod
    def empty() -> Segments:
        return Segments(
            np.empty(0, np.uint64), np.empty(0, np.int64), np.empty(0, np.int64),
            np.empty(0, np.int32), np.empty(0, np.int32),
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.key)

    def take(self, idx: npt.NDArray[np.int64] | npt.NDArray[np.bool_]) -> Segments:
        return Segments(
            self.key[idx], self.start[idx], self.end[idx], self.owner[idx], self.exporter[idx]
        )


def segment(key: U64, owner: I32, start: I64, end: I64, exporter: I32 | None = None) -> Segments:
    """Turn raw claims (possibly overlapping, any order) into canonical segments.

    Claims with owner AMBIGUOUS stay ambiguous. A zero-length claim is widened to 1 ns so
    that a conflicting instant is never silently lost. `exporter` (None: all one) tells
    claimants apart: two exporters' claims of one instant are ambiguous, whatever owner.
    """
    if len(key) == 0:
        return Segments.empty()
    end = np.maximum(end, start + 1)
    if exporter is None:
        exporter = np.zeros(len(key), np.int32)
    return _split_by_claimant(*_union_per_claimant(key, owner, exporter, start, end))


def _union_per_claimant(
    key: U64, owner: I32, exporter: I32, start: I64, end: I64
) -> tuple[U64, I32, I32, I64, I64]:
    """Merge each claimant's overlapping or touching claims per key (in no particular order:
    _split_by_claimant sorts)."""
    first, last = kernels.claimant_runs(
        np.ascontiguousarray(key, np.uint64), np.ascontiguousarray(owner, np.int32),
        np.ascontiguousarray(exporter, np.int32), np.ascontiguousarray(start, np.int64),
        np.ascontiguousarray(end, np.int64), np.argsort(start),
    )  # fmt: skip
    return key[first], owner[first], exporter[first], start[first], last


def _split_by_claimant(key: U64, owner: I32, exporter: I32, start: I64, end: I64) -> Segments:
    """Cut per-claimant runs into stretches with exactly one claimant, or AMBIGUOUS."""
    n = len(key)
    ev_key = np.concatenate([key, key])
    ev_time = np.concatenate([start, end])
    ambiguous = owner == AMBIGUOUS
    weight = np.where(ambiguous, 2, 1).astype(np.int64)  # an ambiguous run alone is ambiguous
    who = np.where(ambiguous, 0, owner).astype(np.int64)
    host = np.where(ambiguous, 0, exporter).astype(np.int64)
    ev_count = np.concatenate([weight, -weight])
    ev_who = np.concatenate([who, -who])
    ev_host = np.concatenate([host, -host])
    ev_kind = np.concatenate([np.ones(n, np.int8), np.zeros(n, np.int8)])  # ends first
    order = np.lexsort((ev_kind, ev_time, ev_key))
    k, t = ev_key[order], ev_time[order]
    count = np.cumsum(ev_count[order])
    # Where exactly one run covers a stretch, these running sums are its owner and exporter.
    who_sum = np.cumsum(ev_who[order])
    host_sum = np.cumsum(ev_host[order])
    # Elementary stretch i: [t[i], t[i+1]) on the same key, covered `count[i]` deep.
    same_key = k[:-1] == k[1:]
    keep = same_key & (t[1:] > t[:-1]) & (count[:-1] > 0)
    s_key, s_start, s_end = k[:-1][keep], t[:-1][keep], t[1:][keep]
    alone = count[:-1][keep] == 1
    s_owner = np.where(alone, who_sum[:-1][keep], AMBIGUOUS).astype(np.int32)
    s_exporter = np.where(alone, host_sum[:-1][keep], 0).astype(np.int32)
    if len(s_key) == 0:
        return Segments.empty()
    # Merge touching stretches of the same claimant (they come from elementary cuts).
    new_run = np.ones(len(s_key), dtype=bool)
    new_run[1:] = (
        (s_key[1:] != s_key[:-1])
        | (s_owner[1:] != s_owner[:-1])
        | (s_exporter[1:] != s_exporter[:-1])
        | (s_start[1:] != s_end[:-1])
    )
    run_start = np.flatnonzero(new_run)
    run_last = np.append(run_start[1:] - 1, len(s_key) - 1)
    return Segments(
        s_key[run_start], s_start[run_start], s_end[run_last], s_owner[run_start],
        s_exporter[run_start],
    )  # fmt: skip


class OwnershipRanges:
    """The per-address ownership ranges, updated in place by batches of heartbeats.

    Merging new claims rewrites the whole segment arrays (O(all segments)), so claims wait
    in a list and are merged together when the ranges are next read. A cluster node learns
    many evidence messages per tick and looks up once: one rewrite per tick instead of one per
    message (at 1M addresses a rewrite takes ~20 ms). The result is the same: segments depend
    only on the set of claims, not on how they were grouped.
    """

    # Merge anyway once this many claims wait (bounds their memory between reads).
    MAX_PENDING = 1 << 18

    def __init__(self) -> None:
        self._segments = Segments.empty()
        self._pending: list[tuple[U64, I32, I64, I64, I32]] = []
        self._pending_claims = 0

    @property
    def segments(self) -> Segments:
        """The canonical segments, with every claim added so far merged in."""
        if self._pending:
            parts = self._pending
            self._pending, self._pending_claims = [], 0
            if len(parts) == 1:
                self._merge(*parts[0])
            else:
                self._merge(*(np.concatenate([p[i] for p in parts]) for i in range(5)))
        return self._segments

    def __len__(self) -> int:
        return len(self.segments)

    @property
    def addresses(self) -> int:
        k = self.segments.key
        return int(np.count_nonzero(k[1:] != k[:-1]) + 1) if len(k) else 0

    @property
    def merged(self) -> int:
        """Segments as of the last merge: a cheap count for status pages (len() merges)."""
        return len(self._segments)

    @property
    def pending(self) -> int:
        """Claims added but not merged yet."""
        return self._pending_claims

    @property
    def nbytes(self) -> int:
        s = self._segments
        waiting = sum(sum(a.nbytes for a in p) for p in self._pending)
        held = s.key.nbytes + s.start.nbytes + s.end.nbytes + s.owner.nbytes + s.exporter.nbytes
        return held + waiting

    def add(self, key: U64, owner: I32, start: I64, end: I64, exporter: I32 | None = None) -> None:
        """Add claims (merged when the ranges are next read); `exporter` None: all one."""
        if len(key) == 0:
            return
        self._pending.append(
            (
                np.array(key, np.uint64),
                np.array(owner, np.int32),
                np.array(start, np.int64),
                np.array(end, np.int64),
                np.zeros(len(key), np.int32) if exporter is None else np.array(exporter, np.int32),
            )
        )
        self._pending_claims += len(key)
        if self._pending_claims >= self.MAX_PENDING:
            _ = self.segments

    def _merge(self, key: U64, owner: I32, start: I64, end: I64, exporter: I32) -> None:
        # Old segments that end before the earliest new claim of their address cannot merge
        # or conflict with it: they stay as they are, and only the rest is re-segmented.
        order = np.argsort(key, kind="stable")
        heads = np.concatenate([[0], np.flatnonzero(np.diff(key[order])) + 1])
        touched: U64 = key[order][heads]
        earliest = np.minimum.reduceat(start[order], heads)
        seg = self._segments
        lo, hi = key_blocks(seg.key, touched)
        which, old_pos = expand_ranges(lo, hi)
        near = seg.end[old_pos] >= earliest[which]
        old_pos = old_pos[near]
        merged = segment(
            np.concatenate([seg.key[old_pos], key]),
            np.concatenate([seg.owner[old_pos], owner]),
            np.concatenate([seg.start[old_pos], start]),
            np.concatenate([seg.end[old_pos], end]),
            np.concatenate([seg.exporter[old_pos], exporter]),
        )
        keep = np.ones(len(seg), dtype=bool)
        keep[old_pos] = False
        rest = seg.take(keep)
        # After the untouched (earlier) segments of the same address.
        at = np.searchsorted(rest.key, merged.key, side="right")
        self._segments = Segments(
            np.insert(rest.key, at, merged.key),
            np.insert(rest.start, at, merged.start),
            np.insert(rest.end, at, merged.end),
            np.insert(rest.owner, at, merged.owner),
            np.insert(rest.exporter, at, merged.exporter),
        )

    def evict(self, before_ns: int) -> int:
        """Drop segments that ended before `before_ns`; returns how many were dropped."""
        keep = self.segments.end >= before_ns
        dropped = int(len(keep) - np.count_nonzero(keep))
        if dropped:
            self._segments = self._segments.take(keep)
        return dropped

    def owner_over(self, key: U64, lo: I64, hi: I64) -> I32:
        """Who owned each address over the whole window [lo, hi]?

        Returns an owner id where one owner's single segment covers the closed window,
        CONFLICT where the window touches an ambiguous stretch or another owner,
        else NOT_COVERED.
        """
        seg = self.segments
        if len(seg) == 0 or len(key) == 0:
            return np.full(len(key), NOT_COVERED, dtype=np.int32)
        return kernels.window_owner(  # type: ignore[no-any-return]
            seg.key, seg.start, seg.end, seg.owner, np.ascontiguousarray(key),
            np.ascontiguousarray(lo), np.ascontiguousarray(hi),
        )  # fmt: skip

    def owners_within(self, key: U64, lo: I64, hi: I64) -> tuple[I64, I32, I32]:
        """Per window: (segments touching it, min owner, max owner), for consistency checks."""
        seg = self.segments
        return kernels.owners_within(  # type: ignore[no-any-return]
            seg.key, seg.start, seg.end, seg.owner, np.ascontiguousarray(key),
            np.ascontiguousarray(lo), np.ascontiguousarray(hi),
        )  # fmt: skip

"""The control plane's assign/unassign feed, read two ways.

* As time ranges from the events' own timestamps (the fallback for addresses no agent
  reports): an address belongs to the workload of the assign at or before the moment, until
  the next event for that address. The answer is given only where it is safe: the moment is
  at least `guard` away from both ends of the range, and only once the feed's watermark
  (now - lag: every change older than that has arrived) has passed the moment plus guard.
* As "who owns it now" (the event-based baseline flowtrail replaces): the latest assign
  received, unless an unassign of that workload was received after it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from flowtrail.engine import kernels
from flowtrail.engine.keyed_search import find_unique, key_blocks

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
B = npt.NDArray[np.bool_]

UNKNOWN = -1


class EventFeed:
    def __init__(self) -> None:
        self._chunks: list[tuple[U64, I32, B, I64, I64]] = []
        self._is_distinct = True  # the one chunk holds each event once
        self._by_time: tuple[U64, I32, B, I64, I64] | None = None
        self._now_state: tuple[U64, I32] | None = None
        self.count = 0
        # Per address (sorted keys), searches before floor_time are not answered, and
        # [floor_time, span_end] is a run of assigns of span_owner collapsed to its ends
        # (-1: none): see forget_before.
        self._floor_key: U64 = np.empty(0, np.uint64)
        self._floor_time: I64 = np.empty(0, np.int64)
        self._span_end: I64 = np.empty(0, np.int64)
        self._span_owner: I32 = np.empty(0, np.int32)

    def add(self, key: U64, owner: I32, assign: B, time: I64, received: I64) -> None:
        if len(key) == 0:
            return
        self._chunks.append((key, owner, assign, time, received))
        self._is_distinct = False  # a batch may repeat an event (re-published, carried)
        if len(self._floor_key):
            self._break_spans(key, owner, assign, time)
        self.count += len(key)
        self._by_time = None
        self._now_state = None

    @property
    def nbytes(self) -> int:
        held = sum(a.nbytes for chunk in self._chunks for a in chunk)
        floors = (self._floor_key, self._floor_time, self._span_end, self._span_owner)
        return held + sum(a.nbytes for a in floors)

    def __len__(self) -> int:
        """Distinct events held (copies of one event count once)."""
        return len(self._all()[0])

    def _all(self) -> tuple[U64, I32, B, I64, I64]:
        """Every event once (copies collapsed), in arrival order."""
        if len(self._chunks) != 1 or not self._is_distinct:
            cols = [np.concatenate(parts) for parts in zip(*self._chunks, strict=True)]
            if not self._chunks:
                cols = [
                    np.empty(0, np.uint64), np.empty(0, np.int32), np.empty(0, bool),
                    np.empty(0, np.int64), np.empty(0, np.int64),
                ]  # fmt: skip
            self._chunks = [_distinct(cols[0], cols[1], cols[2], cols[3], cols[4])]
            self._is_distinct = True
        return self._chunks[0]

    def _time_sorted(self) -> tuple[U64, I32, B, I64, I64]:
        if self._by_time is None:
            key, owner, assign, time, received = self._all()
            # Same time: unassign before assign, so a handover at one instant ends the old range.
            order = np.lexsort((assign, received, time, key))
            self._by_time = (key[order], owner[order], assign[order], time[order], received[order])
        return self._by_time

    def safe_owner(
        self, key: U64, moment: I64, *, guard_ns: int, now: int, lag_ns: int
    ) -> tuple[I32, I64, I64]:
        """(owner or UNKNOWN, range start, range end) for each (address, moment)."""
        n = len(key)
        k, owner, assign, time, _received = self._time_sorted()
        if len(k) == 0 or n == 0:
            return np.full(n, UNKNOWN, np.int32), np.zeros(n, np.int64), np.zeros(n, np.int64)
        lo, hi = key_blocks(k, key)
        moment = np.ascontiguousarray(moment, np.int64)
        owner_out, r_start, r_end = kernels.event_ranges(
            time, assign, owner, lo, hi, moment, guard_ns, now, lag_ns
        )
        at, floored = find_unique(self._floor_key, key)
        if floored.any():
            below = floored & (moment - guard_ns < self._floor_time[at])
            owner_out[below], r_start[below], r_end[below] = UNKNOWN, 0, 0
        return owner_out, r_start, r_end

    def standing(self, received_before: int) -> tuple[U64, I32, I64]:
        """(address, workload, time) of each address whose latest event (by its own time) is
        an assign, where no copy of that event was received since `received_before`.

        A cluster carries these forward into its streams before they age out, so that a node
        starting later still knows who holds an address assigned long ago. Re-applying an
        event the feed already holds changes no answer of `safe_owner`.
        """
        # In the order safe_owner reads, the last row per address is the event it answers
        # from after every event's time, and the most recent copy of it.
        key, owner, assign, time, received = self._time_sorted()
        last = np.append(key[1:] != key[:-1], True) if len(key) else np.zeros(0, bool)
        keep = last & assign & (received < received_before)
        return key[keep], owner[keep], time[keep]

    def forget_before(self, horizon: int) -> int:
        """Drop the events no answer after `horizon` needs; returns how many were dropped.

        Per address this keeps the last event at or before `horizon` and everything after
        it, so `safe_owner` answers every moment whose search point (moment - guard) is at
        or after the horizon exactly as before, even when older events (a lagging node's
        carried copy) arrive later. If that last event ends a run of assigns of one workload
        (a control plane re-asserting who holds an address), the run's first row stays too:
        the address keeps answering from then on, as a long-lived connection started before
        the horizon needs (one never reassigned keeps answering for any moment). Before the
        first row kept, an address that lost events is not answered (a late copy of a
        forgotten event could otherwise reopen a range the forgotten ones had closed).
        `standing` loses nothing: the last event per address is always kept. `owner_now`
        (the baseline) may change: do not use both. The feed still keeps one or two rows per
        address ever seen (and its floor): bounded by addresses, not by time.
        """
        # One row per event (the copy the feed reads): the row a run keeps must be that one.
        key, owner, assign, time, received = self._all()
        n = len(key)
        if n < 2:
            return 0
        order = np.lexsort((assign, received, time, key))  # the order _time_sorted reads
        k, o, a, t = key[order], owner[order], assign[order], time[order]
        old = t <= horizon
        # Old rows of an address come before its newer ones.
        followed = np.zeros(n, bool)  # by another old row of the same address
        followed[:-1] = old[:-1] & old[1:] & (k[1:] == k[:-1])
        last_old = old & ~followed
        link = np.zeros(n, bool)  # this row and the next: assigns of one workload
        link[:-1] = followed[:-1] & a[:-1] & a[1:] & (o[:-1] == o[1:])
        # A row below its address's floor (it came late) starts no run: the row at the floor
        # must stay, or it could answer moments at or after the floor.
        at, floored = find_unique(self._floor_key, k)
        below = np.zeros(n, bool)
        below[floored] = t[floored] < self._floor_time[at[floored]]
        link &= ~below
        breaks = np.flatnonzero(~link)  # the last row is always one
        chain_end = breaks[np.searchsorted(breaks, np.arange(n))]
        chain_start = np.ones(n, bool)
        chain_start[1:] = ~link[:-1]
        first_kept = old & chain_start & last_old[chain_end]  # one per address with old rows
        drop = old & ~last_old & ~first_kept
        if not drop.any():
            return 0
        # Addresses that lost rows are answered from their first kept row on; a run kept by
        # its ends stays valid until an event lands inside it (see _break_spans).
        starts = np.flatnonzero(first_kept & np.isin(k, np.unique(k[drop])))
        ends = chain_end[starts]
        span = ends != starts
        self._set_floors(
            k[starts], t[starts], t[ends], np.where(span, o[starts], -1).astype(np.int32)
        )
        keep = np.ones(n, bool)
        keep[order[drop]] = False  # back in arrival order, which owner_now reads
        self._chunks = [(key[keep], owner[keep], assign[keep], time[keep], received[keep])]
        self._by_time = None
        self._now_state = None
        return int(drop.sum())

    def _set_floors(self, key: U64, floor: I64, span_end: I64, span_owner: I32) -> None:
        """Merge new floors in (unique keys): per address the higher floor, the newest span."""
        at, known = find_unique(self._floor_key, key)
        floor = floor.copy()
        floor[known] = np.maximum(floor[known], self._floor_time[at[known]])
        others = ~np.isin(self._floor_key, key)
        fk = np.concatenate([self._floor_key[others], key])
        by_key = np.argsort(fk)
        self._floor_key = fk[by_key]
        self._floor_time = np.concatenate([self._floor_time[others], floor])[by_key]
        span_end = np.maximum(span_end, floor)
        self._span_end = np.concatenate([self._span_end[others], span_end])[by_key]
        self._span_owner = np.concatenate([self._span_owner[others], span_owner])[by_key]
        self._by_time = None

    def _break_spans(self, key: U64, owner: I32, assign: B, time: I64) -> None:
        """An event inside a collapsed run that is not an assign of its workload: the run's
        middle is gone, so the address is answered only from the run's end on."""
        at, hit = find_unique(self._floor_key, key)
        inside = hit & (time >= self._floor_time[at]) & (time <= self._span_end[at])
        breaks = inside & ~(assign & (owner == self._span_owner[at]))
        if breaks.any():
            pos = at[breaks]
            self._floor_time[pos] = self._span_end[pos]
            self._span_owner[pos] = -1

    def _current(self) -> tuple[U64, I32]:
        if self._now_state is None:
            key, owner, assign, _time, received = self._all()
            if len(key) == 0:
                self._now_state = (np.empty(0, np.uint64), np.empty(0, np.int32))
                return self._now_state
            seq = np.arange(len(key))
            # Per (address, workload): its last event in arrival order says held or released.
            order = np.lexsort((seq, received, owner, key))
            k, o, a, r = key[order], owner[order], assign[order], received[order]
            last = np.ones(len(k), bool)
            last[:-1] = (k[1:] != k[:-1]) | (o[1:] != o[:-1])
            held = last & a
            k, o, r = k[held], o[held], r[held]
            # Per address: the holder assigned most recently (arrival order) wins.
            order = np.lexsort((r, k))
            k, o = k[order], o[order]
            newest = np.ones(len(k), bool)
            newest[:-1] = k[1:] != k[:-1]
            self._now_state = (k[newest], o[newest])
        return self._now_state

    def owner_now(self, key: U64) -> I32:
        """The baseline: who the feed received so far says owns each address now."""
        k, o = self._current()
        out = np.full(len(key), UNKNOWN, np.int32)
        pos, hit = find_unique(k, key)
        out[hit] = o[pos[hit]]
        return out


def _distinct(
    key: U64, owner: I32, assign: B, time: I64, received: I64
) -> tuple[U64, I32, B, I64, I64]:
    """One row per event: copies of an event (re-published, or carried forward by a cluster)
    keep only the most recently received, so the feed does not grow with every copy.

    No answer changes: safe_owner reads the last event at or before a moment in (time,
    received) order, and the latest copy of each event sits where the last copy sat;
    owner_now reads the last arrival per address and workload, which is kept too.
    """
    if len(key) < 2:
        return key, owner, assign, time, received
    order = np.lexsort((received, time, assign, owner, key))
    k, o, a, t = key[order], owner[order], assign[order], time[order]
    last = np.ones(len(k), bool)
    last[:-1] = (k[1:] != k[:-1]) | (o[1:] != o[:-1]) | (a[1:] != a[:-1]) | (t[1:] != t[:-1])
    keep = np.sort(order[last])  # in arrival order, as owner_now breaks ties by it
    return key[keep], owner[keep], assign[keep], time[keep], received[keep]

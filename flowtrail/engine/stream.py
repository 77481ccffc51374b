"""The engine for a live collector: Arrow batches in, attributed Arrow tables out.

The same Attributor as the offline replay (one implementation of attribution), driven by a
clock the caller supplies (wall time in a collector). Rows wait inside until decided; the
caller gets back each submitted batch's rows as they are decided, with the contract's
remote_workload, remote_source, attributed_ns and unattributed_reason appended and every input
column unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.engine.attributor import Attributor, Decisions, Settings
from flowtrail.engine.dnsnames import DnsNames
from flowtrail.engine.ipkeys import IpKeys, Names
from flowtrail.engine.replay import _int64, flow_arrays, with_attribution
from flowtrail.schema import FLOWS

# A live caller lets flows handed over wait unread until the next tick (or other input, which
# may depend on them), so that the engine converts a tick's batches at once: at 1,500-row
# batches that costs a fifth of a conversion per batch (the per-call overhead of ~40 Arrow
# and numpy calls). At most this many rows wait (the conversion's per-call cost is spread
# thin well before this).
COALESCE_ROWS = 1 << 16


@dataclass
class _Held:
    """Submitted rows not all handed back yet: one batch as it came, or the rows of several
    still waiting, copied out together (`handles` then says whose rows they are).

    `table` holds the rows whose handles are `handles` (None: consecutive from `first`, a
    batch as submitted); `alive` marks those not decided yet (None: all). Held rows cover
    [first, the next held rows' first) of the handles, so a handle finds its rows by one
    binary search.
    """

    table: pa.Table
    first: int  # the least handle it may hold
    left: int  # rows not yet decided
    handles: npt.NDArray[np.int64] | None = None
    alive: npt.NDArray[np.bool_] | None = None

    @property
    def fresh(self) -> bool:
        return self.handles is None

    def held(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """(handles of the rows in `table`, which of them are not decided yet)."""
        n = self.table.num_rows
        handles = np.arange(self.first, self.first + n) if self.handles is None else self.handles
        return handles, np.ones(n, bool) if self.alive is None else self.alive


@dataclass
class _Unread:
    table: pa.Table
    first: int
    now: int
    ranges: npt.NDArray[np.bool_] | None


class StreamingAttribution:
    """Submit validated contract `flows` tables and `events` tables; tick to get results."""

    def __init__(self, settings: Settings | None = None, *, coalesce_rows: int = 0) -> None:
        """`coalesce_rows`: how many submitted rows may wait unread for the next tick (see
        COALESCE_ROWS); 0: each batch is read as it comes, so the engine's state (read by
        the caller) always includes it."""
        self.engine = Attributor(settings)
        self.coalesce_rows = coalesce_rows
        self.ipkeys = IpKeys()
        self.names = Names()
        self._next = 0
        self._held: dict[int, _Held] = {}
        self._firsts = np.empty(0, np.int64)  # sorted first handles of self._held
        self._batch_firsts = np.empty(0, np.int64)  # of the batches with rows held, sorted
        self._unread: list[_Unread] = []
        self._unread_rows = 0
        self.dns = DnsNames(self.engine.settings.dns_grace_ns)
        self._next_dns_evict: int | None = None

    @property
    def waiting(self) -> int:
        return self.engine.pending + self._unread_rows

    def submit_flows(
        self, flows: pa.Table, now: int, ranges: npt.NDArray[np.bool_] | None = None
    ) -> pa.Table:
        """Hand over a batch received at `now`; returns it with received_ns filled in.

        A null or absent received_ns becomes `now`: the collector's own clock is what the
        contract means by it. `ranges`: see Attributor.add_flows. With `coalesce_rows`, the
        engine reads the batch at the next tick, or earlier (before other input, or when
        that many rows wait): the same as reading it now, since nothing is looked up in
        between and the batch keeps its `now`.
        """
        idx = flows.column_names.index("received_ns") if "received_ns" in flows.column_names else -1
        field = FLOWS.column("received_ns").field
        if idx < 0:
            flows = flows.append_column(field, pa.array(np.full(flows.num_rows, now, np.int64)))
        elif flows.column(idx).null_count:
            flows = flows.set_column(idx, field, pc.fill_null(flows.column(idx), now))
        n = flows.num_rows
        if n == 0:
            return flows
        self._held[self._next] = _Held(flows, self._next, n)
        self._unread.append(_Unread(flows, self._next, now, ranges))
        self._next += n
        self._unread_rows += n
        if self._unread_rows > self.coalesce_rows:
            self.read()
        return flows

    def read(self) -> None:
        """Give the engine the flows submitted since it last read them, in order of
        submission, each run of batches of one schema converted at once. Ticks and other
        input do this themselves; call it before reading the engine's state."""
        if not self._unread:
            return
        unread, self._unread, self._unread_rows = self._unread, [], 0
        firsts = np.array([u.first for u in unread], np.int64)
        self._firsts = np.concatenate([self._firsts, firsts])
        self._batch_firsts = np.concatenate([self._batch_firsts, firsts])
        for run in _runs_of_one_schema([u.table for u in unread]):
            part = unread[run.start : run.stop]
            table = part[0].table if len(part) == 1 else pa.concat_tables(u.table for u in part)
            fa = flow_arrays(table, self.ipkeys, self.names)
            fa.rec["row"] += part[0].first  # handles of one run are consecutive
            sizes = [u.table.num_rows for u in part]
            now = np.repeat(np.array([u.now for u in part], np.int64), sizes)
            ranges = None
            if any(u.ranges is not None for u in part):
                ranges = np.concatenate(
                    [
                        np.ones(k, bool) if u.ranges is None else u.ranges
                        for u, k in zip(part, sizes, strict=True)
                    ]
                )
            self.engine.add_flows(fa, now, ranges)

    def submit_evidence(self, flows: pa.Table, now: int) -> None:
        """Another node's validated flows: learn from them, attribute nothing (cluster mode)."""
        if flows.num_rows == 0:
            return
        self.read()
        fa = flow_arrays(flows, self.ipkeys, self.names)
        fa.rec["row"] = -1  # not ours to decide: no handle
        self.engine.add_evidence(fa, now)

    def learn_claims(
        self,
        key: npt.NDArray[np.uint64],
        owner: npt.NDArray[np.int32],
        start: npt.NDArray[np.int64],
        end: npt.NDArray[np.int64],
        exporter: npt.NDArray[np.int32],
        translating: npt.NDArray[np.uint64],
        now: int,
    ) -> None:
        """Ownership claims keyed with this engine's ipkeys and names (cluster mode: another
        node's compacted runs, flowtrail/cluster/runs.py)."""
        self.read()
        self.engine.add_claims(key, owner, start, end, exporter, translating, now)

    def submit_events(self, events: pa.Table, now: int) -> None:
        if events.num_rows == 0:
            return
        self.read()
        time_ns = events.column("time_ns")
        got = events.column("received_ns") if "received_ns" in events.column_names else None
        received = _int64(pc.fill_null(got, now)) if got is not None else None
        self.engine.add_events(
            self.ipkeys.keys(events.column("ip")),
            self.names.ids(events.column("workload")),
            np.asarray(pc.equal(events.column("action"), "assign").to_numpy(zero_copy_only=False)),
            _int64(time_ns),
            received if received is not None else np.full(events.num_rows, now, np.int64),
        )

    def submit_dns(self, answers: pa.Table) -> None:
        """Validated dns_answers rows: they name the remote addresses of flows decided from
        now on (docs/dns.md, "Naming"). A flow decided before the answer that names it came
        keeps remote_dns null: decisions are written once."""
        self.dns.add(answers)

    def tick(self, now: int) -> list[pa.Table]:
        """Decide what can be decided at `now`; one attributed table per batch touched."""
        self.read()
        self._evict_dns(now)
        return self._tables(self.engine.tick(now))

    def _evict_dns(self, now: int) -> None:
        """Answers no flow can still be named by go with the ownership that would be evicted."""
        retention = self.engine.settings.retention_ns
        period = max(retention // 10, 1_000_000_000)
        if self._next_dns_evict is None:
            self._next_dns_evict = now + period
        if now >= self._next_dns_evict:
            self.dns.evict(now - retention)
            self._next_dns_evict = now + period

    def _tables(self, d: Decisions) -> list[pa.Table]:
        """Each touched batch's decided rows with their attribution, in order of submission.

        A caller keeps batches apart (a batch its sink refuses is put aside alone), so the
        result is one table per batch. Rows are taken from what holds them: the batches
        that came since the last tick together (one take for their decided rows, one for
        those that wait on, which then are all that is kept of them), and each earlier
        tick's waiting rows by themselves (copied again only once at most half of them
        still wait). So a tick copies what it decides and, once or a few times in all,
        what waits; never every waiting row of every batch a woken flow belongs to.
        """
        if len(d) == 0:
            return []
        order = np.argsort(d.row, kind="stable")
        rows, owner, source, decided, reason = (
            d.row[order],
            d.owner[order],
            d.source[order],
            d.decided[order],
            d.reason[order],
        )
        owner_names = self.names.to_arrow(owner)
        which = np.searchsorted(self._firsts, rows, side="right") - 1
        cuts = np.flatnonzero(np.diff(which)) + 1
        starts = np.concatenate([[0], cuts]).tolist()
        stops = [*starts[1:], len(rows)]
        touched = which[starts].tolist()
        held = [self._held[int(self._firsts[i])] for i in touched]
        merged: list[int] = []
        finished: list[int] = []
        taken: list[pa.Table] = []  # per group, its decided rows
        for group in _groups(held, touched):
            part = held[group.start : group.stop]
            lo, hi = starts[group.start], stops[group.stop - 1]
            taken.append(self._take(part, rows[lo:hi]))
            merged.extend(h.first for h in part[1:])  # their rows are the first's from now
            if part[0].left == 0:
                finished.append(part[0].first)
        # Attribution appended once per schema, not per group (a tick may touch many), and
        # the result cut into one table per batch.
        batch = np.searchsorted(self._batch_firsts, rows, side="right")
        out: list[pa.Table] = []
        lo = 0
        for run in _runs_of_one_schema(taken):
            done = (
                pa.concat_tables(taken[run.start : run.stop]) if len(run) > 1 else taken[run.start]
            )
            hi = lo + done.num_rows
            done = with_attribution(
                done, owner_names.slice(lo, hi - lo), source[lo:hi], decided[lo:hi],
                reason[lo:hi], self.dns.names_for(done),
            )  # fmt: skip
            cut = (np.flatnonzero(np.diff(batch[lo:hi])) + 1).tolist()
            for a, z in zip([0, *cut], [*cut, hi - lo], strict=True):
                out.append(done.slice(a, z - a))
            lo = hi
        for first in merged + finished:
            del self._held[first]
        if merged:
            self._firsts = self._firsts[~np.isin(self._firsts, merged)]
        if finished:
            # and the batches whose rows were held there are done with
            gone = np.isin(self._firsts, finished)
            at = np.searchsorted(self._firsts, self._batch_firsts, side="right") - 1
            self._batch_firsts = self._batch_firsts[~gone[at]]
            self._firsts = self._firsts[~gone]
        return out

    @staticmethod
    def _take(part: list[_Held], rows: npt.NDArray[np.int64]) -> pa.Table:
        """The decided `rows` (ascending handles) out of `part` (consecutive held rows of one
        schema); what still waits in them is kept by the first, copied out where that lets
        much go."""
        table = part[0].table if len(part) == 1 else pa.concat_tables(h.table for h in part)
        pairs = [h.held() for h in part]
        handles = pairs[0][0] if len(part) == 1 else np.concatenate([p[0] for p in pairs])
        alive = np.concatenate([p[1] for p in pairs])  # a copy: marked below
        pos = np.searchsorted(handles, rows)
        alive[pos] = False
        left = int(np.count_nonzero(alive))
        every = left == 0 and len(pos) == len(handles)  # all it held, in order: no copy
        done = table if every else table.take(pa.array(pos))
        head = part[0]
        if left == 0:
            pass
        elif head.fresh or 2 * left <= len(handles):
            kept = np.flatnonzero(alive)
            head.table, head.handles, head.alive = table.take(pa.array(kept)), handles[kept], None
        else:
            head.alive = alive
        head.left = left
        return done


def _groups(held: list[_Held], index: list[int]) -> list[range]:
    """Touched held rows taken from together: consecutive batches as submitted (fresh, the
    same schema, nothing held between them); every earlier tick's kept rows alone."""
    groups: list[range] = []
    begin = 0
    for i in range(1, len(held) + 1):
        if (
            i == len(held)
            or not (held[i].fresh and held[begin].fresh)
            or index[i] != index[i - 1] + 1
            or not held[i].table.schema.equals(held[begin].table.schema, check_metadata=True)
        ):
            groups.append(range(begin, i))
            begin = i
    return groups


def _runs_of_one_schema(tables: list[pa.Table]) -> list[range]:
    """Index ranges of consecutive tables with equal schemas (metadata included)."""
    runs: list[range] = []
    begin = 0
    for i in range(1, len(tables) + 1):
        if i == len(tables) or not tables[i].schema.equals(
            tables[begin].schema, check_metadata=True
        ):
            runs.append(range(begin, i))
            begin = i
    return runs

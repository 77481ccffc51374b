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
class _Batch:
    table: pa.Table
    first: int  # row handle of its first row
    left: int  # rows not yet decided


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
        self._batches: dict[int, _Batch] = {}
        self._firsts = np.empty(0, np.int64)  # sorted first handles of live batches
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
        self._batches[self._next] = _Batch(flows, self._next, n)
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
        self._firsts = np.concatenate([self._firsts, [u.first for u in unread]])
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

        Made once per tick for all batches of one schema (one take, one set of attribution
        columns), then cut into per-batch slices: a caller keeps batches apart (a batch its
        sink refuses is put aside alone).
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
        batches = [self._batches[int(f)] for f in self._firsts[which[starts]]]
        out: list[pa.Table] = []
        for run in _runs_of_one_schema([b.table for b in batches]):
            part = batches[run.start : run.stop]
            lo, hi = starts[run.start], stops[run.stop - 1]
            table = part[0].table if len(part) == 1 else pa.concat_tables(b.table for b in part)
            # Each batch's rows, as positions in the concatenation of the run's batches.
            offset = np.cumsum([0, *(b.table.num_rows for b in part[:-1])])
            shift = np.repeat(
                np.array([b.first for b in part], np.int64) - offset,
                np.subtract(stops[run.start : run.stop], starts[run.start : run.stop]),
            )
            taken = table.take(pa.array(rows[lo:hi] - shift))
            done = with_attribution(
                taken, owner_names.slice(lo, hi - lo), source[lo:hi], decided[lo:hi],
                reason[lo:hi], self.dns.names_for(taken),
            )  # fmt: skip
            for b, a, z in zip(
                part, starts[run.start : run.stop], stops[run.start : run.stop], strict=True
            ):
                out.append(done.slice(a - lo, z - a))
                b.left -= z - a
        finished = [b.first for b in batches if b.left == 0]
        if finished:
            for first in finished:
                del self._batches[first]
            self._firsts = self._firsts[~np.isin(self._firsts, finished)]
        return out


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

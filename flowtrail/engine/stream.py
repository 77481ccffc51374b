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
from flowtrail.engine.ipkeys import IpKeys, Names
from flowtrail.engine.replay import _int64, flow_arrays, with_attribution
from flowtrail.schema import FLOWS


@dataclass
class _Batch:
    table: pa.Table
    first: int  # row handle of its first row
    left: int  # rows not yet decided


class StreamingAttribution:
    """Submit validated contract `flows` tables and `events` tables; tick to get results."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.engine = Attributor(settings)
        self.ipkeys = IpKeys()
        self.names = Names()
        self._next = 0
        self._batches: dict[int, _Batch] = {}
        self._firsts = np.empty(0, np.int64)  # sorted first handles of live batches

    @property
    def waiting(self) -> int:
        return self.engine.pending

    def submit_flows(
        self, flows: pa.Table, now: int, ranges: npt.NDArray[np.bool_] | None = None
    ) -> pa.Table:
        """Hand over a batch received at `now`; returns it with received_ns filled in.

        A null or absent received_ns becomes `now`: the collector's own clock is what the
        contract means by it. `ranges`: see Attributor.add_flows.
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
        fa = flow_arrays(flows, self.ipkeys, self.names)
        fa.rec["row"] += self._next
        self._batches[self._next] = _Batch(flows, self._next, n)
        self._firsts = np.append(self._firsts, self._next)
        self._next += n
        self.engine.add_flows(fa, now, ranges)
        return flows

    def submit_evidence(self, flows: pa.Table, now: int) -> None:
        """Another node's validated flows: learn from them, attribute nothing (cluster mode)."""
        if flows.num_rows == 0:
            return
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
        self.engine.add_claims(key, owner, start, end, exporter, translating, now)

    def submit_events(self, events: pa.Table, now: int) -> None:
        if events.num_rows == 0:
            return
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

    def tick(self, now: int) -> list[pa.Table]:
        """Decide what can be decided at `now`; one attributed table per batch touched."""
        return self._tables(self.engine.tick(now))

    def _tables(self, d: Decisions) -> list[pa.Table]:
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
        # One take of names for the whole tick, sliced per batch below.
        owner_names = self.names.to_arrow(owner)
        which = np.searchsorted(self._firsts, rows, side="right") - 1
        out: list[pa.Table] = []
        cuts = np.flatnonzero(np.diff(which)) + 1
        finished: list[int] = []
        for part in np.split(np.arange(len(rows)), cuts):
            first = int(self._firsts[which[part[0]]])
            batch = self._batches[first]
            taken = batch.table.take(pa.array(rows[part] - first))
            lo, n = int(part[0]), len(part)
            out.append(
                with_attribution(
                    taken, owner_names.slice(lo, n), source[part], decided[part], reason[part]
                )
            )
            batch.left -= len(part)
            if batch.left == 0:
                finished.append(first)
        if finished:
            for first in finished:
                del self._batches[first]
            self._firsts = self._firsts[~np.isin(self._firsts, finished)]
        return out

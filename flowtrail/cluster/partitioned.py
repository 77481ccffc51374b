"""A region's nodes split by connection, in one process: the decision logic without the bus.

Each partition has its own engine, as a node would: it learns every batch's ownership runs
(flowtrail/cluster/runs.py, from text: its own address keys and names) and gets only the rows
whose connection key falls in it (flowtrail/cluster/connkey.py), as peer rows and flows to
decide, never as ranges. Time moves one tick at a time for all of them, as the data clock
moves every node. What comes out must equal flowtrail.engine.replay row for row: the tests
check that on the simulator's scenarios, and the benchmarks time its parts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.cluster.connkey import partitions as partition_of
from flowtrail.cluster.runs import compact, learn_runs
from flowtrail.engine.attributor import Settings
from flowtrail.engine.replay import received_times
from flowtrail.engine.stream import StreamingAttribution

POSITION = "_flowtrail_position"  # the input row each output row came from
SECOND = 1_000_000_000


@dataclass
class PartitionedResult:
    table: pa.Table  # the input, row for row, with the attribution columns
    rows: int = 0
    runs: int = 0  # ownership-run records learned (compacted per tick)
    rows_per_partition: list[int] = field(default_factory=list)
    learn_runs_s: float = 0.0  # CPU of learning every batch's runs, one partition's engine
    decide_s: list[float] = field(default_factory=list)  # per partition: its rows, its ticks


def decide_partitioned(
    flows: pa.Table,
    events: pa.Table | None,
    count: int,
    settings: Settings | None = None,
    tick_ns: int = SECOND,
) -> PartitionedResult:
    """Decide `flows` (a contract table) with `count` partitions; events go to every
    partition, as on the evidence stream."""
    settings = settings or Settings()
    has_events = events is not None and events.num_rows > 0
    settings = replace(settings, use_events=has_events)
    flows = flows.append_column(POSITION, pa.array(np.arange(flows.num_rows, dtype=np.int64)))
    received = received_times(flows)
    # received_ns as replay reads it (absent: end_ns + 60 s), not the tick's end
    at = flows.column_names.index("received_ns") if "received_ns" in flows.column_names else -1
    field = pa.field("received_ns", pa.int64())
    if at < 0:
        flows = flows.append_column(field, pa.array(received))
    else:
        flows = flows.set_column(at, field, pa.array(received))
    part = partition_of(flows, count)
    engines = [StreamingAttribution(settings) for _ in range(count)]
    result = PartitionedResult(pa.table({}), rows=flows.num_rows)
    result.rows_per_partition = [int(np.count_nonzero(part == p)) for p in range(count)]
    result.decide_s = [0.0] * count
    ev_recv = (
        np.asarray(pc.coalesce(events.column("received_ns"), events.column("time_ns")))
        if has_events and events is not None
        else np.empty(0, np.int64)
    )
    order = np.argsort(received, kind="stable")
    ticks = received[order] // tick_ns
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(ticks)) + 1, [len(order)]])
    out: list[pa.Table] = []
    first = int(min(received.min(), ev_recv.min() if len(ev_recv) else received.min()))
    tick = first // tick_ns
    g = 0
    while True:
        now = (tick + 1) * tick_ns - 1
        if len(ev_recv):
            ev_mask = (ev_recv >= tick * tick_ns) & (ev_recv <= now)
            if ev_mask.any():
                assert events is not None
                arrived = events.filter(pa.array(ev_mask))
                for engine in engines:
                    engine.submit_events(arrived, now)
        if g < len(bounds) - 1 and ticks[bounds[g]] == tick:
            idx = order[bounds[g] : bounds[g + 1]]
            g += 1
            rows = flows.take(pa.array(idx))
            _learn_tick(rows, engines, result, now)
            for p, engine in enumerate(engines):
                mine = part[idx] == p
                if mine.any():
                    began = time.process_time()
                    picked = rows.filter(pa.array(mine))
                    no_claims = np.zeros(picked.num_rows, bool)
                    engine.submit_flows(picked, now, no_claims)
                    result.decide_s[p] += time.process_time() - began
        for p, engine in enumerate(engines):
            began = time.process_time()
            out.extend(engine.tick(now))
            result.decide_s[p] += time.process_time() - began
        # The next tick at which anything happens: input, or a wait running out (ticks in
        # between would decide nothing, as replay's run_until skips them).
        due = [int(ticks[bounds[g]])] if g < len(bounds) - 1 else []
        later = ev_recv[ev_recv > now]
        if len(later):
            due.append(int(later.min()) // tick_ns)
        for engine in engines:
            deadline = engine.engine.next_deadline()
            if deadline is not None:
                due.append(max(deadline // tick_ns, tick + 1))
        if not due:
            break
        tick = max(min(due), tick + 1)
    table = pa.concat_tables(out).sort_by(POSITION)
    result.table = table.drop_columns([POSITION])
    return result


def _learn_tick(
    rows: pa.Table, engines: list[StreamingAttribution], result: PartitionedResult, now: int
) -> None:
    """One tick's rows, compacted (per tick: the runs depend only on the union of each
    claimant's claims, so per batch or per tick gives the same ranges), learned by all."""
    runs = compact(rows)
    result.runs += runs.num_rows
    for n, engine in enumerate(engines):
        began = time.process_time()
        learn_runs(engine, runs, now)
        if n == 0:
            result.learn_runs_s += time.process_time() - began

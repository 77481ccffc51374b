"""Offline replay: each row's received_ns is the collector clock.

Rows and events are replayed in received order, in ticks of `tick_ns`: every tick the engine
takes that tick's flows and events and decides what it can; when the input ends, the clock
runs on until every waiting flow is decided. Two schedules give the same answers: the batch
one (batch.py, one compiled pass; what `flowtrail attribute` runs) and the streaming engine
driven tick by tick (the reference, and what a live collector runs). The output is the input,
row for row, plus the contract's remote_workload, remote_source, attributed_ns and
unattributed_reason; rows of listening sockets (outcome `listening`) are evidence only and
are left out of it (counted). Inputs holding them run on the streaming schedule.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail import pairing
from flowtrail.engine import scopes
from flowtrail.engine.attributor import REASONS, Attributor, Decisions, FlowArrays, Settings
from flowtrail.engine.batch import batch_decisions, unattributed_by_reason
from flowtrail.engine.dnsnames import DnsNames
from flowtrail.engine.ipkeys import IpKeys, Names
from flowtrail.engine.regions import RegionMap
from flowtrail.engine.verdict import EVENT, HEARTBEAT, UNATTRIBUTED
from flowtrail.errors import ContractError
from flowtrail.schema import (
    ATTRIBUTION_COLUMNS,
    DEFAULT_RECEIVE_DELAY_NS,
    LISTENING,
    REMOTE_DNS,
    SOURCES,
    UNATTRIBUTED_REASON,
    UNATTRIBUTED_REASONS,
)

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
I8 = npt.NDArray[np.int8]
Progress = Callable[[str], None]


@dataclass
class ReplayResult:
    table: pa.Table
    summary: dict[str, Any] = field(default_factory=dict)


# Arrow values made once: converting a Python value tries to import dateutil every time
# (~0.25 ms per call where it is not installed), and these are used per batch.
_RECEIVE_DELAY = pa.scalar(DEFAULT_RECEIVE_DELAY_NS, pa.int64())
SOURCE_NAMES = pa.array(SOURCES, pa.string())
# The engine's reason codes as the contract's names; code 0 (attributed) is null.
REASON_NAMES = pa.array([r or None for r in REASONS], pa.string())
assert REASON_NAMES.drop_null().to_pylist() == list(UNATTRIBUTED_REASONS)


def with_attribution(
    table: pa.Table,
    owner: pa.Array,
    source: npt.NDArray[np.int8],
    decided: I64,
    reason: npt.NDArray[np.int8],
    dns: pa.Array | None = None,
) -> pa.Table:
    """`table` with the attribution columns (and unattributed_reason, remote_dns) appended,
    replacing any input columns of those names. `dns`: remote_dns per row; None: all null."""
    values = (
        owner,
        pc.take(SOURCE_NAMES, pa.array(source.astype(np.int32))),
        pa.array(decided, pa.int64()),
        pc.take(REASON_NAMES, pa.array(reason.astype(np.int32))),
        pa.nulls(table.num_rows, pa.string()) if dns is None else dns,
    )
    added = (*ATTRIBUTION_COLUMNS, UNATTRIBUTED_REASON, REMOTE_DNS)
    for col, column in zip(added, values, strict=True):
        if col.name in table.column_names:
            table = table.drop_columns([col.name])
        table = table.append_column(col.field, column)
    return table


def _col(t: pa.Table, name: str) -> pa.ChunkedArray | None:
    i = t.schema.get_field_index(name)  # no list of every column name, as column_names makes
    return t.column(i) if i >= 0 else None


def _int64(arr: pa.ChunkedArray) -> I64:
    return np.asarray(arr.to_numpy(), dtype=np.int64)


# The replay clock is int64 nanoseconds and runs on past the rows by waits, lags and
# retention: a time later than this (2116-02-20) would overflow it.
LATEST_NS = 1 << 62
FLOW_TIMES = ("start_ns", "end_ns", "received_ns")
EVENT_TIMES = ("time_ns", "received_ns")


def check_clock_range(table: pa.Table, columns: tuple[str, ...], path: str | None) -> None:
    """ContractError naming the first row with a time the replay clock cannot reach."""
    for name in columns:
        col = _col(table, name)
        high = pc.max(col).as_py() if col is not None else None
        if col is None or high is None or high <= LATEST_NS:
            continue
        late = pc.fill_null(pc.greater(col, LATEST_NS), False).to_numpy(zero_copy_only=False)
        row = int(np.flatnonzero(late)[0])
        raise ContractError(
            f"{col[row].as_py()} is later than replay can handle (at most {LATEST_NS}, "
            "in the year 2116)",
            path=path, row=row + 1, column=name,
        )  # fmt: skip


def received_times(flows: pa.Table) -> I64:
    """received_ns, defaulting to end_ns + 60 s where absent or null (CONTRACT.md)."""
    default = pc.add(flows.column("end_ns"), _RECEIVE_DELAY)
    got = _col(flows, "received_ns")
    merged = default if got is None else pc.coalesce(got, default)
    return _int64(merged)


def flow_columns(flows: pa.Table, ipkeys: IpKeys, names: Names) -> dict[str, Any]:
    """The engine's view of a contract flows table as plain arrays, keyed as FlowArrays.build
    takes them but for `row` (remote side NAT-resolved)."""
    nat_ip = _col(flows, "nat_remote_ip")
    nat_port = _col(flows, "nat_remote_port")
    exporter = flows.column("exporter")
    remote_ip = flows.column("remote_ip")
    remote_port = np.asarray(flows.column("remote_port").to_numpy(), dtype=np.int32)
    if nat_ip is not None and nat_ip.null_count < len(nat_ip):
        use_nat = np.asarray(pc.is_valid(nat_ip).to_numpy(zero_copy_only=False), bool)
        remote_ip = pc.if_else(pa.array(use_nat), nat_ip, remote_ip)
        if nat_port is not None:
            port = np.asarray(pc.fill_null(nat_port, -1).to_numpy(), dtype=np.int32)
            remote_port = np.where(use_nat & (port >= 0), port, remote_port).astype(np.int32)
    workload = _col(flows, "local_workload")
    n = flows.num_rows
    translating = _col(flows, "local_translating")
    return {
        "local_key": scopes.local_keys(flows, ipkeys),
        "local_port": np.asarray(flows.column("local_port").to_numpy(), dtype=np.int32),
        "remote_key": scopes.remote_keys(flows, ipkeys, remote_ip),
        "remote_port": remote_port,
        "start": _int64(flows.column("start_ns")),
        "end": _int64(flows.column("end_ns")),
        "local_owner": names.ids(workload) if workload is not None else np.full(n, -1, np.int32),
        "received": received_times(flows),
        "exporter": names.ids(exporter),  # interned with the workloads: only equality matters
        "pair": pairing.pair_times(flows),
        "translating": np.zeros(n, bool)
        if translating is None
        else np.asarray(pc.fill_null(translating.cast(pa.bool_()), False).to_numpy(), bool),
        "listening": listening_rows(flows),
    }


def flow_arrays(flows: pa.Table, ipkeys: IpKeys, names: Names) -> FlowArrays:
    """The engine's view of a contract flows table (remote side NAT-resolved)."""
    return FlowArrays.build(row=np.arange(flows.num_rows), **flow_columns(flows, ipkeys, names))


def listening_rows(flows: pa.Table) -> npt.NDArray[np.bool_]:
    """Per row: a listening socket's heartbeat (outcome `listening`), not a connection."""
    outcome = _col(flows, "outcome")
    if outcome is None:
        return np.zeros(flows.num_rows, bool)
    return np.asarray(pc.fill_null(pc.equal(outcome, LISTENING), False).to_numpy(), bool)


def split_listening(decided: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(rows to write out, listeners' rows): a listener's heartbeat is written nowhere."""
    heard = listening_rows(decided)
    if not heard.any():
        return decided, decided.slice(0, 0)
    return decided.filter(pa.array(~heard)), decided.filter(pa.array(heard))


def _tick_groups(received: I64, tick_ns: int) -> tuple[I64, I64, I64]:
    """(order, tick id per group, group boundaries) for rows sorted by received time."""
    order = np.argsort(received, kind="stable")
    ticks = received[order] // tick_ns
    bounds = np.flatnonzero(np.diff(ticks)) + 1
    starts = np.concatenate([[0], bounds]).astype(np.int64)
    stops = np.concatenate([bounds, [len(ticks)]]).astype(np.int64)
    ids = ticks[starts] if len(ticks) else np.empty(0, np.int64)
    return order.astype(np.int64), ids.astype(np.int64), np.stack([starts, stops], axis=1)


def replay(
    flows: pa.Table,
    events: pa.Table | None = None,
    regions: pa.Table | None = None,
    *,
    settings: Settings | None = None,
    tick_ns: int = 1_000_000_000,
    default_region: str | None = None,
    progress: Progress | None = None,
    flows_path: str | None = None,
    events_path: str | None = None,
    schedule: str = "batch",
    dns: DnsNames | None = None,
) -> ReplayResult:
    """`flows_path`, `events_path`: where the tables came from, for error messages.

    `dns`: the DNS answers that name remote addresses (remote_dns); offline every answer
    given counts as known when each flow is decided.

    `schedule`: "batch" (batch.py: every row known in advance, one compiled pass) or
    "stream" (the engine ticked as a live collector ticks it). Both give the same answers;
    the batch schedule hands inputs it cannot take (the event baseline, a fallback reading
    events the feed has forgotten) to the streaming one.
    """
    check_clock_range(flows, FLOW_TIMES, flows_path)
    if events is not None:
        check_clock_range(events, EVENT_TIMES, events_path)
    settings = replace(
        settings or Settings(), use_events=events is not None and events.num_rows > 0
    )
    began, began_cpu = time.perf_counter(), time.process_time()
    ipkeys, names = IpKeys(), Names()
    if schedule not in ("batch", "stream"):
        raise ValueError(f"unknown schedule {schedule!r}")
    cols = flow_columns(flows, ipkeys, names)
    received = cols["received"]
    remote_key = cols["remote_key"]
    batch = (
        batch_decisions(cols, events, ipkeys, names, settings, tick_ns)
        if schedule == "batch"
        else None
    )
    if batch is not None:
        owner, source, decided, reason = batch.owner, batch.source, batch.decided, batch.reason
        counts: dict[str, Any] = dict(batch.counters)
        counts["unattributed"] = unattributed_by_reason(source, reason)
        waited = decided - received
    else:
        if "local_key" not in cols:  # the batch schedule read them and let them go
            cols = flow_columns(flows, ipkeys, names)
        fa = FlowArrays.build(row=np.arange(len(received)), **cols)
        if progress is not None and schedule == "batch":
            progress("replay: this input needs the streaming schedule")
        owner, source, decided, waited, reason, counts = _stream(
            fa, events, ipkeys, names, settings, tick_ns, progress
        )

    heard = cols["listening"]
    cols.clear()  # the engine's view of the rows: freed before the output is built
    named = dns.names_for(flows) if dns is not None else None
    out = with_attribution(flows, names.to_arrow(owner), source, decided, reason, named)
    if heard.any():  # listeners' heartbeats: learnt from, not flows to write out
        out = out.filter(pa.array(~heard))
        source, waited = source[~heard], waited[~heard]

    elapsed = time.perf_counter() - began
    summary = _summary(settings, counts, len(source), source, waited, elapsed)
    summary["cpu_seconds"] = round(time.process_time() - began_cpu, 3)
    if dns is not None:
        summary["dns"] = _dns_summary(dns, named, heard, source)
    if heard.any():
        flows, remote_key = flows.filter(pa.array(~heard)), remote_key[~heard]
    summary["regions"] = _region_summary(flows, remote_key, ipkeys, regions, default_region)
    return ReplayResult(out, summary)


def _stream(
    fa: FlowArrays,
    events: pa.Table | None,
    ipkeys: IpKeys,
    names: Names,
    settings: Settings,
    tick_ns: int,
    progress: Progress | None,
) -> tuple[I32, I8, I64, I64, I8, dict[str, Any]]:
    """The streaming schedule: the engine driven tick by tick, as a live collector drives it.

    Returns per row (owner, source, decided, waited, reason) and the engine's counts.
    """
    engine = Attributor(settings)
    n = len(fa)
    f_order, f_ticks, f_bounds = _tick_groups(fa.received, tick_ns)
    fa_sorted = fa.take(f_order)
    if events is not None and events.num_rows:
        ev_key = ipkeys.keys(events.column("ip"))
        ev_owner = names.ids(events.column("workload"))
        ev_assign = np.asarray(
            pc.equal(events.column("action"), "assign").to_numpy(zero_copy_only=False), bool
        )
        ev_time = _int64(events.column("time_ns"))
        got = _col(events, "received_ns")
        ev_recv = ev_time if got is None else _int64(pc.coalesce(got, events.column("time_ns")))
        e_order, e_ticks, e_bounds = _tick_groups(ev_recv, tick_ns)
        ev = (ev_key[e_order], ev_owner[e_order], ev_assign[e_order], ev_time[e_order],
              ev_recv[e_order])  # fmt: skip
    else:
        e_ticks, e_bounds = np.empty(0, np.int64), np.empty((0, 2), np.int64)
        ev = None

    decisions: list[Decisions] = []
    all_ticks = np.union1d(f_ticks, e_ticks)
    fi = ei = 0
    report_every = max(len(all_ticks) // 20, 1)
    for i, tick in enumerate(all_ticks):
        now = int(tick + 1) * tick_ns - 1
        decisions.extend(engine.run_until(int(tick) * tick_ns, tick_ns))
        if ev is not None and ei < len(e_ticks) and e_ticks[ei] == tick:
            a, b = e_bounds[ei]
            k, o, asg, t, r = ev
            engine.add_events(k[a:b], o[a:b], asg[a:b], t[a:b], r[a:b])
            ei += 1
        if fi < len(f_ticks) and f_ticks[fi] == tick:
            a, b = f_bounds[fi]
            engine.add_flows(fa_sorted.take(slice(a, b)), now)
            fi += 1
        decisions.append(engine.tick(now))
        if progress is not None and i % report_every == 0 and i:
            done = sum(len(d) for d in decisions)
            progress(f"replay: {i}/{len(all_ticks)} ticks, {done}/{n} flows decided")
    decisions.extend(engine.drain(tick_ns))
    d = Decisions.concat(decisions) if decisions else None

    owner = np.full(n, -1, np.int32)
    source = np.full(n, UNATTRIBUTED, np.int8)
    decided = np.zeros(n, np.int64)
    waited = np.zeros(n, np.int64)
    reason = np.zeros(n, np.int8)
    if d is not None and len(d):
        if len(d) != n or not np.all(np.bincount(d.row, minlength=n) == 1):
            raise AssertionError(f"engine decided {len(d)} rows for {n} input rows")
        owner[d.row], source[d.row], decided[d.row] = d.owner, d.source, d.decided
        waited[d.row], reason[d.row] = d.waited, d.reason
    c = engine.counters
    counts: dict[str, Any] = {
        "unattributed": dict(c.unattributed),
        "via_peer": c.via_peer,
        "via_ranges": c.via_ranges,
        "waited_flows": c.waited_flows,
        "retries": c.retries,
        "ownership_segments": len(engine.ranges),
        "ownership_addresses": engine.ranges.addresses,
        "evidence_rows": c.evidence_rows,
        "listening_rows": c.listening_rows,
        "events_in": c.events_in,
    }
    return owner, source, decided, waited, reason, counts


def _summary(
    settings: Settings,
    counts: dict[str, Any],
    n: int,
    source: npt.NDArray[np.int8],
    waited: I64,
    elapsed: float,
) -> dict[str, Any]:
    waits = waited[source != UNATTRIBUTED] / 1e9
    return {
        "method": settings.method,
        "rows": n,
        "heartbeat": int(np.count_nonzero(source == HEARTBEAT)),
        "event": int(np.count_nonzero(source == EVENT)),
        "unattributed": int(np.count_nonzero(source == UNATTRIBUTED)),
        "unattributed_by_reason": dict(sorted(counts["unattributed"].items())),
        "heartbeat_via_peer_row": counts["via_peer"],
        "heartbeat_via_ranges": counts["via_ranges"],
        "flows_that_waited": counts["waited_flows"],
        "retries": counts["retries"],
        "wait_seconds_p50": float(np.percentile(waits, 50)) if len(waits) else 0.0,
        "wait_seconds_p99": float(np.percentile(waits, 99)) if len(waits) else 0.0,
        "wait_seconds_max": float(waits.max()) if len(waits) else 0.0,
        "ownership_segments": counts["ownership_segments"],
        "ownership_addresses": counts["ownership_addresses"],
        "evidence_rows": counts["evidence_rows"],
        "listening_rows": counts["listening_rows"],
        "events": counts["events_in"],
        "seconds": round(elapsed, 3),
    }


def _dns_summary(
    dns: DnsNames, named: pa.Array | None, heard: npt.NDArray[np.bool_], source: I8
) -> dict[str, int]:
    """How many answers were given and how many written flows a DNS name names, in all and
    among the unattributed."""
    has = np.zeros(len(heard), bool)
    if named is not None:
        has = np.asarray(pc.is_valid(named).to_numpy(zero_copy_only=False), bool)
    has = has[~heard]
    return {
        "answers": dns.answers_in,
        "runs": len(dns),
        "named_flows": int(np.count_nonzero(has)),
        "named_unattributed": int(np.count_nonzero(has & (source == UNATTRIBUTED))),
    }


def _region_summary(
    flows: pa.Table,
    remote_key: npt.NDArray[np.uint64],
    ipkeys: IpKeys,
    regions: pa.Table | None,
    default_region: str | None,
) -> dict[str, Any]:
    """How many flows each region had to hand to another (remote address in its prefixes)."""
    if regions is None or regions.num_rows == 0:
        return {}
    rmap = RegionMap(regions)
    col = _col(flows, "region")
    fallback = default_region or ""
    # Rows counted per (exporter's region, remote address) first: the prefixes are matched
    # once per distinct address, not per row.
    if col is None:
        names: list[str | None] = [fallback]
        codes = pa.array(np.zeros(flows.num_rows, np.int32))
    else:
        encoded = col.combine_chunks()
        if not pa.types.is_dictionary(encoded.type):
            encoded = pc.dictionary_encode(encoded)
        names = [*encoded.dictionary.to_pylist(), fallback]
        codes = pc.fill_null(encoded.indices, len(names) - 1)
    pairs = pa.table({"from": codes, "key": remote_key})
    counts = pairs.group_by(["from", "key"]).aggregate([([], "count_all")])
    keys = np.asarray(counts.column("key").to_numpy(), np.uint64)
    source = np.asarray(counts.column("from").to_numpy(), np.int64)
    rows = np.asarray(counts.column("count_all").to_numpy(), np.int64)
    to = rmap.lookup(keys, ipkeys).astype(np.int64)
    known = to >= 0
    unknown = int(rows[~known].sum())
    # then per (exporter's region, remote region): a handful of pairs
    pair, at = np.unique(source[known] * len(rmap.names) + to[known], return_inverse=True)
    per_pair = np.zeros(len(pair), np.int64)
    np.add.at(per_pair, at, rows[known])
    handed: dict[str, int] = {}
    for p, count in zip(pair.tolist(), per_pair.tolist(), strict=True):
        came_from, went_to = names[p // len(rmap.names)], rmap.names[p % len(rmap.names)]
        if came_from != went_to:
            key = f"{came_from or '?'}->{went_to}"
            handed[key] = handed.get(key, 0) + count
    return {"handed_to_other_region": dict(sorted(handed.items())), "remote_in_no_region": unknown}


def stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

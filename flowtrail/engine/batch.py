"""The batch schedule of `flowtrail attribute`: the streaming replay's decisions, in one pass.

The streaming replay (replay.py) hands the engine one tick of rows at a time and pays a few
hundred Python calls per tick, whatever the tick holds. Offline every row is known in
advance, so this schedule prepares everything once, vectorised (arrival ticks, the other
end's rows of every flow, dense address ids, the event feed sorted as the engine reads it),
and lets one compiled loop (sweep.py) visit the same collector times the streaming replay
would and ask the same questions (verdict.py) there. The answers are identical row for row
and column for column (tests/unit/test_batch_schedule.py compares them).

What it does not do, it leaves to the streaming engine: the event baseline (`--method
event`), and an input where a flow would fall back on the event feed for a moment the feed has
forgotten by then (older than --retention at that tick): `batch_decisions` returns None.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.engine import sweep
from flowtrail.engine.attributor import REASONS, SECOND, FlowArrays, Settings
from flowtrail.engine.ipkeys import IpKeys, Names
from flowtrail.engine.peers import tuple_hash
from flowtrail.engine.verdict import EVENT, HEARTBEAT, UNATTRIBUTED, VIA_PEER, VIA_RANGES
from flowtrail.jit import compiled

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
I8 = npt.NDArray[np.int8]


@dataclass
class BatchDecisions:
    """Per input row: the decision, as the streaming replay's Decisions would give it."""

    owner: I32
    source: I8
    reason: I8
    via: I8
    decided: I64
    counters: dict[str, int]


def grid(times: I64, step: int) -> I64:
    """The collector time of the tick a time falls in: the end of its step."""
    return (times // step + 1) * step - 1  # type: ignore[no-any-return]


@compiled
def _peer_candidates(h_sorted, pair_sorted, rows_sorted, lk, lp, rk_, rp, pair, q_hash, tol):  # type: ignore[no-untyped-def]
    """Per flow, the rows the pairing rule admits as its other end (CSR: ptr, rows).

    The rows (evidence only) are sorted by (4-tuple hash, pair time); a flow looks up its
    reversed 4-tuple's hash, then the pair times within the tolerance, and checks the tuple
    exactly (a hash collision never pairs).
    """
    n = len(q_hash)
    ptr = np.zeros(n + 1, np.int64)
    out = np.empty(max(16, n), np.int64)
    cnt = 0
    m = len(h_sorted)
    for i in range(n):
        h = q_hash[i]
        a, b = 0, m
        while a < b:  # first row with hash >= h, pair >= pair - tol
            mid = (a + b) >> 1
            if h_sorted[mid] < h or (h_sorted[mid] == h and pair_sorted[mid] < pair[i] - tol):
                a = mid + 1
            else:
                b = mid
        j = a
        while j < m and h_sorted[j] == h and pair_sorted[j] <= pair[i] + tol:
            r = rows_sorted[j]
            if lk[r] == rk_[i] and lp[r] == rp[i] and rk_[r] == lk[i] and rp[r] == lp[i]:
                if cnt == len(out):
                    grown = np.empty(2 * cnt, np.int64)
                    grown[:cnt] = out
                    out = grown
                out[cnt] = r
                cnt += 1
            j += 1
        ptr[i + 1] = cnt
    return ptr, out[:cnt]


def _dense(keys: npt.NDArray[np.uint64], among: npt.NDArray[np.uint64]) -> I64:
    """Each key's index in the sorted unique `among`, -1 where absent."""
    if len(among) == 0:
        return np.full(len(keys), -1, np.int64)
    pos = np.minimum(np.searchsorted(among, keys), len(among) - 1)
    return np.where(among[pos] == keys, pos, -1).astype(np.int64)


def batch_decisions(
    fa: FlowArrays,
    events: pa.Table | None,
    ipkeys: IpKeys,
    names: Names,
    settings: Settings,
    tick_ns: int,
) -> BatchDecisions | None:
    """Decide every flow as the streaming replay does; None where it must do it itself."""
    s = settings
    if s.method != "heartbeat" or fa.listening.any():
        return None  # listeners' heartbeats: the streaming engine's alone, for now
    n = len(fa)
    order = np.argsort(fa.received, kind="stable")
    recv = np.ascontiguousarray(fa.received[order])
    arr_t = grid(recv, tick_ns)
    local_key = np.ascontiguousarray(fa.local_key[order])
    remote_key = np.ascontiguousarray(fa.remote_key[order])
    local_port = np.ascontiguousarray(fa.local_port[order])
    remote_port = np.ascontiguousarray(fa.remote_port[order])
    start = np.ascontiguousarray(fa.start[order])
    end = np.ascontiguousarray(fa.end[order])
    owner = np.ascontiguousarray(fa.local_owner[order])
    exporter = np.ascontiguousarray(fa.exporter[order])
    pair = np.ascontiguousarray(fa.pair[order])
    translating = np.ascontiguousarray(fa.translating[order])

    evidence = owner >= 0
    claim_keys = np.unique(local_key[evidence])
    ck = np.where(evidence, _dense(local_key, claim_keys), -1)
    rk = _dense(remote_key, claim_keys)
    tr_keys = np.unique(local_key[translating])
    trl = np.where(translating, _dense(local_key, tr_keys), -1)
    trr = _dense(remote_key, tr_keys)

    if s.use_peers and evidence.any():
        ev_rows = np.flatnonzero(evidence)
        h_ev = tuple_hash(local_key[ev_rows], local_port[ev_rows], remote_key[ev_rows],
                          remote_port[ev_rows])  # fmt: skip
        by = np.lexsort((pair[ev_rows], h_ev))
        q_hash = tuple_hash(remote_key, remote_port, local_key, local_port)
        c_ptr, c_row = _peer_candidates(
            np.ascontiguousarray(h_ev[by]), np.ascontiguousarray(pair[ev_rows][by]),
            np.ascontiguousarray(ev_rows[by]), local_key, local_port, remote_key,
            remote_port, pair, q_hash, s.peer_tolerance_ns,
        )  # fmt: skip
    else:
        c_ptr, c_row = np.zeros(n + 1, np.int64), np.empty(0, np.int64)

    ticks = np.unique(arr_t)
    e_time = np.empty(0, np.int64)
    e_assign = np.empty(0, bool)
    e_owner = np.empty(0, np.int32)
    e_seen = np.empty(0, np.int64)
    e_lo = e_hi = np.zeros(n, np.int64)
    n_events = 0
    if events is not None and events.num_rows:
        n_events = events.num_rows
        key = ipkeys.keys(events.column("ip"))
        ev_owner = names.ids(events.column("workload"))
        assign = np.asarray(
            pc.equal(events.column("action"), "assign").to_numpy(zero_copy_only=False), bool
        )
        time = np.asarray(events.column("time_ns").to_numpy(), np.int64)
        got = events.column("received_ns") if "received_ns" in events.column_names else None
        ev_recv = (
            time
            if got is None
            else np.asarray(pc.coalesce(got, events.column("time_ns")).to_numpy(), np.int64)
        )
        by = np.lexsort((assign, ev_recv, time, key))  # as EventFeed reads it
        key, e_time, e_assign, e_owner = key[by], time[by], assign[by], ev_owner[by]
        e_seen = grid(ev_recv[by], tick_ns)
        e_lo = np.searchsorted(key, remote_key, side="left").astype(np.int64)
        e_hi = np.searchsorted(key, remote_key, side="right").astype(np.int64)
        ticks = np.union1d(ticks, e_seen)

    use_events = s.use_events and n_events > 0
    settings_vec = np.array(
        [
            tick_ns, s.max_wait_ns, s.guard_ns, s.event_lag_ns, int(use_events),
            int(s.use_peers), s.retention_ns, max(s.retention_ns // 10, SECOND),
            s.max_wait_ns + s.peer_slack_ns, 1 << 16,
        ],
        np.int64,
    )  # fmt: skip
    out_owner = np.full(n, -1, np.int32)
    out_source = np.full(n, UNATTRIBUTED, np.int8)
    out_reason = np.zeros(n, np.int8)
    out_via = np.zeros(n, np.int8)
    out_decided = np.zeros(n, np.int64)
    counters = np.zeros(sweep.N_COUNTERS, np.int64)
    sweep.run(
        settings_vec, ticks.astype(np.int64), arr_t, recv, start, rk, ck, owner, exporter, end,
        trl, trr, c_ptr, c_row, e_lo, e_hi, e_time, e_assign, e_owner, e_seen,
        len(claim_keys), len(tr_keys), out_owner, out_source, out_reason, out_via,
        out_decided, counters,
    )  # fmt: skip
    if counters[sweep.C_BEHIND_HORIZON]:
        return None

    back = np.empty(n, np.int64)
    back[order] = np.arange(n)
    result = BatchDecisions(
        owner=out_owner[back], source=out_source[back], reason=out_reason[back],
        via=out_via[back], decided=out_decided[back],
        counters={
            "flows_in": n,
            "evidence_rows": int(np.count_nonzero(evidence)),
            "listening_rows": 0,
            "events_in": n_events,
            "waited_flows": int(counters[sweep.C_WAITED]),
            "retries": int(counters[sweep.C_RETRIES]),
            "ownership_segments": int(counters[sweep.C_SEGMENTS]),
            "ownership_addresses": int(counters[sweep.C_ADDRESSES]),
            "ticks": int(counters[sweep.C_TICKS]),
        },
    )  # fmt: skip
    result.counters["via_peer"] = int(np.count_nonzero(result.via == VIA_PEER))
    result.counters["via_ranges"] = int(np.count_nonzero(result.via == VIA_RANGES))
    return result


def unattributed_by_reason(source: I8, reason: I8) -> dict[str, int]:
    """How many flows left unattributed for each reason (only reasons that occurred)."""
    un = reason[source == UNATTRIBUTED]
    codes, counts = np.unique(un, return_counts=True)
    return {REASONS[int(c)]: int(k) for c, k in zip(codes, counts, strict=True)}


__all__ = ["EVENT", "HEARTBEAT", "BatchDecisions", "batch_decisions", "unattributed_by_reason"]

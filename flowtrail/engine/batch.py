"""The batch schedule of `flowtrail attribute`: the streaming replay's decisions, in one pass.

The streaming replay (replay.py) hands the engine one tick of rows at a time and pays a few
hundred Python calls per tick, whatever the tick holds. Offline every row is known in
advance, so this schedule prepares everything once, vectorised (arrival ticks, the other
end's rows of every flow, dense address ids, the event feed sorted as the engine reads it),
and lets one compiled loop (sweep.py) visit the same collector times the streaming replay
would and ask the same questions (verdict.py) there. The answers are identical row for row
and column for column (tests/unit/test_batch_schedule.py compares them).

What it does not do, it leaves to the streaming engine: the event baseline (`--method
event`), an input holding listeners' rows (outcome `listening`), and an input where a flow
would fall back on the event feed for an address some of whose events the feed may have
forgotten by then (more than one older than --retention at that tick): `batch_decisions`
returns None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.engine import sweep
from flowtrail.engine.attributor import REASONS, SECOND, Settings
from flowtrail.engine.ipkeys import IpKeys, Names
from flowtrail.engine.kernels import mix64
from flowtrail.engine.verdict import UNATTRIBUTED, VIA_PEER, VIA_RANGES
from flowtrail.jit import compiled

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
I8 = npt.NDArray[np.int8]
U64 = npt.NDArray[np.uint64]
B = npt.NDArray[np.bool_]


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
def _dense_ids(keys, mask, queries):  # type: ignore[no-untyped-def]
    """Dense ids (0, 1, ...) of the distinct keys[mask]; (ids of keys, ids of queries, count),
    -1 where a key is not among them. One hash table, no sort."""
    size = 16
    while size < 2 * len(keys):
        size *= 2
    slot_key = np.empty(size, np.uint64)
    slot_id = np.full(size, -1, np.int64)
    m = np.uint64(size - 1)
    ids = np.full(len(keys), -1, np.int32)
    count = 0
    for i in range(len(keys)):
        if not mask[i]:
            continue
        s = mix64(keys[i]) & m
        while slot_id[s] >= 0 and slot_key[s] != keys[i]:
            s = (s + np.uint64(1)) & m
        if slot_id[s] < 0:
            slot_key[s], slot_id[s] = keys[i], count
            count += 1
        ids[i] = slot_id[s]
    out = np.full(len(queries), -1, np.int32)
    for i in range(len(queries)):
        s = mix64(queries[i]) & m
        while slot_id[s] >= 0:
            if slot_key[s] == queries[i]:
                out[i] = slot_id[s]
                break
            s = (s + np.uint64(1)) & m
    return ids, out, count


@compiled
def _tuple_hash(a_key, a_port, b_key, b_port):  # type: ignore[no-untyped-def]
    h = mix64(a_key * np.uint64(0x9E3779B97F4A7C15) + np.uint64(a_port))
    return mix64(h ^ (b_key * np.uint64(0x9E3779B97F4A7C15) + np.uint64(b_port)))


@compiled
def _connection_keys(lk, lp, rk_, rp, row_bits):  # type: ignore[no-untyped-def]
    """Per row: the hash of its connection's 4-tuple, the same whichever end wrote the row,
    in the high bits, and the row number in the low `row_bits` (sorted, rows of one
    connection come together, in arrival order)."""
    shift = np.uint64(row_bits)
    out = np.empty(len(lk), np.uint64)
    for i in range(len(lk)):
        if lk[i] < rk_[i] or (lk[i] == rk_[i] and lp[i] <= rp[i]):
            h = _tuple_hash(lk[i], lp[i], rk_[i], rp[i])
        else:
            h = _tuple_hash(rk_[i], rp[i], lk[i], lp[i])
        out[i] = ((h >> shift) << shift) | np.uint64(i)
    return out


@compiled
def _match_groups(keys, row_bits, lk, lp, rk_, rp, pair, evidence, tol):  # type: ignore[no-untyped-def]
    """Over rows in `keys` order (the per-row arrays given in that order too): CSR (ptr, the
    position of each candidate) of the rows the pairing rule admits as each row's other end.
    Only rows of one group (one connection's hash) are compared, and the tuple exactly: a
    hash collision never pairs."""
    n = len(keys)
    shift = np.uint64(row_bits)
    ptr = np.zeros(n + 1, np.int64)
    out = np.empty(max(16, n), np.int64)
    cnt = 0
    a = 0
    while a < n:
        b = a + 1
        while b < n and (keys[b] >> shift) == (keys[a] >> shift):
            b += 1
        for x in range(a, b):
            for y in range(a, b):
                if (
                    evidence[y] and lk[y] == rk_[x] and lp[y] == rp[x] and rk_[y] == lk[x]
                    and rp[y] == lp[x] and abs(pair[y] - pair[x]) <= tol
                ):  # fmt: skip
                    if cnt == len(out):
                        grown = np.empty(2 * cnt, np.int64)
                        grown[:cnt] = out
                        out = grown
                    out[cnt] = y
                    cnt += 1
            ptr[x + 1] = cnt
        a = b
    return ptr, out[:cnt]


@compiled
def _by_row(order, ptr, found, arr_t, owner, exporter):  # type: ignore[no-untyped-def]
    """_match_groups' CSR by row (arrival order) instead of position, with each candidate's
    row, arrival tick, owner and exporter, laid out for the sweep to read in order."""
    n = len(order)
    pos = np.empty(n, np.int64)
    for x in range(n):
        pos[order[x]] = x
    r_ptr = np.zeros(n + 1, np.int64)
    rows = np.empty(len(found), np.int64)
    c_t = np.empty(len(found), np.int64)
    c_owner = np.empty(len(found), np.int32)
    c_exp = np.empty(len(found), np.int32)
    cnt = 0
    for i in range(n):
        x = pos[i]
        for j in range(ptr[x], ptr[x + 1]):
            r = order[found[j]]
            rows[cnt] = r
            c_t[cnt], c_owner[cnt], c_exp[cnt] = arr_t[r], owner[r], exporter[r]
            cnt += 1
        r_ptr[i + 1] = cnt
    return r_ptr, rows, c_t, c_owner, c_exp


def peer_candidates(
    lk: U64, lp: I32, rk_: U64, rp: I32, pair: I64, evidence: B, arr_t: I64, owner: I32,
    exporter: I32, tol: int,
) -> tuple[I64, I64, I64, I32, I32]:  # fmt: skip
    """Per flow, the rows the pairing rule admits as its other end, in arrival order: CSR
    (ptr, row) plus each candidate's arrival tick, owner and exporter.

    Rows sorted by their connection's hash (one sort of plain integers) bring both ends of
    every connection together; each group is then matched in cache, instead of probing a
    hash table at random per row.
    """
    row_bits = max(len(lk) - 1, 1).bit_length()
    keys = _connection_keys(lk, lp, rk_, rp, row_bits)
    keys.sort()
    order = (keys & np.uint64((1 << row_bits) - 1)).astype(np.int64)
    ptr, found = _match_groups(
        keys, row_bits, lk[order], lp[order], rk_[order], rp[order], pair[order],
        evidence[order], tol,
    )  # fmt: skip
    return _by_row(order, ptr, found, arr_t, owner, exporter)  # type: ignore[no-any-return]


def batch_decisions(
    cols: dict[str, Any],
    events: pa.Table | None,
    ipkeys: IpKeys,
    names: Names,
    settings: Settings,
    tick_ns: int,
) -> BatchDecisions | None:
    """Decide every flow as the streaming replay does; None where it must do it itself.

    `cols`: replay.flow_columns of the flows table. Once it has read them, it drops all but
    received, remote_key and listening (to the caller: rebuild them to fall back).
    """
    s = settings
    if s.method != "heartbeat" or cols["listening"].any():
        return None  # listeners' heartbeats: the streaming engine's alone, for now
    n = len(cols["received"])
    received = cols["received"]
    if n > 1 and not np.all(received[1:] >= received[:-1]):
        order: I64 | None = np.argsort(received, kind="stable")
    else:
        order = None  # already in arrival order (as the simulator and collectors write)

    def arrival(name: str) -> Any:
        a = cols[name]
        return np.ascontiguousarray(a if order is None else a[order])

    recv = arrival("received")
    arr_t = grid(recv, tick_ns)
    local_key, remote_key = arrival("local_key"), arrival("remote_key")
    local_port, remote_port = arrival("local_port"), arrival("remote_port")
    start, end, pair = arrival("start"), arrival("end"), arrival("pair")
    owner, exporter = arrival("local_owner"), arrival("exporter")
    translating = arrival("translating")

    evidence = owner >= 0
    ck, rk, n_keys = _dense_ids(local_key, evidence, remote_key)
    trl, trr, n_tr = _dense_ids(local_key, translating, remote_key)

    if s.use_peers and evidence.any():
        c_ptr, c_row, c_t, c_owner, c_exp = peer_candidates(
            local_key, local_port, remote_key, remote_port, pair, evidence, arr_t, owner,
            exporter, s.peer_tolerance_ns,
        )  # fmt: skip
    else:
        c_ptr, c_row = np.zeros(n + 1, np.int64), np.empty(0, np.int64)
        c_t, c_owner, c_exp = c_row, np.empty(0, np.int32), np.empty(0, np.int32)

    ticks = np.unique(arr_t) if order is not None else arr_t[np.r_[True, arr_t[1:] != arr_t[:-1]]]
    e_time = np.empty(0, np.int64)
    e_assign = np.empty(0, bool)
    e_owner = np.empty(0, np.int32)
    e_seen = np.empty(0, np.int64)
    e_lo = e_hi = np.zeros(n, np.int32)  # int32 per flow: the sweep's largest inputs
    eb_start = eb_end = np.empty(0, np.int64)
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
        eb_start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]).astype(np.int64)
        eb_end = np.append(eb_start[1:], len(key)).astype(np.int64)
        e_lo = np.searchsorted(key, remote_key, side="left").astype(np.int32)
        e_hi = np.searchsorted(key, remote_key, side="right").astype(np.int32)
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
    n_evidence = int(np.count_nonzero(evidence))
    # What the sweep does not read goes now: the rows' columns are not held twice over the
    # sweep (the caller builds them again in the rare case it must fall back).
    del local_key, remote_key, local_port, remote_port, pair, translating, evidence
    for name in [c for c in cols if c not in ("received", "remote_key", "listening")]:
        del cols[name]
    out_owner = np.full(n, -1, np.int32)
    out_source = np.full(n, UNATTRIBUTED, np.int8)
    out_reason = np.zeros(n, np.int8)
    out_via = np.zeros(n, np.int8)
    out_decided = np.zeros(n, np.int64)
    counters = np.zeros(sweep.N_COUNTERS, np.int64)
    sweep.run(
        settings_vec, ticks.astype(np.int64), arr_t, recv, start, rk, ck, owner, exporter, end,
        trl, trr, c_ptr, c_row, c_t, c_owner, c_exp, e_lo, e_hi, e_time, e_assign, e_owner,
        e_seen, eb_start, eb_end, n_keys, n_tr, out_owner, out_source, out_reason, out_via,
        out_decided, counters,
    )  # fmt: skip
    if counters[sweep.C_BEHIND_HORIZON]:
        return None

    if order is not None:
        back = np.empty(n, np.int64)
        back[order] = np.arange(n)
        out_owner, out_source, out_reason = out_owner[back], out_source[back], out_reason[back]
        out_via, out_decided = out_via[back], out_decided[back]
    return BatchDecisions(
        owner=out_owner, source=out_source, reason=out_reason, via=out_via,
        decided=out_decided,
        counters={
            "flows_in": n,
            "evidence_rows": n_evidence,
            "listening_rows": 0,
            "events_in": n_events,
            "waited_flows": int(counters[sweep.C_WAITED]),
            "retries": int(counters[sweep.C_RETRIES]),
            "ownership_segments": int(counters[sweep.C_SEGMENTS]),
            "ownership_addresses": int(counters[sweep.C_ADDRESSES]),
            "ticks": int(counters[sweep.C_TICKS]),
            "via_peer": int(np.count_nonzero(out_via == VIA_PEER)),
            "via_ranges": int(np.count_nonzero(out_via == VIA_RANGES)),
        },
    )  # fmt: skip


def unattributed_by_reason(source: I8, reason: I8) -> dict[str, int]:
    """How many flows left unattributed for each reason (only reasons that occurred)."""
    un = reason[source == UNATTRIBUTED]
    codes, counts = np.unique(un, return_counts=True)
    return {REASONS[int(c)]: int(k) for c, k in zip(codes, counts, strict=True)}

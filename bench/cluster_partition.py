"""Cluster nodes split by connection key, learning compacted ownership runs: what it costs.

Not a test. `python bench/cluster_partition.py` simulates a fleet and, in one process and
one core (no NATS: the bus's costs are measured in bench/cluster_throughput.py):

- key: how many connections captured at both ends have rows whose connection keys differ
  (flowtrail/cluster/connkey.py: NAT seen from one end only), and how many rows say
  local_translating;
- bytes: what every node of a region receives per flow: today the evidence message of
  each batch (the learning columns and the owned mask, Arrow IPC), with partitions the
  batch's ownership runs (flowtrail/cluster/runs.py); a batch is one agent flush (the
  simulator's (exporter, received_ns) groups);
- learn: CPU per region row that every node pays to learn the region: today decode +
  submit_evidence of every batch, with partitions decode + learn_runs; both with the
  ownership ranges merged once per tick, as a node merges them;
- decide: with PARTITIONS partitions (decide_partitioned), CPU per decided row of each
  partition's engine (its rows as flows and peer rows, its ticks; no validation, bus or
  sink), and whether the output equals replay() row for row (--check).

`--rebuild ADDRESSES` instead times a restarting node's rebuild: BATCHES rounds (a minute
each) of one run per address (one agent flush each, touching the previous one, as a steady
owner's do), as Arrow IPC messages of 20,000 runs, decoded and learned, the ranges merged
once per round (the data clock's tick), as a node catching up on the evidence stream does.

    python bench/cluster_partition.py --scenario calm --flows 400000 --duration 600 --check
    python bench/cluster_partition.py --rebuild 1000000 --batches 10
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.cluster.bus import decode, encode
from flowtrail.cluster.connkey import connection_hashes
from flowtrail.cluster.node import EVIDENCE_COLUMNS, OWNED_COLUMN
from flowtrail.cluster.partitioned import decide_partitioned
from flowtrail.cluster.runs import RUNS, compact, learn_runs
from flowtrail.engine.replay import received_times, replay
from flowtrail.engine.stream import StreamingAttribution
from flowtrail.sim.simulation import simulate

S = 1_000_000_000


def key_breaks(flows: pa.Table) -> dict[str, object]:
    h = connection_hashes(flows)
    conn = np.asarray(flows.column("sim_conn_id").to_numpy(), np.int64)
    order = np.argsort(conn, kind="stable")
    c, hh = conn[order], h[order]
    both = np.flatnonzero((c[1:] == c[:-1]) & (c[1:] >= 0))  # two rows of one connection
    differ = hh[both] != hh[both + 1]
    apart = int(np.count_nonzero(differ))
    # Would the engine have paired them? Their NAT-resolved 4-tuples mirror each other.
    ends = _resolved(flows.take(pa.array(order)))
    a, b = both, both + 1
    mirrored = (
        (ends[0][a] == ends[2][b]) & (ends[1][a] == ends[3][b])
        & (ends[2][a] == ends[0][b]) & (ends[3][a] == ends[1][b])
    )  # fmt: skip
    # The client's row names an address the server's row does not (a VIP), with no NAT
    # facts to resolve it: NAT seen from one end only.
    outbound = np.asarray(
        pc.equal(flows.take(pa.array(order)).column("direction"), "outbound").to_numpy(
            zero_copy_only=False
        ),
        bool,
    )
    client = np.where(outbound[a], a, b)
    server = np.where(outbound[a], b, a)
    one_sided = ~ends[4][client] & (ends[2][client] != ends[0][server])
    translating = 0
    if "local_translating" in flows.column_names:
        translating = int(pc.sum(pc.fill_null(flows.column("local_translating"), False)).as_py())
    return {
        "connections_with_both_ends": len(both),
        "keys_differ": apart,
        "keys_differ_share": round(apart / max(len(both), 1), 5),
        # must be 0: rows the engine would pair always share a key
        "keys_differ_but_engine_pairs_them": int(np.count_nonzero(differ & mirrored)),
        "keys_differ_client_row_without_nat_facts": int(np.count_nonzero(differ & one_sided)),
        "rows_local_translating": translating,
    }


def _resolved(t: pa.Table) -> tuple[np.ndarray, ...]:  # type: ignore[type-arg]
    """(local ip, local port, resolved remote ip, port, had no NAT info) per row."""
    remote, port = t.column("remote_ip"), t.column("remote_port")
    nat = t.column("nat_remote_ip")
    use = pc.is_valid(nat)
    remote = pc.if_else(use, nat, remote)
    port = pc.if_else(use, pc.coalesce(t.column("nat_remote_port"), port), port)
    return (
        np.asarray(t.column("local_ip").to_numpy(zero_copy_only=False)),
        np.asarray(t.column("local_port").to_numpy()),
        np.asarray(remote.to_numpy(zero_copy_only=False)),
        np.asarray(port.to_numpy()),
        np.asarray(use.to_numpy(zero_copy_only=False), bool),
    )


def batches(flows: pa.Table) -> list[pa.Table]:
    """The agent flushes, in received order."""
    received = received_times(flows)
    exporter = flows.column("exporter").cast(pa.string())
    key = pc.binary_join_element_wise(pa.array(received).cast(pa.string()), exporter, "|").to_numpy(
        zero_copy_only=False
    )
    order = np.lexsort((key, received))
    flows = flows.take(pa.array(order))
    key = key[order]
    cuts = np.concatenate([[0], np.flatnonzero(key[1:] != key[:-1]) + 1, [len(key)]])
    return [flows.slice(int(a), int(b - a)) for a, b in itertools.pairwise(cuts)]


def learning(parts: list[pa.Table], per_tick: int = 0) -> dict[str, object]:
    """`per_tick`: messages learned together (0: those of one received second, as the
    simulator's fleet sends them; a big fleet's region gets many per tick)."""
    evidence = [
        encode(
            p.select([c for c in EVIDENCE_COLUMNS if c in p.column_names]).append_column(
                OWNED_COLUMN, pa.array(np.zeros(p.num_rows, bool))
            )
        )
        for p in parts
    ]
    runs = [encode(compact(p)) for p in parts]
    if per_tick:
        ticks = [i // per_tick for i in range(len(parts))]
    else:
        ticks = [int(received_times(p)[0]) // S for p in parts]
    rows = sum(p.num_rows for p in parts)

    def timed(learn: str) -> float:
        # Each message is decoded as it comes; what a tick's messages teach is learned in
        # one call, and the ranges merge once per tick, either way.
        engine = StreamingAttribution()
        began = time.process_time()
        waiting: list[pa.Table] = []

        def flush(tick: int) -> None:
            if not waiting:
                return
            table = pa.concat_tables(waiting)
            waiting.clear()
            if learn == "raw":
                engine.submit_evidence(table.drop_columns([OWNED_COLUMN]), tick * S)
            else:
                learn_runs(engine, table, tick * S)
            _ = engine.engine.ranges.segments

        last = ticks[0] if ticks else 0
        for tick, payload in zip(ticks, evidence if learn == "raw" else runs, strict=True):
            if tick != last:
                flush(last)
            last = tick
            waiting.append(decode(payload))
        flush(last)
        return time.process_time() - began

    raw_s, runs_s = timed("raw"), timed("runs")
    compact_began = time.process_time()
    records = sum(compact(p).num_rows for p in parts)
    compact_s = time.process_time() - compact_began
    return {
        "rows": rows,
        "batches": len(parts),
        "messages_per_learn": per_tick or "one received second",
        "run_records": records,
        "evidence_bytes_per_row_now": round(sum(map(len, evidence)) / rows, 2),
        "runs_bytes_per_row": round(sum(map(len, runs)) / rows, 2),
        "bytes_ratio": round(sum(map(len, evidence)) / max(sum(map(len, runs)), 1), 1),
        "learn_us_per_region_row_now": round(raw_s / rows * 1e6, 3),
        "learn_us_per_region_row_runs": round(runs_s / rows * 1e6, 3),
        "compact_us_per_row_taken": round(compact_s / rows * 1e6, 3),
    }


def deciding(flows: pa.Table, events: pa.Table, counts: list[int], check: bool) -> list[object]:
    expected = replay(flows, events).table if check else None
    out: list[object] = []
    for n in counts:
        got = decide_partitioned(flows, events, n)
        row: dict[str, object] = {
            "partitions": n,
            "rows_per_partition": got.rows_per_partition,
            "decide_us_per_row": [
                round(s / max(r, 1) * 1e6, 2)
                for s, r in zip(got.decide_s, got.rows_per_partition, strict=True)
            ],
        }
        if expected is not None:
            cols = ["remote_workload", "remote_source", "unattributed_reason", "attributed_ns"]
            row["equals_replay"] = expected.select(cols).equals(got.table.select(cols))
        out.append(row)
    return out


def rebuild(addresses: int, rounds: int, per_message: int = 20_000) -> dict[str, object]:
    ip = pc.binary_join_element_wise(
        "10",
        pa.array((np.arange(addresses) >> 16) & 255).cast(pa.string()),
        pa.array((np.arange(addresses) >> 8) & 255).cast(pa.string()),
        pa.array(np.arange(addresses) & 255).cast(pa.string()),
        ".",
    )
    host = pa.array([f"h{i // 20:05d}" for i in range(addresses)], pa.string())
    work = pa.array([f"svc-{i % 500}" for i in range(addresses)], pa.string())
    messages: list[bytes] = []
    for r in range(rounds):
        first = np.full(addresses, r * 60 * S, np.int64)
        table = pa.table(
            [ip, host, work, pa.array(first), pa.array(first + 60 * S),
             pa.array(np.zeros(addresses, bool))],
            schema=RUNS,
        )  # fmt: skip
        messages.extend(
            encode(table.slice(a, per_message)) for a in range(0, addresses, per_message)
        )
    engine = StreamingAttribution()
    per_round = len(messages) // rounds
    began, began_wall = time.process_time(), time.perf_counter()
    for i, payload in enumerate(messages):
        learn_runs(engine, decode(payload), i)
        if (i + 1) % per_round == 0:
            _ = engine.engine.ranges.segments  # the data clock's tick: one merge per round
    cpu, wall = time.process_time() - began, time.perf_counter() - began_wall
    records = addresses * rounds
    return {
        "addresses": addresses,
        "rounds": rounds,
        "records": records,
        "bytes": sum(map(len, messages)),
        "cpu_s": round(cpu, 2),
        "wall_s": round(wall, 2),
        "us_per_record": round(cpu / records * 1e6, 3),
        "ownership_ranges": len(engine.engine.ranges),
        "ownership_mib": round(engine.engine.ranges.nbytes / 2**20, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="calm")
    ap.add_argument("--flows", type=int, default=200_000)
    ap.add_argument("--duration", type=float, default=None)
    ap.add_argument("--flush", type=float, default=None, help="agents' flush interval, s")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--partitions", type=int, nargs="*", default=[1, 2, 4])
    ap.add_argument("--check", action="store_true", help="compare with replay() row for row")
    ap.add_argument("--rebuild", type=int, default=0, metavar="ADDRESSES")
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--per-tick", type=int, default=0, help="messages learned in one call")
    args = ap.parse_args()
    if args.rebuild:
        print(json.dumps(rebuild(args.rebuild, args.batches)))
        return
    knobs = {"flows": args.flows, "duration": args.duration, "flush_interval": args.flush}
    sim = simulate(args.scenario, args.seed, **{k: v for k, v in knobs.items() if v})
    flows = sim.flows
    print(json.dumps({"scenario": args.scenario, **key_breaks(flows)}))
    print(json.dumps(learning(batches(flows), args.per_tick)))
    if args.partitions:
        for row in deciding(flows, sim.events, args.partitions, args.check):
            print(json.dumps(row))


if __name__ == "__main__":
    main()

"""Attributed flows for the console's tests: a small fleet whose every number is known, and a
simulated fleet moved to the present for a map that looks like a real one."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.engine.replay import replay
from flowtrail.schema import ATTRIBUTED
from flowtrail.sim.simulation import simulate

SECOND = 1_000_000_000
MINUTE = 60 * SECOND


def _row(n: int, at_ns: int, **over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {name: None for name in ATTRIBUTED.names}
    row.update(
        flow_id=str(n),
        exporter="host-a",
        region="lab",
        local_ip="10.0.0.1",
        local_port=40000 + n,
        remote_ip="10.0.0.2",
        remote_port=443,
        direction="outbound",
        start_ns=at_ns - 2 * SECOND,
        end_ns=at_ns,
        state="closed",
        bytes_sent=1000,
        bytes_received=2000,
        retransmits=0,
        srtt_us=500,
        remote_source="heartbeat",
        received_ns=at_ns + SECOND,
        attributed_ns=at_ns + 3 * SECOND,
    )
    row.update(over)
    return row


def known_flows(now_ns: int) -> pa.Table:
    """Within the last 5 minutes: web → api 3 connections; api → db 2 connections and 1
    refused attempt; an unnamed client → web 2 connections (seen by web's host). Two hours
    ago: cron → api 1 connection (only a window of more than two hours shows it)."""
    t = now_ns - MINUTE
    rows = [
        *(
            _row(i, t - i * SECOND, local_workload="web", remote_workload="api", srtt_us=400)
            for i in range(3)
        ),
        *(
            _row(
                10 + i,
                t - i * SECOND,
                exporter="host-b",
                local_ip="10.0.0.2",
                remote_ip="10.0.0.3",
                remote_port=5432,
                local_workload="api",
                remote_workload="db",
                bytes_sent=300,
                bytes_received=7000,
                retransmits=2,
            )
            for i in range(2)
        ),
        _row(
            12,
            t - 3 * SECOND,
            exporter="host-b",
            local_ip="10.0.0.2",
            remote_ip="10.0.0.3",
            remote_port=5432,
            local_workload="api",
            remote_workload="db",
            bytes_sent=0,
            bytes_received=0,
            outcome="refused",
            srtt_us=None,
        ),
        *(
            _row(
                20 + i,
                t - i * SECOND,
                local_ip="10.0.0.1",
                local_port=443,
                remote_ip="203.0.113.9",
                remote_port=50000 + i,
                direction="inbound",
                local_workload="web",
                remote_workload=None,
                remote_source="unattributed",
                bytes_sent=5000,
                bytes_received=100,
            )
            for i in range(2)
        ),
        _row(
            30,
            now_ns - 120 * MINUTE,
            exporter="host-c",
            local_ip="10.0.0.4",
            local_workload="cron",
            remote_workload="api",
        ),
    ]
    table = pa.Table.from_pylist(rows, schema=ATTRIBUTED.schema)
    # The reason the engine writes beside each unattributed row (contract version 2).
    reasons = ["no_evidence" if r["remote_workload"] is None else None for r in rows]
    return table.append_column("unattributed_reason", pa.array(reasons, pa.string()))


def simulated_flows(now_ns: int, flows: int = 6_000, seed: int = 3) -> pa.Table:
    """A simulated churny fleet, attributed, its times moved so that it ends a minute ago."""
    sim = simulate("churny", seed, flows=flows)
    table = replay(sim.flows, sim.events, sim.regions).table
    shift = now_ns - MINUTE - int(pc.max(table.column("end_ns")).as_py())
    for name in ("start_ns", "end_ns", "established_ns", "received_ns", "attributed_ns"):
        if name in table.column_names:
            col = table.column(name)
            moved = pc.add(col, pa.scalar(shift, pa.int64()))
            table = table.set_column(table.column_names.index(name), name, moved)
    keep = [n for n in table.column_names if not n.startswith("sim_")]
    return table.select(keep)


EXTERNAL_NETWORKS = [f"10.9.{k}.0/24" for k in range(13)]


def external_flows(now_ns: int) -> pa.Table:
    """web calling addresses no workload owns, within the last 5 minutes: two connections to
    two addresses of 198.51.100.0/24, one to 2001:db8:1::/48, and one to each of the 13
    networks 10.9.k.0/24 (15 networks in all)."""
    t = now_ns - MINUTE
    remotes = ["198.51.100.7", "198.51.100.9", "2001:db8:1::5"]
    remotes += [net.replace(".0/24", ".1") for net in EXTERNAL_NETWORKS]
    rows = [
        _row(
            n,
            t - n * SECOND,
            remote_ip=ip,
            local_ip="2001:db8:ffff::1" if ":" in ip else "10.0.0.1",
            local_workload="web",
            remote_workload=None,
            remote_source="unattributed",
        )
        for n, ip in enumerate(remotes)
    ]
    return pa.Table.from_pylist(rows, schema=ATTRIBUTED.schema)


def many_edges_flows(now_ns: int) -> pa.Table:
    """702 edges within the last 5 minutes: c0..c34 → s0..s19 one connection each (the first
    100 of them two), web → an unnamed address one connection, c0 → z one refused attempt."""
    t = now_ns - MINUTE
    rows = []
    for i in range(700):
        for _ in range(2 if i < 100 else 1):
            n = len(rows)
            rows.append(_row(n, t - n * 1000, local_port=10000 + n, local_workload=f"c{i % 35}",
                             remote_workload=f"s{i // 35}"))  # fmt: skip
    n = len(rows)
    rows.append(_row(n, t, local_port=10000 + n, local_workload="web", remote_workload=None,
                     remote_ip="203.0.113.9", remote_source="unattributed"))  # fmt: skip
    rows.append(_row(n + 1, t, local_port=10001 + n, local_workload="c0", remote_workload="z",
                     outcome="refused"))  # fmt: skip
    return pa.Table.from_pylist(rows, schema=ATTRIBUTED.schema)

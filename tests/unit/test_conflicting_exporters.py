"""Two exporters claiming one address at one time: neither wins, whatever names they give.

A host that lies about its local address (or two hosts misconfigured with one address) must
never decide who owned that address: the engine treats each (workload, exporter) pair as its
own claimant, so an overlap of two hosts' claims is ambiguous even when both name the same
workload, and neither the heartbeats, the other end's row nor the event feed can name it.
"""

from __future__ import annotations

import pyarrow as pa

from flowtrail.engine.attributor import Settings
from flowtrail.engine.replay import replay

S = 1_000_000_000
LB = "10.0.0.9"


def table(rows: list[dict[str, object]]) -> pa.Table:
    base = {"direction": "inbound", "state": "closed", "bytes_sent": 1, "bytes_received": 1,
            "local_workload": None}  # fmt: skip
    t = pa.Table.from_pylist([{**base, "flow_id": f"f{i}", **r} for i, r in enumerate(rows)])
    for name in ("local_port", "remote_port"):
        t = t.set_column(t.column_names.index(name), name, t.column(name).cast(pa.int32()))
    return t


def claim(exporter: str, workload: str, port: int, start: int, end: int) -> dict[str, object]:
    """A row of `exporter` saying `workload` held LB over [start, end] seconds."""
    return {"exporter": exporter, "local_ip": LB, "local_port": 443, "remote_ip": "10.0.5.5",
            "remote_port": port, "start_ns": start * S, "end_ns": end * S,
            "local_workload": workload, "received_ns": end * S}  # fmt: skip


def probe(at: int) -> dict[str, object]:
    """A client's connection to LB starting at `at` seconds (no peer row of its own)."""
    return {"exporter": "client", "local_ip": "10.0.1.1", "local_port": 40000 + at,
            "remote_ip": LB, "remote_port": 443, "direction": "outbound",
            "start_ns": at * S, "end_ns": (at + 1) * S, "local_workload": "app",
            "received_ns": (at + 2) * S}  # fmt: skip


def events(workload: str) -> pa.Table:
    return pa.table({"ip": [LB], "workload": [workload], "action": ["assign"], "time_ns": [0],
                     "received_ns": [0]})  # fmt: skip


def named(out: pa.Table) -> list[tuple[str | None, str]]:
    probes = out.filter(pa.compute.equal(out.column("exporter"), "client"))
    return list(
        zip(
            probes.column("remote_workload").to_pylist(),
            probes.column("remote_source").to_pylist(),
            strict=True,
        )
    )


def test_the_same_workload_claimed_by_two_exporters_at_once_names_nobody() -> None:
    flows = table([claim("lb-host", "lb", 1000, 0, 100), claim("rogue", "lb", 1001, 40, 60),
                   probe(20), probe(50), probe(80)])  # fmt: skip
    out = replay(flows, settings=Settings(use_events=False)).table
    # Outside the overlap the one claimant still answers; inside, nobody does.
    assert named(out) == [("lb", "heartbeat"), (None, "unattributed"), ("lb", "heartbeat")]


def test_an_event_feed_agreeing_with_one_side_does_not_break_the_tie() -> None:
    flows = table([claim("lb-host", "lb", 1000, 0, 100), claim("rogue", "lb", 1001, 0, 100),
                   probe(50)])  # fmt: skip
    for feed in ("lb", "db"):  # agreeing with both claims, or with neither
        out = replay(flows, events(feed), settings=Settings(event_lag_ns=5 * S)).table
        assert named(out) == [(None, "unattributed")], feed


def test_the_other_ends_row_sent_by_two_exporters_names_nobody() -> None:
    # The server's own row of the client's connection (reversed 4-tuple), and a forged copy
    # of it from another host naming the same workload.
    server = {"local_ip": LB, "local_port": 443, "remote_ip": "10.0.1.1",
              "remote_port": 40050, "start_ns": 50 * S, "end_ns": 51 * S,
              "local_workload": "lb", "received_ns": 52 * S}  # fmt: skip
    rows = [{**server, "exporter": "lb-host"}, {**server, "exporter": "rogue"}, probe(50)]
    out = replay(table(rows), settings=Settings(use_events=False)).table
    assert named(out) == [(None, "unattributed")]
    alone = replay(table([rows[0], rows[2]]), settings=Settings(use_events=False)).table
    assert named(alone) == [("lb", "heartbeat")]


def test_a_handover_between_exporters_is_no_conflict() -> None:
    # A virtual address moving from one host to another (same workload, no overlap).
    flows = table([claim("host-a", "vip", 1000, 0, 50), claim("host-b", "vip", 1001, 50, 100),
                   probe(20), probe(80)])  # fmt: skip
    out = replay(flows, settings=Settings(use_events=False)).table
    assert named(out) == [("vip", "heartbeat"), ("vip", "heartbeat")]

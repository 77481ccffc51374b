"""The live-collector face of the engine gives the same answers as the offline replay."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.engine.attributor import Settings
from flowtrail.engine.replay import received_times, replay
from flowtrail.engine.stream import StreamingAttribution
from flowtrail.sim.simulation import simulate

S = 1_000_000_000


def test_streaming_batches_match_the_replay_row_for_row() -> None:
    sim = simulate("hostile", 11, flows=8_000)
    flows = sim.flows.append_column("pos", pa.array(np.arange(sim.flows.num_rows)))
    settings = Settings(event_lag_ns=1200 * S)
    offline = replay(flows, sim.events, settings=settings).table
    # Live: the same rows arrive in received order, a batch per second; events likewise.
    eng = StreamingAttribution(settings)
    received = received_times(flows)
    ev_recv = np.asarray(sim.events.column("received_ns"))
    out: list[pa.Table] = []
    t_end = int(received.max()) + 3 * 3600 * S
    second = int(min(received.min(), ev_recv.min())) // S
    while second * S <= t_end:
        lo, hi = second * S, (second + 1) * S
        now = hi - 1
        ev_mask = (ev_recv >= lo) & (ev_recv < hi)
        if ev_mask.any():
            eng.submit_events(sim.events.filter(pa.array(ev_mask)), now)
        mask = (received >= lo) & (received < hi)
        if mask.any():
            eng.submit_flows(flows.filter(pa.array(mask)), now)
        out.extend(eng.tick(now))
        second += 1
        if eng.waiting == 0 and lo > received.max() + S:
            break
    live = pa.concat_tables(out).sort_by("pos")
    assert live.num_rows == flows.num_rows
    assert live.column("pos").to_pylist() == list(range(flows.num_rows))
    assert pc.all(pc.equal(live.column("flow_id"), offline.column("flow_id"))).as_py()
    got = live.column("remote_workload").to_pylist()
    want = offline.column("remote_workload").to_pylist()
    assert got == want
    assert live.column("remote_source").to_pylist() == offline.column("remote_source").to_pylist()


def test_missing_received_ns_is_the_collectors_clock() -> None:
    sim = simulate("calm", 2, flows=500)
    flows = sim.flows.drop_columns(["received_ns"])
    eng = StreamingAttribution()
    submitted = eng.submit_flows(flows, 123 * S)
    assert set(submitted.column("received_ns").to_pylist()) == {123 * S}


def test_two_nodes_sharing_evidence_decide_like_one() -> None:
    # Cluster mode in miniature: each node attributes its own exporters' rows and learns
    # the other node's rows as evidence. Together they must decide exactly like one node.
    sim = simulate("hostile", 12, flows=6_000)
    flows = sim.flows.append_column("pos", pa.array(np.arange(sim.flows.num_rows)))
    settings = Settings(event_lag_ns=1200 * S)
    offline = replay(flows, sim.events, settings=settings).table
    exporters = sorted(set(flows.column("exporter").to_pylist()))
    mine = {e: i % 2 for i, e in enumerate(exporters)}
    node_of = np.array([mine[e] for e in flows.column("exporter").to_pylist()])
    nodes = [StreamingAttribution(settings), StreamingAttribution(settings)]
    received = received_times(flows)
    ev_recv = np.asarray(sim.events.column("received_ns"))
    out: list[pa.Table] = []
    second = int(min(received.min(), ev_recv.min())) // S
    while True:
        lo, hi = second * S, (second + 1) * S
        now = hi - 1
        ev_mask = (ev_recv >= lo) & (ev_recv < hi)
        mask = (received >= lo) & (received < hi)
        for n, node in enumerate(nodes):
            if ev_mask.any():
                node.submit_events(sim.events.filter(pa.array(ev_mask)), now)
            own = mask & (node_of == n)
            other = mask & (node_of != n)
            if own.any():
                node.submit_flows(flows.filter(pa.array(own)), now)
            if other.any():
                node.submit_evidence(flows.filter(pa.array(other)), now)
        for node in nodes:
            out.extend(node.tick(now))
        second += 1
        if all(node.waiting == 0 for node in nodes) and lo > received.max() + S:
            break
    both = pa.concat_tables(out).sort_by("pos")
    assert both.column("pos").to_pylist() == list(range(flows.num_rows))
    assert (
        both.column("remote_workload").to_pylist() == offline.column("remote_workload").to_pylist()
    )


def test_peer_rows_are_kept_max_wait_plus_the_slack() -> None:
    """The peer index's retention is a setting (cluster nodes size their memory with it)."""
    from flowtrail.engine.attributor import Attributor

    second = 1_000_000_000
    default = Attributor(Settings())
    assert default.peers.retention_ns == (180 + 600) * second
    short = Attributor(Settings(max_wait_ns=30 * second, peer_slack_ns=60 * second))
    assert short.peers.retention_ns == 90 * second

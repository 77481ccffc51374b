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


def test_each_batch_comes_back_in_order_and_waiting_rows_are_held_compactly() -> None:
    """One table per submitted batch with its rows in submission order; what the engine
    keeps of a batch already ticked over is at most twice the rows still waiting in it."""
    sim = simulate("churny", 4, flows=6_000, flush_interval=5.0)
    received = received_times(sim.flows)
    flows = sim.flows.take(pa.array(np.argsort(received, kind="stable")))
    flows = flows.append_column("pos", pa.array(np.arange(flows.num_rows)))  # submission order
    received = np.sort(received)
    settings = Settings(max_wait_ns=30 * S, use_events=False)
    eng = StreamingAttribution(settings, coalesce_rows=1_000)
    cuts = np.flatnonzero(np.diff(received // (S // 4))) + 1  # a batch per quarter second
    batch_of = np.zeros(flows.num_rows, np.int64)
    out: list[pa.Table] = []
    kept_apart = 0
    for b, (a, z) in enumerate(zip([0, *cuts], [*cuts, flows.num_rows], strict=True)):
        batch_of[a:z] = b
        eng.submit_flows(flows.slice(a, z - a), int(received[a]))
        if b % 4 == 3:
            out.extend(eng.tick(int(received[a])))
            for held in eng._held.values():  # private: the memory waiting rows keep
                kept_apart += not held.fresh
                assert (
                    held.fresh
                    or held.table.num_rows < 2 * held.left
                    or (held.table.num_rows == held.left)
                )
    now = int(received[-1])
    while eng.waiting:
        now += S
        out.extend(eng.tick(now))
    pos_batch = dict(zip(flows.column("pos").to_pylist(), batch_of.tolist(), strict=True))
    for t in out:
        pos = t.column("pos").to_pylist()
        assert pos == sorted(pos)
        assert len({pos_batch[p] for p in pos}) == 1
    assert sorted(p for t in out for p in t.column("pos").to_pylist()) == sorted(pos_batch)
    assert kept_apart  # some rows waited past their first tick

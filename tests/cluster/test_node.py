"""Collector nodes over a real 3-server NATS cluster decide like one node replaying the input.

Three nodes (two in us-east, one in eu-west) run in this process as asyncio tasks, each
with its own NATS connection and its own store file; the simulator's batches go through the
real work streams, forwarding and evidence streams. The test paces the feeder one second
of received time at a time (it waits until that second's evidence is in the streams), which
is what a replay needs to be exact; the nodes themselves know nothing of the pacing.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flowtrail.cluster.bus import SECOND, Bus, BusConfig
from flowtrail.cluster.feed import feed_paced
from flowtrail.cluster.natslab import NatsLab
from flowtrail.cluster.node import ClusterNode, NodeConfig
from flowtrail.engine.attributor import Settings
from flowtrail.engine.replay import replay
from flowtrail.sim.simulation import simulate
from flowtrail.store import Store

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

KEY = ("exporter", "flow_id", "state", "end_ns")


async def _wait_for(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def _keyed(table: pa.Table) -> dict[tuple[object, ...], object]:
    cols = [table.column(k).to_pylist() for k in KEY]
    return dict(
        zip(zip(*cols, strict=True), table.column("remote_workload").to_pylist(), strict=True)
    )


def test_three_nodes_two_regions_equal_single_node_replay(
    nats_lab: NatsLab, tmp_path: Path
) -> None:
    sim = simulate("churny", 3, flows=3_000)
    flows, regions = sim.flows, sim.regions
    settings = Settings(use_events=False)
    offline = replay(flows, None, regions, settings=settings).table
    region_names = sorted(set(regions.column("region").to_pylist()))
    east, west = "us-east", "eu-west"
    assert set(region_names) == {east, west}

    async def main() -> list[ClusterNode]:
        feeder = Bus(BusConfig(servers=nats_lab.urls, replicas=3))
        await feeder.connect()
        await feeder.ensure_streams(region_names)
        stop = asyncio.Event()
        nodes: list[ClusterNode] = []
        buses: list[Bus] = []
        for i, region in enumerate([east, east, west]):
            bus = Bus(BusConfig(servers=nats_lab.urls, replicas=3))
            await bus.connect()
            buses.append(bus)
            store = Store(tmp_path / f"node{i}.duckdb", retention_ns=None)
            cfg = NodeConfig(region, f"{region}-{i}", settings=settings, trust_received=True)
            nodes.append(ClusterNode(bus, cfg, regions, store))
        runs = [asyncio.create_task(n.run(stop)) for n in nodes]
        try:
            for n in nodes:
                await asyncio.wait_for(n.ready.wait(), 20)
            await feed_paced(feeder, flows, regions)
            # The clock runs on past every wait, as the replay's drain does.
            mark = int(pc.max(flows.column("received_ns")).as_py()) + 200 * SECOND
            for name in region_names:
                await feeder.publish_clock(name, mark, f"end-{name}")
            await _wait_for(
                lambda: (
                    sum(n.stats["rows_written"] for n in nodes) >= flows.num_rows
                    and all(n.held == 0 for n in nodes)
                ),
                60,
                "every row decided, stored and acked",
            )
            for run in runs:
                assert not run.done(), run
        finally:
            stop.set()
            await asyncio.gather(*runs, return_exceptions=True)
            for bus in [*buses, feeder]:
                await bus.close()
        for run in runs:
            run.result()  # a node that crashed fails the test with its own error
        return nodes

    nodes = asyncio.run(main())

    stored = pa.concat_tables([n.sink.read() for n in nodes])  # type: ignore[attr-defined]
    got = _keyed(stored)
    want = _keyed(offline)
    assert stored.num_rows == flows.num_rows == len(want)  # none lost, none duplicated
    assert got.keys() == want.keys()
    differ = [k for k in want if got[k] != want[k]]
    assert not differ, f"{len(differ)} flows attributed differently, e.g. {differ[:3]}"
    # The work really was spread, and forwarded across regions.
    east_written = [n.stats["rows_written"] for n in nodes[:2]]
    assert min(east_written) > 0, east_written
    assert sum(n.stats["rows_forwarded"] for n in nodes) > 0
    attributed = pc.sum(pc.is_valid(stored.column("remote_workload"))).as_py()
    assert attributed > flows.num_rows // 2  # a meaningful comparison, not all nulls

"""Nodes splitting a region by connection, over a real 3-server NATS cluster, decide like one
node replaying the input: 1, 2 and 4 nodes in us-east (one in eu-west), in this process, each
with its own NATS connection and store. Rows go to partitions' subjects, ownership runs to
the evidence stream, and each node decides only the partitions it owns (members stream).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
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

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

KEY = ("exporter", "flow_id", "state", "end_ns")
PARTITIONS = 8
COLUMNS = ("remote_workload", "remote_source", "attributed_ns")


async def _wait_for(cond: Callable[[], bool], timeout: float, what: str, runs: list) -> None:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while not cond():
        for run in runs:
            if run.done():
                run.result()
                raise AssertionError(f"a node stopped while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def keyed(table: pa.Table) -> dict[tuple[object, ...], tuple[object, ...]]:
    keys = zip(*[table.column(k).to_pylist() for k in KEY], strict=True)
    values = zip(*[table.column(c).to_pylist() for c in COLUMNS], strict=True)
    return dict(zip(keys, values, strict=True))


@pytest.mark.parametrize("east_nodes", [1, 2, 4])
def test_partitioned_nodes_equal_single_node_replay(
    nats_lab: NatsLab, tmp_path: Path, east_nodes: int
) -> None:
    sim = simulate("churny", 3, flows=3_000)
    flows, regions = sim.flows, sim.regions
    settings = Settings(use_events=False)
    offline = replay(flows, None, regions, settings=settings).table
    east, west = "us-east", "eu-west"

    async def main() -> list[ClusterNode]:
        feeder = Bus(BusConfig(servers=nats_lab.urls, replicas=3))
        await feeder.connect()
        await feeder.ensure_streams([east, west])
        stop = asyncio.Event()
        nodes: list[ClusterNode] = []
        buses: list[Bus] = []
        for i, region in enumerate([*[east] * east_nodes, west]):
            bus = Bus(BusConfig(servers=nats_lab.urls, replicas=3))
            await bus.connect()
            buses.append(bus)
            store = Store(tmp_path / f"node{i}.duckdb", retention_ns=None)
            cfg = NodeConfig(
                region,
                f"{region}-{i}",
                settings=settings,
                trust_received=True,
                partitions=PARTITIONS,
                member_ttl_ns=4 * SECOND,
            )
            nodes.append(ClusterNode(bus, cfg, regions, store))
        runs = [asyncio.create_task(n.run(stop)) for n in nodes]
        try:
            for n in nodes:
                await asyncio.wait_for(n.ready.wait(), 30)
            # Every node sees its region's members before rows come: each partition has one
            # owner from the first row on, so each row is written once.
            await _wait_for(
                lambda: all(
                    n.status().get("members") == (east_nodes if n.config.region == east else 1)
                    for n in nodes
                ),
                30,
                "membership settled",
                runs,
            )
            await feed_paced(feeder, flows, regions)
            last = int(pc.max(flows.column("received_ns")).as_py())
            for name in (east, west):
                await feeder.publish_clock(name, last + 200 * SECOND, f"end-{name}")
            await _wait_for(
                lambda: sum(n.stats["rows_written"] for n in nodes) >= flows.num_rows,
                120,
                "every row decided and stored",
                runs,
            )
        finally:
            stop.set()
            await asyncio.gather(*runs, return_exceptions=True)
            for bus in [*buses, feeder]:
                await bus.close()
        for run in runs:
            run.result()
        return nodes

    nodes = asyncio.run(main())
    stored = pa.concat_tables([n.sink.read() for n in nodes])  # type: ignore[attr-defined]
    got, want = keyed(stored), keyed(offline)
    assert stored.num_rows == flows.num_rows == len(want)  # none lost, none written twice
    assert got.keys() == want.keys()
    differ = [k for k in want if got[k] != want[k]]
    assert not differ, (
        f"{len(differ)} rows differ, e.g. {[(k, got[k], want[k]) for k in differ[:3]]}"
    )
    east_nodes_ = [n for n in nodes if n.config.region == east]
    # Each us-east node decided its own partitions, and learned only runs, never raw rows
    # of the partitions it does not own.
    assert sorted(p for n in east_nodes_ for p in n._owned) == list(range(PARTITIONS))
    assert all(n.stats["rows_written"] > 0 for n in east_nodes_), [
        n.stats["rows_written"] for n in east_nodes_
    ]
    runs_learned = [n.stats["runs_learned"] for n in east_nodes_]
    assert len(set(runs_learned)) == 1 and runs_learned[0] > 0, runs_learned
    assert sum(n.stats["rows_forwarded"] for n in nodes) > 0
    attributed = pc.sum(pc.is_valid(stored.column("remote_workload"))).as_py()
    assert attributed > flows.num_rows // 2

"""A node stopped cleanly (a rolling restart) delays no batch by the ack wait.

A node's work fetch is a pull request the NATS server keeps open for up to `poll_s`. A stop
that cancelled the fetch left the request open: a batch published in that window went to the
stopped node and came back to the others only after the ack wait (30 s here) — measured with
the connection kept open after the stop (a node embedded in a larger process, or one still
flushing its sink). When the connection closes the server drops the request, so a process
exit was not affected; both cases are checked. Batches are published every 20 ms across one
node's stop; every batch must be stored within a few seconds, well under the ack wait.

Real nats-server cluster, real nodes in this process, wall-clock time (clock marks on).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pyarrow as pa
import pytest

from flowtrail.cluster.bus import SECOND, Bus, BusConfig
from flowtrail.cluster.natslab import NatsLab
from flowtrail.cluster.node import ClusterNode, NodeConfig
from flowtrail.engine.attributor import Settings
from flowtrail.lab.wait import eventually
from flowtrail.schema import FLOWS
from flowtrail.store import Store

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

REGION = "east"
ACK_WAIT_S = 30
BATCHES = 100


def _flow(i: int, now_ns: int) -> pa.Table:
    row = {
        "flow_id": f"h1:{i}",
        "exporter": "h1",
        "region": REGION,
        "local_ip": "10.1.0.7",
        "local_port": 40000 + i,
        "remote_ip": "10.9.0.5",
        "remote_port": 443,
        "direction": "outbound",
        "start_ns": now_ns - 30 * SECOND,
        "end_ns": now_ns - 29 * SECOND,
        "state": "closed",
        "bytes_sent": 100,
        "bytes_received": 200,
        "local_workload": "client",
    }
    return pa.Table.from_pylist([row], schema=FLOWS.schema)


async def _scenario(lab: NatsLab, tmp_path: Path, close: bool) -> float:
    config = BusConfig(servers=lab.urls, replicas=3, ack_wait_ns=ACK_WAIT_S * SECOND)
    control = Bus(config)
    await control.connect()
    await control.ensure_streams([REGION])
    buses, stops, runs, nodes = [control], [], [], []
    try:
        for name in ("leaving", "staying"):
            bus = Bus(config)
            await bus.connect()
            buses.append(bus)
            cfg = NodeConfig(REGION, name, settings=Settings(max_wait_ns=SECOND, use_events=False))
            store = Store(tmp_path / f"{name}.duckdb", retention_ns=None)
            nodes.append(ClusterNode(bus, cfg, None, store))
            stops.append(asyncio.Event())
            runs.append(asyncio.create_task(nodes[-1].run(stops[-1])))
            await asyncio.wait_for(nodes[-1].ready.wait(), 20)

        async def leave() -> None:
            await asyncio.sleep(BATCHES * 0.02 / 2)
            stops[0].set()
            await runs[0]
            if close:
                await buses[1].close()  # the process exits: its connection goes too

        leaving = asyncio.create_task(leave())
        for i in range(BATCHES):
            await control.publish_batch(REGION, _flow(i, time.time_ns()), f"h1:b{i}")
            await asyncio.sleep(0.02)
        published = time.monotonic()
        await leaving
        assert nodes[0].stats["rows_submitted"] > 0, "the leaving node took no work: no test"

        def stored() -> int:
            return len(
                set().union(*(n.sink.read().column("flow_id").to_pylist() for n in nodes))  # type: ignore[attr-defined]
            )

        await eventually(lambda: stored() == BATCHES, ACK_WAIT_S + 15, "every batch stored")
        return time.monotonic() - published
    finally:
        for stop in stops:
            stop.set()
        await asyncio.gather(*runs, return_exceptions=True)
        for bus in buses:
            await bus.close()


@pytest.mark.parametrize("close", [False, True], ids=["connection-kept", "connection-closed"])
def test_a_clean_stop_delays_no_batch_by_the_ack_wait(
    nats_lab: NatsLab, tmp_path: Path, close: bool
) -> None:
    took_s = asyncio.run(_scenario(nats_lab, tmp_path, close))
    # Deciding needs max_wait (1 s) past a clock mark; 10 s leaves room for a loaded machine
    # and is a third of the ack wait a lost batch would have cost.
    assert took_s < 10, f"the last batch was stored {took_s:.1f} s after publishing ended"

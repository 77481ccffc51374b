"""A node stopped cleanly (a rolling restart) delays no batch by the ack wait.

A node's work fetch is a pull request the NATS server keeps open for up to `poll_s`. A stop
that cancelled the fetch left the request open: a batch published in that window went to the
stopped node and came back to the others only after the ack wait (90 s here) — measured with
the connection kept open after the stop (a node embedded in a larger process, or one still
flushing its sink). When the connection closes the server drops the request, so a process
exit was not affected; both cases are checked. Batches are published every 20 ms across one
node's stop (made once it holds work); every batch must be stored well within the ack wait.

Real nats-server cluster, real nodes in this process, wall-clock time (clock marks on).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from flowtrail.cluster.bus import SECOND, Bus, BusConfig
from flowtrail.cluster.natslab import NatsLab, NodeGroup, recent_flow
from flowtrail.cluster.node import NodeConfig
from flowtrail.engine.attributor import Settings
from flowtrail.lab.wait import eventually
from flowtrail.store import Store

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

REGION = "east"
ACK_WAIT_S = 90
DELAY_BOUND_S = 60
BATCHES = 100
AFTER_STOP = 50  # batches published once the node has stopped


async def _scenario(lab: NatsLab, tmp_path: Path, close: bool) -> float:
    config = BusConfig(servers=lab.urls, replicas=3, ack_wait_ns=ACK_WAIT_S * SECOND)
    control = Bus(config)
    await control.connect()
    await control.ensure_streams([REGION])
    settings = Settings(max_wait_ns=SECOND, use_events=False)
    try:
        async with NodeGroup(config) as group:
            for name in ("leaving", "staying"):
                store = Store(tmp_path / f"{name}.duckdb", retention_ns=None)
                await group.start(NodeConfig(REGION, name, settings=settings), store)

            async def leave() -> None:
                # Once it holds work (a stop with nothing taken would prove nothing).
                await eventually(
                    lambda: group.nodes[0].stats["rows_submitted"] > 0, 60, "the first take"
                )
                await group.stop(0, close=close)  # close: the process exits, its connection too

            leaving = asyncio.create_task(leave())
            sent = after_stop = 0
            # Batches keep coming across the stop and for a while after it: any of them may
            # fall into the window the stopped node's fetch left open.
            while sent < BATCHES or after_stop < AFTER_STOP:
                await control.publish_batch(
                    REGION,
                    recent_flow(REGION, "10.9.0.5", time.time_ns(), number=sent),
                    f"h1:b{sent}",
                )
                sent += 1
                after_stop += int(leaving.done())
                await asyncio.sleep(0.02)  # the pace of an agent's batches, not a wait
            published = time.monotonic()
            await leaving
            took = group.nodes[0].stats["rows_submitted"]
            assert took > 0, "the leaving node took no work: no test"

            def stored() -> int:
                ids = [n.sink.read().column("flow_id").to_pylist() for n in group.nodes]  # type: ignore[attr-defined]
                return len(set().union(*ids))

            # Deciding needs max_wait (1 s) past a clock mark (~3 s here); a batch handed to
            # the stopped node would come back only after the ack wait (90 s). 60 s tells the
            # two apart on a loaded machine.
            await eventually(lambda: stored() == sent, DELAY_BOUND_S, "every batch stored")
            return time.monotonic() - published
    finally:
        await control.close()


@pytest.mark.parametrize("close", [False, True], ids=["connection-kept", "connection-closed"])
def test_a_clean_stop_delays_no_batch_by_the_ack_wait(
    nats_lab: NatsLab, tmp_path: Path, close: bool
) -> None:
    took_s = asyncio.run(_scenario(nats_lab, tmp_path, close))
    assert took_s < DELAY_BOUND_S < ACK_WAIT_S, took_s

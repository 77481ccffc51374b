"""Standing control-plane assignments outlive the evidence stream's retention.

A load balancer's address is assigned once and then never mentioned again. Events travel on
the evidence stream, which keeps only the last `evidence_retention`; nodes publish the
assignments still standing again each carry round, so a node that starts after the
original event has aged out of the stream (checked: the stream's first sequence has passed
it) still names the address. Without carrying (the control case) the same node cannot,
which shows the test can fail.

Real nats-server cluster, real nodes in this process, wall-clock time (clock marks on):
the retention is shortened to 8 s so that ageing out happens within the test.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pyarrow as pa
import pytest

from flowtrail.cluster.bus import SECOND, Bus, BusConfig
from flowtrail.cluster.natslab import NatsLab, NodeGroup, recent_flow
from flowtrail.cluster.node import ClusterNode, NodeConfig
from flowtrail.engine.attributor import Settings
from flowtrail.lab.wait import eventually
from flowtrail.schema import EVENTS
from flowtrail.store import Store

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

REGION = "east"
LB_IP = "10.9.0.5"
RETENTION_NS = 8 * SECOND
SETTINGS = Settings(max_wait_ns=SECOND, event_lag_ns=SECOND)


def _assignment(now_ns: int) -> pa.Table:
    row = {"ip": LB_IP, "workload": "lb-frontend", "action": "assign"}
    return pa.Table.from_pylist([{**row, "time_ns": now_ns - 60 * SECOND}], schema=EVENTS.schema)


async def _scenario(lab: NatsLab, tmp_path: Path, carry_ns: int) -> tuple[ClusterNode, pa.Table]:
    config = BusConfig(
        servers=lab.urls,
        replicas=3,
        # Should a batch still reach the stopped node, it comes back after this.
        ack_wait_ns=2 * SECOND,
        evidence_retention_ns=RETENTION_NS,
        duplicate_window_ns=SECOND,
    )
    control = Bus(config)
    await control.connect()
    await control.ensure_streams([REGION])

    def node_config(name: str) -> NodeConfig:
        return NodeConfig(REGION, name, settings=SETTINGS, carry_events_ns=carry_ns)

    def store(name: str) -> Store:
        return Store(tmp_path / f"{name}.duckdb", retention_ns=None)

    try:
        async with NodeGroup(config) as group:
            first = await group.start(node_config("first"), store("first"))
            ack = await control.publish_events(REGION, _assignment(time.time_ns()), "lb-assign")
            await eventually(lambda: first.stats["event_rows"] >= 1, 20, "the event applied")
            # Until the original event message has aged out of the stream.
            deadline = time.monotonic() + 30
            while (await control.evidence_state(REGION)).first_seq <= ack.seq:
                assert time.monotonic() < deadline, "the original event never aged out"
                await asyncio.sleep(0.2)
            later = await group.start(node_config("later"), store("later"))
            await eventually(lambda: later.caught_up, 20, "the later node rebuilt")
            if carry_ns:
                await eventually(lambda: later.stats["event_rows"] >= 1, 20, "a carried copy")
                assert first.stats["events_carried"] >= 1
            await group.stop(0)  # the flow below must go to the later node
            await control.publish_batch(REGION, recent_flow(REGION, LB_IP, time.time_ns()), "h1:b1")
            await eventually(lambda: later.stats["rows_written"] >= 1, 30, "the flow decided")
            return later, later.sink.read()  # type: ignore[attr-defined]
    finally:
        await control.close()


@pytest.mark.parametrize("carry", [True, False], ids=["carried", "not-carried"])
def test_a_node_started_after_retention_still_knows_a_standing_assignment(
    nats_lab: NatsLab, tmp_path: Path, carry: bool
) -> None:
    later, stored = asyncio.run(_scenario(nats_lab, tmp_path, SECOND if carry else 0))
    assert stored.num_rows == 1
    row = stored.to_pylist()[0]
    if carry:
        assert later.stats["event_rows"] >= 1  # it learned the carried copy from the stream
        assert (row["remote_workload"], row["remote_source"]) == ("lb-frontend", "event")
    else:
        assert later.stats["event_rows"] == 0  # the only message about it had aged out
        assert row["remote_workload"] is None and row["remote_source"] == "unattributed"

"""DNS answers in cluster mode: an agent's NATS sink puts them on the region's evidence
stream, every node learns them, and the node that decides a flow names it (remote_dns).

Real nats-server cluster, a real node in this process; the agent's side is the real
NatsExporter. A malformed answers message is dropped and counted by the node, which goes on.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pyarrow as pa
import pytest

from flowtrail.cluster.agent_sink import NatsExporter
from flowtrail.cluster.bus import SECOND, Bus, BusConfig
from flowtrail.cluster.natslab import NatsLab, NodeGroup, recent_flow
from flowtrail.cluster.node import NodeConfig
from flowtrail.engine.attributor import Settings
from flowtrail.lab.wait import eventually
from flowtrail.query.queries import flows
from flowtrail.store import Store

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

REGION = "east"
STRIPE = "203.0.113.10"


def _answers(name: str, now_ns: int) -> pa.Table:
    return pa.Table.from_pylist([{
        "exporter": "h1", "local_workload": "client", "query_name": name, "address": STRIPE,
        "observed_ns": now_ns - 40 * SECOND, "ttl_s": 60,
    }])  # fmt: skip


async def _scenario(lab: NatsLab, tmp_path: Path) -> tuple[dict[str, int], list[dict[str, object]]]:
    config = BusConfig(servers=lab.urls, replicas=3)
    control = Bus(config)
    await control.connect()
    await control.ensure_streams([REGION])
    agent = NatsExporter(config, REGION)
    store = Store(tmp_path / "node.duckdb", retention_ns=None)
    try:
        async with NodeGroup(config) as group:
            settings = Settings(max_wait_ns=SECOND, use_events=False)
            node = await group.start(NodeConfig(REGION, "n1", settings=settings), store)
            now = time.time_ns()
            await asyncio.to_thread(agent.export, _answers("API.Stripe.com", now), "d0",
                                    "dns_answers")  # fmt: skip
            await eventually(lambda: node.stats["dns_bad"] >= 1, 60, "the bad answers dropped")
            await asyncio.to_thread(agent.export, _answers("api.stripe.com", now), "d1",
                                    "dns_answers")  # fmt: skip
            await eventually(lambda: node.stats["dns_rows"] >= 1, 60, "the answers learned")
            await asyncio.to_thread(agent.export, recent_flow(REGION, STRIPE, now), "b1")
            await eventually(lambda: node.stats["rows_written"] >= 1, 60, "the flow decided")
            return dict(node.stats), flows(store.cursor()).to_pylist()
    finally:
        agent.close()
        await control.close()


def test_answers_on_the_evidence_stream_name_the_flows_a_node_decides(
    nats_lab: NatsLab, tmp_path: Path
) -> None:
    stats, rows = asyncio.run(_scenario(nats_lab, tmp_path))
    assert stats["dns_bad"] == 1 and stats["dns_rows"] == 1 and stats["dns_messages"] == 1
    assert [(r["remote_workload"], r["remote_dns"]) for r in rows] == [(None, "api.stripe.com")]

"""Fuzz a cluster node: random hostile work batches between good exporters' batches.

Hypothesis draws the hostile batches (random extra columns and types, contract columns of
the wrong type, missing columns, bytes that are not Arrow); they go through a real 3-server
NATS cluster's work stream, interleaved with good batches, to two nodes of one region. The
nodes stay up, every good row is stored, every batch is either stored or dead-lettered with
a reason, and nothing is left for redelivery.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings

from flowtrail.cluster.bus import SECOND, Bus, BusConfig, encode
from flowtrail.cluster.natslab import NatsLab, NodeGroup
from flowtrail.cluster.node import NodeConfig
from flowtrail.engine.attributor import Settings
from flowtrail.sim.simulation import simulate
from flowtrail.store import Store
from tests.cluster.test_poison import REGION, dead_letters, tick, until, work_settled
from tests.unit.batch_strategies import contract_only, hostile

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


def draw_hostile(base: pa.Table, n: int) -> list[pa.Table | bytes]:
    drawn: list[pa.Table | bytes] = []

    @settings(
        max_examples=n,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(hostile(base))
    def collect(batch: pa.Table | bytes) -> None:
        drawn.append(batch)

    collect()
    return drawn


def test_a_node_stores_every_good_row_whatever_comes_between(
    nats_lab: NatsLab, tmp_path: Path
) -> None:
    flows = contract_only(simulate("churny", 8, flows=1_500).flows)
    exporters = sorted(set(flows.column("exporter").to_pylist()))
    good = flows.filter(pc.invert(pc.equal(flows.column("exporter"), exporters[-1])))
    base = flows.filter(pc.equal(flows.column("exporter"), exporters[-1])).slice(0, 5)
    bad = draw_hostile(base, 40)
    slices = [good.slice(i * 10, 10) for i in range(len(bad))]
    config = BusConfig(servers=nats_lab.urls, replicas=3)
    node_settings = Settings(use_events=False)

    async def main() -> tuple[int, int, list[tuple[str, str, bytes]]]:
        feeder = Bus(config)
        await feeder.connect()
        await feeder.ensure_streams([REGION])
        stores = [Store(tmp_path / f"n{i}.duckdb", retention_ns=None) for i in range(2)]
        async with NodeGroup(config) as group:
            for i in range(2):
                cfg = NodeConfig(
                    REGION, f"n{i}", settings=node_settings, trust_received=True, clock_marks=False
                )
                await group.start(cfg, stores[i])
            subject = feeder.work_subject(REGION)
            for i, (rows, batch) in enumerate(zip(slices, bad, strict=True)):
                await feeder.publish_batch(REGION, rows, f"good-{i}")
                body = batch if isinstance(batch, bytes) else encode(batch)
                await feeder.publish(subject, body, f"bad-{i}")
            nodes = group.nodes

            def settled() -> bool:
                taken = sum(n.stats["batches_taken"] + n.stats["batches_bad"] for n in nodes)
                return taken >= 2 * len(bad) and all(n.held == 0 for n in nodes)

            end = int(pc.max(flows.column("received_ns")).as_py()) + 400 * SECOND
            marks = asyncio.create_task(tick(feeder, end))
            try:
                await until(settled, 120, "every batch handled", group)
            finally:
                marks.cancel()
            info = await work_settled(feeder)
            letters = await dead_letters(feeder)
            assert all(not run.done() for run in group.runs)  # no node went down
            dead = sum(n.stats["batches_dead_lettered"] for n in nodes)
        await feeder.close()
        for store in stores:
            store.close()
        return dead, info.num_pending + info.num_ack_pending, letters

    dead, left, letters = asyncio.run(main())
    assert left == 0
    # >=: a batch redelivered before its ack arrived is refused again (one letter, same id).
    assert dead >= len(letters) and all(reason for _, reason, _ in letters)
    stored = []
    for i in range(2):
        with Store(tmp_path / f"n{i}.duckdb", retention_ns=None) as s:
            stored.append(s.read())
    out = pa.concat_tables(stored)
    keys = ["exporter", "flow_id", "state", "end_ns"]
    got = {tuple(r.values()) for r in out.select(keys).to_pylist()}
    for rows in slices:
        assert {tuple(r.values()) for r in rows.select(keys).to_pylist()} <= got
    # The hostile batches not dead-lettered were accepted: their rows are stored too.
    refused = {msg_id.removeprefix("dead:") for msg_id, _, _ in letters}
    for i, batch in enumerate(bad):
        if f"bad-{i}" not in refused:
            assert isinstance(batch, pa.Table)
            assert {tuple(r.values()) for r in batch.select(keys).to_pylist()} <= got, i
    assert 0 < len(refused) < len(bad), "the fuzz must exercise both the refusals and the rest"

"""A work batch no node can store is dead-lettered, never the end of the region's nodes.

Real 3-server NATS cluster; two nodes of one region run in this process, each on its own
connection and with its own store file. Batches with an extra column the store cannot hold
go to the region's dead-letter stream with the reason and are acked; batches whose extra
columns differ (one with a contract-valid extra column, one without) are stored together.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from nats.js.api import ConsumerInfo

from flowtrail.cluster.bus import (
    MSG_ID,
    OWNER,
    REASON,
    SECOND,
    WORK_DURABLE,
    Bus,
    BusConfig,
    decode,
    encode,
)
from flowtrail.cluster.natslab import NatsLab, NodeGroup
from flowtrail.cluster.node import ClusterNode, NodeConfig
from flowtrail.engine.attributor import Settings
from flowtrail.errors import ContractError
from flowtrail.schema import FLOWS
from flowtrail.sim.simulation import simulate
from flowtrail.store import Store

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

REGION = "us-east"
NEGATIVE_LENGTH = b"\xff\xff\xff\xff\x00\x00\x00\x80"


def bomb() -> bytes:
    """A few KiB of zstd-compressed Arrow IPC that declares 200 MB of zeros once read (built
    batch by batch, so the test itself never holds them)."""
    zeros = pa.record_batch({"x": np.zeros(250_000, np.int64)})
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    with pa.ipc.new_stream(sink, zeros.schema, options=options) as writer:
        for _ in range(100):
            writer.write_batch(zeros)
    return bytes(sink.getvalue().to_pybytes())


def column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.append_column(pa.field(name, values.type), values)


def poisons(t: pa.Table) -> dict[str, pa.Table]:
    n = t.num_rows
    text = pa.array(["x"] * n)
    return {
        "x": column(t, "x", pa.array(np.ones(n, np.float16))),
        "extra": column(t, "extra", text),
        "": column(t, "", text),
        "remote_workload": column(t, "remote_workload", text),
        "u": column(t, "u", pa.UnionArray.from_sparse(pa.array([0] * n, pa.int8()), [text])),
        "_flowtrail_batch": column(t, "_flowtrail_batch", pa.array([1] * n)),
    }


async def until(cond: object, timeout: float, what: str, group: NodeGroup) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        for run, stop in zip(group.runs, group.stops, strict=True):
            if run.done() and not stop.is_set():
                run.result()
                raise AssertionError(f"a node stopped while waiting for {what}")
        if time.monotonic() > deadline:
            stats = [
                (n.stats["rows_submitted"], n.stats["rows_written"], n.held, n.waiting)
                for n in group.nodes
            ]
            raise AssertionError(f"timed out waiting for {what}: {stats}")
        await asyncio.sleep(0.02)


async def tick(bus: Bus, from_ns: int) -> None:
    """A clock mark a second later every half second (the region has no clock of its own)."""
    for k in range(10_000):
        await bus.publish_clock(REGION, from_ns + k * SECOND, f"mark-{k}")
        await asyncio.sleep(0.5)


async def dead_letters(bus: Bus) -> list[tuple[str, str, bytes]]:
    """(message id, reason, payload) of every message in the region's dead-letter stream,
    read up to its newest one when called (not until a quiet spell: a slow delivery on a
    loaded machine is not the end)."""
    stream = bus.dead_letter_stream(REGION)
    last = (await bus.js.stream_info(stream)).state.last_seq
    if last == 0:
        return []
    sub = await bus.js.subscribe(
        bus.dead_letter_subject(REGION), stream=stream, ordered_consumer=True
    )
    got = []
    try:
        while True:
            msg = await sub.next_msg(timeout=60)
            headers = msg.headers or {}
            got.append((headers[MSG_ID], headers[REASON], msg.data))
            if msg.metadata.sequence.stream >= last:
                return got
    finally:
        await sub.unsubscribe()


async def work_settled(bus: Bus, region: str = REGION, timeout: float = 60) -> ConsumerInfo:
    """The work consumer once nothing is left to deliver or to ack (a node's acks are not
    confirmed to it: ask the server), or as it is at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        info = await bus.js.consumer_info(bus.work_stream(region), WORK_DURABLE)
        if (info.num_pending, info.num_ack_pending) == (0, 0) or time.monotonic() > deadline:
            return info
        await asyncio.sleep(0.05)


def test_poison_batches_are_dead_lettered_and_the_region_keeps_storing(
    nats_lab: NatsLab, tmp_path: Path
) -> None:
    flows = simulate("churny", 6, flows=1_200).flows
    flows = flows.select([c for c in flows.column_names if c in FLOWS.names])  # no sim_* extras
    exporters = sorted(set(flows.column("exporter").to_pylist()))
    by = {e: flows.filter(pc.equal(flows.column("exporter"), e)) for e in exporters}
    good = [by[e] for e in exporters[:3]]
    bad = by[exporters[3]]
    # A contract-valid extra column, in one batch only: stored (in `extra`), not a crash.
    racked = column(good[1], "rack", pa.array(["r7"] * good[1].num_rows))
    settings = Settings(use_events=False)
    config = BusConfig(servers=nats_lab.urls, replicas=3, ack_wait_ns=5 * SECOND)

    def node_config(i: int) -> NodeConfig:
        return NodeConfig(
            REGION, f"n{i}", settings=settings, trust_received=True, clock_marks=False
        )

    async def main() -> tuple[list[ClusterNode], list[tuple[str, pa.Table]], int, int, ClusterNode]:
        feeder = Bus(config)
        await feeder.connect()
        await feeder.ensure_streams([REGION])
        stores = [Store(tmp_path / f"n{i}.duckdb", retention_ns=None) for i in range(3)]
        async with NodeGroup(config) as group:
            for i in range(2):
                await group.start(node_config(i), stores[i])
            await feeder.publish_batch(REGION, good[0], "good-0")
            for name, table in poisons(bad).items():
                await feeder.publish_batch(REGION, table, f"bad-{name}")
            # Bytes pyarrow reports as OSError (a negative metadata length), as work and as
            # evidence: refused and skipped, not the end of the node.
            await feeder.publish(feeder.work_subject(REGION), NEGATIVE_LENGTH, "bad-bytes")
            await feeder.publish(feeder.work_subject(REGION), bomb(), "bad-bomb")
            await feeder.publish(
                feeder.evidence_subject(REGION), NEGATIVE_LENGTH, "junk", {OWNER: "x/1"}
            )
            await feeder.publish_batch(REGION, racked, "good-1")
            await feeder.publish_batch(REGION, good[2], "good-2")
            want = sum(t.num_rows for t in good)
            nodes = group.nodes
            await until(
                lambda: sum(n.stats["rows_submitted"] for n in nodes) >= want, 60, "rows", group
            )
            # Clock marks until stored: a batch redelivered under load (ack_wait is short
            # here) may be submitted again after any one mark.
            end = int(pc.max(flows.column("received_ns")).as_py()) + 400 * SECOND
            marks = asyncio.create_task(tick(feeder, end))
            try:
                await until(
                    lambda: (
                        sum(n.stats["rows_written"] for n in nodes) >= want
                        and all(n.held == 0 for n in nodes)
                    ),
                    60,
                    "the good rows stored",
                    group,
                )
            finally:
                marks.cancel()
            info = await work_settled(feeder)
            letters = await dead_letters(feeder)
            await group.stop(0, close=True)
            await group.stop(1, close=True)
            # A node started afresh: a batch not acked would reach it within ack_wait.
            again = await group.start(node_config(2), stores[2])
            later = time.monotonic() + config.ack_wait_ns / SECOND + 2
            await until(lambda: time.monotonic() > later, 30, "a redelivery window", group)
        await feeder.close()
        for store in stores:
            store.close()
        return nodes, letters, info.num_pending, info.num_ack_pending, again

    nodes, letters, pending, ack_pending, again = asyncio.run(main())
    refused = len(poisons(bad)) + 2  # and the bytes, and the compression bomb
    # A batch redelivered before its ack arrived (ack_wait is short here, the machine may be
    # loaded) is refused again by the other node: the counters may count it twice, the
    # stream keeps one letter (same id), checked below.
    assert sum(n.stats["batches_dead_lettered"] for n in nodes) >= refused
    assert sum(n.stats["batches_bad"] for n in nodes) >= refused
    # Every node skipped the junk evidence, the one started afterwards too (nodes has it).
    assert len(nodes) == 3 and all(n.stats["evidence_bad"] == 1 for n in nodes)
    assert (pending, ack_pending) == (0, 0)
    assert again.stats["batches_taken"] == again.stats["batches_bad"] == 0
    assert len(letters) == refused
    by_id = {msg_id: (reason, data) for msg_id, reason, data in letters}
    assert by_id.pop("dead:bad-bytes")[1] == NEGATIVE_LENGTH
    # Refused by what it declares, before its 200 MB were materialised.
    assert "decompresses to 200000000 bytes" in by_id.pop("dead:bad-bomb")[0]
    for name in poisons(bad):
        reason, data = by_id[f"dead:bad-{name}"]
        assert f"column {name!r}" in reason, (name, reason)
        assert decode(data).num_rows == bad.num_rows
    stored = []
    for i in range(2):
        with Store(tmp_path / f"n{i}.duckdb", retention_ns=None) as s:
            stored.append(s.read())
    out = pa.concat_tables(stored)
    # A good batch redelivered under load (ack_wait is short here) is decided by both nodes:
    # each store holds its rows once, and readers of several sinks deduplicate by key
    # (docs/cluster.md). Every good row is stored, nothing else.
    keys = ["exporter", "flow_id", "state", "end_ns"]
    for table in stored:
        assert table.select(keys).group_by(keys).aggregate([]).num_rows == table.num_rows
    got = {tuple(r.values()) for r in out.select(keys).to_pylist()}
    assert got == {tuple(r.values()) for t in good for r in t.select(keys).to_pylist()}
    assert set(out.column("exporter").to_pylist()) == set(exporters[:3])
    racks = out.filter(pc.equal(out.column("exporter"), exporters[1])).column("extra")
    assert {json.loads(extra)["rack"] for extra in racks.to_pylist()} == {"r7"}


class RefusingStore(Store):
    """The real store, refusing one exporter's rows as a store refuses a batch it cannot
    hold. A stand-in: no batch that passes the nodes' validation fails the real store (that
    is what the validation is for), yet a node must survive one that does."""

    refused = ""

    def write(self, table: pa.Table) -> int:
        if self.refused in table.column("exporter").to_pylist():
            raise ContractError(f"rows of {self.refused} refused")
        return super().write(table)


def test_rows_the_sink_refuses_are_dead_lettered_and_their_batch_acked(
    nats_lab: NatsLab, tmp_path: Path
) -> None:
    flows = simulate("churny", 7, flows=600).flows
    flows = flows.select([c for c in flows.column_names if c in FLOWS.names])
    exporters = sorted(set(flows.column("exporter").to_pylist()))
    by = {e: flows.filter(pc.equal(flows.column("exporter"), e)) for e in exporters[:3]}
    config = BusConfig(servers=nats_lab.urls, replicas=3)
    store = RefusingStore(tmp_path / "n.duckdb", retention_ns=None)
    store.refused = exporters[1]

    async def main() -> tuple[ClusterNode, list[tuple[str, str, bytes]], int]:
        feeder = Bus(config)
        await feeder.connect()
        await feeder.ensure_streams([REGION])
        async with NodeGroup(config) as group:
            cfg = NodeConfig(
                REGION, "n", settings=Settings(use_events=False), trust_received=True,
                clock_marks=False,
            )  # fmt: skip
            node = await group.start(cfg, store)
            for e, table in by.items():
                await feeder.publish_batch(REGION, table, f"batch-{e}")
            want = sum(t.num_rows for t in by.values())
            await until(lambda: node.stats["rows_submitted"] >= want, 60, "rows", group)
            end = int(pc.max(flows.column("received_ns")).as_py()) + 400 * SECOND
            marks = asyncio.create_task(tick(feeder, end))
            try:
                await until(lambda: node.held == 0, 60, "every batch settled", group)
            finally:
                marks.cancel()
            info = await work_settled(feeder)
            letters = await dead_letters(feeder)
        await feeder.close()
        return node, letters, info.num_pending + info.num_ack_pending

    node, letters, left = asyncio.run(main())
    assert left == 0
    refused = by[exporters[1]]
    assert node.stats["rows_dead_lettered"] == refused.num_rows
    assert node.stats["batches_dead_lettered"] == len(letters) >= 1
    assert all("sink refused" in reason and "ContractError" in reason for _, reason, _ in letters)
    kept = pa.concat_tables([decode(data) for _, _, data in letters])
    assert sorted(kept.column("flow_id").to_pylist()) == sorted(
        refused.column("flow_id").to_pylist()
    )
    assert "remote_source" in kept.column_names  # the decided rows, as the sink got them
    stored = store.read()
    store.close()
    assert stored.num_rows == by[exporters[0]].num_rows + by[exporters[2]].num_rows


def test_a_poison_batch_too_big_for_one_dead_letter_goes_in_pieces(
    nats_lab: NatsLab, tmp_path: Path
) -> None:
    flows = simulate("churny", 3, flows=100).flows.slice(0, 4)
    flows = flows.select([c for c in flows.column_names if c in FLOWS.names])
    config = BusConfig(servers=nats_lab.urls, replicas=3)

    def padded(size: int) -> pa.Table:
        pad = pa.array(["p" * size] + [""] * (flows.num_rows - 1))
        return column(column(flows, "pad", pad), "x", pa.array(np.ones(flows.num_rows, np.float16)))

    async def main() -> tuple[ClusterNode, list[tuple[str, str, bytes]], bytes]:
        feeder = Bus(config)
        await feeder.connect()
        await feeder.ensure_streams([REGION])
        store = Store(tmp_path / "n.duckdb", retention_ns=None)
        # As big as the work stream takes: no room left for a dead letter's headers.
        target = feeder.max_payload - 100
        size = target - len(encode(padded(0)))
        while len(encode(padded(size))) > target:
            size -= 8
        big = padded(size)
        body = encode(big)
        async with NodeGroup(config) as group:
            cfg = NodeConfig(REGION, "n", settings=Settings(use_events=False), clock_marks=False)
            node = await group.start(cfg, store)
            await feeder.publish(feeder.work_subject(REGION), body, "big")
            await until(lambda: node.stats["batches_dead_lettered"] == 1, 60, "the letter", group)
            letters = await dead_letters(feeder)
        await feeder.close()
        store.close()
        return node, letters, body

    node, letters, body = asyncio.run(main())
    assert node.stats["batches_bad"] == 1 and node.stats["dead_letter_failures"] == 0
    assert [msg_id for msg_id, _, _ in letters] == ["dead:big~1", "dead:big~2"]
    assert all("column 'x'" in reason for _, reason, _ in letters)
    joined = b"".join(data for _, _, data in letters)
    assert joined == body

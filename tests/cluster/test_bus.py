"""The bus against a real 3-server nats-server cluster with R3 JetStream streams."""

from __future__ import annotations

import asyncio

import pyarrow as pa
import pytest

from flowtrail.cluster.bus import CLOCK, OWNER, Bus, BusConfig, decode, encode
from flowtrail.cluster.natslab import NatsLab
from flowtrail.errors import InputError

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(90)]


def _table(n: int, tag: str) -> pa.Table:
    return pa.table({"flow_id": [f"{tag}-{i}" for i in range(n)], "x": list(range(n))})


def test_round_trip_work_and_evidence_r3(nats_lab: NatsLab) -> None:
    async def main() -> None:
        bus = Bus(BusConfig(servers=nats_lab.urls, replicas=3))
        await bus.connect()
        try:
            await bus.ensure_streams(["east", "west"])
            await bus.ensure_streams(["east"])  # idempotent
            info = await bus.js.stream_info(bus.work_stream("east"))
            assert info.config.num_replicas == 3
            assert info.cluster is not None and len(info.cluster.replicas or []) == 2

            # Work: the same batch id twice is stored once (duplicate window).
            first = await bus.publish_batch("east", _table(5, "a"), "batch-a")
            again = await bus.publish_batch("east", _table(5, "a"), "batch-a")
            await bus.publish_batch("east", _table(3, "b"), "batch-b")
            assert not first.duplicate and again.duplicate
            assert bus.stats["duplicates"] == 1

            # Two pullers on one durable consumer split the batches: each goes to one.
            subs = [await bus.work_consumer("east"), await bus.work_consumer("east")]
            got: list[str] = []
            msgs = await subs[0].fetch(1, timeout=5)
            msgs += await subs[1].fetch(1, timeout=5)
            for m in msgs:
                got.extend(decode(m.data).column("flow_id").to_pylist()[:1])
                await m.ack()
            assert sorted(got) == ["a-0", "b-0"]
            with pytest.raises(asyncio.TimeoutError):
                await subs[0].fetch(1, timeout=0.5)

            # An unacked batch comes back (to any node) after ack_wait: nothing is lost.
            await bus.publish_batch("east", _table(2, "c"), "batch-c")
            (held,) = await subs[0].fetch(1, timeout=5)
            await held.nak()  # what a dying node's silence turns into, sooner
            (back,) = await subs[1].fetch(1, timeout=5)
            assert decode(back.data).equals(_table(2, "c"))
            assert back.metadata.num_delivered == 2
            await back.ack()

            # Evidence: every reader sees every message, in one order.
            await bus.publish(
                bus.evidence_subject("west"), encode(_table(4, "e")), "ev-1", {OWNER: "node-1"}
            )
            await bus.publish_clock("west", 123, "clock-1")
            readers = [await bus.evidence_consumer("west"), await bus.evidence_consumer("west")]
            for r in readers:
                m1 = await r.next_msg(timeout=5)
                m2 = await r.next_msg(timeout=5)
                assert m1.headers is not None and m1.headers[OWNER] == "node-1"
                assert decode(m1.data).num_rows == 4
                assert m2.headers is not None and m2.headers[CLOCK] == "123"
        finally:
            await bus.close()

    asyncio.run(main())


def test_evidence_survives_a_server_crash(nats_lab: NatsLab) -> None:
    """R3: with one server killed -9 and back, a new reader still gets every message."""

    async def main() -> None:
        bus = Bus(BusConfig(servers=nats_lab.urls, replicas=3))
        await bus.connect()
        try:
            await bus.ensure_streams(["east"])
            subject = bus.evidence_subject("east")
            for i in range(20):
                await bus.publish(subject, encode(_table(1, str(i))), f"m{i}")
            nats_lab.kill(0)
            for i in range(20, 40):  # publishing goes on with two of three servers
                await bus.publish(subject, encode(_table(1, str(i))), f"m{i}")
            await asyncio.to_thread(nats_lab.restart, 0)
            reader = await bus.evidence_consumer("east")
            seen = []
            for _ in range(40):
                m = await reader.next_msg(timeout=10)
                seen.append(decode(m.data).column("flow_id")[0].as_py())
            assert seen == [f"{i}-0" for i in range(40)]
        finally:
            await bus.close()

    asyncio.run(main())


def test_bad_names_are_refused() -> None:
    with pytest.raises(InputError, match="region"):
        Bus(BusConfig(servers=["nats://127.0.0.1:1"])).work_subject("us.east")
    with pytest.raises(InputError, match="replicas"):
        BusConfig(servers=["nats://127.0.0.1:1"], replicas=2)
    with pytest.raises(InputError, match="--nats"):
        BusConfig(servers=[])

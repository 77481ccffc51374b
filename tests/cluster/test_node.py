"""Collector nodes over a real 3-server NATS cluster decide like one node replaying the input.

Three nodes (two in us-east, one in eu-west) run in this process as asyncio tasks, each
with its own NATS connection and its own store file; the simulator's batches go through the
real work streams, forwarding and evidence streams. The test paces the feeder one second
of received time at a time (it waits until that second's evidence is in the streams), which
is what a replay needs to be exact; the nodes themselves know nothing of the pacing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flowtrail.cluster.bus import CLOCK, OWNER, SECOND, Bus, BusConfig, decode, encode
from flowtrail.cluster.feed import feed_paced
from flowtrail.cluster.natslab import NatsLab
from flowtrail.cluster.node import EVIDENCE_COLUMNS, OWNED_COLUMN, ClusterNode, NodeConfig
from flowtrail.engine.attributor import Settings
from flowtrail.engine.replay import replay
from flowtrail.errors import ExportError
from flowtrail.sim.simulation import simulate
from flowtrail.store import Store
from tests.cluster.test_poison import work_settled

# A budget, not a check: the replay comparisons pace ~500 (heartbeats) and ~1,100 (with
# events) seconds of received time through R3 streams, one round trip each, and took over
# 180 s with 2 cores at a load of 13-24; the stalls they could hide fail sooner, named (60 s
# per paced second, 60 s for the last decisions).
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

KEY = ("exporter", "flow_id", "state", "end_ns")


async def _wait_for(
    cond: Callable[[], bool], timeout: float, what: str, runs: list[asyncio.Task[None]]
) -> None:
    """Wait for cond(); a node task that ended meanwhile fails the test with its own error."""
    deadline = time.monotonic() + timeout
    while not cond():
        for run in runs:
            if run.done():
                run.result()
                raise AssertionError(f"a node stopped while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def _solo_node(
    lab: NatsLab,
    tmp_path: Path,
    region: str,
    tune: Callable[[Bus], None] | None = None,
    *,
    trust_received: bool = True,
    ack_wait_ns: int = 30 * SECOND,
) -> AsyncIterator[tuple[Bus, ClusterNode, asyncio.Task[None]]]:
    """One node in this process with its own store; `tune` may adjust its bus first."""
    bus = Bus(BusConfig(servers=lab.urls, replicas=3, ack_wait_ns=ack_wait_ns))
    await bus.connect()
    await bus.ensure_streams([region])
    if tune is not None:
        tune(bus)
    store = Store(tmp_path / "node.duckdb", retention_ns=None)
    cfg = NodeConfig(
        region,
        "solo",
        settings=Settings(use_events=False),
        trust_received=trust_received,
        clock_marks=False,
    )
    node = ClusterNode(bus, cfg, None, store)
    stop = asyncio.Event()
    run = asyncio.create_task(node.run(stop))
    try:
        await asyncio.wait_for(node.ready.wait(), 20)
        yield bus, node, run
    finally:
        stop.set()
        await asyncio.gather(run, return_exceptions=True)
        await bus.close()


async def _decide_all(
    node: ClusterNode,
    run: asyncio.Task[None],
    rows: pa.Table,
    mark: Callable[[int], Awaitable[object]],
) -> None:
    """Once the rows are submitted, a clock mark past every wait; then wait until stored."""
    # The mark must come after the batch's evidence: a node decides at tick ends.
    await _wait_for(lambda: node.stats["rows_submitted"] > 0, 30, "the batch", [run])
    await mark(int(pc.max(rows.column("received_ns")).as_py()) + 200 * SECOND)
    await _wait_for(
        lambda: node.stats["rows_written"] >= rows.num_rows and node.held == 0,
        30,
        "the batch stored",
        [run],
    )


def _keyed(table: pa.Table) -> dict[tuple[object, ...], object]:
    cols = [table.column(k).to_pylist() for k in KEY]
    return dict(
        zip(zip(*cols, strict=True), table.column("remote_workload").to_pylist(), strict=True)
    )


@pytest.mark.parametrize("with_events", [False, True], ids=["heartbeats", "with-events"])
def test_three_nodes_two_regions_equal_single_node_replay(
    nats_lab: NatsLab, tmp_path: Path, with_events: bool
) -> None:
    """With events, the control plane's feed travels on the evidence streams (to the
    region holding each address) and load balancers' flows are decided from it."""
    sim = simulate("churny", 3, flows=3_000)
    flows, regions = sim.flows, sim.regions
    events = sim.events if with_events else None
    settings = Settings(use_events=with_events)
    offline = replay(flows, events, regions, settings=settings).table
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
            await feed_paced(feeder, flows, regions, events=events)
            # The clock runs on past every wait (and the event feed's lag), as the replay's
            # drain does; in steps, so no node takes a long jump in one tick.
            last = int(pc.max(flows.column("received_ns")).as_py())
            for step in range(1, 9 if with_events else 2):
                for name in region_names:
                    mark = last + step * 200 * SECOND
                    await feeder.publish_clock(name, mark, f"end-{step}-{name}")

            # The last decisions are CPU work (eight 200 s steps of 1 s ticks with events):
            # on a loaded machine they outlast any fixed bound, so 60 s without progress
            # (rows written, data clocks moved) is the stall that fails.
            def progress() -> tuple[int, ...]:
                return (
                    sum(n.stats["rows_written"] for n in nodes),
                    *(n.now or 0 for n in nodes),
                )

            def done() -> bool:
                return sum(n.stats["rows_written"] for n in nodes) >= flows.num_rows and all(
                    n.held == 0 for n in nodes
                )

            while not done():
                seen = progress()
                try:
                    await _wait_for(
                        lambda seen=seen: done() or progress() != seen,
                        60,
                        "every row decided, stored and acked",
                        runs,
                    )
                except AssertionError as exc:
                    raise AssertionError(f"{exc}: no progress from {seen}") from None
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
    # us-east's other node skipped learning rows forwarded in from eu-west, and still
    # decided exactly like the replay.
    assert sum(n.stats["rows_not_learned"] for n in nodes) > 0
    attributed = pc.sum(pc.is_valid(stored.column("remote_workload"))).as_py()
    assert attributed > flows.num_rows // 2  # a meaningful comparison, not all nulls
    by_event = pc.sum(pc.equal(stored.column("remote_source"), "event")).as_py() or 0
    if with_events:
        assert by_event > 100  # the events really travelled and were used
        assert sum(n.stats["event_rows"] for n in nodes) >= sim.events.num_rows
        # Standing assignments were carried forward (every 10 min of data time) and applied
        # again by every node: the decisions above still equal the replay's.
        assert sum(n.stats["events_carried"] for n in nodes) > 0
    else:
        assert by_event == 0


def test_bad_batches_are_counted_and_harm_nothing(nats_lab: NatsLab, tmp_path: Path) -> None:
    sim = simulate("churny", 4, flows=1_000)
    good = sim.flows.slice(0, 50)
    region = "us-east"

    async def main() -> tuple[ClusterNode, int, int]:
        async with _solo_node(nats_lab, tmp_path, region) as (bus, node, run):
            subject = bus.work_subject(region)
            await bus.publish(subject, b"not arrow at all", "junk")
            await bus.publish_batch(region, good.drop_columns(["remote_ip"]), "no-remote-ip")
            # Malformed evidence (not from a node) is skipped by every node, never fatal.
            evidence = bus.evidence_subject(region)
            await bus.publish(evidence, b"not arrow either", "junk-evidence", {OWNER: "x/1"})
            await bus.publish(evidence, b"", "junk-mark", {CLOCK: "soon"})
            await bus.publish_batch(region, good, "good")
            await _decide_all(node, run, good, lambda t: bus.publish_clock(region, t, "end"))
            info = await work_settled(bus, region)  # terminations are not confirmed
            return node, info.num_pending, info.num_ack_pending

    node, pending, ack_pending = asyncio.run(main())
    assert node.stats["batches_bad"] == 2  # counted, and each terminated: never redelivered
    assert node.stats["evidence_bad"] == 2
    assert node.stats["batches_taken"] == 1
    assert (pending, ack_pending) == (0, 0)
    assert node.sink.count() == good.num_rows  # type: ignore[attr-defined]


def test_evidence_carries_only_what_learning_needs_and_the_store_gets_whole_rows(
    nats_lab: NatsLab, tmp_path: Path
) -> None:
    good = simulate("churny", 5, flows=500).flows.slice(0, 80)
    region = "us-east"

    async def main() -> tuple[ClusterNode, list[tuple[dict[str, str], bytes]]]:
        async with _solo_node(nats_lab, tmp_path, region) as (bus, node, run):
            await bus.publish_batch(region, good, "whole")
            await _decide_all(node, run, good, lambda t: bus.publish_clock(region, t, "end"))
            stream = bus.evidence_stream(region)
            last = (await bus.js.stream_info(stream)).state.last_seq
            msgs = [await bus.js.get_msg(stream, seq) for seq in range(1, last + 1)]
            return node, [(m.headers or {}, m.data or b"") for m in msgs]

    node, msgs = asyncio.run(main())
    evidence = [data for headers, data in msgs if OWNER in headers]
    assert len(evidence) == 1
    learned = decode(evidence[0])
    want = [c for c in EVIDENCE_COLUMNS if c in {*good.column_names, "received_ns"}]
    assert learned.column_names == [*want, OWNED_COLUMN]
    assert len(evidence[0]) < 0.7 * len(encode(good))  # about half a whole row's bytes
    # The rows decided here are stored whole: every column the agent sent, as sent.
    order = [(k, "ascending") for k in KEY]  # a flow_id repeats for a long connection's updates
    stored = node.sink.read().sort_by(order)  # type: ignore[attr-defined]
    sent = good.sort_by(order)
    for name in ("flow_id", "bytes_sent", "srtt_us", "direction", "local_workload"):
        assert stored.column(name).to_pylist() == sent.column(name).to_pylist(), name


def test_node_joining_midway_rebuilds_from_the_evidence_stream(
    nats_lab: NatsLab, tmp_path: Path
) -> None:
    """east-0 works the first half alone and stops; east-1 starts then, with no state but
    what it replays from the evidence stream, and decides the rest like the replay."""
    sim = simulate("churny", 6, flows=2_000)
    flows, regions = sim.flows, sim.regions
    settings = Settings(use_events=False)
    offline = replay(flows, None, regions, settings=settings).table
    region_names = sorted(set(regions.column("region").to_pylist()))

    async def main() -> list[ClusterNode]:
        config = BusConfig(servers=nats_lab.urls, replicas=3, ack_wait_ns=2 * SECOND)
        feeder = Bus(config)
        await feeder.connect()
        await feeder.ensure_streams(region_names)
        nodes: list[ClusterNode] = []
        stops: list[asyncio.Event] = []
        runs: list[asyncio.Task[None]] = []
        buses: list[Bus] = []

        async def start(region: str, name: str) -> None:
            bus = Bus(config)
            await bus.connect()
            buses.append(bus)
            store = Store(tmp_path / f"{name}.duckdb", retention_ns=None)
            cfg = NodeConfig(region, name, settings=settings, trust_received=True)
            nodes.append(ClusterNode(bus, cfg, regions, store))
            stops.append(asyncio.Event())
            runs.append(asyncio.create_task(nodes[-1].run(stops[-1])))
            await asyncio.wait_for(nodes[-1].ready.wait(), 20)

        async def swap(i: int, seconds: int) -> None:
            if i == seconds // 2:
                await start("us-east", "east-1")
                stops[0].set()  # east-0 leaves; its held batches are handed back (nak)
                await runs[0]

        try:
            await start("us-east", "east-0")
            await start("eu-west", "west-0")
            await feed_paced(feeder, flows, regions, on_second=swap)
            mark = int(pc.max(flows.column("received_ns")).as_py()) + 200 * SECOND
            for name in region_names:
                await feeder.publish_clock(name, mark, f"end-{name}")
            await _wait_for(
                lambda: (
                    sum(n.stats["rows_written"] for n in nodes) >= flows.num_rows
                    and all(n.held == 0 for n in nodes[1:])
                ),
                60,
                "every row decided, stored and acked",
                runs[1:],
            )
        finally:
            for stop in stops:
                stop.set()
            await asyncio.gather(*runs, return_exceptions=True)
            for bus in [*buses, feeder]:
                await bus.close()
        for run in runs:
            run.result()
        return nodes

    nodes = asyncio.run(main())
    east0, _west0, east1 = nodes
    assert east0.stats["rows_written"] > 0 and east1.stats["rows_written"] > 0
    # east-1 learned what happened before it came, from the stream alone.
    assert east1.stats["rows_evidence"] > 0
    stored = pa.concat_tables([n.sink.read() for n in nodes])  # type: ignore[attr-defined]
    keys = list(zip(*[stored.column(c).to_pylist() for c in KEY], strict=True))
    copies: dict[tuple[object, ...], set[object]] = {}
    for key, value in zip(keys, stored.column("remote_workload").to_pylist(), strict=True):
        copies.setdefault(key, set()).add(value)
    # A batch handed back half-written is written again by east-1; a shared Store drops the
    # second copy (same key). Each copy must carry the same decision.
    assert all(len(v) == 1 for v in copies.values())
    want = _keyed(offline)
    assert copies.keys() == want.keys()  # none lost
    differ = [k for k in want if copies[k] != {want[k]}]
    assert not differ, [(k, copies[k], want[k]) for k in differ[:3]]


def test_a_batch_whose_evidence_cannot_be_published_is_handed_back_and_done_later(
    nats_lab: NatsLab, tmp_path: Path
) -> None:
    """Fault injection (the one fake here: NATS cannot be made to refuse exactly one publish
    for a minute on cue): the batch's first evidence publish fails as after a long election.
    The node survives, hands the batch back, takes it again under a new evidence id and
    stores every row once, even when the first try's evidence reaches the stream late."""
    sim = simulate("churny", 4, flows=1_000)
    good = sim.flows.slice(0, 50)
    region = "us-east"

    failed: list[tuple[str, bytes, dict[str, str]]] = []

    def inject(bus: Bus) -> None:
        real_publish = bus.publish

        async def flaky(subject: str, payload: bytes, msg_id: str, headers=None):  # type: ignore[no-untyped-def]
            # Only this batch's own evidence (id "good@<incarnation>"), never a clock mark,
            # and only its first try; the flag is set before anything is awaited.
            if (
                subject == bus.evidence_subject(region)
                and msg_id.startswith("good@")
                and not failed
            ):
                failed.append((msg_id, payload, dict(headers or {})))
                raise ExportError(f"publish {msg_id}: injected failure")
            return await real_publish(subject, payload, msg_id, headers)

        bus.publish = flaky  # type: ignore[method-assign]

    async def main() -> ClusterNode:
        async with _solo_node(nats_lab, tmp_path, region, inject) as (bus, node, run):
            await bus.publish_batch(region, good, "good")
            await _wait_for(
                lambda: node.stats["batches_redelivered"] >= 1, 60, "the redelivery", [run]
            )
            # The failed try's evidence was stored after all, its ack lost: it arrives now,
            # after the batch went back, and must not get its rows decided a second time.
            msg_id, payload, headers = failed[0]
            await bus.publish(bus.evidence_subject(region), payload, msg_id, headers)
            await _decide_all(node, run, good, lambda t: bus.publish_clock(region, t, "end"))
            return node

    node = asyncio.run(main())
    assert [f[0] for f in failed] == [f"good@{node.incarnation}"]  # the batch's own evidence
    assert node.stats["publish_failures"] == 1
    assert node.stats["batches_taken"] == 2  # handed back once, taken again
    assert node.stats["batches_redelivered"] == 1
    assert node.stats["rows_submitted"] == good.num_rows  # from the second try only
    assert node.stats["rows_written"] == good.num_rows  # decided once, from the second try
    assert node.sink.count() == good.num_rows  # type: ignore[attr-defined]


def test_a_batch_near_max_payload_is_split_and_a_fast_clock_cannot_rush_the_region(
    nats_lab: NatsLab, tmp_path: Path
) -> None:
    """A work batch within 10% of the servers' max_payload (its evidence, one column more,
    might not pass) goes back in halves and every row is still stored once. A clock mark
    from a node whose clock runs an hour ahead moves the data clock no further than the
    servers' time. The node keeps its batches alive with the consumer's real ack wait."""
    big = simulate("churny", 11, flows=45_000).flows
    region = "us-east"

    async def main() -> tuple[ClusterNode, int, int, float]:
        first = Bus(BusConfig(servers=nats_lab.urls, replicas=3, ack_wait_ns=30 * SECOND))
        await first.connect()
        await first.ensure_streams([region])
        await first.work_consumer(region)  # the shared consumer, made by an earlier node
        await first.close()
        async with _solo_node(
            nats_lab, tmp_path, region, trust_received=False, ack_wait_ns=2 * SECOND
        ) as (bus, node, run):
            nonlocal big
            size = len(encode(big))
            big = big.slice(0, int(big.num_rows * 0.95 * bus.max_payload / size))
            payload = encode(big)
            assert 0.9 * bus.max_payload < len(payload) < bus.max_payload
            await bus.publish(bus.work_subject(region), payload, "big")
            await _wait_for(lambda: node.stats["rows_submitted"] >= big.num_rows, 60, "big", [run])
            ahead = time.time_ns() + 3600 * SECOND
            before = time.time_ns()
            await bus.publish_clock(region, ahead, "from-the-future")
            await _wait_for(lambda: node.stats["clock_marks"] >= 1, 30, "the mark", [run])
            clock = node.now or 0
            return node, clock, before, node._ack_wait_s

    node, clock, before, ack_wait_s = asyncio.run(main())
    assert node.stats["batches_split"] == 1
    assert node.stats["rows_taken"] == big.num_rows  # both halves, once each
    assert clock <= before + 5 * SECOND  # not an hour ahead
    assert ack_wait_s == 30.0  # the consumer was created with 30 s before, not this node's 2 s


def test_a_listeners_row_is_learnt_from_and_stored_nowhere(
    nats_lab: NatsLab, tmp_path: Path
) -> None:
    good = simulate("churny", 6, flows=500).flows.slice(0, 40)
    first = good.slice(0, 1).to_pylist()[0]
    heard = {
        **first, "flow_id": "lstn:listen:7:10.9.9.9", "exporter": "lstn", "local_ip": "10.9.9.9",
        "local_port": 8080, "remote_ip": "0.0.0.0", "remote_port": 0, "direction": "inbound",
        "state": "active", "bytes_sent": 0, "bytes_received": 0, "established_ns": None,
        "local_workload": "quiet-server", "outcome": "listening",
    }  # fmt: skip
    batch = pa.concat_tables([good, pa.Table.from_pylist([heard], schema=good.schema)])
    region = "us-east"

    async def main() -> ClusterNode:
        async with _solo_node(nats_lab, tmp_path, region) as (bus, node, run):
            await bus.publish_batch(region, batch, "with-a-listener")
            await _decide_all(node, run, good, lambda t: bus.publish_clock(region, t, "end"))
            return node

    node = asyncio.run(main())
    assert node.stats["rows_listening"] == 1
    assert node.sink.count() == good.num_rows  # type: ignore[attr-defined]
    assert "lstn" not in node.sink.read().column("exporter").to_pylist()  # type: ignore[attr-defined]

"""A collector node of cluster mode: one asyncio process among several in a region.

Two loops share one StreamingAttribution:

- take (work stream, shared pull consumer): a batch comes to this node only. Its rows whose
  (NAT-resolved) remote address lies in another region's prefixes are republished to that
  region's work stream; the batch's columns that learning needs (EVIDENCE_COLUMNS) then go
  to the region's evidence stream, marked with this node's incarnation and which rows it
  decides here. The work message (and the rows to decide, whole) is held, not acked, until
  every row this node decides from it is written to the sink.
- learn (evidence stream, read in full by every node, in one order): when a node reads its
  own evidence back, the whole rows it marked as its own go to submit_flows; every other row
  on every node goes to submit_evidence. So every node learns every heartbeat, and each
  flow is decided once.

The engine's clock is the data's: received_ns of the evidence rows (stamped once, by the node
that took the batch) and clock marks, which every node publishes once per tick of wall time
(deduplicated by id: one mark per tick reaches the stream) so that time moves on in a quiet
region. Control-plane events come on the evidence stream too. Every node sees the same
evidence in the same order, so its decisions do not depend on which node took which batch:
the cluster decides like one node replaying the same input (tests/cluster/test_node.py).

With `NodeConfig.partitions` the region is split by connection instead (docs/cluster.md):
the taker publishes a batch's rows to their partitions' subjects of the rows stream and only
its compacted ownership runs to the evidence stream, then acks; every node learns the runs
and decides only the rows of the partitions it owns (owners.py, members stream), fetched by
the sequences the runs message names; a node that gains partitions rebuilds from the
streams. The sinks, dead letters, clock, events and forwarding are the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol

import nats.errors
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from flowtrail.cluster.bus import (
    CLOCK,
    DNS,
    EVENTS,
    FORWARDED_FROM,
    MSG_ID,
    NODE,
    OWNER,
    PIECE,
    REASON,
    RECEIVED,
    ROWS,
    SECOND,
    Bus,
    check_region,
    decode,
    encode,
    stream_time_ns,
)
from flowtrail.cluster.connkey import partitions as partition_of
from flowtrail.cluster.owners import owned_by
from flowtrail.cluster.runs import RUNS, compact, learn_runs
from flowtrail.collector.sink import refuses_rows
from flowtrail.engine import scopes
from flowtrail.engine.attributor import Settings
from flowtrail.engine.dnsnames import check_answers
from flowtrail.engine.ipkeys import IpKeys
from flowtrail.engine.regions import RegionMap
from flowtrail.engine.replay import split_listening
from flowtrail.engine.stream import StreamingAttribution
from flowtrail.errors import ContractError, ExportError
from flowtrail.incoming import validate_incoming
from flowtrail.schema import DNS_ANSWERS, FLOWS
from flowtrail.schema import EVENTS as EVENTS_TABLE

log = logging.getLogger("flowtrail.cluster")

OWNED_COLUMN = "_flowtrail_owned"  # evidence payloads only: rows the owner decides
_SEQ_COLUMN = "_flowtrail_batch"  # engine-internal: which held batch a decided row came from
# What learning a row needs (flowtrail.engine.replay.flow_arrays, _local_here): evidence
# carries only these, about half the bytes of a full row. The node that decides the rows
# keeps the full batch itself until it reads its evidence back.
EVIDENCE_COLUMNS = (
    "exporter", "local_ip", "local_port", "remote_ip", "remote_port", "nat_remote_ip",
    "nat_remote_port", "start_ns", "end_ns", "local_workload", "received_ns", "established_ns",
    "local_translating", *scopes.SCOPE_COLUMNS,
)  # fmt: skip
I32 = npt.NDArray[np.int32]
# What reading bytes that are not an Arrow IPC stream raises (pyarrow reports some damage,
# e.g. a negative continuation token, as OSError): a message's fault, never the node's.
UNREADABLE = (pa.ArrowException, OSError, ValueError)
# On a clean stop, how long a take already started may still finish before it is cancelled.
STOP_TAKE_S = 5.0


class Sink(Protocol):
    def write(self, table: pa.Table) -> int: ...


@dataclass(frozen=True)
class NodeConfig:
    region: str
    name: str
    settings: Settings = field(default_factory=Settings)
    tick_ns: int = SECOND
    # False: received_ns := when JetStream stored the work batch (the cluster's clock, as the
    # single-node collector stamps its own). True keeps senders' values (replays, tests).
    trust_received: bool = False
    # Work batches asked for at once. A fetch lands in the subscription's pending buffer (64 MiB
    # in nats-py) and what overflows it is dropped, to come back only after ack_wait: keep
    # fetch_batch x the largest batch (up to max_payload, 8 MiB in the lab) well below that.
    fetch_batch: int = 4
    poll_s: float = 0.2
    since_ns: int | None = None  # where evidence reading starts; None: the whole stream
    max_catch_up_ticks: int = 3600  # a longer jump in the clock is taken in one step
    # Publish a wall-clock mark every tick (None: when received_ns is the stream's clock,
    # i.e. not trust_received; a replay's historic clock must not be mixed with today's).
    clock_marks: bool | None = None
    # Marks trail wall time by this much: batches stored a moment ago may still be on their
    # way to the evidence stream, and node clocks differ a little from the servers'.
    clock_lag_ns: int = 2 * SECOND
    # Control-plane assignments still standing are published again this often (data time),
    # so they never age out of the evidence stream: a node started later still knows them.
    # None: a third of the bus's evidence retention; 0: never.
    carry_events_ns: int | None = None
    # Split by connection (docs/cluster.md): rows go to one of this many partitions by their
    # connection key, each decided by one node; every node learns the region's ownership
    # from compacted runs. Every node of a region must use the same count. 0: the broadcast
    # design (every node learns every raw row of the region).
    partitions: int = 0
    # A node whose member message is this old is gone: its partitions go to the others.
    member_ttl_ns: int = 10 * SECOND

    def __post_init__(self) -> None:
        check_region(self.region)
        if not 0 <= self.partitions <= 4096:
            raise ContractError(f"partitions {self.partitions}: must be 0..4096")
        if self.member_ttl_ns < SECOND:
            raise ContractError(f"member ttl {self.member_ttl_ns} ns: must be at least 1 s")
        if self.tick_ns <= 0:
            raise ContractError(f"tick {self.tick_ns} ns: must be positive")
        if self.carry_events_ns is not None and self.carry_events_ns < 0:
            raise ContractError(f"carry_events_ns {self.carry_events_ns}: must not be negative")

    @property
    def marks(self) -> bool:
        return not self.trust_received if self.clock_marks is None else self.clock_marks


def remote_regions(table: pa.Table, rmap: RegionMap, ipkeys: IpKeys) -> I32:
    """Region id (index into rmap.names) of each row's NAT-resolved remote address, -1: none."""
    return rmap.lookup(scopes.remote_keys(table, ipkeys), ipkeys)


@dataclass
class _Held:
    msg: Msg
    left: int  # rows of this batch not yet written
    seq: int = -1  # its handle in the engine's output, once submitted
    rows: pa.Table | None = None  # the rows to decide here, until their evidence is read back


class ClusterNode:
    """Run with `await node.run(stop)`; counters in `stats`."""

    def __init__(self, bus: Bus, config: NodeConfig, regions: pa.Table | None, sink: Sink) -> None:
        self.bus = bus
        self.config = config
        self.sink = sink
        self.incarnation = f"{config.name}/{secrets.token_hex(4)}"  # new on every start
        self.engine = StreamingAttribution(config.settings)
        self.regions = RegionMap(regions)
        self._region_id = (
            self.regions.names.index(config.region) if config.region in self.regions.names else -1
        )
        self._ipkeys = IpKeys()
        self._tick: int | None = None  # the data clock, in ticks
        self._held: dict[str, _Held] = {}  # evidence id -> work message awaiting its rows
        self._seq_ids: dict[int, str] = {}
        self._next_seq = 0
        self._done: OrderedDict[str, None] = OrderedDict()  # recently finished evidence ids
        self._retries: dict[str, int] = {}  # batch id -> failed publishing tries (until one works)
        self._taking: list[Msg] = []  # fetched, not yet held or settled
        self._ack_wait_s = self.bus.config.ack_wait_ns / SECOND
        self.ready = asyncio.Event()  # set once both consumers are attached
        self.caught_up = False  # the evidence retained at start has been read
        self._catch_up_seq = 0
        self._evidence_pending = 0  # evidence messages not yet delivered (last known)
        every = config.carry_events_ns
        if every is None:
            every = bus.config.evidence_retention_ns // 3
        self._carry_every = every if config.settings.use_events else 0
        self._carry_round: int | None = None  # the data clock's last carry round
        self._carrying: set[asyncio.Task[None]] = set()
        self._status: dict[str, object] = {}
        self._status_at = 0.0  # monotonic time of the last snapshot (loop liveness)
        # Split by connection (config.partitions > 0): which partitions this node decides,
        # and where a takeover starts writing (see _learn_rows, _decide_partitioned).
        parts = config.partitions
        self._members: list[str] = []
        self._owned: frozenset[int] = frozenset()
        self._owned_next: frozenset[int] = frozenset()  # gained ones wait for a rebuild
        self._rebuild = False
        self._skip_below = np.zeros(parts, np.int64)  # evidence seq written by a former owner
        self._done_put = np.zeros(parts, np.int64)  # progress last published
        self._progress_at = 0.0
        self._pending: dict[int, list[object]] = {}  # tag -> [rows left, batch id]
        self._learning_seq = 0  # the evidence message being learned
        self._member_beats = 0
        self._evidence_sub: JetStreamContext.PushSubscription | None = None
        self.stats: dict[str, int] = {
            "batches_taken": 0,
            "batches_redelivered": 0,
            "batches_bad": 0,
            "batches_handed_back": 0,
            "ack_failures": 0,
            "publish_failures": 0,
            "consumer_errors": 0,
            "rows_taken": 0,
            "rows_forwarded": 0,
            "evidence_messages": 0,
            "rows_submitted": 0,
            "rows_evidence": 0,
            # forwarded-in rows no flow decided here can use: not learned by other nodes,
            # no ownership range on the node deciding them
            "rows_not_learned": 0,
            "rows_written": 0,
            "rows_stored": 0,
            "rows_listening": 0,  # listeners' heartbeats: learnt from, written nowhere
            "clock_marks": 0,
            "clock_marks_published": 0,
            "clock_mark_failures": 0,
            "event_messages": 0,
            "event_rows": 0,
            "events_carried": 0,
            "event_carry_failures": 0,
            "events_bad": 0,
            "dns_messages": 0,  # agents' DNS answers (docs/dns.md)
            "dns_rows": 0,
            "dns_bad": 0,
            "evidence_bad": 0,
            "batches_split": 0,
            # work batches refused (bad, or the sink refused their rows), moved to the
            # dead-letter stream with the reason and acked
            "batches_dead_lettered": 0,
            "rows_dead_lettered": 0,
            "dead_letter_failures": 0,
            # split by connection
            "runs_learned": 0,  # ownership run records learned (every node: the region's)
            "learn_runs_cpu_ns": 0,  # CPU spent learning them (the per-node cost of the region)
            "rows_messages_read": 0,  # rows messages of owned partitions fetched
            "rows_missing": 0,  # rows messages aged out before they could be read
            "rows_already_written": 0,  # decided again after a takeover, written before
            "rows_not_owned": 0,  # decided while the partition moved away: not written
            "rebuilds": 0,  # state rebuilt from the evidence stream after gaining partitions
            "member_failures": 0,
            "progress_failures": 0,
        }

    @property
    def waiting(self) -> int:
        return self.engine.waiting

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def now(self) -> int | None:
        """The data clock: the end of the current tick, or None before any evidence."""
        return None if self._tick is None else (self._tick + 1) * self.config.tick_ns - 1

    def status(self) -> dict[str, object]:
        """A snapshot of the node for /metrics, /healthz, /readyz and the status file.

        Made on the event loop (see _status_loop) and read from other threads: a plain dict
        swapped in whole, never mutated after.
        """
        return self._status

    @property
    def status_age_s(self) -> float:
        return time.monotonic() - self._status_at if self._status_at else 0.0

    def _snapshot(self) -> None:
        e = self.engine.engine
        c = e.counters
        self._status = {
            "incarnation": self.incarnation,
            "region": self.config.region,
            "attached": self.ready.is_set(),
            "caught_up": self.caught_up,
            "nats_connected": self.bus.connected,
            "held_batches": len(self._held),
            "waiting_flows": self.engine.waiting,
            "data_clock_ns": self.now or 0,
            "evidence_pending": self._evidence_pending,
            "ownership_ranges": e.ranges.merged,  # claims merge at the next decision
            "ownership_claims_waiting": e.ranges.pending,
            **e.memory(),
            "decided": {**c.decided, "unattributed": sum(c.unattributed.values())},
            "unattributed": dict(c.unattributed),
            "ownership_ranges_evicted": c.evicted_segments,
            "events_forgotten": c.evicted_events,  # older than the retention, superseded
            "partitions_owned": len(self._owned),
            "members": len(self._members),
            **self.stats,
        }
        self._status_at = time.monotonic()

    async def _status_loop(self, stop: asyncio.Event, every_s: float = 0.5) -> None:
        while not stop.is_set():
            self._snapshot()
            await asyncio.sleep(every_s)

    async def run(self, stop: asyncio.Event) -> None:
        self._snapshot()
        work = await self.bus.work_consumer(self.config.region)
        # The shared consumer keeps the ack wait of whoever created it: keep-alives follow it.
        self._ack_wait_s = await self.bus.consumer_ack_wait_s(work, self.bus.config.ack_wait_ns)
        # The stream's newest message now: once read, the node has rebuilt its state.
        self._catch_up_seq = await self.bus.evidence_last_seq(self.config.region)
        self.caught_up = self._catch_up_seq == 0
        if self.config.partitions:
            await self._join()
        evidence = await self.bus.evidence_consumer(self.config.region, self.config.since_ns)
        self._evidence_sub = evidence
        self.ready.set()
        tasks = [
            asyncio.create_task(self._take_loop(work, stop)),
            asyncio.create_task(self._learn_loop(evidence, stop)),
            asyncio.create_task(self._keepalive_loop(stop)),
            asyncio.create_task(self._status_loop(stop)),
        ]
        if self.config.marks:
            tasks.append(asyncio.create_task(self._clock_loop(stop)))
        if self.config.partitions:
            tasks.append(asyncio.create_task(self._member_loop(stop)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a loop that failed takes the node down, loudly
        finally:
            if stop.is_set():
                # A clean stop lets the take loop end its fetch rather than cancelling it: a
                # cancelled fetch leaves its pull request open at the server, which may
                # deliver a batch to this stopped node (back only after ack_wait). The loop
                # gives back what that fetch brought; a stuck take is cancelled after a bound.
                taken, _ = await asyncio.wait(tasks[:1], timeout=self.config.poll_s + STOP_TAKE_S)
                for task in taken:
                    if not task.cancelled() and task.exception() is not None:
                        log.error("take loop failed while stopping: %r", task.exception())
            for task in [*tasks, *self._carrying]:
                task.cancel()
            await asyncio.gather(*tasks, *self._carrying, return_exceptions=True)
            await self._hand_back()
            await self._evidence_sub.unsubscribe()
            self._snapshot()

    async def _hand_back(self) -> None:
        """On stop, give held batches back at once (nak) instead of after ack_wait: those
        held, and those fetched but not yet taken (a take cancelled at the stop bound)."""
        holding = {id(h.msg) for h in self._held.values()}
        for msg in self._taking:
            if id(msg) not in holding:  # a take cut short after holding it: nak'd below
                await self._settle(msg.nak(), "nak")
                self.stats["batches_handed_back"] += 1
        self._taking = []
        for evidence_id, held in list(self._held.items()):
            try:
                await held.msg.nak()
                self.stats["batches_handed_back"] += 1
            except Exception as exc:  # a lost connection: redelivery after ack_wait covers it
                log.debug("nak of %s failed: %s", evidence_id, exc)
            del self._held[evidence_id]

    # -- take: work stream -> forward + evidence ------------------------------------------

    async def _take_loop(self, sub: JetStreamContext.PullSubscription, stop: asyncio.Event) -> None:
        fetch = sub.fetch
        while not stop.is_set():
            try:
                msgs: list[Msg] = await fetch(self.config.fetch_batch, timeout=self.config.poll_s)
            except TimeoutError:
                continue
            except nats.errors.Error as exc:  # a server restarting: the client reconnects
                self.stats["consumer_errors"] += 1
                log.warning("work fetch failed: %s", exc)
                await asyncio.sleep(self.config.poll_s)
                continue
            # Kept alive from now on, not only once held: forwarding may take a while.
            self._taking = list(msgs)
            for msg in msgs:
                if stop.is_set():
                    await self._settle(msg.nak(), "nak")  # not started: straight back
                    continue
                await self._take(msg)
                self._taking.remove(msg)
            self._taking = []

    async def _take(self, msg: Msg) -> None:
        headers = msg.headers or {}
        meta = msg.metadata
        batch_id = headers.get(MSG_ID) or f"{meta.stream}:{meta.sequence.stream}"
        evidence_id = f"{batch_id}@{self.incarnation}"
        if batch_id in self._retries:
            # An earlier try's evidence may have been stored after all (a lost publish ack):
            # a new id keeps this try's evidence from being dropped as its duplicate.
            evidence_id += f"#{self._retries[batch_id]}"
        if evidence_id in self._held or evidence_id in self._done:
            # Redelivered to us while we still hold it (or just finished it): ours already.
            if evidence_id in self._held:
                self._held[evidence_id].msg = msg
            else:
                await self._settle(msg.ack(), "ack")
            return
        try:
            table = validate_incoming(decode(msg.data), FLOWS, path=f"work batch {batch_id}")
        except (ContractError, *UNREADABLE) as exc:
            # The collector's door refuses the same: it harms nothing else. Counted, moved
            # aside with the reason, and acked: never redelivered, to any node.
            self.stats["batches_bad"] += 1
            log.warning("dead-lettering %s: %s", batch_id, exc)
            if await self._dead_letter(batch_id, [msg.data], str(exc), headers):
                await self._settle(msg.ack(), "ack")
            else:
                await self._settle(msg.nak(), "nak")  # NATS trouble: tried again later
            return
        if len(msg.data) > self.bus.max_payload * 0.9:
            # Its evidence or forwarded parts might not pass (evidence is the learning columns,
            # received_ns stamped if the batch had none, and a mask): split it and requeue.
            await self._split_back(msg, table, batch_id, headers)
            return
        try:
            if self.config.partitions:
                await self._route_partitioned(msg, table, batch_id, headers)
            else:
                await self._route(msg, table, batch_id, evidence_id, headers)
        except ExportError as exc:
            self.stats["publish_failures"] += 1
            held = self._held.get(evidence_id)
            if held is not None and held.seq >= 0:
                # The evidence was stored after all and this node has read it back: its rows
                # are in the engine and will be decided; keep holding the batch.
                log.warning(
                    "%s: publish reported failed but the evidence arrived: %s", batch_id, exc
                )
                return
            # NATS would not take the forward or the evidence for long: give the batch back
            # (it comes again, to this node or another; re-published parts are deduplicated).
            log.warning("handing %s back: %s", batch_id, exc)
            self._held.pop(evidence_id, None)
            self._retries[batch_id] = self._retries.get(batch_id, 0) + 1
            if len(self._retries) > 10_000:  # batches another node finished meanwhile
                self._retries.pop(next(iter(self._retries)))
            await self._settle(msg.nak(), "nak")
            return
        self._retries.pop(batch_id, None)

    async def _split_back(
        self, msg: Msg, table: pa.Table, batch_id: str, headers: dict[str, str]
    ) -> None:
        """A batch near the servers' max_payload goes back into the work stream in halves
        (ids `<id>.a`, `<id>.b`: a retry republishes the same halves, deduplicated)."""
        if table.num_rows < 2:
            self.stats["batches_bad"] += 1
            log.warning("dropping %s: one row over the servers' max_payload", batch_id)
            await self._settle(msg.term(), "term")
            return
        half = table.num_rows // 2
        extra = {k: v for k, v in headers.items() if k == FORWARDED_FROM}
        try:
            for part, suffix in ((table.slice(0, half), "a"), (table.slice(half), "b")):
                await self.bus.publish(msg.subject, encode(part), f"{batch_id}.{suffix}", extra)
        except ExportError as exc:
            log.warning("splitting %s: %s", batch_id, exc)
            await self._settle(msg.nak(), "nak")
            return
        self.stats["batches_split"] += 1
        await self._settle(msg.ack(), "ack")

    async def _forward(
        self, msg: Msg, table: pa.Table, batch_id: str, headers: dict[str, str]
    ) -> tuple[pa.Table, npt.NDArray[np.bool_]]:
        """Stamp the batch, forward other regions' rows; the batch and which rows stay here."""
        meta = msg.metadata
        self.stats["batches_taken"] += 1
        self.stats["batches_redelivered"] += int(meta.num_delivered > 1)
        self.stats["rows_taken"] += table.num_rows
        # Forwarded rows keep the stamp their home region's node gave them.
        keep = self.config.trust_received or FORWARDED_FROM in headers
        table = self._stamp(table, stream_time_ns(msg), keep)
        if FORWARDED_FROM in headers or table.num_rows == 0:
            return table, np.ones(table.num_rows, bool)
        where = remote_regions(table, self.regions, self._ipkeys)
        owned = (where == self._region_id) | (where < 0)
        for rid in np.unique(where[~owned]):
            part = table.filter(pa.array(where == rid))
            other = self.regions.names[int(rid)]
            await self.bus.publish(
                self.bus.work_subject(other),
                encode(part),
                f"{batch_id}>{other}",
                {FORWARDED_FROM: self.config.region},
            )
            self.stats["rows_forwarded"] += part.num_rows
        return table, np.asarray(owned, np.bool_)

    async def _route_partitioned(
        self, msg: Msg, table: pa.Table, batch_id: str, headers: dict[str, str]
    ) -> None:
        """Split by connection: forward, then the batch's rows to their partitions' subjects
        (one message each, every row: the ones forwarded away stay here as peer rows), then
        its ownership runs to the evidence stream naming those messages; then ack.

        Ids are the batch's, not this node's: a batch redelivered after a kill is published
        again under the same ids and JetStream keeps the first copy (its pub ack names it),
        so its rows are decided once.
        """
        table, owned = await self._forward(msg, table, batch_id, headers)
        region = self.config.region
        forwarded_in = FORWARDED_FROM in headers
        # Rows forwarded in: their local side belongs to the region they came from.
        claims = self._local_here(table) if forwarded_in else None
        runs = compact(table, claims)
        count = self.config.partitions
        part = partition_of(table, count)
        marked = table.append_column(OWNED_COLUMN, pa.array(owned))
        used = np.unique(part).tolist()
        # Concurrently: each is a round trip to the stream's leader and its replicas.
        acks = await asyncio.gather(
            *(
                self.bus.publish(
                    self.bus.rows_subject(region, p),
                    encode(marked.filter(pa.array(part == p))),
                    f"{batch_id}#{p}",
                )
                for p in used
            )
        )
        refs = [f"{p}={ack.seq}" for p, ack in zip(used, acks, strict=True)]
        received = int(pc.max(table.column("received_ns")).as_py()) if table.num_rows else 0
        evidence_headers = {OWNER: self.incarnation, ROWS: f"{count}:{','.join(refs)}"}
        evidence_headers[RECEIVED] = str(received)
        if forwarded_in:
            evidence_headers[FORWARDED_FROM] = headers[FORWARDED_FROM]
        await self.bus.publish(
            self.bus.evidence_subject(region), encode(runs), batch_id, evidence_headers
        )
        await self._settle(msg.ack(), "ack")  # its rows are in the streams: durable

    async def _route(
        self, msg: Msg, table: pa.Table, batch_id: str, evidence_id: str, headers: dict[str, str]
    ) -> None:
        """Forward other regions' rows, publish the batch as evidence, hold it until stored."""
        table, owned = await self._forward(msg, table, batch_id, headers)
        if owned.any():
            mine = table if owned.all() else table.filter(pa.array(owned))
            self._held[evidence_id] = _Held(msg, int(owned.sum()), rows=mine)
        has = set(table.column_names)
        learned = [c for c in EVIDENCE_COLUMNS if c in has]
        marked = table.select(learned).append_column(OWNED_COLUMN, pa.array(owned))
        evidence_headers = {OWNER: self.incarnation}
        if FORWARDED_FROM in headers:
            evidence_headers[FORWARDED_FROM] = headers[FORWARDED_FROM]
        await self.bus.publish(
            self.bus.evidence_subject(self.config.region),
            encode(marked),
            evidence_id,
            evidence_headers,
        )
        if not owned.any():
            await self._settle(msg.ack(), "ack")  # all forwarded: other regions hold it now

    def _stamp(self, table: pa.Table, stored_ns: int, keep: bool) -> pa.Table:
        """received_ns is set once, here, so every node sees the same time for these rows."""
        field = FLOWS.column("received_ns").field
        stamp = pa.array(np.full(table.num_rows, stored_ns, np.int64))
        if "received_ns" not in table.column_names:
            return table.append_column(field, stamp)
        idx = table.column_names.index("received_ns")
        value = pc.coalesce(table.column(idx), stamp) if keep else stamp
        return table.set_column(idx, field, value)

    async def _settle(self, call: Awaitable[None], what: str) -> None:
        """Ack/term/nak: a failure (a server restarting) is counted, never fatal. The rows are
        already stored; the worst outcome is a redelivery, decided again and deduplicated."""
        try:
            await call
        except Exception as exc:  # nats-py raises several unrelated types here
            self.stats["ack_failures"] += 1
            log.warning("%s failed: %s", what, exc)

    async def _keepalive_loop(self, stop: asyncio.Event) -> None:
        """Held batches wait for their rows' decisions: tell JetStream we are still on them."""
        while not stop.is_set():
            await asyncio.sleep(max(self._ack_wait_s / 3, 0.2))
            for msg in [*self._taking, *(held.msg for held in list(self._held.values()))]:
                try:
                    await msg.in_progress()
                except Exception as exc:  # a lost connection: redelivery covers it
                    log.debug("in_progress failed: %s", exc)

    # -- learn: evidence stream -> engine -> sink -> ack ----------------------------------

    async def _learn_loop(
        self, sub: JetStreamContext.PushSubscription, stop: asyncio.Event
    ) -> None:
        while not stop.is_set():
            if self._rebuild:
                await self._restart_learning()
            sub = self._evidence_sub or sub
            try:
                msg: Msg = await sub.next_msg(timeout=self.config.poll_s)
            except TimeoutError:
                if not self.caught_up:
                    await self._check_caught_up(sub)
                continue
            except nats.errors.Error as exc:
                self.stats["consumer_errors"] += 1
                log.warning("evidence read failed: %s", exc)
                await asyncio.sleep(self.config.poll_s)
                continue
            await self._learn(msg)

    async def _check_caught_up(self, sub: JetStreamContext.PushSubscription) -> None:
        """Idle before reaching the start's newest message (it expired, or since_ns is past
        it): caught up when the server has nothing more to deliver."""
        try:
            info = await sub.consumer_info()
        except Exception as exc:  # a server restarting: ask again at the next idle poll
            log.debug("consumer info failed: %s", exc)
            return
        self._evidence_pending = int(info.num_pending or 0)
        if self._evidence_pending == 0 and sub.pending_msgs == 0:
            self._mark_caught_up()

    def _mark_caught_up(self) -> None:
        self.caught_up = True
        log.info("%s: evidence read up to the start's newest message: ready", self.incarnation)

    async def _learn(self, msg: Msg) -> None:
        headers = msg.headers or {}
        self.stats["evidence_messages"] += 1
        meta = msg.metadata
        self._evidence_pending = int(meta.num_pending or 0)
        if not self.caught_up and (
            meta.sequence.stream >= self._catch_up_seq or self._evidence_pending == 0
        ):
            self._mark_caught_up()
        if CLOCK in headers:
            await self._learn_clock(msg, headers[CLOCK])
            return
        if EVENTS in headers:
            await self._learn_events(msg)
            return
        if DNS in headers:
            self._learn_dns(msg)
            return
        if ROWS in headers:
            self._learning_seq = meta.sequence.stream
            await self._learn_rows(msg, headers)
            return
        try:
            table = decode(msg.data)
            owned = np.asarray(table.column(OWNED_COLUMN).to_numpy(zero_copy_only=False), bool)
            table = table.drop_columns([OWNED_COLUMN])
            if table.num_rows and "received_ns" not in table.column_names:
                raise KeyError("received_ns")
        except (*UNREADABLE, KeyError) as exc:
            # Every node skips it alike (and a restarted node again): never a crash loop.
            self.stats["evidence_bad"] += 1
            log.warning("skipping evidence %s: %r", headers.get(MSG_ID, "?"), exc)
            return
        if table.num_rows == 0:
            return
        await self._advance(int(pc.max(table.column("received_ns")).as_py()))
        now = self.now
        assert now is not None
        evidence_id = headers.get(MSG_ID, "")
        held = self._held.get(evidence_id) if headers.get(OWNER) == self.incarnation else None
        if held is not None and held.rows is not None:
            mine, held.rows = held.rows, None  # the engine keeps them from here
            seq = self._next_seq
            self._next_seq += 1
            self._seq_ids[seq] = evidence_id
            held.seq = seq
            mine = mine.append_column(_SEQ_COLUMN, pa.array(np.full(mine.num_rows, seq)))
            ranges = self._local_here(mine) if FORWARDED_FROM in headers else None
            self.engine.submit_flows(mine, now, ranges)
            self.stats["rows_submitted"] += mine.num_rows
            rest = table.filter(pa.array(~owned))
        elif FORWARDED_FROM in headers:
            rest = self._useful_here(table)
        else:
            rest = table
        if rest.num_rows:
            self.engine.submit_evidence(rest, now)
            self.stats["rows_evidence"] += rest.num_rows

    def _local_here(self, rows: pa.Table) -> npt.NDArray[np.bool_]:
        """Per row: is its local address ours or in no region?

        Rows forwarded in from another region are decided here (their remote address is
        ours), but their local side is a heartbeat for an address of the region they came
        from, and their own other end's row (local address ours, remote theirs) is decided
        there: no flow decided here can use them as evidence. Rows whose local address is in
        no region, or in ours, can (a flow towards an address in no region is decided here).
        """
        local = self.regions.lookup(scopes.local_keys(rows, self._ipkeys), self._ipkeys)
        here = (local < 0) | (local == self._region_id)
        self.stats["rows_not_learned"] += int(np.count_nonzero(~here))
        return np.asarray(here, dtype=np.bool_)

    def _useful_here(self, forwarded: pa.Table) -> pa.Table:
        """Rows forwarded in, as evidence for this region's other nodes: only those whose
        local address is ours or in no region (see _local_here); the rest would only cost."""
        keep = self._local_here(forwarded)
        return forwarded if keep.all() else forwarded.filter(pa.array(keep))

    async def _learn_clock(self, msg: Msg, value: str) -> None:
        try:
            mark = int(value)
        except ValueError:
            self.stats["evidence_bad"] += 1
            log.warning("skipping clock mark %r", value)
            return
        self.stats["clock_marks"] += 1
        if not self.config.trust_received:
            # The data clock is the servers' (received_ns = when JetStream stored a batch): a
            # mark from a node whose own clock runs ahead must not move everyone's past it.
            mark = min(mark, stream_time_ns(msg) - self.config.clock_lag_ns)
        await self._advance(mark)

    async def _learn_events(self, msg: Msg) -> None:
        """Control-plane events: every node applies them where they sit in the stream."""
        what = f"events {(msg.headers or {}).get(MSG_ID, '?')}"
        try:
            table = validate_incoming(decode(msg.data), EVENTS_TABLE, path=what)
        except (ContractError, *UNREADABLE) as exc:
            self.stats["events_bad"] += 1  # refused by every node alike: decisions stay equal
            log.warning("dropping %s: %s", what, exc)
            return
        self.stats["event_messages"] += 1
        if table.num_rows == 0:
            return
        # received_ns is when the cluster learned of the event: the stream's time, unless
        # the sender's is trusted (replays; the contract's default there is time_ns).
        stored = pa.array(np.full(table.num_rows, stream_time_ns(msg), np.int64))
        field = EVENTS_TABLE.column("received_ns").field
        if self.config.trust_received and "received_ns" in table.column_names:
            got = pc.coalesce(table.column("received_ns"), table.column("time_ns"))
        elif self.config.trust_received:
            got = table.column("time_ns")
        else:
            got = stored
        if "received_ns" in table.column_names:
            table = table.drop_columns(["received_ns"])
        table = table.append_column(field, got)
        await self._advance(int(pc.max(table.column("received_ns")).as_py()))
        now = self.now
        assert now is not None
        self.engine.submit_events(table, now)
        self.stats["event_rows"] += table.num_rows

    def _learn_dns(self, msg: Msg) -> None:
        """An agent's DNS answers: every node holds them, to name the flows it decides
        (docs/dns.md). They move no clock: an answer only names flows decided after it."""
        what = f"dns answers {(msg.headers or {}).get(MSG_ID, '?')}"
        try:
            table = validate_incoming(decode(msg.data), DNS_ANSWERS, path=what)
            check_answers(table, what)
        except (ContractError, *UNREADABLE) as exc:
            self.stats["dns_bad"] += 1  # refused by every node alike: decisions stay equal
            log.warning("dropping %s: %s", what, exc)
            return
        self.stats["dns_messages"] += 1
        self.engine.submit_dns(table)
        self.stats["dns_rows"] += table.num_rows

    async def _clock_loop(self, stop: asyncio.Event) -> None:
        """Once per tick, a wall-clock mark, so a region that receives nothing still decides.

        Every node of the region publishes the same id for the same tick: JetStream keeps one.
        """
        tick = self.config.tick_ns
        region = self.config.region
        while not stop.is_set():
            await asyncio.sleep(tick / SECOND)
            mark_tick = (time.time_ns() - self.config.clock_lag_ns) // tick
            if self._tick is not None and mark_tick <= self._tick:
                continue  # data keeps the clock moving
            try:
                await self.bus.publish_clock(region, mark_tick * tick, f"clock-{mark_tick}")
                self.stats["clock_marks_published"] += 1
            except ExportError as exc:  # NATS unreachable: the next tick tries again
                self.stats["clock_mark_failures"] += 1
                log.warning("clock mark: %s", exc)

    async def _advance(self, t_ns: int) -> None:
        """Move the data clock to t_ns's tick, deciding at the end of every tick passed."""
        tick = t_ns // self.config.tick_ns
        if self._tick is None:
            self._tick = tick
            return
        if tick <= self._tick:
            return
        passed = np.arange(self._tick, tick, dtype=np.int64)
        if len(passed) > self.config.max_catch_up_ticks:
            passed = np.concatenate([passed[: self.config.max_catch_up_ticks - 1], passed[-1:]])
        for t in passed:
            await self._decide(int(t + 1) * self.config.tick_ns - 1)
        self._tick = tick
        self._maybe_carry()

    def _maybe_carry(self) -> None:
        """Once per carry round of the data clock: publish the assignments still standing
        that no message of the last round carried, before the stream's retention drops them.

        Every node of the region sees the same clock and publishes the same id for the same
        round, so JetStream keeps one copy (or, if their states differ, a few: re-applying an
        event changes no decision). A node still rebuilding its state does not take part.
        """
        now = self.now
        if not self._carry_every or now is None or not self.caught_up:
            return
        round_ = now // self._carry_every
        if self._carry_round is None:
            self._carry_round = round_  # the first round this node sees: nothing due yet
            return
        if round_ <= self._carry_round:
            return
        self._carry_round = round_
        table = self._standing_events(now - self._carry_every, now)
        if table.num_rows:
            task = asyncio.create_task(self._carry(table, round_))
            self._carrying.add(task)
            task.add_done_callback(self._carrying.discard)

    def _standing_events(self, received_before: int, now: int) -> pa.Table:
        engine = self.engine
        key, owner, time_ns = engine.engine.events.standing(received_before)
        texts = [engine.ipkeys.text(int(k)) for k in key]
        return pa.table(
            {
                "ip": pa.array(texts, pa.string()),
                "workload": engine.names.to_arrow(owner),
                "action": pa.array(["assign"] * len(key), pa.string()),
                "time_ns": pa.array(time_ns, pa.int64()),
                "received_ns": pa.array(np.full(len(key), now, np.int64)),
            }
        )

    async def _carry(self, table: pa.Table, round_: int) -> None:
        region = self.config.region
        # Parts of about half the servers' max_payload (Arrow's in-memory size is close to
        # the encoded one; the half leaves room for the difference and the headers).
        per_part = max(1, table.num_rows * (self.bus.max_payload // 2) // max(table.nbytes, 1))
        try:
            for i, start in enumerate(range(0, table.num_rows, per_part)):
                part = table.slice(start, per_part)
                await self.bus.publish_events(region, part, f"carry-{region}-{round_}-{i}")
                self.stats["events_carried"] += part.num_rows
        except ExportError as exc:  # the next round carries them (they are older by then)
            self.stats["event_carry_failures"] += 1
            log.warning("carrying standing events forward: %s", exc)

    # -- split by connection: membership, rows of owned partitions, progress ----------------

    async def _join(self) -> None:
        """Announce this node, learn who else is there and which partitions are ours, and
        where former owners stopped writing them."""
        region, count = self.config.region, self.config.partitions
        await self.bus.ensure_partition_streams(region, count, self.config.member_ttl_ns)
        info = await self.bus.js.stream_info(self.bus.rows_stream(region))
        if info.config.description != f"partitions={count}":
            raise ContractError(
                f"region {region} is split into {info.config.description!r}, this node into "
                f"partitions={count}: every node of a region must use the same --partitions"
            )
        await self._renew_membership()
        self._owned = self._owned_next
        self._rebuild = False
        self._skip_below = np.asarray(await self.bus.progress(region, count), np.int64)
        self._done_put = self._skip_below.copy()

    async def _renew_membership(self) -> None:
        region = self.config.region
        self._member_beats += 1
        await self.bus.publish(
            self.bus.member_subject(region, self.incarnation),
            self.incarnation.encode(),
            f"member-{self.incarnation}-{self._member_beats}",
        )
        members = await self.bus.members(region)
        if self.incarnation not in members:  # our message not visible yet: we are here
            members = sorted([*members, self.incarnation])
        self._members = members
        now_owned = owned_by(self.incarnation, members, self.config.partitions)
        lost = self._owned - now_owned
        if lost:
            # Stop deciding them at once; the new owner writes from its takeover on.
            log.info("%s: partitions %s moved to other nodes", self.incarnation, sorted(lost))
            self._owned = self._owned - lost
            count = self.config.partitions
            for tag in [t for t in self._pending if t % count in lost]:
                del self._pending[tag]
        self._owned_next = now_owned
        if now_owned - self._owned:
            self._rebuild = True

    async def _member_loop(self, stop: asyncio.Event) -> None:
        """Renew this node's member message well within the TTL; follow the others'."""
        every = self.config.member_ttl_ns / SECOND / 4
        while not stop.is_set():
            await asyncio.sleep(every)
            try:
                await self._renew_membership()
            except ExportError as exc:  # NATS away: others may take our partitions meanwhile
                self.stats["member_failures"] += 1
                log.warning("membership: %s", exc)

    async def _restart_learning(self) -> None:
        """Gained partitions: their peer rows and waiting flows are only in the streams, so
        the engine starts again and reads the retained evidence from the start (as a
        restarted node does), deciding its partitions' rows; rows a former owner wrote
        (below its progress mark) are decided but not written again."""
        self._rebuild = False
        gained = sorted(self._owned_next - self._owned)
        log.info("%s: taking partitions %s over: rebuilding", self.incarnation, gained)
        self.stats["rebuilds"] += 1
        region = self.config.region
        if self._evidence_sub is not None:
            with contextlib.suppress(Exception):  # a lost connection: the sub is gone anyway
                await self._evidence_sub.unsubscribe()
            self._evidence_sub = None
        self.engine = StreamingAttribution(self.config.settings)
        self._tick = None
        self._carry_round = None
        self._pending.clear()
        self._learning_seq = 0  # nothing learned yet: no progress to claim
        self._owned = self._owned_next
        self._skip_below = np.asarray(
            await self.bus.progress(region, self.config.partitions), np.int64
        )
        self._done_put = np.maximum(self._done_put, self._skip_below)
        self._catch_up_seq = await self.bus.evidence_last_seq(region)
        self.caught_up = self._catch_up_seq == 0
        self._evidence_sub = await self.bus.evidence_consumer(region, self.config.since_ns)

    async def _learn_rows(self, msg: Msg, headers: dict[str, str]) -> None:
        """A batch's ownership runs (every node learns them) and, for the partitions this
        node owns, the batch's rows in them, fetched by sequence from the rows stream."""
        count = self.config.partitions
        try:
            runs = decode(msg.data)
            runs = runs.select(RUNS.names).cast(RUNS)
            declared, _, refs = headers[ROWS].partition(":")
            pairs = [(int(p), int(q)) for p, q in (r.split("=") for r in refs.split(",") if r)]
            received = int(headers[RECEIVED])
        except (*UNREADABLE, KeyError, TypeError) as exc:
            self.stats["evidence_bad"] += 1
            log.warning("skipping runs %s: %r", headers.get(MSG_ID, "?"), exc)
            return
        if declared != str(count):
            self.stats["evidence_bad"] += 1
            log.error("runs %s: split %s ways, not %d", headers.get(MSG_ID, "?"), declared, count)
            return
        await self._advance(received)
        now = self.now
        assert now is not None
        began = time.process_time_ns()
        learn_runs(self.engine, runs, now)
        self.stats["learn_runs_cpu_ns"] += time.process_time_ns() - began
        self.stats["runs_learned"] += runs.num_rows
        mine = [(p, q) for p, q in pairs if p in self._owned]
        if not mine:
            return
        region = self.config.region
        payloads = await asyncio.gather(*(self.bus.get_rows(region, q) for _, q in mine))
        batch_id = headers.get(MSG_ID, "")
        for (p, _), payload in zip(mine, payloads, strict=True):
            if payload is None:
                self.stats["rows_missing"] += 1
                log.warning("rows of %s#%d aged out of the rows stream", batch_id, p)
                continue
            try:
                rows = decode(payload)
                decide = int(pc.sum(rows.column(OWNED_COLUMN)).as_py() or 0)
            except (*UNREADABLE, KeyError) as exc:
                self.stats["evidence_bad"] += 1
                log.warning("skipping rows %s#%d: %r", batch_id, p, exc)
                continue
            self.stats["rows_messages_read"] += 1
            tag = self._learning_seq * count + p
            # Every row as a flow, as one engine takes them all: a row forwarded to another
            # region (decided there, its decision dropped here) is still this partition's
            # peer row, even one with no local workload, which evidence would not index.
            # Claims came in the runs: no row here adds to the ranges.
            flows = rows.append_column(_SEQ_COLUMN, pa.array(np.full(rows.num_rows, tag, np.int64)))
            self.engine.submit_flows(flows, now, np.zeros(flows.num_rows, np.bool_))
            if decide:
                self._pending[tag] = [decide, batch_id]
            self.stats["rows_submitted"] += decide
            self.stats["rows_evidence"] += rows.num_rows - decide

    async def _decide_partitioned(self, now: int) -> None:
        outs = self.engine.tick(now)
        if outs:
            await self._write_partitioned(outs, now)
        await self._publish_progress()

    async def _write_partitioned(self, outs: list[pa.Table], now: int) -> None:
        count = self.config.partitions
        table = pa.concat_tables(outs, promote_options="permissive")
        ours = table.column(OWNED_COLUMN)
        if ours.null_count or not pc.all(ours).as_py():  # others' rows, decided there
            table = table.filter(pc.fill_null(ours, False))
        table = table.drop_columns([OWNED_COLUMN])
        if table.num_rows == 0:
            return
        tag = np.asarray(table.column(_SEQ_COLUMN).to_numpy(), np.int64)
        part = tag % count
        owned = np.isin(part, np.fromiter(self._owned, np.int64, len(self._owned)))
        again = owned & (tag // count < self._skip_below[part])
        write = owned & ~again
        self.stats["rows_not_owned"] += int(np.count_nonzero(~owned))
        self.stats["rows_already_written"] += int(np.count_nonzero(again))
        kept = table.filter(pa.array(write))
        kept_tag = tag[write]
        try:
            await self._write(kept.drop_columns([_SEQ_COLUMN]))
        except Exception:  # one batch may spoil the whole write: each alone
            for t in np.unique(kept_tag).tolist():
                one = kept.filter(pa.array(kept_tag == t)).drop_columns([_SEQ_COLUMN])
                batch = str(self._pending.get(t, [0, "?"])[1])
                await self._write_alone(f"{batch}#{t % count}", [one], now)
        tags, counts = np.unique(tag, return_counts=True)
        for t, c in zip(tags.tolist(), counts.tolist(), strict=True):
            entry = self._pending.get(t)
            if entry is None:
                continue
            left = int(entry[0]) - c  # type: ignore[call-overload]
            if left <= 0:
                del self._pending[t]
            else:
                entry[0] = left

    async def _publish_progress(self, every_s: float = 1.0) -> None:
        """Per owned partition, the evidence sequence below which every decided row is
        written, at most once a second: where a node taking the partition over starts."""
        if time.monotonic() - self._progress_at < every_s or not self._owned:
            return
        self._progress_at = time.monotonic()
        count = self.config.partitions
        done = np.full(count, self._learning_seq, np.int64)
        if self._pending:
            tags = np.fromiter(self._pending, np.int64, len(self._pending))
            np.minimum.at(done, tags % count, tags // count)
        done = np.maximum(done, self._skip_below)
        region = self.config.region
        for p in sorted(self._owned):
            value = int(done[p])
            if value <= self._done_put[p]:
                continue
            try:
                await self.bus.publish(
                    self.bus.progress_subject(region, p), str(value).encode(), f"done-{p}-{value}"
                )
            except ExportError as exc:  # a lower mark only means more is written again
                self.stats["progress_failures"] += 1
                log.warning("progress of partition %d: %s", p, exc)
                return
            self._done_put[p] = value

    async def _decide(self, now: int) -> None:
        if self.config.partitions:
            await self._decide_partitioned(now)
            return
        outs = self.engine.tick(now)
        if not outs:
            return
        groups: dict[str, list[pa.Table]] = {}
        for out in outs:
            seq = int(out.column(_SEQ_COLUMN)[0].as_py())
            groups.setdefault(self._seq_ids[seq], []).append(out.drop_columns([_SEQ_COLUMN]))
        try:
            # Batches' extra columns differ: promoted to one schema (absent = null).
            table = pa.concat_tables(
                [t for parts in groups.values() for t in parts], promote_options="permissive"
            )
            await self._write(table)
        except Exception:  # one batch may spoil the whole write: each alone
            for evidence_id, parts in groups.items():
                await self._write_alone(evidence_id, parts, now)
        for evidence_id, parts in groups.items():
            held = self._held.get(evidence_id)
            if held is None:  # handed back meanwhile: its redelivery is decided again
                continue
            held.left -= sum(t.num_rows for t in parts)
            if held.left == 0:
                del self._held[evidence_id]
                self._seq_ids.pop(held.seq, None)
                self._done[evidence_id] = None
                if len(self._done) > 100_000:
                    self._done.popitem(last=False)
                await self._settle(held.msg.ack(), "ack")

    async def _write(self, table: pa.Table) -> None:
        table, heard = split_listening(table)
        self.stats["rows_listening"] += heard.num_rows
        if table.num_rows == 0:
            return
        stored = await asyncio.to_thread(self.sink.write, table)  # durable before any ack
        self.stats["rows_written"] += table.num_rows
        self.stats["rows_stored"] += stored

    async def _write_alone(self, evidence_id: str, parts: list[pa.Table], now: int) -> None:
        """One batch's decided rows; if the sink refuses them (not its own trouble, which
        takes the node down for a restart and redelivery), they go to the dead letters."""
        try:
            table = pa.concat_tables(parts, promote_options="permissive")
            await self._write(table)
        except Exception as exc:
            if not refuses_rows(exc):
                raise
            held = self._held.get(evidence_id)
            batch_id = evidence_id.split("@", 1)[0]
            log.warning("sink refused the rows of %s: dead-lettering: %r", batch_id, exc)
            rows = [encode(p) for t in parts for p in _fitting(t, self.bus.max_payload)]
            reason = f"sink refused: {type(exc).__name__}: {exc}"
            headers = dict(held.msg.headers or {}) if held is not None else {}
            # A batch's rows may be decided over several ticks: one dead letter per tick.
            letter = f"{evidence_id}/decided@{now}"
            if not await self._dead_letter(letter, rows, reason, headers):
                raise  # rows neither stored nor kept: a restart decides them again
            self.stats["rows_dead_lettered"] += sum(t.num_rows for t in parts)

    async def _dead_letter(
        self, batch_id: str, payloads: list[bytes], reason: str, headers: dict[str, str]
    ) -> bool:
        """Publish a refused batch to the region's dead-letter stream; False if NATS would
        not take it (the caller keeps the batch)."""
        subject = self.bus.dead_letter_subject(self.config.region)
        extra = {REASON: " ".join(reason.split())[:2000], NODE: self.incarnation}
        if FORWARDED_FROM in headers:
            extra[FORWARDED_FROM] = headers[FORWARDED_FROM]
        # A work batch near max_payload has no room left for the headers: its bytes go in
        # pieces (header Flowtrail-Piece: i/n), to be joined in order by whoever reads them.
        piece = self.bus.max_payload // 2
        try:
            for i, payload in enumerate(payloads):
                part = batch_id if len(payloads) == 1 else f"{batch_id}#{i}"
                if len(payload) <= piece:
                    await self.bus.publish(subject, payload, f"dead:{part}", extra)
                    continue
                n = -(-len(payload) // piece)
                for j in range(n):
                    body = payload[j * piece : (j + 1) * piece]
                    marks = {**extra, PIECE: f"{j + 1}/{n}"}
                    await self.bus.publish(subject, body, f"dead:{part}~{j + 1}", marks)
        except ExportError as exc:
            self.stats["dead_letter_failures"] += 1
            log.warning("dead-lettering %s: %s", batch_id, exc)
            return False
        self.stats["batches_dead_lettered"] += 1
        return True


def _fitting(table: pa.Table, max_payload: int) -> list[pa.Table]:
    """A table in parts of about half the servers' max_payload each (cf. _carry)."""
    per_part = max(1, table.num_rows * (max_payload // 2) // max(table.nbytes, 1))
    return [table.slice(i, per_part) for i in range(0, max(table.num_rows, 1), per_part)]

"""The agent loop: poll capture, name and NAT-resolve each batch at once, export every interval.

Each polled batch of closed connections is resolved immediately (identity while its cgroup
surely exists, NAT while conntrack still holds the entry) and held until the interval ends.
At each interval boundary the held rows plus `active` snapshots of long-lived connections
and `listening` rows of listening sockets (heartbeats for servers nobody calls) are handed
to the Delivery as one batch. Every second the agent also learns the cgroups of live
sockets and rescans the cgroup tree, so a cgroup removed before export still has its name.

With DNS capture on, the DNS answers workloads received are parsed and named on each pass of the
loop and exported at the same interval boundaries, as `dns_answers` batches of their own
(flowtrail.agent.dns_answers).

Everything that moves is counted in `Agent.metrics()`; capture's own drops appear there as
`capture_drop_<reason>`, the DNS side's as `dns_drop_<reason>`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.agent.assemble import AGENT_SCHEMA, assemble, check_raw, valid_rows
from flowtrail.agent.capture import RAW_TRACEPOINT, Capture
from flowtrail.agent.conntrack import NatResolver
from flowtrail.agent.dns_answers import DnsAnswers
from flowtrail.agent.exporter import Delivery
from flowtrail.agent.identity import IdentityChain
from flowtrail.agent.listeners import ListenerWatch
from flowtrail.agent.scopes import ScopeMarker
from flowtrail.agent.snapshots import Snapshotter


class CaptureLike(Protocol):
    def poll(self, timeout_ms: int = 0) -> pa.RecordBatch | None: ...

    def live(self) -> pa.RecordBatch: ...

    def stats(self) -> dict[str, int]: ...


@dataclass
class AgentConfig:
    exporter: str
    region: str | None = None
    interval_s: float = 60.0
    poll_ms: int = 200
    learn_every_s: float = 1.0  # how often live sockets' cgroups are learned, tree rescanned
    # Polled rows are resolved together at most this often (or at `resolve_rows`): one
    # conntrack dump per namespace (~7 ms: it walks the kernel's global conntrack hash) serves
    # every close of the round. Well within conntrack's 10 s CLOSE timeout.
    resolve_every_s: float = 0.5
    resolve_rows: int = 65536
    # Closed rows held for the interval past this go out at once as a batch of their own
    # (the interval's `active` and `listening` rows still go at its end): what bounds the
    # agent's memory at high close rates (~230 bytes a held row), not the interval.
    batch_rows: int = 100_000
    backlog_rows: int = 2_000_000  # read from the ring but not yet resolved: memory bound
    snapshots: bool = True
    # flowtrail's own servers as (ip, port): a connection with either end on one is
    # flowtrail's own traffic (its agent exporting, someone querying it), not the host's
    # workloads talking. Left out and counted (own_traffic_rows) unless keep_own_traffic.
    own_endpoints: frozenset[tuple[str, int]] = frozenset()
    keep_own_traffic: bool = False
    # Only sockets in these network namespaces (inode numbers) are this agent's; None = all.
    # One host among several on one kernel (a lab, nested setups) exports only its own.
    netns: frozenset[int] | None = None
    # The address space this host's routable addresses belong to (a VPC with ranges that
    # overlap another's); None: the default one.
    network: str | None = None


OnClosed = Callable[[pa.Table, pa.Table], None]
"""Called with (raw rows, assembled rows) of each polled batch: the human view hooks here."""


class Agent:
    def __init__(
        self,
        capture: CaptureLike,
        config: AgentConfig,
        identity: IdentityChain,
        delivery: Delivery,
        *,
        nat: NatResolver | None = None,
        snapshotter: Snapshotter | None = None,
        scopes: ScopeMarker | None = None,
        listeners: ListenerWatch | None = None,
        on_closed: OnClosed | None = None,
        dns: DnsAnswers | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if config.interval_s <= 0:
            raise ValueError("interval must be positive")
        if config.batch_rows < 1:
            raise ValueError("batch_rows must be at least 1")
        self.capture = capture
        self.config = config
        self.identity = identity
        self.delivery = delivery
        self.nat = nat
        self.snapshotter = snapshotter
        self.scopes = scopes
        self.listeners = listeners
        self.on_closed = on_closed
        self.dns = dns
        self.clock_ns = clock_ns
        self._held: list[pa.Table] = []
        self._held_rows = 0
        self._polled: list[pa.RecordBatch] = []
        self._lock = threading.Lock()
        self._queue: list[pa.RecordBatch] = []  # filled by the reader thread in `run`
        self._queued_rows = 0
        self._reader_error: Exception | None = None
        self._polled_rows = 0
        self._next_resolve = 0
        self._interval_ns = int(config.interval_s * 1e9)
        self._next_flush = clock_ns() + self._interval_ns
        self._next_learn = 0
        self.counters = {
            "captured_rows": 0,
            "closed_rows": 0,
            "dropped_malformed_rows": 0,
            "active_rows": 0,
            "intervals": 0,
            "early_batches": 0,
            "backlog_dropped_rows": 0,
            "own_traffic_rows": 0,
            "other_netns_rows": 0,
            "listening_rows": 0,
            "unaccepted_attempts_unnamed": 0,
        }
        self._netns = None if config.netns is None else pa.array(sorted(config.netns), pa.uint32())
        self._own = pa.array(sorted(f"{ip}|{port}" for ip, port in config.own_endpoints))

    def _without_own(self, raw: pa.Table) -> pa.Table:
        """`raw` less flowtrail's own connections (counted), unless they are to be kept."""
        if len(self._own) == 0 or self.config.keep_own_traffic or raw.num_rows == 0:
            return raw

        def end(ip: str, port: str) -> pa.Array:
            joined = pc.binary_join_element_wise(
                raw.column(ip), pc.cast(raw.column(port), pa.string()), "|"
            )
            return pc.is_in(joined, value_set=self._own)

        own = pc.fill_null(
            pc.or_(end("local_ip", "local_port"), end("remote_ip", "remote_port")), False
        )
        dropped = int(pc.sum(own).as_py() or 0)
        if dropped == 0:
            return raw
        self.counters["own_traffic_rows"] += dropped
        return raw.filter(pc.invert(own))

    # -- one step at a time (tests drive these directly) -------------------------------------

    def _resolve(self, raw: pa.Table, state: str) -> pa.Table:
        workload = self._unaccepted_unnamed(raw, self.identity.resolve(raw))
        nat = self.nat.resolve(raw) if self.nat is not None else None
        translating = self.nat.translating(raw) if self.nat is not None else None
        marks = None
        if self.scopes is not None:
            remote = (
                raw.column("remote_ip")
                if nat is None
                else pc.coalesce(nat[0], raw.column("remote_ip"))
            )
            marks = self.scopes.mark(raw, remote)
        return assemble(
            raw,
            translating=translating,
            network=self.config.network,
            scopes=marks,
            exporter=self.config.exporter,
            region=self.config.region,
            state=state,
            local_workload=workload,
            nat=nat,
            pods=self.identity.pods(raw),
        )

    def _unaccepted_unnamed(self, raw: pa.Table, workload: pa.Array) -> pa.Array:
        """No local name for an inbound handshake that never completed and that no process
        accepted: such a socket only carries its listener's cgroup, which names the wrong
        workload when the listener was handed over (socket activation, a moved pre-fork
        child). Unattributed is the honest answer; accepted or established rows keep theirs."""
        never = pc.and_(
            pc.and_(
                pc.equal(raw.column("direction"), "inbound"),
                pc.equal(raw.column("pid"), 0),
            ),
            pc.is_null(raw.column("established_ns")),
        )
        hits = pc.sum(never).as_py() or 0
        if hits == 0:
            return workload
        self.counters["unaccepted_attempts_unnamed"] += hits
        named = pa.chunked_array([workload]) if isinstance(workload, pa.Array) else workload
        out = pc.if_else(never, pa.scalar(None, named.type), named)
        return out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out

    def ingest(self, batch: pa.RecordBatch | pa.Table) -> pa.Table:
        """Resolve one polled batch of closed connections now and hold it for the interval."""
        check_raw(batch)
        raw = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
        ok = valid_rows(raw)
        good = self._without_own(raw.filter(ok))
        self.identity.observe(good)
        flows = self._resolve(good, "closed")
        # Counted together, after the work, so a reader sees them agree (all but a moment).
        self.counters["captured_rows"] += raw.num_rows
        self.counters["dropped_malformed_rows"] += raw.num_rows - good.num_rows
        self.counters["closed_rows"] += flows.num_rows
        self._held.append(flows)
        self._held_rows += flows.num_rows
        if self.on_closed is not None and flows.num_rows:
            self.on_closed(good, flows)
        return flows

    def _in_my_netns(self, batch: pa.RecordBatch | pa.Table) -> pa.Table:
        """The rows of `batch` in this agent's network namespaces (all without --netns)."""
        table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
        if self._netns is None:
            return table
        return table.filter(pc.is_in(table.column("netns_ino"), value_set=self._netns))

    def learn(self) -> None:
        """Learn cgroups of sockets open now and rescan the tree (names outlive cgroups)."""
        live = self._in_my_netns(self.capture.live())
        self.identity.observe(live)
        self.identity.refresh()
        if self.listeners is not None:
            # Sightings further apart than this (a stalled agent) are not taken as continuous.
            self.listeners.look(self.identity, int(3 * self.config.learn_every_s * 1e9))

    def listening(self) -> pa.Table:
        """`listening` rows: each listener's run of sightings since the last interval."""
        if self.listeners is None:
            return AGENT_SCHEMA.empty_table()
        raw, workload = self.listeners.take()
        if raw.num_rows == 0:
            return AGENT_SCHEMA.empty_table()
        own = self._without_own(raw.append_column("workload", workload))
        workload, raw = own.column("workload").combine_chunks(), own.drop_columns(["workload"])
        flows = assemble(
            raw,
            exporter=self.config.exporter,
            region=self.config.region,
            state="active",
            local_workload=workload,
            pods=self.identity.pods(raw),
            translating=self.nat.translating(raw) if self.nat is not None else None,
            # A listener's address is owned in the scope its connections' would be.
            network=self.config.network,
            scopes=None if self.scopes is None else self.scopes.mark(raw, raw.column("remote_ip")),
        )
        # One socket may stand for several addresses: the address makes the id unique.
        ids = pc.binary_join_element_wise(
            pa.scalar(f"{self.config.exporter}:listen"),
            pc.cast(raw.column("sock_id"), pa.string()),
            raw.column("local_ip"),
            ":",
        )
        flows = flows.set_column(0, AGENT_SCHEMA.field("flow_id"), ids)
        self.counters["listening_rows"] += flows.num_rows
        return flows

    def snapshot(self, now_ns: int) -> pa.Table:
        if self.snapshotter is None or not self.config.snapshots:
            return AGENT_SCHEMA.empty_table()
        live = self.capture.live()
        if live.num_rows:
            check_raw(live)
        live = self._in_my_netns(live)
        self.identity.observe(live)
        active = self.snapshotter.snapshot(live, now_ns, self._interval_ns)
        if active.num_rows == 0:
            return AGENT_SCHEMA.empty_table()
        active = self._without_own(active.filter(valid_rows(active)))
        flows = self._resolve(active, "active")
        self.counters["active_rows"] += flows.num_rows
        return flows

    def flush(self, now_ns: int | None = None, *, snapshots: bool = True) -> int:
        """End the interval: held rows + active snapshots → one batch to the Delivery."""
        now_ns = self.clock_ns() if now_ns is None else now_ns
        parts, self._held, self._held_rows = self._held, [], 0
        if snapshots:
            parts.append(self.snapshot(now_ns))
        parts.append(self.listening())
        self.counters["intervals"] += 1
        if self.dns is not None:
            self.dns.flush()
        table = pa.concat_tables(parts) if parts else AGENT_SCHEMA.empty_table()
        if table.num_rows:
            self._submit(table)
        else:
            self.delivery.retry()
        return int(table.num_rows)

    def _submit(self, table: pa.Table) -> None:
        # Chunks as resolved: exporters take chunked tables (one batch = one Parquet file or
        # request either way), and combining them first would hold the batch twice.
        self.delivery.submit(table)

    def _flush_early(self) -> bool:
        """The held closed rows as a batch of their own, once there are `batch_rows`."""
        if self._held_rows < self.config.batch_rows:
            return False
        parts, self._held, self._held_rows = self._held, [], 0
        self.counters["early_batches"] += 1
        self._submit(pa.concat_tables(parts))
        return True

    @staticmethod
    def _give_back_memory() -> None:
        """Arrow's allocator keeps freed memory for reuse: after a batch has gone, its rows
        and the encoder's buffers would stay resident until the next one. ~2 ms."""
        pa.default_memory_pool().release_unused()

    def _ingest_polled(self) -> None:
        if not self._polled:
            return
        batches, self._polled, self._polled_rows = self._polled, [], 0
        self.ingest(pa.Table.from_batches(batches).combine_chunks())

    def _accept(self, batch: pa.RecordBatch | None) -> None:
        if batch is not None and batch.num_rows:
            check_raw(batch)
            own = self._in_my_netns(batch)
            # Another host's sockets on this kernel: not ours to export, but counted.
            self.counters["other_netns_rows"] += batch.num_rows - own.num_rows
            for part in own.to_batches():
                self._polled.append(part)
                self._polled_rows += part.num_rows

    def _do_due(self) -> None:
        if self.dns is not None:
            self.dns.poll()
        now = self.clock_ns()
        if self._polled and (
            now >= self._next_resolve or self._polled_rows >= self.config.resolve_rows
        ):
            self._ingest_polled()
            if self._flush_early():
                self._give_back_memory()
            self._next_resolve = now + int(self.config.resolve_every_s * 1e9)
        if now >= self._next_learn:
            self.learn()
            self._next_learn = now + int(self.config.learn_every_s * 1e9)
        if now >= self._next_flush:
            self._ingest_polled()
            self.flush(now)
            self._give_back_memory()
            self._next_flush = now + self._interval_ns
        else:
            self.delivery.retry()
            if self.dns is not None:
                self.dns.delivery.retry()

    def step(self) -> None:
        """Poll once and do whatever is due (single-threaded use; `run` reads in a thread)."""
        self._accept(self.capture.poll(self.config.poll_ms))
        self._do_due()

    def drain(self) -> None:
        """Take everything capture still holds (at shutdown)."""
        self._take_queued()
        while True:
            batch = self.capture.poll(0)
            if batch is None or batch.num_rows == 0:
                break
            self._accept(batch)
        self._ingest_polled()
        if self.dns is not None:
            self.dns.drain()

    def _read_loop(self, stop: threading.Event) -> None:
        """Only empties the ring buffer into memory, so slow work (a Parquet write, a conntrack
        dump, a CPU-starved moment) never leaves the kernel's ring full. Bounded: past
        `backlog_rows` the newest batch is dropped and counted."""
        while not stop.is_set():
            try:
                batch = self.capture.poll(self.config.poll_ms)
            except Exception as exc:  # surfaced by run() after the last flush
                self._reader_error = exc
                stop.set()
                return
            if batch is None or batch.num_rows == 0:
                continue
            with self._lock:
                if self._queued_rows + batch.num_rows > self.config.backlog_rows:
                    self.counters["backlog_dropped_rows"] += batch.num_rows
                    continue
                self._queue.append(batch)
                self._queued_rows += batch.num_rows

    def _take_queued(self) -> None:
        with self._lock:
            batches, self._queue, self._queued_rows = self._queue, [], 0
        for batch in batches:
            self._accept(batch)

    def run(self, stop: threading.Event) -> None:
        """Loop until `stop` is set, then drain, export the last batch and retry the spool."""
        reader = threading.Thread(
            target=self._read_loop, args=(stop,), name="flowtrail-capture-reader", daemon=True
        )
        reader.start()
        try:
            while not stop.wait(self.config.resolve_every_s / 2):
                self._take_queued()
                self._do_due()
        finally:
            stop.set()
            reader.join()
            if self._reader_error is None:
                self.drain()
            else:
                self._take_queued()
                self._ingest_polled()
            self.flush(snapshots=False)
            self.delivery.retry(force=True)
            if self.dns is not None:
                self.dns.delivery.retry(force=True)
        if self._reader_error is not None:
            raise self._reader_error

    def metrics(self) -> dict[str, int]:
        out = dict(self.counters)
        out.update(self.identity.stats)
        out.update(self.identity.cgroups.stats)
        if self.nat is not None:
            out.update(self.nat.stats)
        if self.snapshotter is not None:
            out.update(self.snapshotter.stats)
        if self.scopes is not None:
            out.update(self.scopes.stats)
        if self.listeners is not None:
            out.update(self.listeners.stats)
        out.update(self.delivery.metrics())
        if self.dns is not None:
            out.update(self.dns.metrics())
        try:
            for reason, count in self.capture.stats().items():
                out[f"capture_drop_{reason}"] = count
            if isinstance(self.capture, Capture) and self.capture.attach_mode is not None:
                # which way the state-change program is attached (the classic tracepoint
                # skips more changes; docs/bpf.md), and what the second copy took over
                out["capture_raw_tracepoint"] = int(self.capture.attach_mode == RAW_TRACEPOINT)
                out["capture_nested_handled"] = self.capture.nested_handled()
        except RuntimeError:
            pass  # capture already closed
        out["held_rows"] = self._held_rows + self._polled_rows
        out["queued_rows"] = self._queued_rows
        return out

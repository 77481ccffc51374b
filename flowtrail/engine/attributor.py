"""The attribution engine: names each flow's remote workload, streaming, one batch at a time.

One implementation serves the offline replay (`flowtrail attribute`, whose clock is each row's
received_ns) and a live collector (wall clock). Callers hand over flows as plain column arrays
with a row handle, tell the engine what time it is, and get decisions back as arrays.

Order of evidence for a flow's remote address at its start (see docs/attribution.md):
1. the other end's own row of the same connection (flowtrail/pairing.py: reversed 4-tuple,
   handshake completion within tolerance);
2. ownership ranges covering [start - guard, start + guard] with one owner, where guard is
   twice the worst per-host clock skew, so skew can never carry a lookup across a handover;
3. after waiting max_wait without either: the event feed's time ranges, where safe;
4. otherwise unattributed: an honest "don't know".
An address some host source-translates others' connections to (a NAT gateway's) is named
only by 1.: see translating.py. Rows of listening sockets (outcome `listening`) are heartbeats
only: they feed 2. and are handed back at once, decided as nothing (the caller drops them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from flowtrail import pairing
from flowtrail.engine import ownership as own
from flowtrail.engine import records, verdict
from flowtrail.engine.dnsnames import DEFAULT_GRACE_NS
from flowtrail.engine.events import UNKNOWN, EventFeed
from flowtrail.engine.ownership import OwnershipRanges
from flowtrail.engine.peers import PeerIndex
from flowtrail.engine.pending import PendingPool
from flowtrail.engine.translating import TranslatingAddresses
from flowtrail.engine.verdict import (
    EVENT,
    HEARTBEAT,
    REASON_NO_EVIDENCE,
    REASON_NONE,
    UNATTRIBUTED,
    VIA_PEER,
    VIA_RANGES,
)

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
I8 = npt.NDArray[np.int8]

SECOND = 1_000_000_000

# the codes of remote_source, unattributed reasons and heartbeat routes (verdict.py)
REASONS = ("", "no_evidence", "conflicting_claims", "event_feed_disagrees_with_heartbeats")


@dataclass(frozen=True)
class Settings:
    method: str = "heartbeat"  # or "event" (the baseline)
    max_wait_ns: int = 180 * SECOND
    max_skew_ns: int = 100_000_000  # worst clock error of one host; two hosts differ by 2x
    # a connection's two rows' pair times (flowtrail/pairing.py) differ by less
    peer_tolerance_ns: int = pairing.DEFAULT_TOLERANCE_NS
    event_lag_ns: int = 1200 * SECOND  # the feed holds every change older than now - lag
    retention_ns: int = 3600 * SECOND  # ownership older than this (collector clock) is evicted
    use_events: bool = True  # is there an event feed at all (else nothing waits for it)
    # False gives the "plain" heartbeat design for comparison: ranges only, looked up at the
    # start instant (set max_skew_ns=0 and event_lag_ns=0 too).
    use_peers: bool = True
    # Peer rows are kept this long beyond max_wait (collector clock): the other end's row may
    # come that much later. In a cluster node this index, not the ranges, sets the memory.
    peer_slack_ns: int = 600 * SECOND
    # A DNS answer names its address this long past its TTL (docs/dns.md, "Naming").
    dns_grace_ns: int = DEFAULT_GRACE_NS

    @property
    def guard_ns(self) -> int:
        return 2 * self.max_skew_ns


FLOW_DTYPE = np.dtype(
    [
        ("row", np.int64),
        ("local_key", np.uint64),
        ("remote_key", np.uint64),
        ("start", np.int64),
        ("pair", np.int64),  # pair time: when the handshake completed (flowtrail/pairing.py)
        ("end", np.int64),
        ("received", np.int64),
        ("deadline", np.int64),  # engine-internal: when the wait ends
        ("local_port", np.int32),
        ("remote_port", np.int32),
        ("local_owner", np.int32),  # -1 when the agent could not tell
        ("exporter", np.int32),  # who sent the row (an interned name): claims are per host
        ("conflict", np.bool_),  # engine-internal: a conflicting claim was seen
        ("translating", np.bool_),  # this host source-translates others' connections to local
        ("listening", np.bool_),  # a listener's heartbeat, not a connection: never decided
    ]
)


class FlowArrays:
    """The columns the engine needs, one entry per flow row (remote already NAT-resolved).

    One structured array, so that selecting, queueing and concatenating flows is one numpy
    call each rather than one per column.
    """

    __slots__ = ("rec",)

    def __init__(self, rec: npt.NDArray[np.void]) -> None:
        self.rec = rec

    @staticmethod
    def build(
        *, row: I64, local_key: U64, local_port: I32, remote_key: U64, remote_port: I32,
        start: I64, end: I64, local_owner: I32, received: I64, exporter: I32 | None = None,
        pair: I64 | None = None,
        translating: npt.NDArray[np.bool_] | None = None,
        listening: npt.NDArray[np.bool_] | None = None,
    ) -> FlowArrays:  # fmt: skip
        """`pair`: pair times (flowtrail/pairing.py); None: the start times."""
        rec = np.zeros(len(row), FLOW_DTYPE)
        if listening is not None:
            rec["listening"] = listening
        if exporter is not None:
            rec["exporter"] = exporter
        if translating is not None:
            rec["translating"] = translating
        rec["row"], rec["local_key"], rec["local_port"] = row, local_key, local_port
        rec["remote_key"], rec["remote_port"] = remote_key, remote_port
        rec["start"], rec["end"], rec["local_owner"] = start, end, local_owner
        rec["pair"] = start if pair is None else pair
        rec["received"] = received
        return FlowArrays(rec)

    def __len__(self) -> int:
        return len(self.rec)

    def take(self, idx: npt.NDArray[np.int64] | npt.NDArray[np.bool_] | slice) -> FlowArrays:
        return FlowArrays(self.rec[idx] if isinstance(idx, slice) else records.take(self.rec, idx))

    @staticmethod
    def concat(parts: list[FlowArrays]) -> FlowArrays:
        return FlowArrays(records.concat([p.rec for p in parts], FLOW_DTYPE))

    @staticmethod
    def empty() -> FlowArrays:
        return FlowArrays(np.zeros(0, FLOW_DTYPE))

    row = property(lambda self: self.rec["row"])
    local_key = property(lambda self: self.rec["local_key"])
    local_port = property(lambda self: self.rec["local_port"])
    remote_key = property(lambda self: self.rec["remote_key"])
    remote_port = property(lambda self: self.rec["remote_port"])
    start = property(lambda self: self.rec["start"])
    pair = property(lambda self: self.rec["pair"])
    end = property(lambda self: self.rec["end"])
    local_owner = property(lambda self: self.rec["local_owner"])
    exporter = property(lambda self: self.rec["exporter"])
    received = property(lambda self: self.rec["received"])
    deadline = property(lambda self: self.rec["deadline"])
    conflict = property(lambda self: self.rec["conflict"])
    translating = property(lambda self: self.rec["translating"])
    listening = property(lambda self: self.rec["listening"])


@dataclass
class Decisions:
    row: I64
    owner: I32
    source: I8
    reason: I8
    via: I8
    decided: I64
    waited: I64  # decided - received

    def __len__(self) -> int:
        return len(self.row)

    @staticmethod
    def concat(parts: list[Decisions]) -> Decisions:
        names = ("row", "owner", "source", "reason", "via", "decided", "waited")
        return Decisions(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in names})


@dataclass
class Counters:
    """Everything that moves gets a counter."""

    flows_in: int = 0
    evidence_rows: int = 0
    events_in: int = 0
    decided: dict[str, int] = field(default_factory=lambda: {"heartbeat": 0, "event": 0})
    unattributed: dict[str, int] = field(default_factory=dict)
    via_peer: int = 0
    via_ranges: int = 0
    retries: int = 0
    waited_flows: int = 0
    waited_for_events: int = 0
    evicted_segments: int = 0
    evicted_events: int = 0
    listening_rows: int = 0  # listeners' heartbeats: evidence only, handed back undecided


class Attributor:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        if self.settings.method not in ("heartbeat", "event"):
            raise ValueError(f"unknown method {self.settings.method!r}")
        self.ranges = OwnershipRanges()
        self.peers = PeerIndex(retention_ns=self.settings.max_wait_ns + self.settings.peer_slack_ns)
        self.events = EventFeed()
        self.translating = TranslatingAddresses()
        self.counters = Counters()
        self._pending = PendingPool(FLOW_DTYPE)
        self._new: list[FlowArrays] = []
        self._wake: list[I64] = []  # handles of waiting flows whose peer came as evidence
        self._next_evict: int | None = None

    # -- input -------------------------------------------------------------------------
    def add_flows(
        self, flows: FlowArrays, now: int | I64, ranges: npt.NDArray[np.bool_] | None = None
    ) -> None:
        """Flows received at `now` (one time, or one per row): their local sides become
        evidence; all await a decision.

        `ranges` (per row) says whose local side may become an ownership range; None: all.
        A cluster node passes False for rows forwarded in from another region, whose local
        address no flow decided here can ask about (they still enter the peer index, so
        their other end's row can find them).
        """
        if len(flows) == 0:
            return
        listening = int(np.count_nonzero(flows.listening))
        self.counters.flows_in += len(flows) - listening
        self.counters.listening_rows += listening
        self._new.append(flows)
        if self.settings.method != "heartbeat":
            return
        self._learn(flows, now, ranges)

    def add_evidence(self, flows: FlowArrays, now: int) -> None:
        """Rows another node attributes: learn from their local sides, decide nothing.

        In a cluster every node learns every node's heartbeats. Waiting flows whose other end
        is among these rows are woken at the next tick. The rows' handles need not mean
        anything here (use -1).
        """
        if len(flows) == 0 or self.settings.method != "heartbeat":
            return
        ev = self._learn(flows, now)
        if ev is not None and self.settings.use_peers:
            _, partners = self.peers.match(
                ev.local_key, ev.local_port, ev.remote_key, ev.remote_port, ev.pair,
                self.settings.peer_tolerance_ns,
            )  # fmt: skip
            self._wake.append(partners)

    def add_claims(
        self, key: U64, owner: I32, start: I64, end: I64, exporter: I32, translating: U64, now: int
    ) -> None:
        """Ownership claims (already merged per claimant, or not: the ranges are the same) and
        addresses seen source-translating, learned without rows: a cluster node learns the
        region's ownership this way, from runs compacted where the rows were taken."""
        if self.settings.method != "heartbeat":
            return
        if len(translating):
            self.translating.add(translating, now)
        self.ranges.add(key, owner, start, end, exporter)

    def _learn(
        self, flows: FlowArrays, now: int | I64, ranges: npt.NDArray[np.bool_] | None = None
    ) -> FlowArrays | None:
        """Take the rows with a local workload as evidence; returns them."""
        seen: I64 = np.broadcast_to(np.asarray(now, np.int64), len(flows))
        if flows.translating.any():
            self.translating.add(flows.local_key[flows.translating], seen[flows.translating])
        known = flows.local_owner >= 0
        if not known.any():
            return None
        ev = flows.take(known)
        seen = seen[known]
        self.counters.evidence_rows += len(ev)
        if ranges is None:
            self.ranges.add(ev.local_key, ev.local_owner, ev.start, ev.end, ev.exporter)
        else:
            r = ranges[known]
            self.ranges.add(
                ev.local_key[r], ev.local_owner[r], ev.start[r], ev.end[r], ev.exporter[r]
            )
        if self.settings.use_peers:
            conn = ~ev.listening  # a listener is no end of any connection
            self.peers.add(
                ev.local_key[conn], ev.local_port[conn], ev.remote_key[conn],
                ev.remote_port[conn], ev.pair[conn], ev.local_owner[conn], seen[conn], ev.row[conn],
                ev.exporter[conn],
            )  # fmt: skip
        return ev

    def add_events(
        self, key: U64, owner: I32, assign: npt.NDArray[np.bool_], time: I64, received: I64
    ) -> None:
        self.counters.events_in += len(key)
        self.events.add(key, owner, assign, time, received)

    def memory(self) -> dict[str, int]:
        """Bytes held by the engine's state (numpy buffers; excludes Python overhead)."""
        return {
            "ownership_bytes": self.ranges.nbytes,
            "peer_bytes": self.peers.nbytes,
            "event_bytes": self.events.nbytes,
            "translating_bytes": self.translating.nbytes,
            "waiting_bytes": self._pending.nbytes,
        }

    @property
    def pending(self) -> int:
        return len(self._pending) + sum(len(f) for f in self._new)

    # -- decisions ---------------------------------------------------------------------
    def tick(self, now: int) -> Decisions:
        """Decide every flow that can be decided at collector time `now`."""
        parts, self._new = self._new, []
        if self.settings.method == "event":
            new = FlowArrays.concat(parts) if parts else FlowArrays.empty()
            heard = self._listening(new, now)
            if len(heard):
                new = new.take(~new.listening)
            return Decisions.concat([heard, self._decide_baseline(new, now)])
        self._maybe_evict(now)

        # Flows whose wait is over are decided now, with everything known by now; the new
        # flows follow them in one array (one copy: the records are wide).
        retry = FlowArrays(self._pending.take_due(now))
        cand = FlowArrays.concat([retry, *parts])
        cand.rec["deadline"][len(retry) :] = cand.received[len(retry) :] + self.settings.max_wait_ns
        heard = self._listening(cand, now)  # only new flows can be listeners' rows
        if len(heard):
            cand = cand.take(~cand.listening)
        decisions, still, partners = self._decide(cand, now)
        self.counters.waited_flows += int(np.count_nonzero(still[len(retry) :]))
        self._pending.add(records.take(cand.rec, still))
        # Waiting flows whose other end's row just arrived are decided now too.
        if self._wake:
            partners = np.concatenate([partners, *self._wake])
            self._wake = []
        woke = FlowArrays(self._pending.take_rows(partners))
        self.counters.retries += len(retry) + len(woke)
        if len(woke) == 0:
            return Decisions.concat([heard, decisions])
        more, still, _ = self._decide(woke, now)
        self._pending.add(records.take(woke.rec, still))
        return Decisions.concat([heard, decisions, more])

    @staticmethod
    def _listening(c: FlowArrays, now: int) -> Decisions:
        """Listeners' rows handed back at once: their local side is all they say (learnt on
        arrival), and they name no remote side. Not counted among decisions."""
        idx = np.flatnonzero(c.listening)
        n = len(idx)
        return Decisions(
            row=c.row[idx], owner=np.full(n, -1, np.int32),
            source=np.full(n, UNATTRIBUTED, np.int8), reason=np.zeros(n, np.int8),
            via=np.zeros(n, np.int8), decided=np.full(n, now, np.int64),
            waited=now - c.received[idx],
        )  # fmt: skip

    def _decide(self, c: FlowArrays, now: int) -> tuple[Decisions, npt.NDArray[np.bool_], I64]:
        """Decisions for the flows that can be decided now, the mask of those that wait, and
        the row handles of the other ends found (some of them may be waiting).

        Updates the waiting flows' deadline and conflict fields in place.
        """
        s = self.settings
        g = s.guard_ns
        n = len(c)
        via_peer, partners = self.peers.match(
            c.local_key, c.local_port, c.remote_key, c.remote_port, c.pair, s.peer_tolerance_ns
        )
        via_ranges = self.ranges.owner_over(c.remote_key, c.start - g, c.start + g)
        # A gateway's heartbeat is not evidence for the connections it translates.
        nat_source = self.translating.contains(c.remote_key)
        via_ranges[nat_source] = own.NOT_COVERED
        owner, via, conflict = verdict.heartbeat_verdicts(via_peer, via_ranges, c.conflict)
        c.rec["conflict"] = conflict
        heartbeat = owner >= 0
        expired, deadline, extended = verdict.wait_verdicts(
            c.deadline, now, c.start, g, s.event_lag_ns, s.use_events, ~heartbeat
        )
        c.rec["deadline"] = deadline  # a flow waiting for the feed's watermark waits on
        self.counters.waited_for_events += int(np.count_nonzero(extended))
        source = np.where(heartbeat, HEARTBEAT, UNATTRIBUTED).astype(np.int8)
        reason = np.zeros(n, np.int8)

        if expired.any():
            idx = np.flatnonzero(expired)
            ev_owner = np.full(len(idx), UNKNOWN, np.int32)
            agrees = np.ones(len(idx), bool)
            if s.use_events:
                ev_owner, r_start, r_end = self.events.safe_owner(
                    c.remote_key[idx], c.start[idx], guard_ns=g, now=now, lag_ns=s.event_lag_ns
                )
                ev_owner[nat_source[idx]] = UNKNOWN  # nor is the control plane's owner
                if (ev_owner >= 0).any():
                    # Agents' heartbeats inside the event's range must not name anyone else.
                    n_seg, o_min, o_max = self.ranges.owners_within(
                        c.remote_key[idx], r_start - g, r_end + g
                    )
                    agrees = (n_seg == 0) | ((o_min == ev_owner) & (o_max == ev_owner))
            owner[idx], source[idx], reason[idx] = verdict.fallback_verdicts(
                ev_owner, agrees, conflict[idx]
            )

        done = heartbeat | expired
        out = Decisions(
            row=c.row[done],
            owner=owner[done],
            source=source[done],
            reason=reason[done],
            via=via[done],
            decided=np.full(int(np.count_nonzero(done)), now, np.int64),
            waited=now - c.received[done],
        )
        self._count(out)
        return out, ~done, partners

    def _decide_baseline(self, c: FlowArrays, now: int) -> Decisions:
        owner = self.events.owner_now(c.remote_key)
        has = owner >= 0
        source = np.where(has, EVENT, UNATTRIBUTED).astype(np.int8)
        reason = np.where(has, REASON_NONE, REASON_NO_EVIDENCE).astype(np.int8)
        out = Decisions(
            row=c.row, owner=owner, source=source, reason=reason,
            via=np.zeros(len(c), np.int8), decided=np.full(len(c), now, np.int64),
            waited=now - c.received,
        )  # fmt: skip
        self._count(out)
        return out

    def next_deadline(self) -> int | None:
        """The earliest collector time at which a waiting flow's wait runs out."""
        return self._pending.next_deadline()

    def run_until(self, now: int, step_ns: int = SECOND) -> list[Decisions]:
        """Offline: tick through the quiet time before `now` wherever a wait runs out.

        Ticks fall on the `step_ns` grid (the end of the step in which a deadline falls),
        as a live collector ticking every step would decide them.
        """
        out: list[Decisions] = []
        while (due := self.next_deadline()) is not None and due < now:
            out.append(self.tick(min((due // step_ns + 1) * step_ns - 1, now - 1)))
        return out

    def drain(self, step_ns: int = SECOND) -> list[Decisions]:
        """Offline end of input: let the clock run until every waiting flow is decided."""
        out: list[Decisions] = []
        if self._new:
            out.append(self.tick(int(np.concatenate([f.received for f in self._new]).max())))
        out.extend(self.run_until(np.iinfo(np.int64).max, step_ns))
        return out

    def _count(self, d: Decisions) -> None:
        c = self.counters
        c.decided["heartbeat"] += int(np.count_nonzero(d.source == HEARTBEAT))
        c.decided["event"] += int(np.count_nonzero(d.source == EVENT))
        c.via_peer += int(np.count_nonzero(d.via == VIA_PEER))
        c.via_ranges += int(np.count_nonzero(d.via == VIA_RANGES))
        un = d.reason[d.source == UNATTRIBUTED]
        for code in np.unique(un):
            name = REASONS[int(code)]
            c.unattributed[name] = c.unattributed.get(name, 0) + int(np.count_nonzero(un == code))

    def _maybe_evict(self, now: int) -> None:
        period = max(self.settings.retention_ns // 10, SECOND)
        if self._next_evict is None:
            self._next_evict = now + period
        if now >= self._next_evict:
            horizon = now - self.settings.retention_ns
            self.counters.evicted_segments += self.ranges.evict(horizon)
            if self.settings.method == "heartbeat":  # the baseline reads every event it got
                self.counters.evicted_events += self.events.forget_before(horizon)
            self.peers.evict(now)
            self.translating.evict(horizon)
            self._next_evict = now + period

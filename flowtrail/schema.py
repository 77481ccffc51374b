"""The interchange contract's tables, defined once (docs/contract.md, version 6).

Every other module derives its Arrow schemas, validation and documentation from these
definitions, so a column is named, typed and explained in exactly one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import pyarrow as pa

# Re-exported: the value sets live where the command line can read them without Arrow.
from flowtrail.vocabulary import ACTIONS as ACTIONS
from flowtrail.vocabulary import ATTEMPTS as ATTEMPTS
from flowtrail.vocabulary import CONNECTED as CONNECTED
from flowtrail.vocabulary import DIRECTIONS as DIRECTIONS
from flowtrail.vocabulary import OUTCOMES as OUTCOMES
from flowtrail.vocabulary import SOURCES as SOURCES
from flowtrail.vocabulary import STATES as STATES

CONTRACT_VERSION = 6


class Kind(Enum):
    """How a column's values are checked beyond their Arrow type."""

    PLAIN = "plain"
    IP = "ip"  # canonical IPv4 / IPv6 text
    CIDR = "cidr"  # canonical-enough prefix text (parsed strictly)
    PORT = "port"  # 0..65535
    TIME = "time"  # ns since epoch, >= 0
    COUNT = "count"  # >= 0
    ENUM = "enum"  # one of `choices`


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    required: bool
    meaning: str
    kind: Kind = Kind.PLAIN
    choices: tuple[str, ...] = ()

    @property
    def field(self) -> pa.Field:
        return pa.field(self.name, self.type, nullable=True)


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    # (earlier, later) column pairs: a row's later value may not be below its earlier one.
    ordered: tuple[tuple[str, str], ...] = ()

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([c.field for c in self.columns])

    @property
    def required(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.required)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


S, I32, I64, B = pa.string(), pa.int32(), pa.int64(), pa.bool_()

# Where an address is owned (docs/attribution.md, "Address scopes"): on this host only, or in
# the row's network. flowtrail/engine/scopes.py applies it.
ADDRESS_SCOPES = ("host", "network")
# Contract version 4: a flows row with this outcome is no connection but a heartbeat: its
# local_workload listened on local_ip:local_port over [start_ns, end_ns]. The collector learns
# ownership from it and writes it nowhere (docs/contract.md, "Listening sockets").
LISTENING = "listening"
FLOW_OUTCOMES = (*OUTCOMES, LISTENING)

FLOWS = Table(
    "flows",
    (
        Column("flow_id", S, True, "unique per connection per exporter; snapshots share it"),
        Column("exporter", S, True, "the host or agent that captured it"),
        Column("region", S, False, "the exporter's region (default: the collector's)"),
        Column("local_ip", S, True, "this end of the connection", Kind.IP),
        Column("local_port", I32, True, "this end's port", Kind.PORT),
        Column("remote_ip", S, True, "the other end as this kernel saw it", Kind.IP),
        Column("remote_port", I32, True, "the other end's port", Kind.PORT),
        Column("nat_remote_ip", S, False, "real other end after DNAT, or null", Kind.IP),
        Column("nat_remote_port", I32, False, "real other end's port after DNAT", Kind.PORT),
        Column(
            "local_translating",
            B,
            False,
            "true: this host source-translates others' connections to local_ip (SNAT or "
            "masquerade), so the row names local_ip's owner for this connection only",
        ),
        Column(
            "network",
            S,
            False,
            "the address space of this exporter's routable addresses; null = the default one",
        ),
        Column(
            "local_scope",
            S,
            False,
            "host: local_ip is on a host-local network (owned per exporter); network or null: "
            "by the address (loopback, link-local: host)",
            Kind.ENUM,
            ADDRESS_SCOPES,
        ),
        Column(
            "remote_scope",
            S,
            False,
            "the same for the (NAT-resolved) remote address",
            Kind.ENUM,
            ADDRESS_SCOPES,
        ),
        Column("direction", S, True, "outbound or inbound", Kind.ENUM, DIRECTIONS),
        Column("start_ns", I64, True, "connection start", Kind.TIME),
        Column("end_ns", I64, True, "close, or snapshot time for active rows", Kind.TIME),
        Column("state", S, True, "closed, or active for an interim snapshot", Kind.ENUM, STATES),
        Column("bytes_sent", I64, True, "payload bytes acked by the peer", Kind.COUNT),
        Column("bytes_received", I64, True, "payload bytes received", Kind.COUNT),
        Column("segs_sent", I64, False, "segments sent", Kind.COUNT),
        Column("segs_received", I64, False, "segments received", Kind.COUNT),
        Column("retransmits", I64, False, "retransmitted segments", Kind.COUNT),
        Column("srtt_us", I64, False, "smoothed RTT, microseconds", Kind.COUNT),
        Column("local_workload", S, False, "who owned local_ip here; null = unknown"),
        Column(
            "local_pod",
            S,
            False,
            "the Kubernetes pod whose socket this is (local_workload names its owner); "
            "null outside pods",
        ),
        Column(
            "received_ns", I64, False, "collector receive time (default end_ns + 60 s)", Kind.TIME
        ),
        Column(
            "established_ns",
            I64,
            False,
            "when this end reached ESTABLISHED; null: never/unknown",
            Kind.TIME,
        ),
        Column(
            "outcome",
            S,
            False,
            "how it ended; null = established; listening: a listener's heartbeat",
            Kind.ENUM,
            FLOW_OUTCOMES,
        ),
    ),
    ordered=(("start_ns", "end_ns"), ("start_ns", "established_ns")),
)
# The flows' text columns whose values repeat (names, addresses, enums; not flow_id): what a
# reader may keep dictionary-encoded, as Parquet stores them.
FLOWS_REPEATING_TEXT = tuple(c.name for c in FLOWS.columns if c.type == S and c.name != "flow_id")

EVENTS = Table(
    "events",
    (
        Column("ip", S, True, "the address", Kind.IP),
        Column("workload", S, True, "who it was assigned to or released from"),
        Column("action", S, True, "assign or unassign", Kind.ENUM, ACTIONS),
        Column("time_ns", I64, True, "when the change happened", Kind.TIME),
        Column("received_ns", I64, False, "when the collector learned of it", Kind.TIME),
    ),
)

REGIONS = Table(
    "regions",
    (
        Column("cidr", S, True, "an IPv4 or IPv6 prefix", Kind.CIDR),
        Column("region", S, True, "the region attributing addresses in it"),
    ),
)

TRUTH = Table(
    "truth",
    (
        Column("ip", S, True, "the address", Kind.IP),
        Column("workload", S, True, "its owner"),
        Column("from_ns", I64, True, "ownership start", Kind.TIME),
        Column("to_ns", I64, False, "ownership end; null while still owned", Kind.TIME),
        Column(
            "exporter",
            S,
            False,
            "owned on this exporter only (a host-local address); null = wherever seen",
        ),
        Column(
            "port",
            I32,
            False,
            "owned for connections with this remote port only (a NAT gateway's translated "
            "port); null = every port",
            Kind.PORT,
        ),
    ),
)

# Contract version 6: DNS answers local workloads received, each a time-ranged claim that a
# name stood for an address as that workload saw it (docs/dns.md). One row per address record
# at the end of a query's CNAME chain.
DNS_ANSWERS = Table(
    "dns_answers",
    (
        Column("exporter", S, True, "the host or agent that saw the answer"),
        Column("region", S, False, "the exporter's region (default: the collector's)"),
        Column("observed_ns", I64, True, "when the answer reached the host", Kind.TIME),
        Column(
            "local_workload",
            S,
            False,
            "the workload that received it (named as flows name local_workload); null = the "
            "host itself or unknown",
        ),
        Column(
            "network",
            S,
            False,
            "the address space the answered address is in (as flows' network); null = default",
        ),
        Column("query_name", S, True, "the name asked for: lower case, no trailing dot"),
        Column(
            "cname_chain",
            S,
            False,
            "the CNAME targets from query_name to the address record's owner, in order, "
            "joined by spaces; null when the answer named query_name directly",
        ),
        Column("address", S, True, "an A or AAAA record's address", Kind.IP),
        Column(
            "ttl_s",
            I32,
            True,
            "seconds the answer may be used: the smallest TTL along its chain",
            Kind.COUNT,
        ),
    ),
)

ATTRIBUTION_COLUMNS = (
    Column("remote_workload", S, False, "owner of the (NAT-resolved) remote address at start_ns"),
    Column("remote_source", S, True, "heartbeat, event or unattributed", Kind.ENUM, SOURCES),
    Column("attributed_ns", I64, True, "the collector's clock when it decided", Kind.TIME),
)

# Evidence for the engine only: a store keeps it among a row's extra columns, so the stored
# layout (and every store written before it) stays as it was.
ENGINE_ONLY = ("local_translating", "network", "local_scope", "remote_scope")
# Contract version 5: facts about a row that pass through attribution untouched; a store keeps
# them among the extra columns too, so its layout stays as it was.
PASSED_THROUGH = ("local_pod",)
# No order rule here: attributed rows are judged or stored as given; flows are checked where
# they come in (attribute, the collector, a cluster node).
ATTRIBUTED = Table(
    "attributed",
    tuple(c for c in FLOWS.columns if c.name not in (*ENGINE_ONLY, *PASSED_THROUGH))
    + ATTRIBUTION_COLUMNS,
)

# Contract version 2: why a row is unattributed, written beside the attribution columns.
# Optional for readers (files of version 1 lack it), so it is not one of ATTRIBUTED's
# columns: a store keeps it with the other columns beyond ATTRIBUTED (in `extra`).
UNATTRIBUTED_REASONS = ("no_evidence", "conflicting_claims", "event_feed_disagrees_with_heartbeats")
UNATTRIBUTED_REASON = Column(
    "unattributed_reason",
    S,
    False,
    "why remote_workload is null; null when attributed",
    Kind.ENUM,
    UNATTRIBUTED_REASONS,
)

# Contract version 6: the name the flow's workload resolved for the address it connected to
# (docs/dns.md), beside remote_workload, never in its place. Optional for readers, kept with
# the columns beyond ATTRIBUTED (in `extra`), as unattributed_reason is.
REMOTE_DNS = Column(
    "remote_dns",
    S,
    False,
    "the query name(s) of the DNS answers this flow's workload received for remote_ip, "
    "valid at start_ns (several: sorted, joined by ','); null = none",
)

TABLES: dict[str, Table] = {
    t.name: t for t in (FLOWS, EVENTS, REGIONS, TRUTH, ATTRIBUTED, DNS_ANSWERS)
}

DEFAULT_RECEIVE_DELAY_NS = 60 * 1_000_000_000

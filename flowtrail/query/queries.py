"""The questions people ask of attributed flows, as SQL over DuckDB returning Arrow tables.

Every query reads a relation with the store's columns (the store's `flows` table, or a view
over the Parquet lake) and a time window: a row is in [since, until) when its end_ns is (the
close, or an active snapshot's time).

Connections, not rows. Dependencies and top talkers first reduce rows to connections:
- interim `active` snapshots of one connection share a flow_id and carry cumulative counters,
  so each (exporter, flow_id) counts once, with its latest row in the window;
- a connection captured at both ends has a client (`outbound`) row and a server (`inbound`)
  row. They are paired by flowtrail/pairing.py's rule (the one the engine uses for peer rows:
  reversed 4-tuple, handshake completion within `pair_tolerance_ns`, one-to-one in time order
  within a 4-tuple) and counted once. The pair's names are merged with coalesce, which is safe
  because a name that is present is right (a null is "unknown", never a guess). Unpaired rows
  (one end not captured, or source NAT in between) count on their own;
- attempts that never established (outcome in schema.ATTEMPTS) are not connections: they are
  counted per edge in their own column, named as far as their target address had an owner.
  A row without an outcome is a connection.

Direction (docs/evaluation.md): an outbound row gives local_workload → remote_workload, an
inbound row remote_workload → local_workload; the caller is the side that connected.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail import pairing
from flowtrail.errors import InputError
from flowtrail.query.external import check_external_group, external_group_sql
from flowtrail.schema import ATTRIBUTED
from flowtrail.store.columns import query_arrow
from flowtrail.tables import invalid_ips
from flowtrail.vocabulary import CONNECTED, OUTCOMES, SOURCES
from flowtrail.vocabulary import DEPENDENCY_KEYS as DEPENDENCY_KEYS
from flowtrail.vocabulary import OUTCOME_GROUPS as OUTCOME_GROUPS
from flowtrail.vocabulary import TALKER_KEYS as TALKER_KEYS
from flowtrail.vocabulary import UNNAMED_SIDES as UNNAMED_SIDES

SECOND_NS = 1_000_000_000
DEFAULT_PAIR_TOLERANCE_NS = pairing.DEFAULT_TOLERANCE_NS
OUTCOME_SQL = "coalesce(outcome, 'established')"  # a row without one is a connection
# --outcome takes one outcome or one of these groups
MAX_NS = 2**63 - 1
MAX_OFFSET = 1_000_000  # paging deeper than this is a job for a narrower filter or window
MAX_BUCKETS = 500
UNRECORDED_REASON = "(not recorded)"
REASON_KEY = "unattributed_reason"  # an extra column a collector may add per unattributed row
# remote_dns (docs/dns.md): stored among the extra columns, as unattributed_reason is
REMOTE_DNS_SQL = "json_extract_string(extra, '$.remote_dns')"


def _domains_sql(names: str) -> str:
    """The registrable part of each of the comma-joined DNS names in `names`, taken as the
    last two labels (no public-suffix list: `a.b.co.uk` gives `co.uk`), distinct, sorted,
    comma-joined; null stays null."""
    return (
        f"array_to_string(list_sort(list_distinct(list_transform(string_split({names}, ','), "
        "lambda x: array_to_string(string_split(x, '.')[-2:], '.')))), ',')"
    )


@dataclass(frozen=True)
class Window:
    """[since_ns, until_ns): rows whose end_ns falls inside."""

    since_ns: int = 0
    until_ns: int = MAX_NS

    def __post_init__(self) -> None:
        if self.since_ns < 0:
            raise InputError(f"--since: {self.since_ns} ns is before the epoch")
        if self.until_ns <= self.since_ns:
            raise InputError(
                f"--since/--until: empty window (since {self.since_ns} ns is not before "
                f"until {self.until_ns} ns)"
            )

    def sql(self) -> str:
        return f"end_ns >= {int(self.since_ns)} AND end_ns < {int(self.until_ns)}"


def _sql_list(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


# The columns _ends_sql reads of a stored row.
_ROW_COLUMNS = ", ".join((
    "exporter", "flow_id", "end_ns", "state", "outcome", "direction", "established_ns",
    "start_ns", "local_workload", "remote_workload", "local_ip", "remote_ip", "local_port",
    "remote_port", "nat_remote_ip", "nat_remote_port", "bytes_sent", "bytes_received",
    "retransmits", "srtt_us",
))  # fmt: skip


def _latest_rows_sql(source: str, window: Window, dns: bool = False) -> str:
    """Each (exporter, flow_id)'s latest row in the window (of an active snapshot and the close
    at one time, the close), with the columns _ends_sql reads (and remote_dns with `dns`)."""
    # Only connections with several rows in the window are ranked: ranking every row makes
    # DuckDB sort the whole window with its payload, several times slower over 1M rows.
    columns = f"{_ROW_COLUMNS}, {REMOTE_DNS_SQL} AS remote_dns" if dns else _ROW_COLUMNS
    return f"""
        WITH r AS (SELECT {columns} FROM {source} WHERE {window.sql()}),
        several AS (
            SELECT exporter, flow_id FROM r GROUP BY exporter, flow_id HAVING count(*) > 1
        )
        SELECT * FROM r ANTI JOIN several USING (exporter, flow_id)
        UNION ALL
        SELECT * FROM (SELECT r.* FROM r SEMI JOIN several USING (exporter, flow_id))
        QUALIFY row_number() OVER (
            PARTITION BY exporter, flow_id ORDER BY end_ns DESC, (state = 'closed') DESC
        ) = 1
    """


def _ends_sql(source: str, window: Window, keys: bool = False, names: str | None = None) -> str:
    """One row per exporter's connection or attempt in the window, as its caller and callee see
    it (the client's view NAT-resolved): `side` 0 a client row, 1 a server row, 2 an attempt;
    `tuple_hash` of (caller ip:port, callee ip:port). `keys`: with the stored row's key
    (exporter, flow_id, row_end_ns, row_state), to find the row again. `names` ("name" or
    "domain"): with `caller_dns` and `callee_dns`, the remote side's DNS name(s) or domain(s)."""
    connected = f"{OUTCOME_SQL} IN {_sql_list(CONNECTED)}"
    key_columns = "exporter, flow_id, end_ns AS row_end_ns, state AS row_state," if keys else ""
    if names is not None:
        label = "remote_dns" if names == "name" else _domains_sql("remote_dns")
        key_columns += (
            f"CASE WHEN direction = 'inbound' THEN {label} END AS caller_dns, "
            f"CASE WHEN direction = 'outbound' THEN {label} END AS callee_dns,"
        )
    return f"""
    WITH w AS ({_latest_rows_sql(source, window, names is not None)}),
    e AS (
        SELECT {key_columns}
               CASE WHEN NOT ({connected}) THEN 2 WHEN direction = 'outbound' THEN 0 ELSE 1 END
                   AS side,
               {pairing.PAIR_TIME_SQL} AS pair_ns,
               CASE WHEN direction = 'outbound' THEN local_workload ELSE remote_workload END
                   AS caller,
               CASE WHEN direction = 'outbound' THEN remote_workload ELSE local_workload END
                   AS callee,
               CASE WHEN direction = 'outbound' THEN local_ip ELSE remote_ip END AS caller_ip,
               CASE WHEN direction = 'outbound' THEN local_port ELSE remote_port END
                   AS caller_port,
               CASE WHEN direction = 'outbound' THEN coalesce(nat_remote_ip, remote_ip)
                    ELSE local_ip END AS callee_ip,
               CASE WHEN direction = 'inbound' THEN local_port
                    WHEN nat_remote_ip IS NOT NULL THEN coalesce(nat_remote_port, remote_port)
                    ELSE remote_port END AS callee_port,
               CASE WHEN direction = 'outbound' THEN bytes_sent ELSE bytes_received END
                   AS to_callee,
               CASE WHEN direction = 'outbound' THEN bytes_received ELSE bytes_sent END
                   AS to_caller,
               retransmits, srtt_us
        FROM w
    )
    SELECT *, hash(caller_ip, caller_port, callee_ip, callee_port) AS tuple_hash FROM e"""


def _ends(
    con: duckdb.DuckDBPyConnection,
    source: str,
    window: Window,
    tolerance_ns: int,
    keys: bool = False,
    names: str | None = None,
) -> pa.Table:
    """The window's ends (see _ends_sql) with `rid` (row number) and `partner` (the rid of the
    server row a client row is paired with by flowtrail/pairing.py's rule, else -1)."""
    ends = query_arrow(con, _ends_sql(source, window, keys, names))
    side = np.asarray(ends.column("side").to_numpy(), np.int64)
    group = np.asarray(ends.column("tuple_hash").to_numpy(), np.uint64).view(np.int64)
    at = np.asarray(ends.column("pair_ns").fill_null(0).to_numpy(), np.int64)
    o_rows, i_rows = np.flatnonzero(side == 0), np.flatnonzero(side == 1)
    po, pi = pairing.pair_in_order(
        group[o_rows], at[o_rows], group[i_rows], at[i_rows], tolerance_ns
    )
    o_pair, i_pair = o_rows[po], i_rows[pi]
    same = _same_tuple(ends, o_pair, i_pair)  # two 4-tuples that share a hash never pair
    partner = np.full(ends.num_rows, -1, np.int64)
    partner[o_pair[same]] = i_pair[same]
    ends = ends.drop_columns(["pair_ns", "tuple_hash"])
    ends = ends.append_column("rid", pa.array(np.arange(ends.num_rows, dtype=np.int64)))
    return ends.append_column("partner", pa.array(partner))


def _same_tuple(
    ends: pa.Table, a: npt.NDArray[np.int64], b: npt.NDArray[np.int64]
) -> npt.NDArray[np.bool_]:
    """Per pair (rows a[k], b[k]): are their 4-tuples equal, field by field?"""
    same = np.ones(len(a), bool)
    for name in ("caller_ip", "caller_port", "callee_ip", "callee_port"):
        column = ends.column(name)
        equal = pc.equal(column.take(pa.array(a)), column.take(pa.array(b)))
        same &= np.asarray(pc.fill_null(equal, False).to_numpy(zero_copy_only=False), bool)
    return same


@contextmanager
def _connections(
    con: duckdb.DuckDBPyConnection,
    source: str,
    window: Window,
    tolerance_ns: int,
    keys: bool = False,
    names: str | None = None,
) -> Iterator[str]:
    """CTEs `c` (one row per connection) and `a` (attempts); see the module doc. With `names`
    ("name" or "domain"), both also hold `caller_dns` and `callee_dns` (_ends_sql).

    The window's ends are read and paired first, and registered on `con` under a name of their
    own for as long as the block runs.
    """
    if tolerance_ns < 0:
        raise InputError(f"pair tolerance {tolerance_ns} ns: must not be negative")
    name = f"_flowtrail_ends_{uuid.uuid4().hex}"
    con.register(name, _ends(con, source, window, tolerance_ns, keys, names))
    dns_a = ", caller_dns, callee_dns" if names is not None else ""
    dns_c = (
        "coalesce(o.caller_dns, i.caller_dns) AS caller_dns, "
        "coalesce(o.callee_dns, i.callee_dns) AS callee_dns,"
        if names is not None
        else ""
    )
    try:
        yield f"""
    o AS (SELECT * FROM {name} WHERE side = 0),
    i AS (SELECT * FROM {name} WHERE side = 1),
    a AS (SELECT caller, callee, caller_ip, callee_ip, rid{dns_a} FROM {name} WHERE side = 2),
    ends AS (SELECT * FROM {name}),
    c AS (
        SELECT o.rid AS client_rid, i.rid AS server_rid, {dns_c}
               coalesce(o.caller, i.caller) AS caller,
               coalesce(o.callee, i.callee) AS callee,
               coalesce(o.caller_ip, i.caller_ip) AS caller_ip,
               coalesce(o.callee_ip, i.callee_ip) AS callee_ip,
               coalesce(o.to_callee, i.to_callee) AS to_callee,
               coalesce(o.to_caller, i.to_caller) AS to_caller,
               coalesce(o.retransmits, 0) + coalesce(i.retransmits, 0) AS retransmits,
               coalesce(o.srtt_us, i.srtt_us) AS srtt_us,
               (o.rid IS NOT NULL AND i.rid IS NOT NULL) AS both_ends
        FROM o FULL OUTER JOIN i ON o.partner = i.rid
    )"""
    finally:
        con.unregister(name)


def dependencies(
    con: duckdb.DuckDBPyConnection,
    window: Window = Window(),
    *,
    source: str = "flows",
    workload: str | None = None,
    known_only: bool = False,
    group_external: bool = False,
    pair_tolerance_ns: int = DEFAULT_PAIR_TOLERANCE_NS,
    by: str = "workload",
) -> pa.Table:
    """Caller → callee edges: connections, bytes each way, retransmits, RTT p50/p99 (µs), and
    the attempts that never established (`failed_attempts`).

    A null caller or callee is a side nobody could name; `known_only` drops such edges,
    `workload` keeps the edges touching that workload. `group_external` splits the edges with
    an unnamed side by that side's address group (flowtrail/query/external.py), in the extra
    columns `caller_external` and `callee_external` (null for a named side). `by` "name" or
    "domain" also splits edges by the DNS name(s) (`caller_name`, `callee_name`) or their
    domains (`caller_domain`, `callee_domain`) of a side no workload owns (docs/dns.md): a side
    with a workload keeps it and no DNS column (ownership wins), and `known_only` counts a DNS
    name as a name.
    """
    if by not in DEPENDENCY_KEYS:
        raise InputError(f"--by {by!r}: choose {' or '.join(DEPENDENCY_KEYS)}")
    names = None if by == "workload" else by
    where, params = ["TRUE"], []
    if known_only:
        if names is None:
            where.append("caller IS NOT NULL AND callee IS NOT NULL")
        else:
            where.append(
                "coalesce(caller, caller_dns) IS NOT NULL AND coalesce(callee, callee_dns) "
                "IS NOT NULL"
            )
    if workload is not None:
        where.append("(caller = ? OR callee = ?)")
        params += [workload, workload]
    ext_columns = ext_names = ext_order = ""
    if group_external:
        ext_columns = ", ".join(
            f"CASE WHEN {side} IS NULL THEN {external_group_sql(side + '_ip')} END"
            f" AS {side}_external"
            for side in ("caller", "callee")
        )
        ext_names = "caller_external, callee_external,"
        ext_order = ", caller_external NULLS LAST, callee_external NULLS LAST"
    else:
        ext_columns = "NULL AS caller_external, NULL AS callee_external"
    # Ownership wins: a side some workload owns is named by it alone.
    dns = (
        ", CASE WHEN caller IS NULL THEN caller_dns END AS caller_dns, "
        "CASE WHEN callee IS NULL THEN callee_dns END AS callee_dns"
        if names
        else ""
    )
    out = f", caller_dns AS caller_{by}, callee_dns AS callee_{by}" if names else ""
    dns_order = f", caller_{by} NULLS LAST, callee_{by} NULLS LAST" if names else ""
    with _connections(con, source, window, pair_tolerance_ns, names=names) as ctes:
        sql = f"""
        WITH {ctes},
        e AS (
            SELECT caller, callee, {ext_columns}, FALSE AS attempt, both_ends, to_callee,
                   to_caller, retransmits, srtt_us{dns} FROM c
            UNION ALL
            SELECT caller, callee, {ext_columns}, TRUE, FALSE, 0, 0, 0, NULL{dns} FROM a
        )
        SELECT caller, callee{out}, {ext_names}
               count(*) FILTER (WHERE NOT attempt)::BIGINT AS flows,
               sum(both_ends::INTEGER)::BIGINT AS seen_both_ends,
               sum(to_callee)::BIGINT AS bytes_to_callee,
               sum(to_caller)::BIGINT AS bytes_to_caller,
               sum(retransmits)::BIGINT AS retransmits,
               quantile_cont(srtt_us, 0.5) AS rtt_p50_us,
               quantile_cont(srtt_us, 0.99) AS rtt_p99_us,
               count(*) FILTER (WHERE attempt)::BIGINT AS failed_attempts
        FROM e WHERE {" AND ".join(where)}
        GROUP BY ALL
        ORDER BY bytes_to_callee + bytes_to_caller DESC, flows DESC, failed_attempts DESC,
                 caller NULLS LAST, callee NULLS LAST {ext_order}{dns_order}
        """
        return query_arrow(con, sql, params)


def top_talkers(
    con: duckdb.DuckDBPyConnection,
    window: Window = Window(),
    *,
    source: str = "flows",
    by: str = "workload",
    limit: int = 10,
    pair_tolerance_ns: int = DEFAULT_PAIR_TOLERANCE_NS,
) -> pa.Table:
    """Who moves the most bytes (sent + received over its connections), by workload or IP.

    Attempts that never established move no bytes and are not counted here.
    """
    if by not in TALKER_KEYS:
        raise InputError(f"--by {by!r}: choose {' or '.join(TALKER_KEYS)}")
    _check_limit(limit)
    key_caller, key_callee = (
        ("caller", "callee") if by == "workload" else ("caller_ip", "callee_ip")
    )
    with _connections(con, source, window, pair_tolerance_ns) as ctes:
        sql = f"""
        WITH {ctes},
        e AS (
            SELECT {key_caller} AS talker, to_callee AS sent, to_caller AS received FROM c
            UNION ALL
            SELECT {key_callee} AS talker, to_caller AS sent, to_callee AS received FROM c
        )
        SELECT talker AS {by}, count(*)::BIGINT AS flows,
               sum(sent)::BIGINT AS bytes_sent, sum(received)::BIGINT AS bytes_received,
               (sum(sent) + sum(received))::BIGINT AS bytes_total
        FROM e GROUP BY talker
        ORDER BY bytes_total DESC, flows DESC, talker NULLS LAST
        LIMIT {int(limit)}
        """
        return query_arrow(con, sql)


@dataclass(frozen=True)
class FlowFilter:
    """Row filters for `flows`; every given one must hold."""

    workload: str | None = None  # local or remote workload
    ip: str | None = None  # local, remote or NAT-resolved remote address
    port: int | None = None  # local, remote or NAT-resolved remote port
    remote_source: str | None = None
    exporter: str | None = None
    outcome: str | None = None  # one of schema.OUTCOMES, or a group of OUTCOME_GROUPS
    # One dependency edge, as dependencies() counts it: caller/callee name its sides, `unnamed`
    # the side(s) without a name. Rows: those of the connections and attempts on that edge.
    caller: str | None = None
    callee: str | None = None
    unnamed: str | None = None  # one of UNNAMED_SIDES
    # An unnamed side's address group (flowtrail/query/external.py): that side has no name
    # and its address is in the group, as dependencies(group_external=True) splits edges.
    caller_external: str | None = None
    callee_external: str | None = None
    name: str | None = None  # one of the remote side's DNS names (remote_dns) equals this

    def __post_init__(self) -> None:
        if self.ip is not None and invalid_ips(pa.array([self.ip])):
            raise InputError(f"--ip {self.ip!r}: not a canonical IPv4/IPv6 address")
        if self.port is not None and not 0 <= self.port <= 65535:
            raise InputError(f"--port {self.port}: must be 0..65535")
        if self.remote_source is not None and self.remote_source not in SOURCES:
            raise InputError(f"--source {self.remote_source!r}: choose {', '.join(SOURCES)}")
        if self.outcome is not None and self.outcome not in (*OUTCOMES, *OUTCOME_GROUPS):
            choices = ", ".join((*OUTCOMES, *OUTCOME_GROUPS))
            raise InputError(f"--outcome {self.outcome!r}: choose {choices}")
        if self.unnamed is not None and self.unnamed not in UNNAMED_SIDES:
            raise InputError(f"--unnamed {self.unnamed!r}: choose {', '.join(UNNAMED_SIDES)}")
        for side, name, group in (
            ("caller", self.caller, self.caller_external),
            ("callee", self.callee, self.callee_external),
        ):
            if name is not None and self.unnamed in (side, "both"):
                raise InputError(f"--{side} {name!r} and --unnamed {self.unnamed}: choose one")
            if group is not None:
                check_external_group(group, f"--{side}-external")
                if name is not None:
                    raise InputError(
                        f"--{side} {name!r} and --{side}-external {group!r}: a side with a "
                        "name has no external group; choose one"
                    )

    def sql(self) -> tuple[str, list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        if self.workload is not None:
            where.append("(local_workload = ? OR remote_workload = ?)")
            params += [self.workload] * 2
        if self.ip is not None:
            where.append("(local_ip = ? OR remote_ip = ? OR nat_remote_ip = ?)")
            params += [self.ip] * 3
        if self.port is not None:
            where.append("(local_port = ? OR remote_port = ? OR nat_remote_port = ?)")
            params += [self.port] * 3
        if self.remote_source is not None:
            where.append("remote_source = ?")
            params.append(self.remote_source)
        if self.exporter is not None:
            where.append("exporter = ?")
            params.append(self.exporter)
        if self.name is not None:
            where.append(f"list_contains(string_split({REMOTE_DNS_SQL}, ','), ?)")
            params.append(self.name)
        if self.outcome is not None:
            values = OUTCOME_GROUPS.get(self.outcome, (self.outcome,))
            where.append(f"{OUTCOME_SQL} IN ({', '.join('?' for _ in values)})")
            params += list(values)
        return (" AND ".join(where) or "TRUE"), params

    @property
    def edge(self) -> bool:
        return any(
            v is not None
            for v in (
                self.caller, self.callee, self.unnamed, self.caller_external, self.callee_external
            )
        )  # fmt: skip

    def edge_sql(self) -> tuple[str, list[Any]]:
        """The edge's condition on a relation with `caller` and `callee` columns."""
        where: list[str] = []
        params: list[Any] = []
        for side, name, group in (
            ("caller", self.caller, self.caller_external),
            ("callee", self.callee, self.callee_external),
        ):
            if name is not None:
                where.append(f"{side} = ?")
                params.append(name)
            elif group is not None:
                where.append(f"{side} IS NULL AND {external_group_sql(side + '_ip')} = ?")
                params.append(group)
            elif self.unnamed in (side, "both"):
                where.append(f"{side} IS NULL")
        return (" AND ".join(where) or "TRUE"), params


def flows(
    con: duckdb.DuckDBPyConnection,
    window: Window = Window(),
    *,
    source: str = "flows",
    where: FlowFilter = FlowFilter(),
    limit: int = 100,
    offset: int = 0,
) -> pa.Table:
    """Attributed flow rows (contract columns), newest end_ns first; `offset` rows skipped
    (a page further on: give a fixed `until` so that new rows do not shift the pages).

    With an edge (caller/callee/unnamed), the rows are those of the connections and attempts
    that dependencies() counts on it: each one's latest row in the window from every end that
    captured it, so a connection seen at both ends lists two rows."""
    _check_limit(limit)
    if not 0 <= offset <= MAX_OFFSET:
        raise InputError(f"--offset {offset}: must be 0..{MAX_OFFSET}")
    cond, params = where.sql()
    columns = ", ".join(f'"{n}"' for n in ATTRIBUTED.names) + f", {REMOTE_DNS_SQL} AS remote_dns"
    page = f"ORDER BY end_ns DESC, exporter, flow_id, state LIMIT {int(limit)} OFFSET {int(offset)}"
    if not where.edge:
        # The page's oldest end_ns first (one column read), then the page with that floor:
        # the floor lets the scan skip every row group (DuckDB table or Parquet segment) older
        # than the page by its end_ns statistics, instead of reading every column of the
        # window. Rows tied at the floor are all kept, so the page is the same.
        floor = con.execute(
            f"SELECT min(end_ns) FROM (SELECT end_ns FROM {source} WHERE {window.sql()} "
            f"AND {cond} ORDER BY end_ns DESC LIMIT {int(limit) + int(offset)})",
            params,
        ).fetchall()[0][0]
        newer = f"AND end_ns >= {int(floor)}" if floor is not None else ""
        sql = f"SELECT {columns} FROM {source} WHERE {window.sql()} AND {cond} {newer} {page}"
        return query_arrow(con, sql, params)
    on_edge, edge_params = where.edge_sql()
    with _connections(con, source, window, DEFAULT_PAIR_TOLERANCE_NS, keys=True) as ctes:
        sql = f"""
        WITH {ctes},
        members AS (
            SELECT client_rid AS rid FROM c WHERE {on_edge} AND client_rid IS NOT NULL
            UNION ALL SELECT server_rid FROM c WHERE {on_edge} AND server_rid IS NOT NULL
            UNION ALL SELECT rid FROM a WHERE {on_edge}
        )
        SELECT {columns} FROM {source}
        WHERE {window.sql()} AND {cond} AND (exporter, flow_id, end_ns, state) IN (
            SELECT (exporter, flow_id, row_end_ns, row_state) FROM ends
            WHERE rid IN (SELECT rid FROM members)
        )
        {page}
        """
        return query_arrow(con, sql, edge_params * 3 + params)


def attribution_health(
    con: duckdb.DuckDBPyConnection, window: Window = Window(), *, source: str = "flows"
) -> pa.Table:
    """How attribution went, one line per group: rows, share of all rows, wait p50/p99 (ms).

    Groups: all, attributed, each remote_source, and unattributed rows by reason (from an
    `unattributed_reason` extra column when the collector recorded one). Wait is
    attributed_ns - received_ns: how long a row waited for heartbeats before its decision.
    Every row counts, interim snapshots included: attribution is decided per row.
    """
    sql = f"""
    WITH w AS (
        SELECT remote_workload, remote_source,
               (attributed_ns - received_ns) / 1e6 AS wait_ms,
               coalesce(json_extract_string(extra, '$.{REASON_KEY}'), '{UNRECORDED_REASON}')
                   AS reason
        FROM {source} WHERE {window.sql()}
    ),
    total AS (SELECT count(*) AS n FROM w),
    g AS (
        SELECT 0 AS ord, 'all' AS grp, * FROM w
        UNION ALL SELECT 1, 'attributed', * FROM w WHERE remote_workload IS NOT NULL
        UNION ALL SELECT 2, 'source=' || remote_source, * FROM w
        UNION ALL SELECT 3, 'unattributed reason=' || reason, * FROM w
            WHERE remote_workload IS NULL
    )
    SELECT grp AS "group", count(*)::BIGINT AS rows,
           round(100.0 * count(*) / nullif(any_value(total.n), 0), 3) AS pct,
           quantile_cont(wait_ms, 0.5) AS wait_p50_ms,
           quantile_cont(wait_ms, 0.99) AS wait_p99_ms
    FROM g, total GROUP BY ord, grp ORDER BY ord, rows DESC, grp
    """
    table = query_arrow(con, sql)
    if table.num_rows == 0:  # an empty window still answers: zero rows in all
        table = pa.table(
            {
                "group": ["all"],
                "rows": pa.array([0], pa.int64()),
                "pct": pa.array([None], pa.float64()),
                "wait_p50_ms": pa.array([None], pa.float64()),
                "wait_p99_ms": pa.array([None], pa.float64()),
            }
        )
    return table


def health_series(
    con: duckdb.DuckDBPyConnection,
    window: Window = Window(),
    *,
    source: str = "flows",
    buckets: int = 60,
    now_ns: int | None = None,
) -> pa.Table:
    """attribution_health over time: the window cut into `buckets` equal spans, one line per
    span (an empty one has 0 rows and null waits). An open start is the oldest row's end; an
    open end is `now_ns` (or the newest row's, if later or no now is given), so a source that
    went quiet shows as empty spans at the end.

    Columns: `start_ns`, `end_ns` (the span), `rows`, `attributed`, `heartbeat`, `event`,
    `unattributed` (rows by remote_source), `wait_p50_ms`, `wait_p99_ms`.
    """
    if not 1 <= buckets <= MAX_BUCKETS:
        raise InputError(f"--buckets {buckets}: must be 1..{MAX_BUCKETS}")
    lo, hi = window.since_ns, window.until_ns
    if lo == 0 or hi == MAX_NS:
        row = query_arrow(
            con, f"SELECT min(end_ns) AS lo, max(end_ns) AS hi FROM {source} WHERE {window.sql()}"
        ).to_pylist()[0]
        if row["lo"] is None:
            return _empty_series()
        lo = lo if lo else int(row["lo"])
        hi = hi if hi != MAX_NS else max(int(row["hi"]) + 1, now_ns or 0)
    width = max(1, -(-(hi - lo) // buckets))  # ceiling: the last span reaches `hi`
    spans = -(-(hi - lo) // width)
    sql = f"""
    WITH agg AS (
        SELECT b, count(*)::BIGINT AS rows,
               count(remote_workload)::BIGINT AS attributed,
               count(*) FILTER (WHERE remote_source = 'heartbeat')::BIGINT AS heartbeat,
               count(*) FILTER (WHERE remote_source = 'event')::BIGINT AS event,
               count(*) FILTER (WHERE remote_source = 'unattributed')::BIGINT AS unattributed,
               quantile_cont((attributed_ns - received_ns) / 1e6, 0.5) AS wait_p50_ms,
               quantile_cont((attributed_ns - received_ns) / 1e6, 0.99) AS wait_p99_ms
        FROM (SELECT *, (end_ns - {lo}) // {width} AS b FROM {source}
              WHERE end_ns >= {lo} AND end_ns < {hi})
        GROUP BY b
    )
    SELECT {lo} + s.b * {width} AS start_ns, least({lo} + (s.b + 1) * {width}, {hi}) AS end_ns,
           coalesce(rows, 0)::BIGINT AS rows, coalesce(attributed, 0)::BIGINT AS attributed,
           coalesce(heartbeat, 0)::BIGINT AS heartbeat, coalesce(event, 0)::BIGINT AS event,
           coalesce(unattributed, 0)::BIGINT AS unattributed, wait_p50_ms, wait_p99_ms
    FROM (SELECT range AS b FROM range({spans})) s LEFT JOIN agg ON agg.b = s.b
    ORDER BY s.b
    """
    return query_arrow(con, sql)


def _empty_series() -> pa.Table:
    ints = ("start_ns", "end_ns", "rows", "attributed", "heartbeat", "event", "unattributed")
    cols: dict[str, pa.Array] = {n: pa.array([], pa.int64()) for n in ints}
    cols.update({n: pa.array([], pa.float64()) for n in ("wait_p50_ms", "wait_p99_ms")})
    return pa.table(cols)


def exporters(
    con: duckdb.DuckDBPyConnection, window: Window = Window(), *, source: str = "flows"
) -> pa.Table:
    """The agents (exporters) whose rows are in the window: rows, the share attributed, and
    their newest row's end and receive times (`last_received_ns`: the collector took its last
    batch then), most recently heard from first."""
    sql = f"""
    SELECT exporter, count(*)::BIGINT AS rows,
           round(100.0 * count(remote_workload) / count(*), 3) AS attributed_pct,
           max(end_ns) AS last_end_ns, max(received_ns) AS last_received_ns
    FROM {source} WHERE {window.sql()}
    GROUP BY exporter ORDER BY last_received_ns DESC NULLS LAST, exporter
    """
    return query_arrow(con, sql)


def _check_limit(limit: int) -> None:
    if limit <= 0:
        raise InputError(f"--limit {limit}: must be positive")

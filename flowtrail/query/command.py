"""`flowtrail query`: ask the store (or the Parquet lake) about attributed flows."""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from flowtrail.errors import FlowtrailError, InputError
from flowtrail.vocabulary import (
    DEPENDENCY_KEYS,
    FORMATS,
    OUTCOME_GROUPS,
    OUTCOMES,
    SOURCES,
    TALKER_KEYS,
    UNNAMED_SIDES,
)

# DuckDB, Arrow and the queries load when a query runs, not for `--help`.
if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from flowtrail.query.queries import Window


class _QueryGroup(click.Group):
    """Bad input becomes one line on stderr and exit status 2, as in the main command."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FlowtrailError as exc:
            click.echo(f"flowtrail: error: {exc}", err=True)
            sys.exit(2)


def _open(
    db: str | None, lake: str | None, window: Window
) -> tuple[duckdb.DuckDBPyConnection, str]:
    """A connection and the relation to query: the store's table (or, in a store of Parquet
    segments, a view over the segments the window overlaps), or a view over the lake's
    partitions that the window overlaps (flowtrail/query/lake.py)."""
    import duckdb

    from flowtrail.query.lake import LakeSource, with_current_columns
    from flowtrail.store.duck import check_layout, open_database, reading_relation

    if (db is None) == (lake is None):
        raise InputError("give exactly one of --db FILE (the store) or --lake DIR")
    if db is not None:
        con = open_database(db, read_only=True)
        try:
            check_layout(con, db)
            relation = reading_relation(con, db, window)
        except BaseException:
            con.close()
            raise
        return con, with_current_columns(con, relation)
    assert lake is not None
    source = LakeSource(lake)
    con = duckdb.connect()
    return con, with_current_columns(con, source.relation(con, window))


Query = Callable[["duckdb.DuckDBPyConnection", "Window", str], "pa.Table"]


@dataclass(frozen=True)
class Source:
    """Where to read (store or lake), the window, and how to print: every subcommand's part."""

    db: str | None
    lake: str | None
    since: str | None
    until: str | None
    fmt: str

    def run(self, query: Query) -> None:
        import duckdb

        from flowtrail.query.api import window_of
        from flowtrail.query.output import render

        window = window_of(self.since, self.until)
        con: duckdb.DuckDBPyConnection | None = None
        try:
            con, relation = _open(self.db, self.lake, window)
            result = query(con, window, relation)
        except duckdb.Error as exc:
            raise InputError(f"query failed: {exc}") from exc
        finally:
            if con is not None:
                con.close()
        click.echo(render(result, self.fmt), nl=False)


def _source_options(func: Callable[..., None]) -> Callable[..., None]:
    """Adds the five source options and hands them to `func` as one `Source`."""

    @functools.wraps(func)
    def with_source(
        db: str | None, lake: str | None, since: str | None, until: str | None, fmt: str,
        **options: Any,
    ) -> None:  # fmt: skip
        func(Source(db, lake, since, until, fmt), **options)

    decorators = [
        click.option("--db", type=str, help="The store: a flowtrail DuckDB database file."),
        click.option("--lake", type=str, help="Or the Parquet lake directory (Hive layout)."),
        click.option(
            "--since",
            default=None,
            help="Window start: a duration ago (1h, 15m) or ns since the epoch. "
            "Default: the beginning.",
        ),
        click.option(
            "--until",
            default=None,
            help="Window end (exclusive): a duration ago or ns since the epoch. Default: no end.",
        ),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(FORMATS),
            default="table",
            show_default=True,
            help="Output format.",
        ),
    ]
    command: Callable[..., None] = with_source
    for option in reversed(decorators):
        command = option(command)
    return command


@click.group("query", cls=_QueryGroup)
def query() -> None:
    """Ask the store about attributed flows: dependencies, top talkers, flows, health.

    \b
    Every subcommand reads --db FILE (the store) or --lake DIR (the Parquet lake) and a
    window --since/--until on each row's end_ns: a duration ago (1h) or ns since the epoch.
    """


@query.command("dependencies")
@_source_options
@click.option("--workload", help="Only edges where this workload calls or is called.")
@click.option("--known-only", is_flag=True, help="Leave out edges with an unnamed side.")
@click.option(
    "--group-external",
    is_flag=True,
    help="Split edges with an unnamed side by its address group (IPv4 /24, IPv6 /48), in "
    "the columns caller_external and callee_external.",
)
@click.option(
    "--by",
    type=click.Choice(DEPENDENCY_KEYS),
    default="workload",
    show_default=True,
    help="name: also split edges by the DNS name of a side no workload owns (remote_dns); "
    "domain: by its last two labels.",
)
def dependencies_command(
    source: Source, workload: str | None, known_only: bool, group_external: bool, by: str
) -> None:
    """Caller → callee edges: connections, bytes each way, retransmits, RTT p50/p99 (µs)."""
    from flowtrail.query.queries import dependencies

    source.run(
        lambda con, w, rel: dependencies(
            con, w, source=rel, workload=workload, known_only=known_only,
            group_external=group_external, by=by,
        )
    )  # fmt: skip


@query.command("top-talkers")
@_source_options
@click.option(
    "--by", type=click.Choice(TALKER_KEYS), default="workload", show_default=True, help="Group by."
)
@click.option("--limit", type=int, default=10, show_default=True, help="How many to list.")
def top_talkers_command(source: Source, by: str, limit: int) -> None:
    """Workloads (or IPs) moving the most bytes, sent plus received."""
    from flowtrail.query.queries import top_talkers

    source.run(lambda con, w, rel: top_talkers(con, w, source=rel, by=by, limit=limit))


@query.command("flows")
@_source_options
@click.option("--workload", help="Local or remote workload equals this.")
@click.option("--ip", help="Local, remote or NAT-resolved remote address equals this.")
@click.option("--port", type=int, help="Local, remote or NAT-resolved remote port equals this.")
@click.option(
    "--source", "remote_source", type=click.Choice(SOURCES), help="How the remote was named."
)
@click.option("--exporter", help="Captured by this exporter.")
@click.option(
    "--outcome",
    type=click.Choice((*OUTCOMES, *OUTCOME_GROUPS)),
    help="How the connection ended (a row without one counts as established); 'connected' is "
    "established or reset, 'attempts' the handshakes that never completed.",
)
@click.option("--caller", help="The side that connected is this workload (one edge).")
@click.option("--callee", help="The side connected to is this workload (one edge).")
@click.option(
    "--unnamed",
    type=click.Choice(UNNAMED_SIDES),
    help="This side (or both) has no workload: an edge to or from unattributed traffic.",
)
@click.option(
    "--caller-external",
    metavar="NET",
    help="The caller has no workload and its address is in this group (a /24 or /48, as "
    "dependencies --group-external lists it).",
)
@click.option(
    "--callee-external",
    metavar="NET",
    help="The callee has no workload and its address is in this group (a /24 or /48).",
)
@click.option("--name", help="One of the remote side's DNS names (remote_dns) equals this.")
@click.option("--limit", type=int, default=100, show_default=True, help="At most this many rows.")
@click.option("--offset", type=int, default=0, show_default=True, help="Skip this many rows.")
def flows_command(
    source: Source,
    workload: str | None,
    ip: str | None,
    port: int | None,
    remote_source: str | None,
    exporter: str | None,
    outcome: str | None,
    caller: str | None,
    callee: str | None,
    unnamed: str | None,
    caller_external: str | None,
    callee_external: str | None,
    name: str | None,
    limit: int,
    offset: int,
) -> None:
    """Attributed flow rows matching every filter given, newest first."""
    from flowtrail.query.queries import FlowFilter, flows

    where = FlowFilter(
        workload, ip, port, remote_source, exporter, outcome, caller, callee, unnamed,
        caller_external, callee_external, name,
    )  # fmt: skip
    source.run(
        lambda con, w, rel: flows(con, w, source=rel, where=where, limit=limit, offset=offset)
    )


@query.command("health")
@_source_options
def health_command(source: Source) -> None:
    """Attribution health: attributed %, by source, unattributed by reason, wait p50/p99."""
    from flowtrail.query.queries import attribution_health

    source.run(lambda con, w, rel: attribution_health(con, w, source=rel))


@query.command("health-series")
@_source_options
@click.option(
    "--buckets", type=int, default=60, show_default=True, help="Equal spans the window is cut in."
)
def health_series_command(source: Source, buckets: int) -> None:
    """Attribution health over time: rows by source and wait p50/p99 per span of the window."""
    from flowtrail.query.queries import health_series

    now = time.time_ns()  # an open --until ends now: a source gone quiet shows as empty spans
    source.run(lambda con, w, rel: health_series(con, w, source=rel, buckets=buckets, now_ns=now))


@query.command("exporters")
@_source_options
def exporters_command(source: Source) -> None:
    """The agents (exporters) heard from in the window: rows, attributed %, last batch."""
    from flowtrail.query.queries import exporters

    source.run(lambda con, w, rel: exporters(con, w, source=rel))

"""The queries by name with text parameters: what an HTTP query API (or the CLI) hands over.

    run_query(cursor, "dependencies", {"since": "1h", "known_only": "true"}) -> pa.Table

Parameter names are the CLI's flags without dashes (`since`, `until`, `workload`, `ip`, `port`,
`source`, `exporter`, `outcome`, `caller`, `callee`, `unnamed`, `name`, `by`, `limit`, `offset`,
`buckets`, `known_only`, `group_external`, `caller_external`, `callee_external`); values
are text as they arrive in a URL.
Unknown names and bad values raise InputError naming them, so a web layer can answer 400.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import duckdb
import pyarrow as pa

from flowtrail.errors import InputError
from flowtrail.query.queries import (
    MAX_NS,
    FlowFilter,
    Window,
    attribution_health,
    dependencies,
    exporters,
    flows,
    health_series,
    top_talkers,
)
from flowtrail.units import parse_time_ns

WINDOW_PARAMS = ("since", "until")
PARAMS: dict[str, tuple[str, ...]] = {
    "dependencies": (*WINDOW_PARAMS, "workload", "known_only", "group_external", "by"),
    "top-talkers": (*WINDOW_PARAMS, "by", "limit"),
    "flows": (
        *WINDOW_PARAMS,
        "workload",
        "ip",
        "port",
        "source",
        "exporter",
        "outcome",
        "caller",
        "callee",
        "unnamed",
        "caller_external",
        "callee_external",
        "name",
        "limit",
        "offset",
    ),
    "health": WINDOW_PARAMS,
    "health-series": (*WINDOW_PARAMS, "buckets"),
    "exporters": WINDOW_PARAMS,
}


def parse_time(text: str, flag: str, now_ns: int) -> int:
    """`now`, ns since the epoch, an ISO 8601 time (no zone = UTC), or a duration ago (1h30m,
    1d): flowtrail.units.parse_time_ns, with its errors as InputError naming the flag."""
    try:
        return parse_time_ns(text, now_ns)
    except ValueError as exc:
        raise InputError(f"{flag} {exc}") from None


def window_of(since: str | None, until: str | None, now_ns: int | None = None) -> Window:
    now = time.time_ns() if now_ns is None else now_ns
    return Window(
        0 if since is None else parse_time(since, "--since", now),
        MAX_NS if until is None else parse_time(until, "--until", now),
    )


def _int(params: Mapping[str, str], name: str) -> int | None:
    if name not in params:
        return None
    try:
        return int(params[name])
    except ValueError:
        raise InputError(f"--{name} {params[name]!r}: not an integer") from None


def _flag(params: Mapping[str, str], name: str) -> bool:
    value = params.get(name, "false").strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise InputError(f"--{name.replace('_', '-')} {params[name]!r}: true or false")
    return value in ("true", "1", "yes")


def run_query(
    con: duckdb.DuckDBPyConnection,
    name: str,
    params: Mapping[str, str],
    *,
    source: str = "flows",
    now_ns: int | None = None,
) -> pa.Table:
    """Run the query `name` with text parameters; raises InputError on bad ones."""
    if name not in PARAMS:
        raise InputError(f"unknown query {name!r}: choose from {', '.join(PARAMS)}")
    unknown = sorted(set(params) - set(PARAMS[name]))
    if unknown:
        raise InputError(f"{name}: unknown parameter(s) {unknown}; known: {PARAMS[name]}")
    window = window_of(params.get("since"), params.get("until"), now_ns)
    limit = _int(params, "limit")
    if limit is not None and limit <= 0:
        raise InputError(f"--limit {limit}: must be positive")
    try:
        if name == "dependencies":
            return dependencies(
                con,
                window,
                source=source,
                workload=params.get("workload"),
                known_only=_flag(params, "known_only"),
                group_external=_flag(params, "group_external"),
                by=params.get("by", "workload"),
            )
        if name == "top-talkers":
            by = params.get("by", "workload")
            return top_talkers(con, window, source=source, by=by, limit=limit or 10)
        if name == "flows":
            where = FlowFilter(
                workload=params.get("workload"),
                ip=params.get("ip"),
                port=_int(params, "port"),
                remote_source=params.get("source"),
                exporter=params.get("exporter"),
                outcome=params.get("outcome"),
                caller=params.get("caller"),
                callee=params.get("callee"),
                unnamed=params.get("unnamed"),
                caller_external=params.get("caller_external"),
                callee_external=params.get("callee_external"),
                name=params.get("name"),
            )
            offset = _int(params, "offset") or 0
            return flows(con, window, source=source, where=where, limit=limit or 100, offset=offset)
        if name == "health-series":
            buckets = _int(params, "buckets")
            return health_series(
                con,
                window,
                source=source,
                buckets=60 if buckets is None else buckets,
                now_ns=time.time_ns() if now_ns is None else now_ns,
            )
        if name == "exporters":
            return exporters(con, window, source=source)
        return attribution_health(con, window, source=source)
    except duckdb.Error as exc:
        raise InputError(f"{name}: query failed: {exc}") from exc

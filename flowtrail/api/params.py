"""Query-string parameters of the HTTP API, checked before any query runs.

The names mirror `flowtrail query`'s flags without the dashes (`known_only` for
--known-only). Every problem is a ParamError naming the parameter, answered with 400. A
parameter an endpoint does not take is an error too, so a typo never silently widens a
query.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl

import pyarrow as pa

from flowtrail.errors import InputError
from flowtrail.query.output import FORMATS
from flowtrail.query.queries import MAX_NS, TALKER_KEYS, FlowFilter, Window
from flowtrail.schema import SOURCES
from flowtrail.tables import invalid_ips
from flowtrail.units import parse_duration_ns

# The API answers JSON or CSV; the aligned text table is for terminals (`flowtrail query`).
API_FORMATS = tuple(f for f in FORMATS if f != "table")
MAX_LIMIT = 10_000  # one answer stays small enough to build in memory and send
MAX_FIELDS = 32

_COMMON = ("since", "until", "format")
ENDPOINTS: dict[str, tuple[str, ...]] = {
    "dependencies": (*_COMMON, "workload", "known_only"),
    "top-talkers": (*_COMMON, "by", "limit"),
    "flows": (*_COMMON, "workload", "ip", "port", "source", "exporter", "limit"),
    "health": _COMMON,
}
DEFAULT_LIMITS = {"top-talkers": 10, "flows": 100}
_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


class ParamError(InputError):
    """A bad query-string parameter; `parameter` names it (None: the query string itself)."""

    def __init__(self, parameter: str | None, message: str) -> None:
        self.parameter = parameter
        super().__init__(f"{parameter}: {message}" if parameter else message)


@dataclass(frozen=True)
class ApiRequest:
    endpoint: str
    window: Window
    fmt: str = "json"
    workload: str | None = None
    known_only: bool = False
    by: str = "workload"
    limit: int = 100
    where: FlowFilter = field(default_factory=FlowFilter)


def _pairs(query: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(
            query, keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_FIELDS
        )
    except ValueError as exc:
        raise ParamError(None, f"query string: {exc}") from exc
    out: dict[str, str] = {}
    for name, value in pairs:
        if name in out:
            raise ParamError(name, "given more than once")
        out[name] = value
    return out


def _int(name: str, text: str, low: int, high: int) -> int:
    if not text.strip().lstrip("-").isdigit():
        raise ParamError(name, f"{text!r} is not an integer")
    value = int(text)
    if not low <= value <= high:
        raise ParamError(name, f"{value} is out of range {low}..{high}")
    return value


def _time(name: str, text: str, now_ns: int) -> int:
    """As the CLI's --since/--until: `now`, ns since the epoch, or a duration ago (15m, 1h)."""
    text = text.strip()
    if text == "now":
        return now_ns
    if text.lstrip("-").isdigit():
        if int(text) < 0:
            raise ParamError(name, f"{text}: a time in ns since the epoch must not be negative")
        return int(text)
    try:
        return now_ns - parse_duration_ns(text)
    except ValueError:
        raise ParamError(
            name, f"{text!r}: give a duration ago (15m, 1h, 90s), ns since the epoch, or now"
        ) from None


def parse_request(endpoint: str, query: str, now_ns: int) -> ApiRequest:
    """Validate `query` (the part after '?') for `endpoint` (a key of ENDPOINTS)."""
    allowed = ENDPOINTS[endpoint]
    got = _pairs(query)
    for name, value in got.items():
        if name not in allowed:
            raise ParamError(name, f"not a parameter of /api/{endpoint}; use {', '.join(allowed)}")
        if value == "":
            raise ParamError(name, "empty value")
    since = _time("since", got["since"], now_ns) if "since" in got else 0
    until = _time("until", got["until"], now_ns) if "until" in got else MAX_NS
    if until <= since:
        raise ParamError("until", f"window is empty: until ({until} ns) is not after since "
                         f"({since} ns)")  # fmt: skip
    fmt = got.get("format", "json")
    if fmt not in API_FORMATS:
        raise ParamError("format", f"{fmt!r}: choose {' or '.join(API_FORMATS)}")
    known = got.get("known_only", "false").lower()
    if known not in _TRUE + _FALSE:
        raise ParamError("known_only", f"{known!r}: use true or false")
    by = got.get("by", "workload")
    if by not in TALKER_KEYS:
        raise ParamError("by", f"{by!r}: choose {' or '.join(TALKER_KEYS)}")
    limit = DEFAULT_LIMITS.get(endpoint, 100)
    if "limit" in got:
        limit = _int("limit", got["limit"], 1, MAX_LIMIT)
    ip = got.get("ip")
    if ip is not None and invalid_ips(pa.array([ip])):
        raise ParamError("ip", f"{ip!r} is not a canonical IPv4/IPv6 address")
    port = _int("port", got["port"], 0, 65535) if "port" in got else None
    source = got.get("source")
    if source is not None and source not in SOURCES:
        raise ParamError("source", f"{source!r}: choose {', '.join(SOURCES)}")
    return ApiRequest(
        endpoint=endpoint,
        window=Window(since, until),
        fmt=fmt,
        workload=got.get("workload"),
        known_only=known in _TRUE,
        by=by,
        limit=limit,
        where=FlowFilter(
            workload=got.get("workload"),
            ip=ip,
            port=port,
            remote_source=source,
            exporter=got.get("exporter"),
        ),
    )

"""Query-string parameters of the HTTP API, checked before any query runs.

The names mirror `flowtrail query`'s flags without the dashes (`known_only` for
--known-only). Every problem is a ParamError naming the parameter, answered with 400. A
parameter an endpoint does not take is an error too, so a typo never silently widens a
query.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl

import pyarrow as pa

from flowtrail.errors import InputError
from flowtrail.query.api import PARAMS, parse_time
from flowtrail.query.external import check_external_group
from flowtrail.query.output import FORMATS
from flowtrail.query.queries import (
    DEPENDENCY_KEYS,
    MAX_BUCKETS,
    MAX_NS,
    MAX_OFFSET,
    OUTCOME_GROUPS,
    TALKER_KEYS,
    UNNAMED_SIDES,
)
from flowtrail.schema import OUTCOMES, SOURCES
from flowtrail.tables import invalid_ips

# The API answers JSON or CSV; the aligned text table is for terminals (`flowtrail query`).
API_FORMATS = tuple(f for f in FORMATS if f != "table")
MAX_LIMIT = 10_000  # one answer stays small enough to build in memory and send
MAX_FIELDS = 32

# The queries' own parameters (flowtrail.query.api), plus the answer's format.
ENDPOINTS: dict[str, tuple[str, ...]] = {name: (*p, "format") for name, p in PARAMS.items()}
_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


class ParamError(InputError):
    """A bad query-string parameter; `parameter` names it (None: the query string itself)."""

    def __init__(self, parameter: str | None, message: str) -> None:
        self.parameter = parameter
        super().__init__(f"{parameter}: {message}" if parameter else message)


@dataclass(frozen=True)
class ApiRequest:
    """A checked request: the query's name, its text parameters (as flowtrail.query.api's
    run_query takes them), the answer's format and the clock the relative times refer to."""

    endpoint: str
    params: dict[str, str]
    fmt: str = "json"
    now_ns: int = 0


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
    try:
        return parse_time(text, name, now_ns)
    except InputError as exc:
        raise ParamError(name, str(exc).removeprefix(f"{name} ")) from exc


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
    for flag in ("known_only", "group_external"):
        value = got.get(flag, "false").lower()
        if value not in _TRUE + _FALSE:
            raise ParamError(flag, f"{value!r}: use true or false")
    by = got.get("by", "workload")
    keys = DEPENDENCY_KEYS if endpoint == "dependencies" else TALKER_KEYS
    if by not in keys:
        raise ParamError("by", f"{by!r}: choose {' or '.join(keys)}")
    if "limit" in got:
        _int("limit", got["limit"], 1, MAX_LIMIT)
    ip = got.get("ip")
    if ip is not None and invalid_ips(pa.array([ip])):
        raise ParamError("ip", f"{ip!r} is not a canonical IPv4/IPv6 address")
    if "port" in got:
        _int("port", got["port"], 0, 65535)
    if "offset" in got:
        _int("offset", got["offset"], 0, MAX_OFFSET)
    if "buckets" in got:
        _int("buckets", got["buckets"], 1, MAX_BUCKETS)
    unnamed = got.get("unnamed")
    if unnamed is not None:
        if unnamed not in UNNAMED_SIDES:
            raise ParamError("unnamed", f"{unnamed!r}: choose {', '.join(UNNAMED_SIDES)}")
        for side in ("caller", "callee"):
            if side in got and unnamed in (side, "both"):
                raise ParamError("unnamed", f"{unnamed!r} and {side}={got[side]!r}: choose one")
    for side in ("caller", "callee"):
        group = got.get(f"{side}_external")
        if group is not None:
            try:
                check_external_group(group, f"{side}_external")
            except InputError as exc:
                raise ParamError(f"{side}_external", str(exc).split(" ", 1)[1]) from None
            if side in got:
                named = f"{group!r} and {side}={got[side]!r}"
                raise ParamError(
                    f"{side}_external", f"{named}: a side with a name has no external group"
                )
    source = got.get("source")
    if source is not None and source not in SOURCES:
        raise ParamError("source", f"{source!r}: choose {', '.join(SOURCES)}")
    outcome = got.get("outcome")
    if outcome is not None and outcome not in (*OUTCOMES, *OUTCOME_GROUPS):
        raise ParamError(
            "outcome", f"{outcome!r}: choose {', '.join((*OUTCOMES, *OUTCOME_GROUPS))}"
        )
    params = {k: v for k, v in got.items() if k != "format"}
    return ApiRequest(endpoint=endpoint, params=params, fmt=fmt, now_ns=now_ns)

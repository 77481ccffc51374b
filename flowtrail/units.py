"""Units people type and read: durations, sizes and points in time.

    durations   180s, 100ms, 5m, 1.5h, 1d, 1h30m (a bare number means seconds)
    sizes       512M, 2G (a bare number means bytes)
    times       now, ns since the epoch, an ISO 8601 time (2026-12-07T19:00:00Z; no zone
                means UTC), or a duration ago

Inside flowtrail a time is ns since the Unix epoch and a duration is ns, both int64: anything
that does not fit is a ValueError here, at the edge, never an overflow further in. Arithmetic
is exact (fractions), so no float ever stands between the text and the integer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from fractions import Fraction
from itertools import pairwise

import click

MAX_NS = 2**63 - 1  # the largest int64: every time and duration must fit
MAX_TEXT = 64  # longer input is no duration or time anyone means

_UNITS = {
    "d": 86_400 * 10**9,
    "h": 3600 * 10**9,
    "m": 60 * 10**9,
    "s": 10**9,
    "ms": 1_000_000,
    "us": 1_000,
    "ns": 1,
}
_ORDER = tuple(_UNITS)  # largest first: a compound duration names them in this order
_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
_PART = re.compile(rf"({_NUMBER})\s*(ns|us|ms|s|m|h|d)")
_COMPOUND = re.compile(rf"^(?:{_NUMBER}\s*(?:ns|us|ms|s|m|h|d)\s*)+$")
_BARE = re.compile(rf"^{_NUMBER}$")
DURATION_EXAMPLES = "180s, 100ms, 5m, 1h30m, 1d"


def parse_duration_ns(text: str) -> int:
    """'180s' → 180_000_000_000, '1h30m' → 5_400_000_000_000; ValueError otherwise."""
    s = text.strip()
    if len(s) > MAX_TEXT:
        raise ValueError(f"{text[:20]!r}... ({len(text)} characters) is not a duration")
    if _BARE.match(s):
        total = Fraction(s) * _UNITS["s"]
    elif _COMPOUND.match(s):
        parts = _PART.findall(s)
        ranks = [_ORDER.index(unit) for _value, unit in parts]
        if any(b <= a for a, b in pairwise(ranks)):
            raise ValueError(
                f"{text!r}: give each unit once, largest first (1h30m, not 30m1h or 1m1m)"
            )
        total = sum((Fraction(value) * _UNITS[unit] for value, unit in parts), Fraction(0))
    else:
        raise ValueError(f"{text!r} is not a duration (examples: {DURATION_EXAMPLES})")
    ns = round(total)
    if ns > MAX_NS:
        raise ValueError(f"{text!r} is too long a duration (at most about 292 years)")
    return ns


_SIZE_RE = re.compile(r"^\s*(\d{1,20})\s*([kmg]i?b?|b)?\s*$")


def parse_size(text: str) -> int:
    """'512M' → 536870912; raises ValueError with the accepted forms."""
    m = _SIZE_RE.match(text.lower())
    if not m:
        raise ValueError(f"{text[:40]!r} is not a size (examples: 512M, 2G, 100000)")
    unit = (m.group(2) or "b")[0]
    size = int(m.group(1)) * {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit]
    if size > MAX_NS:
        raise ValueError(f"{text!r} is too large a size")
    return size


# An ISO 8601 time: date, optional time with up to nine fraction digits, optional zone.
_ISO = re.compile(
    r"^(\d{4}-\d{2}-\d{2})"
    r"(?:[T ](\d{2}:\d{2}(?::\d{2})?)(?:[.,](\d{1,9}))?)?"
    r"\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?$"
)


def parse_iso_ns(text: str) -> int:
    """An ISO 8601 time as ns since the epoch (no zone = UTC); ValueError otherwise."""
    m = _ISO.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not an ISO 8601 time (example: 2026-12-07T19:00:00Z)")
    day, clock, fraction, zone = m.groups()
    stamp = day + ("T" + clock if clock else "") + _zone(zone)
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid time: {exc}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = int((when - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds())
    ns = seconds * 10**9 + (int(fraction.ljust(9, "0")) if fraction else 0)
    if not 0 <= ns <= MAX_NS:
        raise ValueError(f"{text!r} is outside 1970..2262 (ns since the epoch in int64)")
    return ns


def _zone(zone: str | None) -> str:
    if zone is None:
        return ""
    if zone in ("Z", "z"):
        return "+00:00"
    digits = zone[1:].replace(":", "")
    return f"{zone[0]}{digits[:2]}:{digits[2:] or '00'}"


def parse_time_ns(text: str, now_ns: int) -> int:
    """A point in time: `now`, ns since the epoch, ISO 8601, or a duration ago (clamped at the
    epoch: `--since 100000d` means from the beginning). ValueError with the forms otherwise."""
    s = text.strip()
    if len(s) > MAX_TEXT:
        raise ValueError(f"{text[:20]!r}... ({len(text)} characters) is not a time")
    if s == "now":
        return now_ns
    if s.lstrip("-").isdigit():
        value = int(s)
        if value < 0:
            raise ValueError(f"{s}: a time in ns since the epoch must not be negative")
        if value > MAX_NS:
            raise ValueError(f"{s}: ns since the epoch must be at most {MAX_NS} (year 2262)")
        return value
    if _ISO.match(s):
        return parse_iso_ns(s)
    try:
        ago = parse_duration_ns(s)
    except ValueError as exc:
        if "too long" in str(exc):
            raise
        raise ValueError(
            f"{text!r}: give a duration ago ({DURATION_EXAMPLES}), an ISO 8601 time "
            "(2026-12-07T19:00:00Z), now, or ns since the epoch"
        ) from None
    return max(0, now_ns - ago)


def format_time_ns(ns: int) -> str:
    """ns since the epoch as readable UTC to the millisecond: 2026-12-07T19:08:01.123Z
    (a form parse_time_ns reads back)."""
    seconds, rest = divmod(int(ns), 10**9)
    when = datetime.fromtimestamp(seconds, UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S") + f".{rest // 1_000_000:03d}Z"


class _Parsed(click.ParamType):  # type: ignore[type-arg]
    """A click parameter whose text a parse function turns into an int (ValueError = bad)."""

    def __init__(self, name: str, parse: Callable[[str], int]) -> None:
        self.name = name
        self._parse = parse

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        if isinstance(value, int):
            return value
        try:
            return self._parse(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = _Parsed("duration", parse_duration_ns)  # nanoseconds
SIZE = _Parsed("size", parse_size)  # bytes

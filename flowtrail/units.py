"""Command-line units: durations like 180s, 100ms, 5m, 1h (a bare number means seconds), and
sizes like 512M, 2G (a bare number means bytes)."""

from __future__ import annotations

import re
from collections.abc import Callable

import click

_UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ns|us|ms|s|m|h)?\s*$")


def parse_duration_ns(text: str) -> int:
    """'180s' → 180_000_000_000; raises ValueError with the accepted forms."""
    m = _RE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration (examples: 180s, 100ms, 5m, 1h)")
    value, unit = float(m.group(1)), m.group(2) or "s"
    return round(value * _UNITS[unit])


_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$")


def parse_size(text: str) -> int:
    """'512M' → 536870912; raises ValueError with the accepted forms."""
    m = _SIZE_RE.match(text.lower())
    if not m:
        raise ValueError(f"{text!r} is not a size (examples: 512M, 2G, 100000)")
    unit = (m.group(2) or "b")[0]
    return int(m.group(1)) * {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit]


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

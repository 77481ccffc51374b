"""Durations, sizes and times as people type them, and times as tables show them."""

from __future__ import annotations

import pytest

from flowtrail.units import (
    MAX_NS,
    format_time_ns,
    parse_duration_ns,
    parse_iso_ns,
    parse_size,
    parse_time_ns,
)

S = 1_000_000_000
NOW = 1_765_134_000 * S  # 2025-12-07T19:00:00Z


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("180s", 180 * S), ("100ms", 100_000_000), ("5m", 300 * S), ("1h", 3600 * S),
        ("1d", 86_400 * S), ("1h30m", 5400 * S), ("1d 2h", 93_600 * S), ("1.5h", 5400 * S),
        ("2h45m30s", 9930 * S), ("1s500ms", 1_500_000_000), ("90", 90 * S), ("0.1", S // 10),
        ("250ns", 250), ("1us", 1000),
    ],
)  # fmt: skip
def test_durations(text: str, ns: int) -> None:
    assert parse_duration_ns(text) == ns


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("30m1h", "largest first"), ("1m1m", "largest first"), ("soon", "not a duration"),
        ("-5s", "not a duration"), ("1y", "not a duration"), ("9" * 400, "characters"),
        ("9" * 30 + "d", "too long"), ("1e3s", "not a duration"),
    ],
)  # fmt: skip
def test_bad_durations(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_duration_ns(text)


def test_the_largest_duration_fits_int64() -> None:
    assert parse_duration_ns(f"{MAX_NS}ns") == MAX_NS
    with pytest.raises(ValueError, match="too long"):
        parse_duration_ns(f"{MAX_NS + 1}ns")


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("now", NOW), ("0", 0), (str(NOW), NOW), ("1h", NOW - 3600 * S), ("1d", NOW - 86_400 * S),
        ("2025-12-07T19:00:00Z", NOW), ("2025-12-07T19:00:00", NOW),
        ("2025-12-07 19:00", NOW), ("2025-12-07T21:00:00+02:00", NOW),
        ("2025-12-07T21:00:00+0200", NOW), ("2025-12-07T14:00:00-05", NOW),
        ("2025-12-07T19:00:00.000000001Z", NOW + 1), ("2025-12-07T19:00:00,5Z", NOW + S // 2),
        ("2025-12-07", NOW - 19 * 3600 * S), ("100000d", 0),
    ],
)  # fmt: skip
def test_times(text: str, ns: int) -> None:
    assert parse_time_ns(text, NOW) == ns


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("-1", "negative"), (str(MAX_NS + 1), "at most"), ("9" * 400, "characters"),
        ("2025-13-01", "not a valid time"), ("2025-02-30T00:00:00Z", "not a valid time"),
        ("yesterday", "ISO 8601"), ("2263-01-01", "outside"), ("1969-12-31", "outside"),
    ],
)  # fmt: skip
def test_bad_times(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_time_ns(text, NOW)


def test_table_times_read_back() -> None:
    shown = format_time_ns(NOW + 123_456_789)
    assert shown == "2025-12-07T19:00:00.123Z"
    assert parse_iso_ns(shown) == NOW + 123_000_000
    assert parse_time_ns(shown, 0) == NOW + 123_000_000


def test_sizes() -> None:
    assert parse_size("512M") == 512 << 20
    assert parse_size("2g") == 2 << 30
    assert parse_size("100000") == 100_000
    for bad in ("9" * 400, "1T", "-1"):
        with pytest.raises(ValueError, match="not a size"):
            parse_size(bad)

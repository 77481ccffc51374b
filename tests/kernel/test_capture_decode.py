"""Capture's bulk decode and start-map hygiene on hand-made records (no kernel needed).

The records here are built with FLOW_DTYPE, the same dtype test_record_layout.py checks
against the compiled object; the kernel tests cover the same paths with real records.
"""

from __future__ import annotations

import ipaddress

import numpy as np

from flowtrail.agent.capture import (
    FLOW_DTYPE,
    HANDSHAKE_LIMIT_NS,
    SEQ_FIN_ACKED,
    SEQ_FIN_RECEIVED,
    SEQ_SYN_ACKED,
    dead_entries,
    decode,
    payload_bytes,
)
from flowtrail.agent.clock import MonotonicClock, measure_offset
from flowtrail.agent.records import RAW_SCHEMA


def records(n: int) -> np.ndarray:
    r = np.zeros(n, FLOW_DTYPE)
    r["family"] = 2
    r["direction"] = 1
    r["established"] = 1
    return r


def test_addresses_v4_v6_and_mapped_are_canonical() -> None:
    r = records(3)
    r["saddr"][0, :4] = [10, 1, 2, 3]
    r["daddr"][0, :4] = [192, 0, 2, 1]
    r["family"][1] = 10
    r["saddr"][1] = list(ipaddress.IPv6Address("2001:db8::1").packed)
    r["daddr"][1] = list(ipaddress.IPv6Address("fd00:0:0:0:0:0:0:a").packed)
    r["family"][2] = 10
    r["saddr"][2] = list(ipaddress.IPv6Address("::ffff:127.0.0.1").packed)
    r["daddr"][2] = list(ipaddress.IPv6Address("::ffff:10.9.8.7").packed)
    batch = decode(r, MonotonicClock())
    assert batch.schema == RAW_SCHEMA
    assert batch.column("local_ip").to_pylist() == ["10.1.2.3", "2001:db8::1", "127.0.0.1"]
    assert batch.column("remote_ip").to_pylist() == ["192.0.2.1", "fd00::a", "10.9.8.7"]
    assert batch.column("family").to_pylist() == [4, 6, 4]


def test_payload_bytes_subtract_exactly_the_flagged_syn_and_fins() -> None:
    r = records(4)
    r["bytes_acked"] = [1002, 301, 0, 5]
    r["bytes_received"] = [301, 1001, 0, 0]
    r["seq_flags"] = [
        SEQ_SYN_ACKED | SEQ_FIN_ACKED | SEQ_FIN_RECEIVED,
        SEQ_FIN_ACKED | SEQ_FIN_RECEIVED,
        SEQ_SYN_ACKED,  # never below zero
        0,
    ]
    sent, received = payload_bytes(r)
    assert sent.tolist() == [1000, 300, 0, 5]
    assert received.tolist() == [300, 1000, 0, 0]


def test_outcome_direction_and_times() -> None:
    r = records(6)
    r["outcome"] = [0, 1, 2, 3, 4, 5]
    r["direction"] = [1, 2, 1, 1, 2, 1]
    r["start_ns"], r["end_ns"] = 1_000, 2_000
    r["established_ns"] = [1_500, 0, 0, 0, 1_200, 0]  # 0: never reached ESTABLISHED
    clock = MonotonicClock()
    batch = decode(r, clock)
    assert batch.column("outcome").to_pylist() == [
        "established", "refused", "timeout", "failed", "reset", "abandoned"
    ]  # fmt: skip
    assert batch.column("direction").to_pylist() == [
        "outbound", "inbound", "outbound", "outbound", "inbound", "outbound"
    ]  # fmt: skip
    assert set(batch.column("start_ns").to_pylist()) == {1_000 + clock.offset_ns}
    assert set(batch.column("end_ns").to_pylist()) == {2_000 + clock.offset_ns}
    assert batch.column("established_ns").to_pylist() == [
        1_500 + clock.offset_ns, None, None, None, 1_200 + clock.offset_ns, None
    ]  # fmt: skip


def test_empty_decode_is_an_empty_raw_batch() -> None:
    batch = decode(np.zeros(0, FLOW_DTYPE), MonotonicClock())
    assert batch.num_rows == 0 and batch.schema == RAW_SCHEMA


def test_clock_offset_is_tight() -> None:
    offset, uncertainty = measure_offset()
    assert uncertainty < 1_000_000  # well under a millisecond even on a busy VM
    assert offset > 1_600_000_000 * 10**9  # realtime is past 2020, monotonic counts from boot


def test_dead_entries_are_stale_handshakes_and_older_duplicate_tuples() -> None:
    r = records(6)
    r["sport"] = [10, 10, 11, 12, 13, 10]
    r["dport"] = 80
    r["netns_ino"] = [7, 7, 7, 7, 7, 8]  # the last shares the tuple in another netns: alive
    r["established"] = [1, 1, 1, 0, 0, 1]
    now = 2 * HANDSHAKE_LIMIT_NS
    r["start_ns"] = [100, 50, 10, 5, now - 1, 1]
    assert dead_entries(r, now).tolist() == [False, True, False, True, False, False]

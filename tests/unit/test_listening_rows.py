"""Listening sockets' rows (outcome `listening`) as ownership evidence, on hand-made rows.

The kernel test (tests/kernel/test_listener_heartbeat.py) shows the agent's side on real
sockets. Here: the engine's side. A listener's row says its workload held local_ip over
[start_ns, end_ns]; it joins the ownership ranges like any heartbeat (same claimants, same
ambiguity, same skew guard), names no remote side and is written nowhere.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from flowtrail.engine.attributor import Settings
from flowtrail.engine.replay import replay, split_listening
from flowtrail.engine.stream import StreamingAttribution
from flowtrail.schema import FLOWS
from flowtrail.tables import validate

S = 1_000_000_000
T0 = 1_700_000_000 * S
SERVER = "10.0.0.2"
SKEW = Settings().max_skew_ns


def attempt(fid: str, at: int, outcome: str = "refused") -> dict[str, Any]:
    """A client's failed attempt to SERVER: no row at the other end, ever."""
    return {
        "flow_id": fid, "exporter": "client", "local_ip": "10.0.0.1", "local_port": 40000,
        "remote_ip": SERVER, "remote_port": 8081, "direction": "outbound", "start_ns": at,
        "end_ns": at + S // 100, "state": "closed", "bytes_sent": 0, "bytes_received": 0,
        "local_workload": "caller", "outcome": outcome,
    }  # fmt: skip


def listening(exporter: str, workload: str, start: int, end: int) -> dict[str, Any]:
    return {
        "flow_id": f"{exporter}:listen:7:{SERVER}", "exporter": exporter, "local_ip": SERVER,
        "local_port": 8080, "remote_ip": "0.0.0.0", "remote_port": 0, "direction": "inbound",
        "start_ns": start, "end_ns": end, "state": "active", "bytes_sent": 0,
        "bytes_received": 0, "local_workload": workload, "outcome": "listening",
    }  # fmt: skip


def attribute(rows: list[dict[str, Any]]) -> dict[str, tuple[str | None, str | None]]:
    table = validate(pa.Table.from_pylist(rows), FLOWS)
    out = replay(table).table
    assert "listening" not in out["outcome"].to_pylist()  # evidence only: not written out
    return {
        f: (w, r)
        for f, w, r in zip(
            out["flow_id"].to_pylist(),
            out["remote_workload"].to_pylist(),
            out["unattributed_reason"].to_pylist(),
            strict=True,
        )
    }


def test_an_attempt_to_a_quiet_listener_names_the_listeners_workload() -> None:
    rows = [attempt("client:1", T0 + 5 * S)]
    assert attribute(rows)["client:1"] == (None, "no_evidence")  # nothing else says who
    got = attribute([*rows, listening("server", "api", T0, T0 + 10 * S)])
    assert got == {"client:1": ("api", None)}


def test_the_listeners_run_must_span_the_attempt_with_the_skew_guard() -> None:
    at = T0 + 5 * S
    guard = 2 * SKEW
    # The run ends (its last sighting) just inside the guard: not enough.
    short = attribute([attempt("client:1", at), listening("server", "api", T0, at + guard - 1)])
    assert short["client:1"] == (None, "no_evidence")
    enough = attribute([attempt("client:1", at), listening("server", "api", T0, at + guard + 1)])
    assert enough["client:1"] == ("api", None)


def test_an_address_handed_over_names_each_owner_in_its_own_time_and_nobody_between() -> None:
    """Old's listener seen until 10 s, the new owner's (another host) from 10.5 s."""
    rows = [
        listening("host-a", "old", T0, T0 + 10 * S),
        listening("host-b", "new", T0 + 10 * S + S // 2, T0 + 30 * S),
        attempt("client:1", T0 + 5 * S),
        attempt("client:2", T0 + 10 * S + S // 4),  # between the two runs
        attempt("client:3", T0 + 20 * S, outcome="abandoned"),
    ]
    got = attribute(rows)
    assert got["client:1"] == ("old", None)
    assert got["client:2"] == (None, "no_evidence")
    assert got["client:3"] == ("new", None)


def test_a_listener_still_claiming_a_handed_over_address_spoils_it_and_wins_nothing() -> None:
    """Should a stale listener's rows go on after the address moved (an agent that did not see
    the address leave), the two hosts' claims conflict: nobody is named, never the old one."""
    rows = [
        listening("host-a", "old", T0, T0 + 30 * S),
        listening("host-b", "new", T0 + 10 * S, T0 + 30 * S),
        attempt("client:1", T0 + 20 * S),
    ]
    assert attribute(rows)["client:1"] == (None, "conflicting_claims")


def test_a_live_collector_learns_from_listeners_and_hands_their_rows_back_at_once() -> None:
    eng = StreamingAttribution(Settings(use_events=False))
    heard = validate(pa.Table.from_pylist([listening("server", "api", T0, T0 + 10 * S)]), FLOWS)
    eng.submit_flows(heard, T0 + 11 * S)
    back = eng.tick(T0 + 11 * S)
    kept, listeners = split_listening(pa.concat_tables(back))
    assert (kept.num_rows, listeners.num_rows) == (0, 1)  # decided at once, to be dropped
    assert eng.engine.counters.listening_rows == 1 and eng.engine.counters.flows_in == 0
    tried = validate(pa.Table.from_pylist([attempt("client:1", T0 + 5 * S)]), FLOWS)
    eng.submit_flows(tried, T0 + 12 * S)
    (out,) = eng.tick(T0 + 12 * S)
    assert out["remote_workload"].to_pylist() == ["api"]
    assert out["remote_source"].to_pylist() == ["heartbeat"]

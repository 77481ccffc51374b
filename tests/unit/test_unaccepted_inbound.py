"""An inbound handshake that never completed and that no process accepted carries only its
listener's cgroup, which is another workload's when the listener was handed over: the agent
exports it with no local workload (flowtrail/agent/runner.py). The kernel lab
(tests/kernel/test_kernel_lab.py) meets such rows on real traffic now and then."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pyarrow as pa

from flowtrail.agent.records import RAW_SCHEMA
from flowtrail.agent.runner import Agent


def _raw(rows: list[dict[str, Any]]) -> pa.Table:
    full = [{f.name: row.get(f.name) for f in RAW_SCHEMA} for row in rows]
    return pa.Table.from_pylist(full, schema=RAW_SCHEMA)


def test_only_never_established_unaccepted_inbound_rows_lose_their_name() -> None:
    raw = _raw(
        [
            # a failed handshake no process accepted: the listener's cgroup, not a name
            {"direction": "inbound", "pid": 0, "established_ns": None},
            # accepted: the acceptor's cgroup names it
            {"direction": "inbound", "pid": 41, "established_ns": 5},
            # established, not seen accepted (reset in the queue, io_uring): kept, documented
            {"direction": "inbound", "pid": 0, "established_ns": 5},
            # an outbound attempt that failed: its own process's cgroup
            {"direction": "outbound", "pid": 0, "established_ns": None},
        ]
    )
    agent = SimpleNamespace(counters={"unaccepted_attempts_unnamed": 0})
    named = pa.array(["listener", "api", "listener", "web"])
    got = Agent._unaccepted_unnamed(agent, raw, named)  # type: ignore[arg-type]
    assert got.to_pylist() == [None, "api", "listener", "web"]
    assert agent.counters["unaccepted_attempts_unnamed"] == 1
    # Nothing to clear: the same array back, nothing counted.
    kept = Agent._unaccepted_unnamed(agent, raw.slice(1), named.slice(1))  # type: ignore[arg-type]
    assert kept.to_pylist() == ["api", "listener", "web"]
    assert agent.counters["unaccepted_attempts_unnamed"] == 1

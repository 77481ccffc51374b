"""No silent loss through the whole agent: a tiny ring buffer overflows and the agent says so.

Real capture with a one-page ring buffer, real loopback connections made while nobody reads;
then the agent drains, exports and reports. The capture's ledger (capture_audit.py) balances
exactly: every socket it tracked, the host's and ours, is a row the agent took, a counted
drop in the agent's metrics, or still open; none of ours is open, so each of ours missing
from the Parquet output is a counted drop, however busy the host.
"""

from __future__ import annotations

import mmap
import socket
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from capture_audit import ID_LOSSES, AuditedCapture

from flowtrail.agent.exporter import Delivery, ParquetDir
from flowtrail.agent.identity import IdentityChain
from flowtrail.agent.runner import Agent, AgentConfig

pytestmark = pytest.mark.kernel


def test_tiny_ring_buffer_drops_reach_the_agent_metrics(tmp_path: Path) -> None:
    capture = AuditedCapture(ringbuf_bytes=mmap.PAGESIZE)
    capture.start()
    try:
        agent = Agent(
            capture,
            AgentConfig(exporter="drops", interval_s=3600),
            IdentityChain.build(host_workload="h"),
            Delivery(ParquetDir(tmp_path)),
        )
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(512)
        port = server.getsockname()[1]
        n = 300
        for _ in range(n):  # nobody polls meanwhile: the ring holds a few dozen records
            c = socket.create_connection(("127.0.0.1", port))
            a, _ = server.accept()
            c.sendall(b"x")
            a.recv(1)
            c.close()
            a.close()
        server.close()
        # Closes on loopback may finish in softirq a moment later (ksoftirqd when loaded):
        # wait until each of ours has left the start map (recorded or dropped), then freeze.
        deadline = time.monotonic() + 30
        while port in capture.open_ports() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert port not in capture.open_ports(), "our closes never reached the program"
        capture.detach()
        agent.drain()
        agent.flush(snapshots=False)
        m = agent.metrics()
        ledger = capture.balance(m["captured_rows"] + m["backlog_dropped_rows"])
    finally:
        capture.close()
    rows = [
        r
        for f in tmp_path.glob("flows-*.parquet")
        for r in pq.read_table(f).to_pylist()
        if port in (r["local_port"], r["remote_port"])
    ]
    assert ledger["ids"] == ledger["accounted"], ledger  # nothing lost uncounted, anywhere
    assert all(m[f"capture_drop_{reason}"] == ledger[reason] for reason in ID_LOSSES), m
    assert m["capture_drop_ringbuf_full"] > 0
    assert len(rows) < 2 * n
    assert m["exported_rows"] == m["captured_rows"] - m["dropped_malformed_rows"]

"""`flowtrail up`'s /metrics carries the agent's counters beside the collector's (root).

The README's third command: `curl -sk https://127.0.0.1:4740/metrics` answers for both. A
real `flowtrail up` with its eBPF agent watches connections in the namespace lab; the
agent's counters, scraped from the collector's port, must move with the test's own
connections (the host's other traffic can only add to them), with their Prometheus types.
"""

from __future__ import annotations

import json
import re
import signal
import ssl
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlencode
from urllib.request import urlopen

import pytest

from flowtrail.lab import Client, Lab, Server
from flowtrail.lab.wait import started, until

pytestmark = pytest.mark.kernel

CONNECTIONS = 4


def samples(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_up_metrics_carry_the_agents_counters(tmp_path: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "up.log"
    with Lab("upm") as net, open(log, "wb") as out:
        p = subprocess.Popen(
            [sys.executable, "-m", "flowtrail.up", "--data", str(data), "--port-collector", "0",
             "--port-api", "0", "--interval", "1s", "--max-wait", "5s",
             "--exporter", f"upm-{net.tag}"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            started(p, (data / "up.json").exists, log, 45, "flowtrail up")
            state = json.loads((data / "up.json").read_text())
            ctx = ssl.create_default_context(cafile=str(data / "tls" / "cert.pem"))

            def scrape() -> tuple[dict[str, float], str]:
                with urlopen(f"{state['collector']}/metrics", timeout=10, context=ctx) as r:
                    text = r.read().decode()
                return samples(text), text

            before, text = scrape()
            for name, kind in (
                ("flowtrail_agent_captured_rows", "counter"),
                ("flowtrail_agent_capture_dropped_records", "counter"),
                ("flowtrail_agent_held_rows", "gauge"),
                ("flowtrail_agent_spool_pending_batches", "gauge"),
                ("flowtrail_collector_rows_accepted", "counter"),
            ):
                assert re.search(rf"^# TYPE {name}(_total)? {kind}$", text, re.M), (name, text)

            port = net.port()
            server = net.serve(
                net.server.at(net.cgroup("srv")),
                Server(net.server.ip, port, recv=1000, send=500, accepts=CONNECTIONS),
            )
            client = net.spawn(
                net.client.at(net.cgroup("cli")),
                Client(net.server.ip, port, send=1000, recv=500, connections=CONNECTIONS),
            )
            assert client.stdout is not None and client.stdout.readline().strip() == "done"
            assert client.wait(10) == 0 and server.wait(10) == 0

            # The test's own rows (both ends of each connection) reach the store ...
            query = urlencode({"port": port, "since": "5m", "limit": 100})

            def ours() -> list[dict[str, object]]:
                with urlopen(f"{state['api']}/api/flows?{query}", timeout=10) as r:
                    rows: list[dict[str, object]] = json.loads(r.read())
                return [row for row in rows if row["state"] == "closed"]

            rows = until(ours, lambda rows: len(rows) >= 2 * CONNECTIONS, 40, 0.5)
            assert len(rows) == 2 * CONNECTIONS, rows
            # ... so the agent counted them as captured, closed and exported, and the
            # collector as accepted: each counter moved by at least the test's rows.
            after, _ = scrape()
            mine = 2 * CONNECTIONS
            for name in (
                "flowtrail_agent_captured_rows_total",
                "flowtrail_agent_closed_rows_total",
                "flowtrail_agent_exported_rows_total",
                'flowtrail_collector_rows_accepted_total{kind="flows"}',
            ):
                assert after[name] - before.get(name, 0.0) >= mine, (name, before, after)
        finally:
            p.send_signal(signal.SIGINT)
            assert p.wait(60) == 0, log.read_text()

"""A real `flowtrail up --no-agent` answers /api/health with the reason each unattributed row
was left so (no root needed): a batch posted over HTTPS with the host's token, the collector's
own decision, the store, the API."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import pyarrow as pa

from flowtrail.collector.client import CollectorExporter
from flowtrail.lab.wait import started, until
from flowtrail.schema import FLOWS

S = 1_000_000_000


def _rows(exporter: str, now: int) -> pa.Table:
    base = {
        "exporter": exporter, "region": None, "nat_remote_ip": None, "nat_remote_port": None,
        "state": "closed", "bytes_sent": 10, "bytes_received": 20, "segs_sent": 3,
        "segs_received": 3, "retransmits": 0, "srtt_us": 50, "received_ns": None,
        "start_ns": now - 3 * S, "end_ns": now - 2 * S,
    }  # fmt: skip
    rows = [
        # web calls an address nobody claims: no heartbeat will ever name it
        {**base, "flow_id": f"{exporter}:1", "local_ip": "10.77.0.1", "local_port": 40001,
         "remote_ip": "10.77.0.9", "remote_port": 80, "direction": "outbound",
         "local_workload": "web"},
        # and the same from an unnamed local side: also no evidence for the remote
        {**base, "flow_id": f"{exporter}:2", "local_ip": "10.77.0.2", "local_port": 40002,
         "remote_ip": "10.77.0.9", "remote_port": 81, "direction": "outbound",
         "local_workload": None},
    ]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=FLOWS.schema)


def _get(state: dict[str, Any], endpoint: str) -> Any:
    with urlopen(f"{state['api']}/api/{endpoint}", timeout=10) as r:
        return json.loads(r.read())


def test_health_names_the_reason_of_each_unattributed_row(tmp_path: Path) -> None:
    data, log_path = tmp_path / "data", tmp_path / "up.log"
    with open(log_path, "wb") as log:
        p = subprocess.Popen(
            [sys.executable, "-m", "flowtrail.up", "--no-agent", "--data", str(data),
             "--port-collector", "0", "--port-api", "0", "--max-wait", "1s",
             "--exporter", "reasons-host"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            started(p, (data / "up.json").exists, log_path, 60, "flowtrail up --no-agent")
            state = json.loads((data / "up.json").read_text())
            token = next(
                line.split()[1]
                for line in Path(state["tokens"]).read_text().splitlines()
                if line.startswith("reasons-host ")
            )
            client = CollectorExporter(state["collector"], token, state["cafile"])
            client.export(_rows("reasons-host", time.time_ns()), "batch-1")
            client.close()
            health = until(
                lambda: {g["group"]: g["rows"] for g in _get(state, "health")},
                lambda got: got.get("all") == 2,
                timeout_s=60,
                every_s=0.25,
            )
            assert health.get("unattributed reason=no_evidence") == 2, health
            assert "unattributed reason=(not recorded)" not in health
        finally:
            p.terminate()
            p.wait(30)

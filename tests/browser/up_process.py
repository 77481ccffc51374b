"""A real `flowtrail up --no-agent` process over a store filled beforehand with known flows."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa

from flowtrail.lab.wait import started
from flowtrail.store import Store


class UpWithFlows:
    """Writes `flows` into DATA/flows.duckdb, then starts `up` on that data directory (the
    collector opens the store as it finds it), on free ports."""

    def __init__(self, data: Path, flows: pa.Table) -> None:
        data.mkdir(parents=True)
        with Store(data / "flows.duckdb") as store:
            store.write(flows)
        self.log_path = data.parent / "up.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        self.p = subprocess.Popen(
            [sys.executable, "-m", "flowtrail.up", "--data", str(data), "--no-agent",
             "--port-collector", "0", "--port-api", "0", "--status-every", "0"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        state = data / "up.json"

        def ours() -> bool:
            return state.exists() and json.loads(state.read_text())["pid"] == self.p.pid

        started(self.p, ours, self.log_path, 90, "flowtrail up")
        self.url = json.loads(state.read_text())["api"]
        self.port = int(self.url.rsplit(":", 1)[1])

    def get_json(self, path: str) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read()
            assert r.status in (200, 503), (path, r.status, body)
            return json.loads(body)
        finally:
            conn.close()

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(60)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()

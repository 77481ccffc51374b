"""A real `flowtrail up --listen` server in one namespace of a `BridgedHosts`, with the
`flowtrail token` commands run as a user would, and HTTPS requests made from another host."""

from __future__ import annotations

import http.client
import json
import signal
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

from flowtrail.lab.bridged import BridgedHosts
from flowtrail.lab.wait import started

FLOWTRAIL = [sys.executable, "-m", "flowtrail"]


class FleetServer:
    def __init__(self, net: BridgedHosts, host: str, data: Path, *args: str) -> None:
        self.net, self.host, self.data = net, host, data
        self.log_path = data.parent / "server.log"
        with self.log_path.open("wb") as log:
            self.p = net.popen(
                host,
                [*FLOWTRAIL, "up", "--no-agent", "--listen", net.ip(host), "--data", str(data),
                 "--port-collector", "0", "--port-api", "0", "--status-every", "0", *args],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        started(self.p, (data / "up.json").exists, self.log_path, 60, "flowtrail up --listen")
        self.state: dict[str, Any] = json.loads((data / "up.json").read_text())
        # The server's own CA, or (--tls-cert) the certificate given, which trusts itself.
        self.cafile = self.state["fleet"]["cafile"] or self.state["cafile"]

    def token(self, *args: str) -> str:
        r = subprocess.run([*FLOWTRAIL, "token", *args, "--data", str(self.data)],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        assert r.returncode == 0, r.stderr
        return r.stdout

    def enrol(self, name: str, *args: str) -> dict[str, Any]:
        facts: dict[str, Any] = json.loads(self.token("add", name, "--json", *args))
        return facts

    def request(
        self,
        from_host: str,
        port: int,
        path: str,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> tuple[int, bytes, dict[str, str]]:
        """One HTTPS request from `from_host`'s namespace, trusting the server's CA file."""
        ip = self.net.ip(self.host)

        def go() -> tuple[int, bytes, dict[str, str]]:
            ctx = ssl.create_default_context(cafile=self.cafile)  # the address is in its SANs
            conn = http.client.HTTPSConnection(ip, port, context=ctx, timeout=30)
            try:
                conn.request(method, path, body=body, headers=headers or {})
                resp = conn.getresponse()
                return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
            finally:
                conn.close()

        return self.net.call(from_host, go)

    def api(self, from_host: str, path: str, token: str) -> Any:
        port = int(self.state["fleet"]["api"].rsplit(":", 1)[1])
        status, body, _h = self.request(
            from_host, port, path, headers={"Authorization": f"Bearer {token}"}
        )
        assert status == 200, (path, status, body[:300])
        return json.loads(body)

    def metric(self, from_host: str, token: str, sample: str) -> float:
        port = int(self.state["fleet"]["url"].rsplit(":", 1)[1])
        status, body, _h = self.request(
            from_host, port, "/metrics", headers={"Authorization": f"Bearer {token}"}
        )
        assert status == 200, body[:300]
        for line in body.decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[1])
        return 0.0

    def stop(self) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(60)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        return int(self.p.returncode)

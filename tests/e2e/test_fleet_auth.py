"""`flowtrail up --listen ADDR`: from another host, nothing answers without a read token.

A real server in one network namespace of a bridge (flowtrail/lab/bridged.py), requests from
another namespace over the bridge, never loopback. Every path the query API routes by
(`flowtrail.api.server.routes()`: the API's endpoints, /api, /healthz, each console file)
and an unknown one, with every method: 401 without a token, with a wrong one and with an
agent's token; with a read token GET answers and nothing writes (405). The collector's port
the same for its GETs, and its POSTs take an agent's token only. A revoked reader is refused
at its next request. Root (namespaces); no BPF.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet_server import FleetServer

from flowtrail.api.server import routes
from flowtrail.collector.client import CollectorExporter
from flowtrail.collector.devcert import self_signed
from flowtrail.lab.bridged import BridgedHosts
from flowtrail.lab.collectorproc import flows_of

pytestmark = pytest.mark.kernel

METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FleetServer]:
    with BridgedHosts(["server", "other"]) as net:
        srv = FleetServer(net, "server", tmp_path / "data")
        try:
            yield srv
        finally:
            assert srv.stop() == 0, srv.log_path.read_text()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_every_route_refuses_without_a_read_token(server: FleetServer) -> None:
    api, collector = _port(server.state["fleet"]["api"]), _port(server.state["fleet"]["url"])
    reader = server.enrol("reader", "--read")["token"]
    agent = server.enrol("web-1")["token"]
    paths = [*routes(), "/no-such-path", "/api/no-such-endpoint"]
    assert "/api/dependencies" in paths and "/" in paths and "/healthz" in paths
    assert any(p.startswith("/static/") for p in paths)
    refusing = {
        "none": {},
        "wrong": {"Authorization": "Bearer not-a-token-of-this-server"},
        "agent's": {"Authorization": f"Bearer {agent}"},
        "agent's as basic": {"Authorization": "Basic " + base64.b64encode(
            f"x:{agent}".encode()).decode()},
    }  # fmt: skip
    for path in paths:
        for method in METHODS:  # every method without a token, GET with each wrong one
            for label, headers in refusing.items() if method == "GET" else [("none", {})]:
                body = b"{}" if method in ("POST", "PUT", "PATCH") else None
                status, text, got = server.request(
                    "other", api, path, method=method, headers=headers, body=body
                )
                assert status == 401, (path, method, label, status, text[:200])
                assert got.get("www-authenticate", "").startswith("Basic"), (path, method)
                assert not text or b"read token" in text  # nothing of the answer leaks

    read = {"Authorization": f"Bearer {reader}"}
    basic = {"Authorization": "Basic " + base64.b64encode(f"me:{reader}".encode()).decode()}
    for path in paths:
        status, text, _h = server.request("other", api, path, headers=read)
        if path.startswith(("/no-such", "/api/no-such")):
            assert status == 404, (path, status)
        elif path == "/healthz":
            assert status in (200, 503), (path, status)  # 503: the known tick-lag moment
        else:
            assert status == 200, (path, status, text[:200])
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            status, _t, _h = server.request(
                "other", api, path, method=method, headers=read, body=b"{}"
            )
            assert status == 405, (path, method, status)
    status, text, _h = server.request("other", api, "/api/health", headers=basic)
    assert status == 200, text[:200]  # what a browser sends once asked

    for path in ("/metrics", "/healthz", "/no-such-path"):
        for label, headers in refusing.items():
            status, text, _h = server.request("other", collector, path, headers=headers)
            assert status == 401, (path, label, status, text[:200])
        status, text, _h = server.request("other", collector, path, headers=read)
        assert status == {"/metrics": 200, "/no-such-path": 404}.get(path, status), path
        assert status in (200, 404, 503)
    for path in ("/v1/flows", "/v1/events"):
        status, _t, _h = server.request("other", collector, path, method="POST", body=b"x")
        assert status == 401, (path, status)
        status, _t, _h = server.request(
            "other", collector, path, method="POST", body=b"x", headers=read
        )
        assert status == 403, (path, status)  # a reader may not send

    server.token("revoke", "reader")
    status, _t, _h = server.request("other", api, "/api/health", headers=read)
    assert status == 401  # at once, the server still running
    status, _t, _h = server.request("other", collector, "/metrics", headers=read)
    assert status == 401


def test_a_certificate_of_your_own(tmp_path: Path) -> None:
    """--tls-cert/--tls-key instead of the server's CA: no fingerprint to pin, agents and
    readers trust the certificate itself; tokens work the same."""
    with BridgedHosts(["server", "other"]) as net:
        cert, key = self_signed(tmp_path / "mine", net.ip("server"))
        srv = FleetServer(net, "server", tmp_path / "data", "--tls-cert", str(cert),
                          "--tls-key", str(key))  # fmt: skip
        try:
            assert srv.state["fleet"]["ca_fingerprint"] is None
            assert srv.cafile == str(cert) and not (tmp_path / "data/tls/ca.pem").exists()
            agent = srv.enrol("web-1")
            assert agent["ca_fingerprint"] is None and "--ca-fingerprint" not in agent["command"]
            reader = srv.enrol("reader", "--read")["token"]
            api = _port(srv.state["fleet"]["api"])
            assert srv.request("other", api, "/api/health")[0] == 401
            assert srv.api("other", "/api/health", reader)[0]["rows"] == 0
            rows = flows_of("web-1", 20, f"mine-{time.time_ns()}")

            def send() -> None:
                client = CollectorExporter(srv.state["fleet"]["url"], agent["token"], str(cert))
                try:
                    client.export(rows, "mine-1")
                finally:
                    client.close()
                assert client.stats["sent_rows"] == 20

            net.call("other", send)
        finally:
            assert srv.stop() == 0, srv.log_path.read_text()

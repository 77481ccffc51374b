"""Loopback-only ops endpoints (the agent's /metrics) answer only under this machine's names,
over a real loopback socket: a page whose domain was re-pointed at 127.0.0.1 (DNS rebinding)
gets 403. Endpoints meant for other hosts (cluster nodes' probes) do not check Host.
"""

from __future__ import annotations

import http.client

import pytest

from flowtrail.opshttp import OpsServer


def get(port: int, host: str | None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", "/metrics", skip_host=host is not None)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@pytest.fixture(params=[True, False], ids=["loopback-only", "for-other-hosts"])
def server(request: pytest.FixtureRequest) -> OpsServer:
    s = OpsServer({"/metrics": lambda: (200, "text/plain", b"up 1\n")}, loopback_only=request.param)
    s.start()
    request.addfinalizer(s.stop)
    return s


def test_host_names(server: OpsServer) -> None:
    for host in (None, "127.0.0.1", f"localhost:{server.port}", "[::1]"):
        assert get(server.port, host) == (200, b"up 1\n"), host
    status, _ = get(server.port, f"rebound.example:{server.port}")
    assert status == (403 if server.loopback_only else 200)

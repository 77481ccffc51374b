"""`flowtrail up`'s query API against hostile clients: a real `up --no-agent` process, real
loopback sockets. Slow clients that never finish their headers are cut at the deadline while
others are served; a request naming a foreign host (DNS rebinding) gets 403; a refused POST
still delivers its answer.
"""

from __future__ import annotations

import http.client
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowtrail.lab.slowclients import SlowClients
from flowtrail.lab.wait import started

HEADER_TIMEOUT_S = 10.0  # the API's default (flowtrail.httpguard.ConnectionLimits)


class UpNoAgent:
    def __init__(self, data: Path, *args: str) -> None:
        self.log_path = data.parent / "up.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        self.p = subprocess.Popen(
            [sys.executable, "-m", "flowtrail.up", "--data", str(data), "--no-agent",
             "--port-collector", "0", "--port-api", "0", "--status-every", "0", *args],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        state = data / "up.json"

        def ours() -> bool:
            return state.exists() and json.loads(state.read_text())["pid"] == self.p.pid

        started(self.p, ours, self.log_path, 60, "flowtrail up")
        api = json.loads(state.read_text())["api"]
        self.port = int(api.rsplit(":", 1)[1])

    def get(self, path: str, host: str | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            if host is None:
                conn.request("GET", path)
            else:
                conn.putrequest("GET", path, skip_host=True)
                conn.putheader("Host", host)
                conn.endheaders()
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        self.log.close()


@pytest.fixture
def up(tmp_path: Path) -> Iterator[UpNoAgent]:
    u = UpNoAgent(tmp_path / "data", "--api-allow-host", "flowtrail.internal")
    yield u
    u.close()


def readers(up: UpNoAgent, seconds: float) -> tuple[list[float], list[str]]:
    """10 clients asking /api/health on fresh connections every 0.2 s."""
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def run() -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            began = time.perf_counter()
            try:
                status, body = up.get("/api/health?since=15m")
            except OSError as exc:
                with lock:
                    failures.append(repr(exc))
            else:
                with lock:
                    if status == 200:
                        latencies.append(time.perf_counter() - began)
                    else:
                        failures.append(f"{status}: {body[:200]!r}")
            time.sleep(0.2)  # pacing of the reader, not synchronisation

    threads = [threading.Thread(target=run) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, failures


@pytest.mark.slow
def test_slow_clients_are_cut_and_readers_served(up: UpNoAgent) -> None:
    before, failed = readers(up, 3.0)
    assert not failed, failed
    # 500 connections dribbling a request line one byte every 2 s, from 50 other addresses.
    sources = [f"127.0.2.{i}" for i in range(1, 51) for _ in range(10)]
    with SlowClients(("127.0.0.1", up.port), sources, every_s=2.0, payload=b"GET /api/") as slow:
        during, failed = readers(up, HEADER_TIMEOUT_S + 4)
        oldest = slow.oldest()
        lifetimes = slow.closed_lifetimes()
    assert not failed, failed[:5]
    base_p50, attack_p50 = statistics.median(before), statistics.median(during)
    assert attack_p50 <= 3 * base_p50 + 0.25, (base_p50, attack_p50)
    grace = 3.0
    assert lifetimes and max(lifetimes) <= HEADER_TIMEOUT_S + grace, max(lifetimes or [0])
    assert oldest <= HEADER_TIMEOUT_S + grace, oldest


def test_only_the_names_it_is_served_under(up: UpNoAgent) -> None:
    for host in (None, "127.0.0.1", f"127.0.0.1:{up.port}", f"localhost:{up.port}",
                 "LOCALHOST", "flowtrail.internal:80", "[::1]:4741"):  # fmt: skip
        status, body = up.get("/api/health?since=15m", host)
        assert status == 200, (host, body)
    for host in ("attacker.example", f"attacker.example:{up.port}", "localhost.attacker.example",
                 "127.0.0.1.nip.io", ""):  # fmt: skip
        status, body = up.get("/api/health?since=15m", host)
        assert status == 403, (host, status, body)
        assert b"not a name this API is served under" in body


def test_a_refused_post_still_gets_its_answer(up: UpNoAgent) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", up.port, timeout=20)
    conn.request("POST", "/api/flows", body=b"x" * (8 << 20))  # more than the socket buffers
    r = conn.getresponse()
    assert r.status == 405 and b"read-only" in r.read()
    conn.close()

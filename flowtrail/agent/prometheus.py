"""The agent's counters as Prometheus metrics, served on a loopback `/metrics` endpoint.

Every counter the agent keeps (Agent.metrics()) is exposed, read at scrape time. Losses
(capture's drop reasons, the spool's dropped batches) get a `reason` label under one name,
so a single alert can watch every way a flow can be lost.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from flowtrail.errors import InputError

PREFIX = "flowtrail_agent_"
DROP_PREFIX = "capture_drop_"
GAUGES = frozenset({"held_rows", "queued_rows", "spool_bytes", "spool_batches"})

Read = Callable[[], dict[str, int]]


class AgentCounters:
    """A prometheus_client collector reading the agent's counters at scrape time."""

    def __init__(self, read: Read) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        values = self._read()
        drops = CounterMetricFamily(
            PREFIX + "capture_dropped_records",
            "records the kernel side lost, by reason (ring buffer full, map full, ...)",
            labels=["reason"],
        )
        for key, value in sorted(values.items()):
            if key.startswith(DROP_PREFIX):
                drops.add_metric([key.removeprefix(DROP_PREFIX)], float(value))
            elif key in GAUGES:
                yield GaugeMetricFamily(PREFIX + key, f"agent {key}", value=float(value))
            else:
                yield CounterMetricFamily(PREFIX + key, f"agent {key}", value=float(value))
        yield drops


def render(read: Read) -> bytes:
    """The Prometheus text exposition of the agent's counters, right now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCounters(read))  # type: ignore[arg-type]
    return bytes(generate_latest(registry))


class MetricsServer:
    """GET /metrics on a loopback address, in a daemon thread."""

    def __init__(self, read: Read, host: str = "127.0.0.1", port: int = 0) -> None:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise InputError(
                f"--metrics-listen {host!r}: the agent serves metrics on loopback only"
            )

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "only /metrics here")
                    return
                body = render(read)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise InputError(f"--metrics-listen {host}:{port}: cannot listen: {exc}") from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="agent-metrics", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> int:
        self._thread.start()
        return self.port

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

"""The agent's counters as Prometheus metrics, served on a loopback `/metrics` endpoint.

Every counter the agent keeps (Agent.metrics()) is exposed, read at scrape time; levels
that go down (held, queued, spooled) are gauges. Capture's losses get a `reason` label under
one name (`capture_dropped_records`), the DNS side's likewise (`dns_dropped_packets`); the
other losses (`backlog_dropped_rows`, the spool's
`spool_dropped_*`) are counters of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from flowtrail.opshttp import PROMETHEUS_TEXT, OpsServer

PREFIX = "flowtrail_agent_"
DROP_PREFIX = "capture_drop_"
DNS_DROP_PREFIX = "dns_drop_"
GAUGES = frozenset(
    {
        "held_rows",
        "queued_rows",
        "spool_bytes",
        "spool_pending_batches",
        "capture_raw_tracepoint",
        "dns_held_rows",
        "dns_spool_bytes",
        "dns_spool_pending_batches",
    }
)

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
        dns_drops = CounterMetricFamily(
            PREFIX + "dns_dropped_packets",
            "DNS packets that gave no rows though they should have, by reason (truncated, "
            "malformed, ring buffer full, ...)",
            labels=["reason"],
        )
        for key, value in sorted(values.items()):
            if key.startswith(DROP_PREFIX):
                drops.add_metric([key.removeprefix(DROP_PREFIX)], float(value))
            elif key.startswith(DNS_DROP_PREFIX):
                dns_drops.add_metric([key.removeprefix(DNS_DROP_PREFIX)], float(value))
            elif key in GAUGES:
                yield GaugeMetricFamily(PREFIX + key, f"agent {key}", value=float(value))
            else:
                yield CounterMetricFamily(PREFIX + key, f"agent {key}", value=float(value))
        yield drops
        if dns_drops.samples:
            yield dns_drops


def render(read: Read) -> bytes:
    """The Prometheus text exposition of the agent's counters, right now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCounters(read))  # type: ignore[arg-type]
    return bytes(generate_latest(registry))


class MetricsServer(OpsServer):
    """GET /metrics on a loopback address, in a daemon thread."""

    def __init__(self, read: Read, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(
            {"/metrics": lambda: (200, PROMETHEUS_TEXT, render(read))},
            host,
            port,
            flag="--metrics-listen",
            loopback_only=True,
        )

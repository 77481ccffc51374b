"""A cluster node's operations endpoints: /metrics, /healthz, /readyz.

- /healthz (liveness): 200 while the node's event loop is alive (its status snapshot is
  fresh) and its loops have not stopped; 503 otherwise: restart the process.
- /readyz (readiness): 200 once the node's consumers are attached, it is connected to NATS
  and it has read the evidence its stream held when it started (its ownership state is
  rebuilt); 503 with the reason before that, or while NATS is unreachable.
- /metrics: every counter the node keeps, plus gauges of its state, Prometheus style.

All three read the snapshot the node makes on its own loop (ClusterNode.status()).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from flowtrail.opshttp import PROMETHEUS_TEXT, OpsServer, Route, json_answer

PREFIX = "flowtrail_node_"
STALE_AFTER_S = 30.0  # no fresh snapshot for this long: the event loop is stuck
GAUGES = (
    ("held_batches", "work batches held until their rows are stored"),
    ("waiting_flows", "flows waiting for ownership evidence"),
    ("evidence_pending", "evidence messages not yet delivered to this node (last known)"),
    ("ownership_ranges", "ownership time ranges held"),
    ("ownership_claims_waiting", "heartbeat claims learned, merged at the next decision"),
    ("ownership_bytes", "bytes of ownership ranges"),
    ("peer_bytes", "bytes of the peer-row index"),
    (
        "event_bytes",
        "bytes of control-plane events held (past the retention: the last per address)",
    ),
    ("waiting_bytes", "bytes of the waiting pool"),
    ("translating_bytes", "bytes of the addresses known to source-translate (NAT gateways)"),
)
FLAGS = (
    ("attached", "1 when the work and evidence consumers are attached"),
    ("caught_up", "1 once the evidence retained at start has been read"),
    ("nats_connected", "1 while connected to a NATS server"),
)
LABELLED = ("decided", "unattributed", "incarnation", "region")

Status = Callable[[], dict[str, object]]


def _num(value: object) -> float:
    assert isinstance(value, int | float | bool)
    return float(value)


class NodeCollector:
    """A prometheus_client collector over a node's status snapshot."""

    def __init__(self, status: Status) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        s = self._status()
        if not s:
            return
        info = GaugeMetricFamily(PREFIX + "info", "this node", labels=["region", "incarnation"])
        info.add_metric([str(s["region"]), str(s["incarnation"])], 1.0)
        yield info
        for key, doc in (*GAUGES, *FLAGS):
            yield GaugeMetricFamily(PREFIX + key, doc, value=_num(s[key]))
        yield GaugeMetricFamily(
            PREFIX + "data_clock_seconds",
            "the node's data clock (received time it has decided up to)",
            value=_num(s["data_clock_ns"]) / 1e9,
        )
        gauges = {k for k, _ in (*GAUGES, *FLAGS)} | {"data_clock_ns", *LABELLED}
        for key, value in sorted(s.items()):
            if key not in gauges:
                yield CounterMetricFamily(PREFIX + key, f"node {key}", value=_num(value))
        for key, label, doc in (
            ("decided", "source", "flows decided, by how (heartbeat, event, unattributed)"),
            ("unattributed", "reason", "flows left unattributed, by reason"),
        ):
            family = CounterMetricFamily(PREFIX + key + "_flows", doc, labels=[label])
            values = s[key]
            assert isinstance(values, dict)
            for name, n in sorted(values.items()):
                family.add_metric([str(name)], float(n))
            yield family


def render(status: Status) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(status))  # type: ignore[arg-type]
    return bytes(generate_latest(registry))


def health(status: Status, age_s: Callable[[], float], running: Callable[[], bool]) -> Route:
    def answer() -> tuple[int, str, bytes]:
        age = age_s()
        ok = running() and age < STALE_AFTER_S
        body = {"ok": ok, "running": running(), "status_age_s": round(age, 3)}
        return json_answer(200 if ok else 503, body)

    return answer


def readiness(status: Status) -> Route:
    def answer() -> tuple[int, str, bytes]:
        s = status()
        why = [
            reason
            for key, reason in (
                ("attached", "consumers not attached yet"),
                ("nats_connected", "not connected to NATS"),
                ("caught_up", "still reading the evidence stream (rebuilding ownership)"),
            )
            if not s.get(key)
        ]
        body = {"ready": not why, "waiting_for": why, "evidence_pending": s.get("evidence_pending")}
        return json_answer(200 if not why else 503, body)

    return answer


def serve(
    status: Status,
    age_s: Callable[[], float],
    running: Callable[[], bool],
    host: str,
    port: int,
) -> OpsServer:
    """Start the node's endpoints on host:port (port 0: a free one; see .port)."""
    server = OpsServer(
        {
            "/metrics": lambda: (200, PROMETHEUS_TEXT, render(status)),
            "/healthz": health(status, age_s, running),
            "/readyz": readiness(status),
        },
        host,
        port,
        flag="--listen",
    )
    server.start()
    return server

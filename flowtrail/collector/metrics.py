"""The collector's Prometheus metrics: one registry per collector, everything that moves.

Per-flow quantities (the wait histogram) are counted with numpy over whole batches and
exposed through a custom collector, so no Python call is made per flow.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

WAIT_BUCKETS_S = (0.5, 1, 2, 5, 10, 30, 60, 120, 180, 300, 600, 1800)
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class BulkHistogram:
    """A histogram fed whole arrays at once (cumulative counts, Prometheus style)."""

    def __init__(self, bounds_s: tuple[float, ...]) -> None:
        self.bounds_ns = np.array([round(b * 1e9) for b in bounds_s], np.int64)
        self.bounds_s = bounds_s
        self.counts = np.zeros(len(bounds_s) + 1, np.int64)  # last: above every bound
        self.sum_ns = 0
        self._lock = threading.Lock()

    def observe_ns(self, values: npt.NDArray[np.int64]) -> None:
        if len(values) == 0:
            return
        idx = np.searchsorted(self.bounds_ns, values, side="left")
        add = np.bincount(idx, minlength=len(self.counts))
        with self._lock:
            self.counts += add
            self.sum_ns += int(values.sum())

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        with self._lock:
            cum = np.cumsum(self.counts)
            total_s = self.sum_ns / 1e9
        buckets = [(str(b), float(c)) for b, c in zip(self.bounds_s, cum[:-1], strict=True)]
        buckets.append(("+Inf", float(cum[-1])))
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=total_s)


class _Live:
    """Values read at scrape time from the engine, the log and the sink."""

    def __init__(self, read: Callable[[], dict[str, object]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        v = self._read()
        yield _gauge("flowtrail_collector_waiting_flows", "flows waiting for evidence", v)
        yield _gauge("flowtrail_collector_ownership_entries", "ownership time ranges held", v)
        yield _gauge("flowtrail_collector_wal_bytes", "write-ahead log bytes on disk", v)
        yield _gauge("flowtrail_collector_wal_segments", "write-ahead log segments", v)
        yield _gauge("flowtrail_collector_sink_backlog_rows", "decided rows not yet stored", v)
        yield _gauge(
            "flowtrail_collector_log_records_unreadable",
            "log records skipped at the last start (torn tail: never acknowledged; else damage)",
            v,
        )
        decided = CounterMetricFamily(
            "flowtrail_collector_attributed_flows",
            "flows decided, by how (heartbeat, event, unattributed)",
            labels=["source"],
        )
        sources = v["decided"]
        assert isinstance(sources, dict)
        for source, n in sorted(sources.items()):
            decided.add_metric([source], float(n))
        yield decided
        un = CounterMetricFamily(
            "flowtrail_collector_unattributed_flows",
            "flows left unattributed, by reason",
            labels=["reason"],
        )
        reasons = v["unattributed"]
        assert isinstance(reasons, dict)
        for reason, n in sorted(reasons.items()):
            un.add_metric([reason], float(n))
        yield un
        wait = v["wait"]
        assert isinstance(wait, BulkHistogram)
        yield wait.family(
            "flowtrail_collector_attribution_wait_seconds",
            "collector time from a flow's receipt to its decision",
        )


def _gauge(name: str, doc: str, v: dict[str, object]) -> GaugeMetricFamily:
    key = name.removeprefix("flowtrail_collector_")
    value = v[key]
    assert isinstance(value, int | float)
    return GaugeMetricFamily(name, doc, value=float(value))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.rows_in = Counter(
            "flowtrail_collector_rows_accepted", "rows accepted (durable)", ["kind"], registry=r
        )
        self.batches_in = Counter(
            "flowtrail_collector_batches_accepted", "batches accepted", ["kind"], registry=r
        )
        self.duplicates = Counter(
            "flowtrail_collector_duplicate_batches",
            "batches re-sent with a batch id already accepted (acknowledged, not re-applied)",
            registry=r,
        )
        self.refused = Counter(
            "flowtrail_collector_refused_batches", "batches refused, by reason", ["reason"],
            registry=r,
        )  # fmt: skip
        self.refused_rows = Counter(
            "flowtrail_collector_refused_rows",
            "rows in refused batches (where readable), by reason",
            ["reason"],
            registry=r,
        )
        self.rows_out = Counter(
            "flowtrail_collector_rows_stored", "decided rows written to the sink", registry=r
        )
        self.rows_listening = Counter(
            "flowtrail_collector_rows_listening",
            "listening sockets' rows learnt from as heartbeats and written nowhere",
            registry=r,
        )
        self.rows_expired = Counter(
            "flowtrail_collector_rows_expired", "stored rows deleted by retention", registry=r
        )
        self.rows_replayed = Counter(
            "flowtrail_collector_rows_replayed",
            "rows re-read from the write-ahead log at start",
            ["kind"],
            registry=r,
        )
        self.sink_failures = Counter(
            "flowtrail_collector_sink_failures", "sink writes that failed (retried)", registry=r
        )
        self.tick_failures = Counter(
            "flowtrail_collector_tick_failures",
            "ticks that raised (logged, retried next tick; /healthz 503 until one succeeds)",
            registry=r,
        )
        self.log_refused = Counter(
            "flowtrail_collector_log_refused_batches",
            "logged batches refused on replay by today's checks (kept in quarantine), by reason",
            ["reason"],
            registry=r,
        )
        self.log_refused_rows = Counter(
            "flowtrail_collector_log_refused_rows", "rows in those batches", ["reason"], registry=r
        )
        self.sink_refused = Counter(
            "flowtrail_collector_sink_refused_batches",
            "decided batches the sink refused (not retried: kept in quarantine)",
            registry=r,
        )
        self.sink_refused_rows = Counter(
            "flowtrail_collector_sink_refused_rows", "rows in those batches", registry=r
        )
        self.quarantined = Counter(
            "flowtrail_collector_quarantined_batches", "refused batches kept", registry=r
        )
        self.latency = Histogram(
            "flowtrail_collector_batch_latency_seconds",
            "time to accept a batch: read, check, durable log, hand to the engine",
            ["kind"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.wait = BulkHistogram(WAIT_BUCKETS_S)

    def add_live(self, read: Callable[[], dict[str, object]]) -> None:
        self.registry.register(_Live(read))  # type: ignore[arg-type]

    def text(self) -> bytes:
        return bytes(generate_latest(self.registry))

"""The agent's /metrics: every counter, drops labelled by reason, loopback only."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from flowtrail.agent.prometheus import MetricsServer, render
from flowtrail.errors import InputError


def counters() -> dict[str, int]:
    # The shape Agent.metrics() returns (a stand-in: the real agent needs the kernel; its
    # counters are exercised by the kernel tests).
    return {
        "captured_rows": 12,
        "exported_rows": 10,
        "held_rows": 2,
        "capture_drop_ringbuf_full": 3,
        "capture_drop_map_full": 0,
    }


def test_render_exposes_every_counter_and_drops_by_reason() -> None:
    text = render(counters).decode()
    assert "flowtrail_agent_captured_rows_total 12.0" in text
    assert "flowtrail_agent_exported_rows_total 10.0" in text
    assert "# TYPE flowtrail_agent_held_rows gauge" in text
    assert 'flowtrail_agent_capture_dropped_records_total{reason="ringbuf_full"} 3.0' in text
    assert 'flowtrail_agent_capture_dropped_records_total{reason="map_full"} 0.0' in text


def test_server_answers_metrics_and_refuses_other_addresses() -> None:
    server = MetricsServer(counters, "127.0.0.1", 0)
    port = server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            body = answer.read().decode()
        assert "flowtrail_agent_captured_rows_total 12.0" in body
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)
    finally:
        server.stop()
    with pytest.raises(InputError, match="loopback only"):
        MetricsServer(counters, "10.1.2.3", 0)


def test_delivery_levels_are_gauges(tmp_path: Path) -> None:
    """Levels that go down (the spool's pending batches and bytes) are gauges, read from a
    real Delivery with a spool, so a renamed key cannot silently turn into a counter."""
    from flowtrail.agent.exporter import Delivery, ParquetDir, Spool

    delivery = Delivery(ParquetDir(tmp_path / "out"), Spool(tmp_path / "spool", 1 << 20))
    levels = {k: v for k, v in delivery.metrics().items() if k.startswith("spool_")}
    assert {"spool_pending_batches", "spool_bytes"} <= set(levels)
    text = render(lambda: levels).decode()
    assert "# TYPE flowtrail_agent_spool_pending_batches gauge" in text
    assert "# TYPE flowtrail_agent_spool_bytes gauge" in text

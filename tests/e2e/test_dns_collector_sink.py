"""dns_answers batches to a real collector process over TLS, as `flowtrail agent --sink
collector` sends them: POST /v1/dns_answers through the agent's own exporter, Delivery and
spool. Whatever the collector does with the table (takes it, refuses it, or has no such path
yet and answers 404), every row is accounted for: exported, spooled to be retried, or counted
as refused by the sink; none vanishes."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pyarrow as pa
from test_collector_e2e import Proc, token

from flowtrail.agent.exporter import Delivery, Spool, TableExporter
from flowtrail.collector.client import CollectorExporter
from flowtrail.schema import DNS_ANSWERS


def dns_rows(n: int) -> pa.Table:
    now = time.time_ns()
    return pa.Table.from_pylist(
        [
            {
                "exporter": "dns-host",
                "region": None,
                "observed_ns": now + i,
                "local_workload": "svc-a",
                "network": None,
                "query_name": f"api{i}.example.test",
                "cname_chain": None,
                "address": f"192.0.2.{i + 1}",
                "ttl_s": 60,
            }
            for i in range(n)
        ],
        schema=DNS_ANSWERS.schema,
    )


def test_every_row_exported_spooled_or_counted_as_refused(tmp_path: Path) -> None:
    proc = Proc(tmp_path, ["dns-host"])
    try:
        sink = TableExporter(
            CollectorExporter(proc.url, token("dns-host"), proc.cafile), "dns_answers"
        )
        spool = Spool(tmp_path / "spool", 1 << 20)
        delivery = Delivery(sink, spool)
        for n in (3, 4):
            delivery.submit(dns_rows(n))
        m = delivery.metrics()
        kept = m["spooled_rows"]
        refused = sink.stats["refused_rows"]
        assert m["export_dropped_rows"] == 0
        assert m["exported_rows"] + kept == 7
        assert sink.stats["sent_rows"] + refused == m["exported_rows"]
        if kept:  # a collector without the table: the batches wait, in order, to be retried
            # 404 while the collector has no such path (403 if its tokens do not allow it)
            assert re.search(r"answered 40[34]", delivery.last_error or ""), delivery.last_error
            assert m["spool_pending_batches"] == 2
        sink.inner.close()  # type: ignore[attr-defined]
    finally:
        proc.p.kill()
        proc.p.wait(10)

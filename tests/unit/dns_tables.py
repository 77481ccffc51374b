"""Small flows and dns_answers tables for the remote_dns tests, written row by row."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from flowtrail.schema import DNS_ANSWERS, FLOWS
from flowtrail.tables import validate

S = 1_000_000_000
STRIPE = "203.0.113.10"


def flows_table(rows: list[dict[str, Any]]) -> pa.Table:
    base = {"exporter": "h1", "direction": "outbound", "state": "closed", "bytes_sent": 1,
            "bytes_received": 1, "local_ip": "10.0.0.1", "local_workload": "billing",
            "remote_ip": STRIPE, "remote_port": 443}  # fmt: skip
    full = [{**base, "flow_id": f"f{i}", "local_port": 40000 + i, **r} for i, r in enumerate(rows)]
    for r in full:
        r.setdefault("end_ns", r["start_ns"] + S)
        r.setdefault("received_ns", r["end_ns"] + S)
    return validate(table(full), FLOWS)


def table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows to a table with every key any row has (from_pylist reads the first row's only)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows])


def answers_table(rows: list[dict[str, Any]]) -> pa.Table:
    base = {"exporter": "h1", "local_workload": "billing", "address": STRIPE, "ttl_s": 60}
    return validate(table([{**base, **r} for r in rows]), DNS_ANSWERS)

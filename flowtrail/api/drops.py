"""Losses by reason, read from a Prometheus registry for /healthz (and the console's health view).

A server that runs a collector (and in `flowtrail up`, an agent) already counts every loss
for /metrics; this reads the same counters, so the two cannot disagree. Keys are
"<part>: <reason>", values counts since the process started.
"""

from __future__ import annotations

from typing import Any

# metric family → (label naming the reason or None, the key's text)
FAMILIES: dict[str, tuple[str | None, str]] = {
    "flowtrail_agent_capture_dropped_records": ("reason", "agent capture: {}"),
    "flowtrail_agent_spool_dropped_rows": (None, "agent spool full: rows dropped"),
    "flowtrail_agent_export_dropped_rows": (None, "agent export failed, no spool: rows"),
    "flowtrail_collector_refused_rows": ("reason", "collector refused rows: {}"),
}


def drops_from_registry(registry: Any) -> dict[str, int]:
    """{"agent capture: ringbuf_full": 0, "collector refused rows: bad_token": 12, ...}."""
    out: dict[str, int] = {}
    for family in registry.collect():
        spec = FAMILIES.get(family.name) or FAMILIES.get(family.name + "_total")
        if spec is None:
            continue
        label, text = spec
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            key = text.format(sample.labels.get(label, "?")) if label else text
            out[key] = out.get(key, 0) + int(sample.value)
    return out

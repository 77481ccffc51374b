"""RAW_SCHEMA batches (capture's rows) → the contract's FLOWS rows, vectorised.

flow_id is `<exporter>:<sock_id>`: unique per socket per boot on this exporter, and shared by a
live connection's `active` snapshots and its final `closed` row.

Connection attempts that never established (outcome `refused`, `timeout`, `abandoned`,
`failed`) are kept: they are rows with state `closed` (the attempt is over; the contract has no
other terminal state), the contract's `outcome` column says how it ended and `established_ns`
is null. Their byte counts are 0. Consumers that want only real connections keep the outcomes
in schema.CONNECTED (`established`, `reset`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.agent.records import OUTCOMES, RAW_SCHEMA
from flowtrail.errors import InputError
from flowtrail.schema import DIRECTIONS, FLOWS, LISTENING, STATES

AGENT_SCHEMA = FLOWS.schema
"""What the agent exports: the FLOWS columns in contract order."""

_COPIED = (
    "local_ip",
    "local_port",
    "remote_ip",
    "remote_port",
    "direction",
    "start_ns",
    "end_ns",
    "established_ns",
    "bytes_sent",
    "bytes_received",
    "segs_sent",
    "segs_received",
    "retransmits",
    "srtt_us",
)


def check_raw(raw: pa.RecordBatch | pa.Table) -> None:
    """A RAW_SCHEMA batch, or an InputError naming what is missing or mistyped."""
    for f in RAW_SCHEMA:
        idx = raw.schema.get_field_index(f.name)
        if idx < 0:
            raise InputError(f"capture batch: missing column {f.name!r} of RAW_SCHEMA")
        if raw.schema.field(idx).type != f.type:
            have = raw.schema.field(idx).type
            raise InputError(f"capture batch: column {f.name!r} is {have}, expected {f.type}")


def valid_rows(raw: pa.Table) -> pa.Array:
    """Rows fit to become flows: identified, addressed, directed, with sane times."""
    ok = pc.is_valid(raw.column("sock_id"))
    for name in ("local_ip", "remote_ip", "local_port", "remote_port", "start_ns", "end_ns"):
        ok = pc.and_(ok, pc.is_valid(raw.column(name)))
    ok = pc.and_(ok, pc.is_in(raw.column("direction"), value_set=pa.array(DIRECTIONS)))
    ok = pc.and_(ok, pc.greater_equal(raw.column("start_ns"), 0))
    ok = pc.and_(ok, pc.greater_equal(raw.column("end_ns"), raw.column("start_ns")))
    return pc.fill_null(ok, False)


def assemble(
    raw: pa.RecordBatch | pa.Table,
    *,
    exporter: str,
    region: str | None,
    state: str,
    local_workload: pa.Array | None = None,
    nat: tuple[pa.Array, pa.Array] | None = None,
    translating: pa.Array | None = None,
    network: str | None = None,
    scopes: tuple[pa.Array, pa.Array] | None = None,
    pods: pa.Array | None = None,
) -> pa.Table:
    """One FLOWS row per raw row (AGENT_SCHEMA). Rows must already be valid (see valid_rows)."""
    if state not in STATES:
        raise ValueError(f"state must be one of {STATES}")
    table = pa.Table.from_batches([raw]) if isinstance(raw, pa.RecordBatch) else raw
    n = table.num_rows
    sock_text = pc.cast(table.column("sock_id"), pa.string())
    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        "flow_id": pc.binary_join_element_wise(pa.scalar(exporter), sock_text, ":"),
        "exporter": pa.array(np.full(n, exporter, dtype=object), pa.string())
        if n
        else pa.array([], pa.string()),
        "region": pa.nulls(n, pa.string())
        if region is None
        else pa.array([region] * n, pa.string()),
        "state": pa.array([state] * n, pa.string()),
        "nat_remote_ip": nat[0] if nat is not None else pa.nulls(n, pa.string()),
        "nat_remote_port": nat[1] if nat is not None else pa.nulls(n, pa.int32()),
        "local_translating": translating if translating is not None else pa.nulls(n, pa.bool_()),
        "network": pa.nulls(n, pa.string()) if network is None else pa.array([network] * n),
        "local_scope": scopes[0] if scopes is not None else pa.nulls(n, pa.string()),
        "remote_scope": scopes[1] if scopes is not None else pa.nulls(n, pa.string()),
        "local_workload": local_workload
        if local_workload is not None
        else pa.nulls(n, pa.string()),
        "local_pod": pods if pods is not None else pa.nulls(n, pa.string()),
        "received_ns": pa.nulls(n, pa.int64()),
    }
    for name in _COPIED:
        columns[name] = table.column(name)
    outcome = pc.if_else(
        pc.is_in(table.column("outcome"), value_set=pa.array([*OUTCOMES, LISTENING])),
        table.column("outcome"),
        pa.scalar("failed"),
    )
    columns["outcome"] = pc.fill_null(outcome, "failed")
    arrays = [columns[f.name] for f in AGENT_SCHEMA]
    return pa.Table.from_arrays(
        [
            a if isinstance(a, pa.ChunkedArray) else pa.chunked_array([a], f.type)
            for a, f in zip(arrays, AGENT_SCHEMA, strict=True)
        ],
        schema=AGENT_SCHEMA,
    )

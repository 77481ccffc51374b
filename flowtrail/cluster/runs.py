"""Ownership runs: what every node of a region must learn from a batch, compacted.

Every flow row with a local workload is a claim: this workload (on this exporter) held this
local address during [start_ns, end_ns]. The engine's ownership ranges merge one claimant's
overlapping or touching claims of one address into one (flowtrail/engine/ownership.py), and
the ranges depend only on that union, not on how claims were grouped. So a batch's claims are
merged here, where the batch is taken, with the engine's own function, and only the merged
runs are sent to the other nodes: one record per address, claimant and run instead of one per
flow row. A busy address's hundred flows in a batch become one record.

A record (RUNS schema, one Arrow table per batch):
- ip, exporter: the address and the host that claimed it (host-scoped addresses are keyed by
  both, as the engine keys them);
- workload, first_ns, last_ns: the claim (null workload: no claim, see translating);
- translating: the exporter source-translates others' connections to this address
  (flowtrail/engine/translating.py), which keeps ranges from ever naming it.
The skew guard needs nothing more: it widens the lookups of the flows being decided, not the
claims. A later field (an address scope, say) is one more column here and in `learn_runs`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.engine.ipkeys import IpKeys, Names
from flowtrail.engine.ownership import _union_per_claimant
from flowtrail.engine.replay import _int64
from flowtrail.engine.stream import StreamingAttribution

I64 = npt.NDArray[np.int64]

RUNS = pa.schema(
    [
        pa.field("ip", pa.string(), nullable=False),
        pa.field("exporter", pa.string(), nullable=False),
        pa.field("workload", pa.string()),
        pa.field("first_ns", pa.int64(), nullable=False),
        pa.field("last_ns", pa.int64(), nullable=False),
        pa.field("translating", pa.bool_(), nullable=False),
    ]
)


def _translating(rows: pa.Table) -> npt.NDArray[np.bool_]:
    if "local_translating" not in rows.column_names:
        return np.zeros(rows.num_rows, bool)
    col = pc.fill_null(rows.column("local_translating").cast(pa.bool_()), False)
    return np.asarray(col.to_numpy(zero_copy_only=False), bool)


def compact(rows: pa.Table, claims: npt.NDArray[np.bool_] | None = None) -> pa.Table:
    """The ownership runs of validated contract flows rows (RUNS schema).

    `claims` (per row, None: all) says whose local side may become an ownership range (the
    engine's `ranges` argument: a cluster node passes False for rows forwarded in from
    another region). Rows marked translating are recorded as such whatever `claims` says,
    as the engine records them.
    """
    n = rows.num_rows
    if n == 0:
        return RUNS.empty_table()
    keys, names = IpKeys(), Names()
    exporter_col = rows.column("exporter")
    key = keys.keys(rows.column("local_ip"), exporter_col)
    exporter = names.ids(exporter_col)
    owner = (
        names.ids(rows.column("local_workload"))
        if "local_workload" in rows.column_names
        else np.full(n, -1, np.int32)
    )
    start = _int64(rows.column("start_ns"))
    end = _int64(rows.column("end_ns"))
    claim = owner >= 0
    if claims is not None:
        claim &= claims
    pos = np.flatnonzero(claim)
    # The engine's merge per claimant (end widened to start + 1 as it widens it first).
    # Claimants are told apart by (key, owner, exporter), as the engine tells them.
    s = start[pos]
    r_key, r_owner, r_exporter, r_start, r_end = _union_per_claimant(
        key[pos], owner[pos], exporter[pos], s, np.maximum(end[pos], s + 1)
    )
    # A representative row per run, for its address text (every row of a key has one text).
    rep = pos[_first_of(key[pos], r_key)]
    tr = np.flatnonzero(_translating(rows))
    tr_rep = np.empty(0, np.int64)
    if len(tr):
        # one record per translating address: the engine keeps a set of keys
        _, first = np.unique(key[tr], return_index=True)
        tr_rep = tr[first]
    take = pa.array(np.concatenate([rep, tr_rep]))
    workload_names = names.to_arrow(np.concatenate([r_owner, np.full(len(tr_rep), -1, np.int32)]))
    # The claimant's exporter (two hosts may claim one address in one batch: a conflict the
    # ranges must see), then the translating rows' own.
    exporter_names = names.to_arrow(np.concatenate([r_exporter, exporter[tr_rep]]))
    return pa.table(
        [
            pc.take(rows.column("local_ip"), take).cast(pa.string()),
            exporter_names,
            workload_names,
            pa.array(np.concatenate([r_start, start[tr_rep]]), pa.int64()),
            pa.array(np.concatenate([r_end, end[tr_rep]]), pa.int64()),
            pa.array(np.concatenate([np.zeros(len(rep), bool), np.ones(len(tr_rep), bool)])),
        ],
        schema=RUNS,
    )


def _first_of(keys: npt.NDArray[np.uint64], wanted: npt.NDArray[np.uint64]) -> I64:
    """Index in `keys` of a row with each wanted key (every wanted key is among them)."""
    order = np.argsort(keys, kind="stable")
    at = np.searchsorted(keys[order], wanted)
    return order[at].astype(np.int64)


def learn_runs(engine: StreamingAttribution, runs: pa.Table, now: int) -> None:
    """Every node: add a batch's runs to the ownership ranges (and translating addresses)."""
    if runs.num_rows == 0:
        return
    key = engine.ipkeys.keys(runs.column("ip"), runs.column("exporter"))
    owner = engine.names.ids(runs.column("workload"))
    exporter = engine.names.ids(runs.column("exporter"))
    tr = np.asarray(runs.column("translating").to_numpy(zero_copy_only=False), bool)
    claim = owner >= 0
    engine.learn_claims(
        key[claim],
        owner[claim],
        _int64(runs.column("first_ns"))[claim],
        _int64(runs.column("last_ns"))[claim],
        exporter[claim],
        key[tr],
        now,
    )

"""Flow rows as agents would export them: one per connection end with an agent, plus snapshots.

Each agent flushes on its own clock every `flush_interval` at a per-host phase; its clock is off
by a per-host skew. So a flush happens at true time F_k = epoch + phase - skew + k * interval.
A row joins the first flush at or after its close; every flush strictly inside an open
connection emits an `active` snapshot with cumulative counters. A batch (host, flush) may be lost
(its rows never appear) or late (received minutes after the flush). Row times are written in the
exporter's skewed clock; `sim_true_start_ns` keeps the true start for the evaluator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from flowtrail.schema import FLOWS
from flowtrail.sim.addresses import REGION_NAMES
from flowtrail.sim.connections import MSS, Connections
from flowtrail.sim.scenarios import ScenarioConfig
from flowtrail.sim.world import EPOCH_NS, MODE_LB, MODE_VIP, NS, World

TRUE_START_COLUMN = "sim_true_start_ns"
CONN_ID_COLUMN = "sim_conn_id"
_K_OFFSET = 2  # flush indices start at -1 (a host's phase minus its skew may precede the epoch)

DIRECTIONS = ("outbound", "inbound")
STATES = ("active", "closed")


@dataclass
class RowStats:
    rows: int
    closed_rows: int
    active_rows: int
    still_open_connections: int
    batches: int
    lost_batches: int
    lost_rows: int
    late_batches: int
    late_rows: int
    nat_missing_rows: int
    unknown_local_rows: int


def _ends(world: World, c: Connections) -> dict[str, np.ndarray]:
    """One entry per connection end with an agent: clients' outbound, servers' inbound rows."""
    has_client = ~c.external
    ci = np.flatnonzero(has_client)
    n = c.n
    is_lb = c.mode == MODE_LB
    vip = c.mode == MODE_VIP
    nat_ok = vip & ~c.nat_missing
    client_remote = np.where(vip | is_lb, c.front_addr, c.server_addr)
    cid = np.arange(n, dtype=np.int64)

    def cat(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.concatenate([a[ci], b])

    return {
        # The LB's two legs are two TCP connections; the backend leg gets its own id.
        "conn": cat(cid, np.where(is_lb, cid + n, cid)),
        "side": cat(np.zeros(n, np.int64), np.ones(n, np.int64)),
        "host": cat(c.client_host, c.server_host),
        "local_addr": cat(c.client_addr, c.server_addr),
        "local_port": cat(c.client_port, c.server_port),
        "remote_addr": cat(client_remote, np.where(is_lb, c.front_addr, c.client_addr)),
        "remote_port": cat(c.front_port, np.where(is_lb, c.lb_port, c.client_port)),
        "nat_addr": cat(np.where(nat_ok, c.server_addr, -1), np.full(n, -1, np.int32)),
        "nat_port": cat(np.where(nat_ok, c.server_port, -1), np.full(n, -1, np.int32)),
        "nat_missing": cat(c.nat_missing, np.zeros(n, bool)),
        "direction": cat(np.zeros(n, np.int8), np.ones(n, np.int8)),
        "start": cat(c.start_ns, c.server_start_ns),
        "end": cat(c.end_ns, c.server_end_ns),
        "bytes_sent": cat(c.bytes_up, c.bytes_down),
        "bytes_received": cat(c.bytes_down, c.bytes_up),
        "segs_sent": cat(
            c.bytes_up // MSS + 3 + c.retrans_up, c.bytes_down // MSS + 2 + c.retrans_down
        ),
        "segs_received": cat(c.bytes_down // MSS + 2, c.bytes_up // MSS + 3),
        "retransmits": cat(c.retrans_up, c.retrans_down),
        "srtt_us": cat(c.srtt_client_us, c.srtt_server_us),
        "service": cat(c.client_service, c.server_service),
    }


def build_rows(
    world: World, c: Connections, cfg: ScenarioConfig, rng: np.random.Generator
) -> tuple[pa.Table, RowStats]:
    e = _ends(world, c)
    interval = int(cfg.flush_interval * NS)
    host = e["host"]
    skew = world.host_skew_ns[host]
    base = EPOCH_NS + world.host_phase_ns[host] - skew  # true time of flush k = 0
    start, end = e["start"], e["end"]
    closed = end <= world.end_ns
    k_close = -((base - end) // interval)  # first flush at or after the close: ceil
    k_lo = -((base - start - 1) // interval)  # first flush strictly after the start
    k_cap = (world.end_ns - base) // interval  # last flush inside the simulated window
    k_hi = np.minimum(k_close - 1, k_cap)
    n_snap = np.maximum(k_hi - k_lo + 1, 0)
    n_out = n_snap + closed
    rep = np.repeat(np.arange(len(host)), n_out)
    group_start = np.repeat(np.cumsum(n_out) - n_out, n_out)
    j = np.arange(len(rep)) - group_start
    is_closed = j == n_snap[rep]
    k = np.where(is_closed, k_close[rep], k_lo[rep] + j)

    # Batches: one per (host, flush); each lost or late with the scenario's probability.
    n_k = int(-(-(world.end_ns - EPOCH_NS) // interval)) + 2 + _K_OFFSET + 2
    n_batches = len(world.host_names) * n_k
    lost = rng.random(n_batches) < cfg.lost_batches
    late = ~lost & (rng.random(n_batches) < cfg.late_batches)
    late_lo = min(60.0, cfg.late_batch_delay)
    late_extra = np.where(late, rng.uniform(late_lo, cfg.late_batch_delay, n_batches) * NS, 0)
    net_delay = rng.lognormal(np.log(0.05), 0.8, n_batches) * NS  # collector is ~50 ms away
    # Ends whose agent cannot name the local workload: decided per end, so snapshots agree.
    # (Drawn after the batches, so that the lost/late pattern does not depend on --flows.)
    unknown = rng.random(len(host)) < cfg.unknown_local
    e["service"] = np.where(unknown, -1, e["service"])
    batch = host[rep].astype(np.int64) * n_k + k + _K_OFFSET
    all_rows = np.bincount(batch, minlength=n_batches)  # before losses, for the counts
    keep = ~lost[batch]
    rep, k, is_closed, batch = rep[keep], k[keep], is_closed[keep], batch[keep]

    flush_true = base[rep] + k * interval
    received = flush_true + (net_delay[batch] + late_extra[batch]).astype(np.int64)
    true_start = start[rep]
    row_end_true = np.where(is_closed, end[rep], flush_true)
    # Snapshot counters are the final totals scaled by the share of the lifetime elapsed.
    span = np.maximum(end[rep] - true_start, 1)
    frac = np.where(is_closed, 1.0, (flush_true - true_start) / span)

    def counter(name: str) -> np.ndarray:
        scaled: np.ndarray = np.floor(e[name][rep] * frac).astype(np.int64)
        return scaled

    order = np.argsort(received, kind="stable")
    sk = skew[rep]
    cols = {
        "conn": e["conn"][rep],
        "side": e["side"][rep],
        "host": host[rep],
        "local_addr": e["local_addr"][rep],
        "local_port": e["local_port"][rep],
        "remote_addr": e["remote_addr"][rep],
        "remote_port": e["remote_port"][rep],
        "nat_addr": e["nat_addr"][rep],
        "nat_port": e["nat_port"][rep],
        "direction": e["direction"][rep],
        "start": true_start + sk,
        "end": row_end_true + sk,
        "state": is_closed.astype(np.int8),
        "bytes_sent": counter("bytes_sent"),
        "bytes_received": counter("bytes_received"),
        "segs_sent": counter("segs_sent"),
        "segs_received": counter("segs_received"),
        "retransmits": counter("retransmits"),
        "srtt_us": e["srtt_us"][rep],
        "service": e["service"][rep],
        "received": received,
        "true_start": true_start,
    }
    cols = {name: v[order] for name, v in cols.items()}
    table = _to_table(world, cols)

    batch_rows = np.bincount(batch, minlength=n_batches)
    nonempty = all_rows > 0
    stats = RowStats(
        rows=table.num_rows,
        closed_rows=int(is_closed.sum()),
        active_rows=int((~is_closed).sum()),
        still_open_connections=int((~closed).sum()),
        batches=int(nonempty.sum()),
        lost_batches=int((lost & nonempty).sum()),
        lost_rows=int(all_rows[lost].sum()),
        late_batches=int((late & nonempty).sum()),
        late_rows=int(batch_rows[late].sum()),
        nat_missing_rows=int(e["nat_missing"][rep].sum()),
        unknown_local_rows=int(table.column("local_workload").null_count),
    )
    return table, stats


def _to_table(world: World, cols: dict[str, np.ndarray]) -> pa.Table:
    texts = world.book.texts()

    def addr(idx: np.ndarray) -> pa.Array:
        return texts.take(pa.array(idx, pa.int32(), mask=idx < 0))

    def port(p: np.ndarray) -> pa.Array:
        return pa.array(p, pa.int32(), mask=p < 0)

    def names(values: list[str] | tuple[str, ...], idx: np.ndarray) -> pa.Array:
        return pa.array(list(values), pa.string()).take(pa.array(idx, pa.int32(), mask=idx < 0))

    flow_id = pa.array(cols["conn"] * 2 + cols["side"], pa.int64()).cast(pa.string())
    region = world.host_region[cols["host"]]
    arrays = {
        "flow_id": flow_id,
        "exporter": names(world.host_names, cols["host"]),
        "region": names(REGION_NAMES, region),
        "local_ip": addr(cols["local_addr"]),
        "local_port": port(cols["local_port"]),
        "remote_ip": addr(cols["remote_addr"]),
        "remote_port": port(cols["remote_port"]),
        "nat_remote_ip": addr(cols["nat_addr"]),
        "nat_remote_port": port(cols["nat_port"]),
        "direction": names(DIRECTIONS, cols["direction"]),
        "start_ns": pa.array(cols["start"], pa.int64()),
        "end_ns": pa.array(cols["end"], pa.int64()),
        "state": names(STATES, cols["state"]),
        "bytes_sent": pa.array(cols["bytes_sent"], pa.int64()),
        "bytes_received": pa.array(cols["bytes_received"], pa.int64()),
        "segs_sent": pa.array(cols["segs_sent"], pa.int64()),
        "segs_received": pa.array(cols["segs_received"], pa.int64()),
        "retransmits": pa.array(cols["retransmits"], pa.int64()),
        "srtt_us": pa.array(cols["srtt_us"], pa.int64()),
        "local_workload": names(world.service_names, cols["service"]),
        "received_ns": pa.array(cols["received"], pa.int64()),
        # the simulator models completed connections only, without handshake timing
        "established_ns": pa.nulls(len(cols["start"]), pa.int64()),
        "outcome": pa.nulls(len(cols["start"]), pa.string()),
    }
    # Optional columns the simulated fleet has nothing for (no host source-translates) are left out.
    fields = [f for f in FLOWS.schema if f.name in arrays]
    data = [arrays[f.name] for f in fields]
    fields += [pa.field(TRUE_START_COLUMN, pa.int64()), pa.field(CONN_ID_COLUMN, pa.int64())]
    data += [pa.array(cols["true_start"], pa.int64()), pa.array(cols["conn"], pa.int64())]
    return pa.Table.from_arrays(data, schema=pa.schema(fields))

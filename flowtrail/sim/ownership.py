"""Who owned which address when: the truth table, the control-plane event feed, reuse stats.

Instance addresses (IPv4 and IPv6), LB addresses and VIPs are all ownership intervals
[from, to) in true time. The truth table lists them as they are; the event feed turns each into
an `assign` and (when it ends inside the simulation) an `unassign`, each received after a
delivery delay, a fraction of them many minutes late, so the feed arrives reordered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from flowtrail.schema import EVENTS, TRUTH
from flowtrail.sim.scenarios import ScenarioConfig
from flowtrail.sim.world import NEVER, NS, World


@dataclass
class Ownership:
    addr: np.ndarray  # address index
    owner: np.ndarray  # index into `workloads`
    from_ns: np.ndarray
    to_ns: np.ndarray  # NEVER while still owned
    workloads: list[str]


def ownership(world: World) -> Ownership:
    n_svc = len(world.service_names)
    v6 = world.inst_v6 >= 0
    n_vip = int((world.dep_vip >= 0).sum())
    vips = world.dep_vip >= 0
    addr = np.concatenate([world.inst_v4, world.inst_v6[v6], world.lb_addr, world.dep_vip[vips]])
    owner = np.concatenate(
        [
            world.inst_service,
            world.inst_service[v6],
            n_svc + world.dep_service[world.lb_dep],  # "lb-<service>"
            world.dep_service[vips],
        ]
    )
    from_ns = np.concatenate(
        [
            world.inst_assign_ns,
            world.inst_assign_ns[v6],
            world.lb_create_ns,
            np.full(n_vip, world.vip_assign_ns, np.int64),
        ]
    )
    to_ns = np.concatenate(
        [
            world.inst_release_ns,
            world.inst_release_ns[v6],
            world.lb_release_ns,
            np.full(n_vip, NEVER, np.int64),
        ]
    )
    order = np.lexsort((from_ns, addr))
    return Ownership(
        addr[order].astype(np.int32),
        owner[order].astype(np.int32),
        from_ns[order],
        to_ns[order],
        world.service_names + world.lb_names,
    )


def truth_table(world: World, own: Ownership) -> pa.Table:
    texts = world.book.texts()
    return pa.Table.from_arrays(
        [
            texts.take(pa.array(own.addr)),
            pa.array(own.workloads, pa.string()).take(pa.array(own.owner)),
            pa.array(own.from_ns, pa.int64()),
            pa.array(own.to_ns, pa.int64(), mask=own.to_ns == NEVER),
        ],
        # Simulated addresses are owned by address alone: no exporter or port narrows them.
        schema=pa.schema([TRUTH.column(n).field for n in ("ip", "workload", "from_ns", "to_ns")]),
    )


@dataclass
class EventStats:
    events: int
    late_events: int
    max_delay_s: float


def events_table(
    world: World, own: Ownership, cfg: ScenarioConfig, rng: np.random.Generator
) -> tuple[pa.Table, EventStats]:
    ends = own.to_ns != NEVER
    addr = np.concatenate([own.addr, own.addr[ends]])
    owner = np.concatenate([own.owner, own.owner[ends]])
    time_ns = np.concatenate([own.from_ns, own.to_ns[ends]])
    action = np.concatenate([np.zeros(len(own.addr), np.int8), np.ones(int(ends.sum()), np.int8)])
    n = len(addr)
    delay = rng.lognormal(np.log(max(cfg.event_delay, 1e-6)), 1.0, n) * (cfg.event_delay > 0)
    late = rng.random(n) < cfg.late_events
    late_lo = min(60.0, cfg.late_event_delay)
    delay = np.where(late, rng.uniform(late_lo, cfg.late_event_delay, n), delay)
    received = time_ns + (delay * NS).astype(np.int64)
    order = np.lexsort((time_ns, received))
    texts = world.book.texts()
    table = pa.Table.from_arrays(
        [
            texts.take(pa.array(addr[order])),
            pa.array(own.workloads, pa.string()).take(pa.array(owner[order])),
            pa.array(["assign", "unassign"], pa.string()).take(pa.array(action[order])),
            pa.array(time_ns[order], pa.int64()),
            pa.array(received[order], pa.int64()),
        ],
        schema=EVENTS.schema,
    )
    stats = EventStats(n, int(late.sum()), float(delay.max()) if n else 0.0)
    return table, stats


@dataclass
class ReuseStats:
    addresses: int
    reuses: int  # an address handed to a new owner after a release
    cross_workload_reuses: int  # ... to a different workload
    reuses_within_10s: int  # cross-workload reuses with a free gap under 10 s
    gap_p50_s: float | None
    gap_min_s: float | None


def reuse_stats(own: Ownership) -> ReuseStats:
    same = own.addr[1:] == own.addr[:-1]
    gap = (own.from_ns[1:] - own.to_ns[:-1])[same]
    cross = (own.owner[1:] != own.owner[:-1])[same]
    cross_gap = gap[cross] / NS
    return ReuseStats(
        addresses=len(np.unique(own.addr)),
        reuses=int(same.sum()),
        cross_workload_reuses=int(cross.sum()),
        reuses_within_10s=int((cross_gap < 10).sum()),
        gap_p50_s=float(np.median(cross_gap)) if len(cross_gap) else None,
        gap_min_s=float(cross_gap.min()) if len(cross_gap) else None,
    )

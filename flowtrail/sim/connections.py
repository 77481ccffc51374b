"""Connections between instances, generated vectorised over all connections at once.

A connection picks a dependency edge (client service -> server service), a start time, a live
client instance and a live backend instance (retrying a few random slots when a slot is between
instances), a way in (direct to the pod address, through a DNAT VIP, or through an agent-less
LB), a duration (lognormal; a few % long-lived) clipped so that neither end outlives its address,
and counters. Nothing here is per-connection Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flowtrail.sim.scenarios import ScenarioConfig
from flowtrail.sim.world import MODE_DIRECT, MODE_LB, MODE_VIP, NEVER, NS, World

MSS = 1448
_TRIES = 8  # random slots tried per lookup before a connection is given up (counted)


@dataclass
class Connections:
    """One entry per connection; for LB connections two TCP legs (client->LB, LB->backend)."""

    mode: np.ndarray  # MODE_* actually used
    external: np.ndarray  # bool: caller has no agent (no client row)
    client_inst: np.ndarray  # -1 for external callers
    client_service: np.ndarray  # -1 for external callers
    client_host: np.ndarray  # -1 for external callers
    client_addr: np.ndarray
    client_port: np.ndarray  # set by assign_ephemeral_ports once all chunks are joined
    server_service: np.ndarray
    server_host: np.ndarray
    server_addr: np.ndarray  # the backend instance's address
    server_port: np.ndarray
    front_addr: np.ndarray  # VIP or LB address, -1 for direct
    front_port: np.ndarray
    lb_port: np.ndarray  # the LB's source port on the backend leg
    nat_missing: np.ndarray  # bool: the client's conntrack lookup failed (VIP only)
    start_ns: np.ndarray  # client leg, true time
    end_ns: np.ndarray
    server_start_ns: np.ndarray  # backend row (accept time, or the LB leg's start), true
    server_end_ns: np.ndarray
    bytes_up: np.ndarray  # client -> server payload
    bytes_down: np.ndarray
    retrans_up: np.ndarray
    retrans_down: np.ndarray
    srtt_client_us: np.ndarray
    srtt_server_us: np.ndarray
    long_lived: np.ndarray
    dropped_no_client: int
    dropped_no_server: int

    @property
    def n(self) -> int:
        return len(self.start_ns)


@dataclass(frozen=True)
class Graph:
    edge_client: np.ndarray
    edge_server: np.ndarray
    edge_weight: np.ndarray  # probabilities, sum 1
    entry_weight: np.ndarray  # per service: how likely an external caller targets it


def build_graph(world: World, rng: np.random.Generator) -> Graph:
    """A random dependency graph among services; external callers favour LB-fronted ones."""
    n = len(world.service_names)
    clients, servers = [], []
    for s in range(n):
        k = int(rng.integers(1, min(4, n - 1) + 1))
        targets = rng.choice(np.delete(np.arange(n), s), size=k, replace=False)
        clients += [s] * k
        servers += [int(t) for t in targets]
    w = rng.lognormal(0.0, 1.0, len(clients))
    has_lb = np.zeros(n, dtype=bool)
    has_lb[world.dep_service[world.dep_mode == MODE_LB]] = True
    entry = np.where(has_lb, 4.0, 1.0)
    return Graph(
        np.array(clients, dtype=np.int32),
        np.array(servers, dtype=np.int32),
        w / w.sum(),
        entry / entry.sum(),
    )


def _pick_instance(
    world: World,
    rng: np.random.Generator,
    slot_lo: np.ndarray,
    slot_n: np.ndarray,
    t: np.ndarray,
) -> np.ndarray:
    """For each query a random live (ready, not draining) instance of the given slot range."""
    span_us = (world.end_ns - world.start_ns) // 1000 + 2
    inst_key = world.inst_slot * span_us + (world.inst_assign_ns - world.start_ns) // 1000
    out = np.full(len(t), -1, dtype=np.int64)
    todo = np.arange(len(t))
    for _ in range(_TRIES):
        if len(todo) == 0:
            break
        tt = t[todo]
        slot = slot_lo[todo] + (rng.random(len(todo)) * slot_n[todo]).astype(np.int64)
        key = slot * span_us + (tt - world.start_ns) // 1000
        idx = np.searchsorted(inst_key, key, side="right") - 1
        # Keys are in microseconds: step back when the candidate was assigned after t.
        idx = np.where((idx >= 0) & (world.inst_assign_ns[np.maximum(idx, 0)] > tt), idx - 1, idx)
        safe = np.maximum(idx, 0)
        ok = (
            (idx >= 0)
            & (world.inst_slot[safe] == slot)
            & (world.inst_ready_ns[safe] <= tt)
            & (world.inst_drain_ns[safe] > tt)
        )
        out[todo[ok]] = idx[ok]
        todo = todo[~ok]
    return out


def _pick_lb(world: World, dep: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The LB taking new connections for deployment `dep` at time t (the latest created)."""
    span_us = (world.end_ns - world.start_ns) // 1000 + 2
    lb_key = world.lb_dep.astype(np.int64) * span_us + (world.lb_create_ns - world.start_ns) // 1000
    key = dep.astype(np.int64) * span_us + (t - world.start_ns) // 1000
    idx = np.searchsorted(lb_key, key, side="right") - 1
    stepped: np.ndarray = np.where(world.lb_create_ns[np.maximum(idx, 0)] > t, idx - 1, idx)
    return stepped


def _take(values: np.ndarray, idx: np.ndarray, fill: int) -> np.ndarray:
    """values[idx], with `fill` where idx < 0 (also when `values` is empty)."""
    if len(values) == 0:
        return np.full(len(idx), fill, dtype=values.dtype)
    out: np.ndarray = np.where(idx >= 0, values[np.maximum(idx, 0)], fill)
    return out


def generate(
    world: World, graph: Graph, cfg: ScenarioConfig, rng: np.random.Generator, n: int
) -> Connections:
    n_regions = world.service_dep.shape[1]
    t = rng.integers(world.flows_from_ns, world.end_ns, n, dtype=np.int64)
    external = rng.random(n) < cfg.external_share
    edge = rng.choice(len(graph.edge_client), size=n, p=graph.edge_weight)
    entry = rng.choice(len(world.service_names), size=n, p=graph.entry_weight)
    client_svc = np.where(external, -1, graph.edge_client[edge]).astype(np.int32)
    server_svc = np.where(external, entry, graph.edge_server[edge]).astype(np.int32)

    # Client: a random instance, over all deployments of the client service.
    safe_c = np.maximum(client_svc, 0)
    deps_c = world.service_dep[safe_c]  # [n, regions]
    n_deps_c = (deps_c >= 0).sum(axis=1)
    pick = (rng.random(n) * n_deps_c).astype(np.int64)
    dep_c = np.take_along_axis(np.sort(deps_c, axis=1)[:, ::-1], pick[:, None], axis=1)[:, 0]
    slot_lo = world.dep_slot_ptr[dep_c]
    slot_n = world.dep_slot_ptr[dep_c + 1] - slot_lo
    client = np.full(n, -1, dtype=np.int64)
    inner = np.flatnonzero(~external)
    client[inner] = _pick_instance(world, rng, slot_lo[inner], slot_n[inner], t[inner])
    keep = external | (client >= 0)
    dropped_no_client = int((~keep).sum())

    # Server deployment: local region unless the service is not there or a cross-region call.
    client_region = np.where(
        external,
        rng.integers(0, n_regions, n),
        world.host_region[world.inst_host[np.maximum(client, 0)]],
    ).astype(np.int64)
    local = world.service_dep[server_svc, client_region]
    other = world.service_dep[server_svc, (client_region + 1) % n_regions]
    use_other = (local < 0) | ((other >= 0) & (rng.random(n) < cfg.cross_region))
    dep_s = np.where(use_other, other, local)
    mode = world.dep_mode[dep_s].copy()
    # ClusterIP-like VIPs are reachable only inside their own region's cluster.
    cross = world.dep_region[dep_s] != client_region
    mode[(mode == MODE_VIP) & (cross | external)] = MODE_DIRECT

    # Durations and round-trip times.
    long_lived = rng.random(n) < cfg.long_lived
    dur_s = np.where(
        long_lived,
        rng.lognormal(np.log(600.0), 0.6, n),
        rng.lognormal(np.log(0.15), 1.3, n),
    )
    rtt_us = np.where(
        cross,
        75_000 * rng.uniform(0.95, 1.15, n),
        rng.lognormal(np.log(400.0), 0.5, n),
    )
    rtt_us = np.where(external, rng.lognormal(np.log(30_000.0), 0.4, n), rtt_us)
    backend_rtt_us = rng.lognormal(np.log(400.0), 0.5, n)  # LB -> backend, inside the region
    dur_ns = np.maximum(dur_s * NS, 3 * rtt_us * 1000).astype(np.int64)

    client_drain = np.where(external, NEVER, world.inst_drain_ns[np.maximum(client, 0)])
    is_lb = mode == MODE_LB
    lb = np.full(n, -1, dtype=np.int64)
    lb[is_lb] = _pick_lb(world, dep_s[is_lb], t[is_lb])
    lb_release = np.where(is_lb, _take(world.lb_release_ns, lb, NEVER), NEVER)
    lb_limit = np.where(lb_release == NEVER, NEVER, lb_release - 1_000)
    end = np.minimum(np.minimum(t + dur_ns, client_drain), lb_limit)

    # Backend: chosen when the SYN reaches it (the LB leg starts a little after the client's).
    lb_delay = (rtt_us * 500 + rng.uniform(200_000, 2_000_000, n)).astype(np.int64)
    at_backend = np.where(is_lb, np.minimum(t + lb_delay, end), t)
    blo = world.dep_slot_ptr[dep_s]
    bn = world.dep_slot_ptr[dep_s + 1] - blo
    backend = np.full(n, -1, dtype=np.int64)
    backend[keep] = _pick_instance(world, rng, blo[keep], bn[keep], at_backend[keep])
    dropped_no_server = int((keep & (backend < 0)).sum())
    keep &= backend >= 0
    bsafe = np.maximum(backend, 0)
    backend_drain = world.inst_drain_ns[bsafe]
    server_end = np.minimum(end, backend_drain)
    # Without an LB both rows are one TCP connection: the client's side ends with the server.
    end = np.where(is_lb, end, server_end)
    half_rtt = (rtt_us * 500).astype(np.int64)
    server_start = np.where(is_lb, at_backend, np.minimum(t + half_rtt, end))
    keep &= end > t

    # Addresses: IPv6 when both ends are dual-stack and it is a direct call (60% of those).
    csafe = np.maximum(client, 0)
    c_v6 = np.where(external, -1, world.inst_v6[csafe])
    s_v6 = world.inst_v6[bsafe]
    use_v6 = (mode == MODE_DIRECT) & (c_v6 >= 0) & (s_v6 >= 0) & (rng.random(n) < 0.6)
    ext_addr = world.external_addrs[rng.integers(0, len(world.external_addrs), n)]
    client_addr = np.where(external, ext_addr, np.where(use_v6, c_v6, world.inst_v4[csafe])).astype(
        np.int32
    )
    server_addr = np.where(use_v6, s_v6, world.inst_v4[bsafe]).astype(np.int32)
    front = np.where(
        mode == MODE_VIP,
        world.dep_vip[dep_s],
        np.where(is_lb, _take(world.lb_addr, lb, -1), -1),
    ).astype(np.int32)
    svc_port = world.service_port[server_svc]
    front_port = np.where(mode == MODE_DIRECT, svc_port, world.service_vip_port[server_svc])

    # Counters: bytes lognormal (long-lived connections move far more), retransmits Poisson.
    scale = np.where(long_lived, rng.lognormal(np.log(300.0), 1.0, n), 1.0)
    up = np.minimum(rng.lognormal(np.log(600.0), 1.5, n) * scale, 1e12).astype(np.int64) + 1
    down = np.minimum(rng.lognormal(np.log(6000.0), 1.8, n) * scale, 1e12).astype(np.int64) + 1
    loss = np.where(cross, 0.005, 0.001)
    retrans_up = rng.poisson(loss * (up // MSS + 3)).astype(np.int64)
    retrans_down = rng.poisson(loss * (down // MSS + 3)).astype(np.int64)
    srtt_server = np.where(is_lb, backend_rtt_us, rtt_us)

    k = np.flatnonzero(keep)
    return Connections(
        mode=mode[k],
        external=external[k],
        client_service=client_svc[k],
        client_inst=client[k],
        client_host=np.where(external, -1, world.inst_host[csafe])[k].astype(np.int32),
        client_addr=client_addr[k],
        client_port=np.zeros(len(k), np.int32),
        server_service=server_svc[k],
        server_host=world.inst_host[bsafe][k],
        server_addr=server_addr[k],
        server_port=svc_port[k],
        front_addr=front[k],
        front_port=front_port[k].astype(np.int32),
        lb_port=np.zeros(len(k), np.int32),
        nat_missing=((mode == MODE_VIP) & (rng.random(n) < cfg.nat_missing))[k],
        start_ns=t[k],
        end_ns=end[k],
        server_start_ns=server_start[k],
        server_end_ns=server_end[k],
        bytes_up=up[k],
        bytes_down=down[k],
        retrans_up=retrans_up[k],
        retrans_down=retrans_down[k],
        srtt_client_us=np.maximum(rtt_us, 1).astype(np.int64)[k],
        srtt_server_us=np.maximum(srtt_server, 1).astype(np.int64)[k],
        long_lived=long_lived[k],
        dropped_no_client=dropped_no_client,
        dropped_no_server=dropped_no_server,
    )


EPHEMERAL_LO, EPHEMERAL_N = 32768, 28232  # Linux's default ip_local_port_range 32768..60999


def assign_ephemeral_ports(c: Connections, n_instances: int) -> None:
    """Source ports the way Linux roughly picks them: a hashed offset per (source, destination)
    plus a counter stepping by 2, so connections of one source to one destination never share
    a 4-tuple while they overlap (ports repeat only after ~14k connections to that destination).
    The LB's legs to its backends get ports the same way, keyed by the LB's address."""
    # Client legs: the source is the client instance (its own kernel), or the external address.
    source = np.where(c.client_inst >= 0, c.client_inst, n_instances + c.client_addr)
    dest = np.where(c.front_addr >= 0, c.front_addr, c.server_addr)
    c.client_port[:] = _ports(source, dest, c.front_port, c.start_ns)
    # LB -> backend legs: the LB's address is the source.
    c.lb_port[:] = _ports(
        c.front_addr.astype(np.int64), c.server_addr, c.server_port, c.server_start_ns
    )


def _ports(source: np.ndarray, dest: np.ndarray, dport: np.ndarray, t: np.ndarray) -> np.ndarray:
    src = source.astype(np.uint64)
    dst = dest.astype(np.uint64)
    dp = dport.astype(np.uint64)
    order = np.lexsort((t, dp, dst, src))
    s, d, p = src[order], dst[order], dp[order]
    new_group = np.r_[True, (s[1:] != s[:-1]) | (d[1:] != d[:-1]) | (p[1:] != p[:-1])]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(len(s)), 0))
    rank = (np.arange(len(s)) - group_start).astype(np.uint64)
    mix = (s * np.uint64(0x9E3779B97F4A7C15)) ^ (d * np.uint64(0xC2B2AE3D27D4EB4F)) ^ p
    mix ^= mix >> np.uint64(29)
    port = np.empty(len(s), np.int32)
    port[order] = EPHEMERAL_LO + ((mix + np.uint64(2) * rank) % np.uint64(EPHEMERAL_N)).astype(
        np.int32
    )
    return port

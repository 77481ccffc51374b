"""The simulated fleet: hosts, services, deployments, churning instances, load balancers, VIPs.

Instances are simulated per region as a small discrete-event loop (a Python loop per instance is
fine; flows never pass through here). Each deployment has `replicas` slots; a slot's instance
lives a lognormal lifetime, releases its addresses, and a replacement starts a little later and
takes the *oldest* free address of the region's pool. With only `pool_slack` spare addresses the
address a departing instance frees is handed to some other instance, usually of a different
service, within seconds.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass

import numpy as np

from flowtrail.sim.addresses import (
    EXTERNAL_V4,
    LB_V4,
    POD_V4,
    POD_V6,
    REGION_NAMES,
    VIP_V4,
    AddressBook,
)
from flowtrail.sim.scenarios import ScenarioConfig

NS = 1_000_000_000
EPOCH_NS = 1_735_689_600 * NS  # 2025-01-01T00:00:00Z: flows start here
NEVER = np.iinfo(np.int64).max  # "still owned at the end of the simulation"

MODE_DIRECT, MODE_VIP, MODE_LB = 0, 1, 2
N_EXTERNAL = 16

_BASE_NAMES = (
    "cart", "payments-api", "checkout", "catalog", "search", "users", "auth", "inventory",
    "shipping", "pricing", "recommendations", "reviews", "notifications", "ledger",
    "fraud-check", "sessions", "media", "ads", "billing", "orders", "profile", "gateway", "geo",
    "tax", "playback", "license", "bookmarks", "ratings", "subtitles", "artwork",
)  # fmt: skip
_PORTS = (8080, 8443, 9000, 7001, 5432, 6379, 8000, 3000, 9090, 7101)


def service_names(n: int) -> list[str]:
    out = []
    for i in range(n):
        base = _BASE_NAMES[i % len(_BASE_NAMES)]
        out.append(base if i < len(_BASE_NAMES) else f"{base}-{i // len(_BASE_NAMES) + 1}")
    return out


@dataclass
class World:
    """Everything about the fleet, as numpy arrays indexed by id. Times are true ns."""

    start_ns: int  # the world (and its first address assignments) begins here
    flows_from_ns: int  # connections start in [flows_from_ns, end_ns)
    end_ns: int
    book: AddressBook
    # hosts
    host_names: list[str]
    host_region: np.ndarray  # int8
    host_skew_ns: np.ndarray  # int64: host clock = true time + skew
    host_phase_ns: np.ndarray  # int64: flush phase in [0, interval)
    # services
    service_names: list[str]
    service_dual: np.ndarray  # bool: dual-stack (IPv4 + IPv6 addresses)
    service_port: np.ndarray  # int32: the port instances listen on
    service_vip_port: np.ndarray  # int32: the VIP's / LB's front port
    service_dep: np.ndarray  # int32 [service, region] -> deployment or -1
    # deployments
    dep_service: np.ndarray
    dep_region: np.ndarray
    dep_mode: np.ndarray
    dep_vip: np.ndarray  # address index or -1
    dep_slot_ptr: np.ndarray  # slots of dep d are dep_slot_ptr[d] .. dep_slot_ptr[d+1]-1
    # instances, sorted by (slot, assign time)
    inst_slot: np.ndarray
    inst_service: np.ndarray
    inst_host: np.ndarray
    inst_v4: np.ndarray  # address index or -1
    inst_v6: np.ndarray
    inst_assign_ns: np.ndarray
    inst_release_ns: np.ndarray  # NEVER while still owned at the end
    inst_ready_ns: np.ndarray  # connections may start from here ...
    inst_drain_ns: np.ndarray  # ... until here (exclusive)
    # load balancers, sorted by (deployment, create time)
    lb_dep: np.ndarray
    lb_addr: np.ndarray
    lb_create_ns: np.ndarray
    lb_release_ns: np.ndarray  # NEVER while still owned
    lb_names: list[str]  # by service: "lb-<service>"
    external_addrs: np.ndarray  # address indices of agent-less external callers
    vip_assign_ns: int

    @property
    def n_slots(self) -> int:
        return int(self.dep_slot_ptr[-1])


def build_world(cfg: ScenarioConfig, rng: np.random.Generator) -> World:
    duration_ns = int(cfg.duration * NS)
    # Warm up so that flows start in a fleet already in its churn steady state.
    warmup_ns = int(min(max(2 * cfg.lifetime, 120.0), 3600.0) * NS)
    flows_from = EPOCH_NS
    start = flows_from - warmup_ns
    end = flows_from + duration_ns
    book = AddressBook()

    # Hosts: split over the regions, each with a clock skew and a flush phase.
    n_regions = len(REGION_NAMES)
    host_region = np.arange(cfg.hosts, dtype=np.int8) % n_regions
    host_region.sort()
    host_names = []
    for r, region in enumerate(REGION_NAMES):
        count = int((host_region == r).sum())
        host_names += [f"i-{region}-{i:04d}" for i in range(count)]
    max_skew_ns = int(cfg.max_skew * 1_000_000)
    host_skew = rng.integers(-max_skew_ns, max_skew_ns + 1, cfg.hosts, dtype=np.int64)
    host_phase = rng.integers(0, int(cfg.flush_interval * NS), cfg.hosts, dtype=np.int64)

    # Services and their deployments (one per region they run in).
    names = service_names(cfg.services)
    n_svc = cfg.services
    dual = rng.random(n_svc) < cfg.ipv6_share
    port = rng.choice(np.array(_PORTS, dtype=np.int32), n_svc)
    vip_port = np.where(rng.random(n_svc) < 0.5, 80, 443).astype(np.int32)
    home = rng.integers(0, n_regions, n_svc)
    both = rng.random(n_svc) < cfg.both_regions
    service_dep = np.full((n_svc, n_regions), -1, dtype=np.int32)
    dep_service_l: list[int] = []
    dep_region_l: list[int] = []
    for s in range(n_svc):
        for r in range(n_regions):
            if r == home[s] or both[s]:
                service_dep[s, r] = len(dep_service_l)
                dep_service_l.append(s)
                dep_region_l.append(r)
    dep_service = np.array(dep_service_l, dtype=np.int32)
    dep_region = np.array(dep_region_l, dtype=np.int8)
    n_dep = len(dep_service)
    u = rng.random(n_dep)
    dep_mode = np.where(
        u < cfg.lb_share, MODE_LB, np.where(u < cfg.lb_share + cfg.vip_share, MODE_VIP, MODE_DIRECT)
    ).astype(np.int8)
    replicas = rng.integers(1, 2 * cfg.replicas + 1, n_dep)
    dep_slot_ptr = np.concatenate([[0], np.cumsum(replicas)]).astype(np.int64)
    slot_dep = np.repeat(np.arange(n_dep, dtype=np.int32), replicas)

    # VIPs: stable, owned by the service from the world's start.
    dep_vip = np.full(n_dep, -1, dtype=np.int32)
    for r, region in enumerate(REGION_NAMES):
        deps = np.flatnonzero((dep_mode == MODE_VIP) & (dep_region == r))
        addrs = book.add_pool(VIP_V4[region], len(deps), f"{region} VIP pool")
        dep_vip[deps] = addrs

    # Instances: a discrete-event loop per region.
    inst_cols: dict[str, list[int]] = {
        k: [] for k in ("slot", "host", "v4", "v6", "assign", "release")
    }
    for r, region in enumerate(REGION_NAMES):
        slots = np.flatnonzero(dep_region[slot_dep] == r)
        slot_dual = dual[dep_service[slot_dep[slots]]]
        hosts = np.flatnonzero(host_region == r)
        v4_pool = book.add_pool(POD_V4[region], len(slots) + cfg.pool_slack, f"{region} pods")
        n_v6 = int(slot_dual.sum())
        v6_pool = book.add_pool(POD_V6[region], n_v6 + cfg.pool_slack, f"{region} pods v6")
        _churn(cfg, rng, start, end, slots, slot_dual, hosts, v4_pool, v6_pool, inst_cols)

    slot_a = np.array(inst_cols["slot"], dtype=np.int64)
    assign_a = np.array(inst_cols["assign"], dtype=np.int64)
    order = np.lexsort((assign_a, slot_a))
    inst_slot = slot_a[order]
    inst_assign = assign_a[order]
    inst_release = np.array(inst_cols["release"], dtype=np.int64)[order]
    ready = inst_assign + int(cfg.ready_delay * NS)
    drain = np.where(inst_release == NEVER, NEVER, inst_release - int(cfg.drain * NS))
    # A connection must close strictly before its address is released, even with no drain.
    drain = np.where(drain == NEVER, NEVER, np.minimum(drain, inst_release - 1_000))

    lb_cols = _load_balancers(cfg, rng, book, start, end, dep_mode, dep_region)
    external = np.array(book.add_pool((EXTERNAL_V4,), N_EXTERNAL, "external"), dtype=np.int32)

    return World(
        start_ns=start,
        flows_from_ns=flows_from,
        end_ns=end,
        book=book,
        host_names=host_names,
        host_region=host_region,
        host_skew_ns=host_skew,
        host_phase_ns=host_phase,
        service_names=names,
        service_dual=dual,
        service_port=port,
        service_vip_port=vip_port,
        service_dep=service_dep,
        dep_service=dep_service,
        dep_region=dep_region,
        dep_mode=dep_mode,
        dep_vip=dep_vip,
        dep_slot_ptr=dep_slot_ptr,
        inst_slot=inst_slot,
        inst_service=dep_service[slot_dep[inst_slot]],
        inst_host=np.array(inst_cols["host"], dtype=np.int32)[order],
        inst_v4=np.array(inst_cols["v4"], dtype=np.int32)[order],
        inst_v6=np.array(inst_cols["v6"], dtype=np.int32)[order],
        inst_assign_ns=inst_assign,
        inst_release_ns=inst_release,
        inst_ready_ns=ready,
        inst_drain_ns=drain,
        lb_dep=lb_cols[0],
        lb_addr=lb_cols[1],
        lb_create_ns=lb_cols[2],
        lb_release_ns=lb_cols[3],
        lb_names=[f"lb-{n}" for n in names],
        external_addrs=external,
        vip_assign_ns=start,
    )


def _lifetime_ns(cfg: ScenarioConfig, rng: np.random.Generator) -> int:
    life = cfg.lifetime * float(rng.lognormal(0.0, 0.7))
    floor = max(0.5, cfg.ready_delay + cfg.drain + 0.5)  # leave every instance some live time
    return int(max(life, floor) * NS)


def _churn(
    cfg: ScenarioConfig,
    rng: np.random.Generator,
    start: int,
    end: int,
    slots: np.ndarray,
    slot_dual: np.ndarray,
    hosts: np.ndarray,
    v4_pool: list[int],
    v6_pool: list[int],
    out: dict[str, list[int]],
) -> None:
    """Run one region's instance churn, appending instances to `out`."""
    free4: deque[int] = deque(v4_pool)
    free6: deque[int] = deque(v6_pool)
    restart_ns = int(cfg.restart_delay * NS)
    # Heap items: (time, sequence, kind, payload); kind 0 = start in slot, 1 = release instance.
    heap: list[tuple[int, int, int, int]] = []
    seq = 0
    for i in range(len(slots)):
        heap.append((start + int(rng.integers(0, restart_ns + 1)), seq, 0, i))
        seq += 1
    heapq.heapify(heap)
    while heap:
        t, _, kind, payload = heapq.heappop(heap)
        if kind == 0:
            if t >= end:
                continue
            inst = len(out["slot"])
            out["slot"].append(int(slots[payload]))
            out["host"].append(int(hosts[rng.integers(0, len(hosts))]))
            out["v4"].append(free4.popleft())
            out["v6"].append(free6.popleft() if slot_dual[payload] else -1)
            out["assign"].append(t)
            release = t + _lifetime_ns(cfg, rng)
            if release < end:
                out["release"].append(release)
                heapq.heappush(heap, (release, seq, 1, inst))
                seq += 1
                # The replacement starts after a restart delay; it is queued now so that the
                # heap order (and so every address handed out) is fixed by the seed alone.
                again = release + int(rng.integers(0, restart_ns + 1))
                heapq.heappush(heap, (again, seq, 0, payload))
                seq += 1
            else:
                out["release"].append(int(NEVER))
        else:
            free4.append(out["v4"][payload])
            if out["v6"][payload] >= 0:
                free6.append(out["v6"][payload])


def _load_balancers(
    cfg: ScenarioConfig,
    rng: np.random.Generator,
    book: AddressBook,
    start: int,
    end: int,
    dep_mode: np.ndarray,
    dep_region: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """LB timelines per LB deployment: created, replaced (hostile), old one released later."""
    rows: list[tuple[int, int, int, int]] = []  # (dep, addr, create, release)
    drain_ns = int(cfg.lb_drain * NS)
    for r, region in enumerate(REGION_NAMES):
        deps = np.flatnonzero((dep_mode == MODE_LB) & (dep_region == r))
        if len(deps) == 0:
            continue
        # Plan creations first, then hand out addresses in time order from a FIFO pool.
        plans: list[tuple[int, int, int]] = []  # (create, release, dep)
        for d in deps:
            t = start
            while True:
                if cfg.lb_lifetime > 0:
                    life = int(cfg.lb_lifetime * float(rng.lognormal(0.0, 0.5)) * NS)
                    nxt = t + max(life, drain_ns + NS)
                else:
                    nxt = NEVER
                release = NEVER if nxt >= end else nxt + drain_ns
                release = NEVER if release >= end else release
                plans.append((t, release, int(d)))
                if nxt >= end:
                    break
                t = nxt
        spare = max(2, len(deps) // 4)
        pool = book.add_pool(LB_V4[region], len(deps) * 2 + spare, f"{region} LB pool")
        free: deque[int] = deque(pool)
        timeline: list[tuple[int, int, int, int]] = []  # (time, kind 0=release 1=create, idx)
        for i, (c, rel, _) in enumerate(plans):
            timeline.append((c, 1, i, 0))
            if rel != NEVER:
                timeline.append((rel, 0, i, 0))
        timeline.sort()
        addr = [-1] * len(plans)
        for _, kind, i, _ in timeline:
            if kind == 1:
                addr[i] = free.popleft()
            else:
                free.append(addr[i])
        rows += [(d, addr[i], c, rel) for i, (c, rel, d) in enumerate(plans)]
    rows.sort(key=lambda x: (x[0], x[2]))
    arr = np.array(rows, dtype=np.int64).reshape(-1, 4)
    return (
        arr[:, 0].astype(np.int32),
        arr[:, 1].astype(np.int32),
        arr[:, 2].copy(),
        arr[:, 3].copy(),
    )

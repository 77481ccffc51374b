"""Nodes split by connection key, learning only compacted ownership runs from each other,
decide exactly like one engine replaying everything (flowtrail/cluster/partitioned.py)."""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
import pytest

from flowtrail.cluster.connkey import connection_hashes, partitions
from flowtrail.cluster.partitioned import decide_partitioned
from flowtrail.cluster.runs import RUNS, compact, learn_runs
from flowtrail.engine.attributor import Settings
from flowtrail.engine.replay import replay
from flowtrail.engine.stream import StreamingAttribution
from flowtrail.sim.scenarios import SCENARIOS
from flowtrail.sim.simulation import SimOutput, simulate

S = 1_000_000_000
DECIDED = ("remote_workload", "remote_source", "unattributed_reason", "attributed_ns")
# Harsher than any preset: faster address reuse, more skew, more and later late batches,
# more and later delayed events.
HARSH = {
    "lifetime": 8.0,
    "restart_delay": 0.5,
    "pool_slack": 1,
    "max_skew": 250.0,
    "late_batches": 0.08,
    "late_batch_delay": 700.0,
    "late_events": 0.15,
    "late_event_delay": 1500.0,
    "nat_missing": 0.2,
}


def _same(expected: pa.Table, got: pa.Table) -> None:
    assert got.num_rows == expected.num_rows
    for name in DECIDED:
        a, b = expected.column(name).to_pylist(), got.column(name).to_pylist()
        differ = [i for i in range(len(a)) if a[i] != b[i]]
        assert not differ, f"{name}: {len(differ)} rows differ, first {differ[:5]}"


@functools.cache
def _case(scenario: str, harsh: bool) -> tuple[SimOutput, Settings, pa.Table]:
    knobs = HARSH if harsh else {}
    sim = simulate(scenario, 5 if harsh else 3, flows=1_200, **knobs)
    settings = Settings(max_skew_ns=250_000_000) if harsh else Settings()
    return sim, settings, replay(sim.flows, sim.events, settings=settings).table


# Each case runs one engine per partition over the whole schedule, so the suite keeps one
# partition count per scenario (3: not a power of two, so no hash bit lines up with it) and
# the harsher knobs at 4; bench/cluster_partition.py covers other counts.
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("count", [3])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_partitions_decide_like_one_engine(scenario: str, count: int) -> None:
    sim, settings, expected = _case(scenario, False)
    got = decide_partitioned(sim.flows, sim.events, count, settings)
    assert all(n > 0 for n in got.rows_per_partition)
    _same(expected, got.table)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("count", [4])
def test_partitions_decide_like_one_engine_on_harsher_knobs(count: int) -> None:
    sim, settings, expected = _case("reuse-storm", True)
    _same(expected, decide_partitioned(sim.flows, sim.events, count, settings).table)


def test_learning_runs_gives_the_ranges_learning_rows_gives() -> None:
    # The ownership ranges depend only on the union of each claimant's claims: runs
    # compacted per batch must leave exactly the segments the raw rows leave.
    sim = simulate("hostile", 2, flows=2_000)
    flows = sim.flows
    raw = StreamingAttribution()
    raw.submit_flows(flows, 0)
    by_runs = StreamingAttribution()
    for exporter in sorted(set(flows.column("exporter").to_pylist())):
        mine = flows.filter(pa.compute.equal(flows.column("exporter"), exporter))
        runs = compact(mine)
        assert runs.schema == RUNS
        learn_runs(by_runs, runs, 0)
    a, b = raw.engine.ranges.segments, by_runs.engine.ranges.segments
    texts = [raw.ipkeys.text(int(k)) for k in a.key]
    assert texts == [by_runs.ipkeys.text(int(k)) for k in b.key]
    assert np.array_equal(a.start, b.start) and np.array_equal(a.end, b.end)
    assert raw.names.to_arrow(a.owner).equals(by_runs.names.to_arrow(b.owner))
    # fewer records than rows: one per address, claimant and run
    assert compact(flows).num_rows < flows.num_rows


def _rows(**cols: list[object]) -> pa.Table:
    base: dict[str, list[object]] = {
        "exporter": ["h1", "h2"],
        "local_ip": ["10.0.0.1", "10.0.0.2"],
        "local_port": [40000, 80],
        "remote_ip": ["10.0.0.2", "10.0.0.1"],
        "remote_port": [80, 40000],
        "nat_remote_ip": [None, None],
        "nat_remote_port": [None, None],
    }
    base.update(cols)
    types = {"local_port": pa.int32(), "remote_port": pa.int32(), "nat_remote_port": pa.int32()}
    return pa.table({k: pa.array(v, types.get(k, pa.string())) for k, v in base.items()})


def test_both_ends_of_a_connection_share_a_key() -> None:
    h = connection_hashes(_rows())
    assert h[0] == h[1]
    # A client that dialled a VIP, with the NAT resolved, meets the server's row.
    dnat = _rows(
        remote_ip=["10.9.9.9", "10.0.0.1"],
        remote_port=[443, 40000],
        nat_remote_ip=["10.0.0.2", None],
        nat_remote_port=[80, None],
    )
    h = connection_hashes(dnat)
    assert h[0] == h[1]
    # Without the NAT facts the client's row names the VIP: the engine cannot pair these
    # rows either, and they may land apart (ranges name them, on any node).
    broken = _rows(remote_ip=["10.9.9.9", "10.0.0.1"], remote_port=[443, 40000])
    h = connection_hashes(broken)
    assert h[0] != h[1]
    # IPv6 by text, stable across processes (no interned keys)
    v6 = _rows(local_ip=["fd00::1", "fd00::2"], remote_ip=["fd00::2", "fd00::1"])
    h6 = connection_hashes(v6)
    assert h6[0] == h6[1]
    assert int(h6[0]) == int(connection_hashes(v6)[0])


def test_host_scoped_addresses_are_keyed_per_exporter() -> None:
    # 127.0.0.1 on two hosts is two addresses: the same 4-tuple on two hosts is two keys.
    loop = _rows(
        exporter=["h1", "h2"],
        local_ip=["127.0.0.1", "127.0.0.1"],
        remote_ip=["127.0.0.1", "127.0.0.1"],
        local_port=[40000, 40000],
        remote_port=[80, 80],
    )
    h = connection_hashes(loop)
    assert h[0] != h[1]
    same_host = loop.set_column(0, "exporter", pa.array(["h1", "h1"]))
    h = connection_hashes(same_host)
    assert h[0] == h[1]


def test_partition_spread_is_even() -> None:
    sim = simulate("churny", 0, flows=3_000)
    counts = np.bincount(partitions(sim.flows, 4), minlength=4)
    assert counts.min() > 0.8 * counts.mean()


def test_translating_addresses_travel_in_the_runs() -> None:
    # A gateway's address is never named by ranges: the mark reaches every node, even from
    # a row without a workload (no claim).
    rows = _rows().append_column("local_workload", pa.array([None, "web"], pa.string()))
    rows = rows.append_column("local_translating", pa.array([True, False]))
    rows = rows.append_column("start_ns", pa.array([1 * S, 1 * S], pa.int64()))
    rows = rows.append_column("end_ns", pa.array([2 * S, 2 * S], pa.int64()))
    runs = compact(rows)
    assert runs.column("translating").to_pylist().count(True) == 1
    engine = StreamingAttribution()
    learn_runs(engine, runs, 5 * S)
    keys = engine.ipkeys.keys(pa.array(["10.0.0.1", "10.0.0.2"]))
    assert engine.engine.translating.contains(keys).tolist() == [True, False]
    assert len(engine.engine.ranges) == 1


def test_two_hosts_claiming_one_address_in_one_batch_stay_two_claimants() -> None:
    # The runs keep each claimant's exporter: the ranges see the conflict as raw rows do.
    rows = _rows(exporter=["h1", "h2"], local_ip=["10.0.0.7", "10.0.0.7"])
    rows = rows.append_column("local_workload", pa.array(["web", "web"], pa.string()))
    rows = rows.append_column("start_ns", pa.array([1 * S, 1 * S], pa.int64()))
    rows = rows.append_column("end_ns", pa.array([3 * S, 3 * S], pa.int64()))
    runs = compact(rows)
    assert sorted(runs.column("exporter").to_pylist()) == ["h1", "h2"]
    raw, by_runs = StreamingAttribution(), StreamingAttribution()
    raw.submit_flows(rows, 0)
    learn_runs(by_runs, runs, 0)
    key = raw.ipkeys.keys(pa.array(["10.0.0.7"]))
    window = (np.array([2 * S]), np.array([2 * S]))
    assert raw.engine.ranges.owner_over(key, *window).tolist() == [-2]  # CONFLICT
    assert by_runs.engine.ranges.owner_over(key, *window).tolist() == [-2]


def test_rows_forwarded_in_claim_nothing_but_still_mark_translating() -> None:
    # A node gives no ownership range to rows forwarded in from another region (their local
    # address is that region's): `claims` False drops the claim, not the translating mark.
    rows = _rows().append_column("local_workload", pa.array(["gw", "web"], pa.string()))
    rows = rows.append_column("local_translating", pa.array([True, False]))
    rows = rows.append_column("start_ns", pa.array([1 * S, 1 * S], pa.int64()))
    rows = rows.append_column("end_ns", pa.array([2 * S, 2 * S], pa.int64()))
    runs = compact(rows, np.array([False, True]))
    claims = runs.filter(pa.compute.is_valid(runs.column("workload")))
    assert claims.column("ip").to_pylist() == ["10.0.0.2"]
    marked = runs.filter(runs.column("translating"))
    assert marked.column("ip").to_pylist() == ["10.0.0.1"]

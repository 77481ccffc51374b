"""`flowtrail attribute` end to end, the event baseline, regions and the hash multimap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from flowtrail.cli import main
from flowtrail.engine.attributor import Settings
from flowtrail.engine.hashindex import HashMultimap
from flowtrail.engine.ipkeys import IpKeys
from flowtrail.engine.regions import RegionMap
from flowtrail.engine.replay import replay
from flowtrail.evaluate import evaluate
from flowtrail.sim.simulation import simulate, write_sim

S = 1_000_000_000


def flows_table(rows: list[dict[str, object]]) -> pa.Table:
    base = {"exporter": "h", "direction": "outbound", "state": "closed", "bytes_sent": 1,
            "bytes_received": 1}  # fmt: skip
    full = [{**base, "flow_id": f"f{i}", **r} for i, r in enumerate(rows)]
    t = pa.Table.from_pylist(full)
    for name in ("local_port", "remote_port"):
        t = t.set_column(t.column_names.index(name), name, t.column(name).cast(pa.int32()))
    return t


def test_event_baseline_uses_whoever_owns_it_when_the_flow_arrives() -> None:
    # The address moved from a to b at 50 s; a flow that started at 10 s arrives at 70 s.
    flows = flows_table([
        {"local_ip": "10.0.0.1", "local_port": 5000, "remote_ip": "10.0.0.9", "remote_port": 80,
         "start_ns": 10 * S, "end_ns": 11 * S, "received_ns": 70 * S},
    ])  # fmt: skip
    events = pa.table({
        "ip": ["10.0.0.9"] * 3, "workload": ["a", "a", "b"],
        "action": ["assign", "unassign", "assign"], "time_ns": [0, 50 * S, 50 * S],
        "received_ns": [0, 51 * S, 52 * S],
    })  # fmt: skip
    baseline = replay(flows, events, settings=Settings(method="event")).table
    assert baseline.column("remote_workload").to_pylist() == ["b"]  # wrong, as designed
    assert baseline.column("remote_source").to_pylist() == ["event"]
    ours = replay(flows, events, settings=Settings(event_lag_ns=60 * S)).table
    assert ours.column("remote_workload").to_pylist() == ["a"]  # read as time ranges
    assert ours.column("remote_source").to_pylist() == ["event"]


def test_event_fallback_waits_for_the_feed_watermark() -> None:
    flows = flows_table([
        {"local_ip": "10.0.0.1", "local_port": 5000, "remote_ip": "10.0.0.9", "remote_port": 80,
         "start_ns": 100 * S, "end_ns": 101 * S, "received_ns": 110 * S},
    ])  # fmt: skip
    # The assign arrives 10 minutes late: a short lag would give up, a long one waits for it.
    events = pa.table({"ip": ["10.0.0.9"], "workload": ["lb"], "action": ["assign"],
                       "time_ns": [0], "received_ns": [700 * S]})  # fmt: skip
    short = replay(flows, events, settings=Settings(event_lag_ns=60 * S)).table
    assert short.column("remote_workload").to_pylist() == [None]
    long = replay(flows, events, settings=Settings(event_lag_ns=900 * S)).table
    assert long.column("remote_workload").to_pylist() == ["lb"]
    assert long.column("attributed_ns").to_pylist()[0] >= 1000 * S  # after the watermark


def test_conflicting_heartbeats_leave_the_flow_unattributed() -> None:
    # Two hosts both claim 10.0.0.9 at the same time: nobody can be sure who answered.
    claims = [
        {"local_ip": "10.0.0.9", "local_port": 80, "remote_ip": "10.0.1.1", "remote_port": p,
         "start_ns": 0, "end_ns": 100 * S, "local_workload": w, "received_ns": 100 * S}
        for p, w in ((1111, "a"), (2222, "b"))
    ]  # fmt: skip
    probe = {"local_ip": "10.0.0.1", "local_port": 5000, "remote_ip": "10.0.0.9",
             "remote_port": 80, "start_ns": 50 * S, "end_ns": 51 * S, "received_ns": 100 * S,
             "local_workload": "c"}  # fmt: skip
    out = replay(flows_table([*claims, probe])).table
    assert out.column("remote_workload").to_pylist()[2] is None
    assert out.column("remote_source").to_pylist()[2] == "unattributed"


def test_regions_longest_prefix_wins_v4_and_v6() -> None:
    regions = pa.table({
        "cidr": ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "fd00::/8", "fd00:1::/32",
                 "0.0.0.0/0"],
        "region": ["a", "b", "c", "v6a", "v6b", "world"],
    })  # fmt: skip
    keys = IpKeys()
    ips = ["10.9.9.9", "10.1.9.9", "10.1.2.3", "fd00:2::1", "fd00:1::1", "8.8.8.8", "fe80::1"]
    rmap = RegionMap(regions)
    got = rmap.lookup(keys.keys(pa.array(ips)), keys)
    names = [rmap.names[i] if i >= 0 else None for i in got]
    assert names == ["a", "b", "c", "v6a", "v6b", "world", None]


@given(st.lists(st.integers(0, 50), min_size=1, max_size=300), st.integers(1, 5))
@settings(max_examples=100, deadline=None)
def test_hash_multimap_finds_every_stored_row(values: list[int], parts: int) -> None:
    hashes = np.array(values, np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    m = HashMultimap(4)
    for chunk in np.array_split(np.arange(len(values)), parts):
        m.insert(hashes[chunk], chunk.astype(np.int64))
    q, r = m.lookup(hashes)
    found = {(int(a), int(b)) for a, b in zip(q, r, strict=True)}
    expected = {(i, j) for i in range(len(values)) for j in range(len(values))
                if values[i] == values[j]}  # fmt: skip
    assert found == expected


def test_cli_on_a_hostile_fleet_never_misattributes(tmp_path: Path) -> None:
    sim = simulate("hostile", 3, flows=20_000)
    paths = write_sim(sim, tmp_path)
    out = tmp_path / "attributed.parquet"
    runner = CliRunner()
    res = runner.invoke(main, [
        "attribute", "--flows", str(paths["flows"]), "--events", str(paths["events"]),
        "--regions", str(paths["regions"]), "--out", str(out), "--json", "--quiet",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    attributed = pq.read_table(out)
    assert attributed.num_rows == sim.flows.num_rows == summary["rows"]
    assert attributed.column_names[: sim.flows.num_columns] == sim.flows.column_names
    assert summary["regions"]["handed_to_other_region"], summary["regions"]
    report = evaluate(attributed, sim.truth)
    assert report.flows.misattributed == 0
    assert report.edges.false == 0
    assert report.flows.unattributed <= 0.01 * report.flows.owned
    # The same data through the baseline shows the damage the design avoids.
    base_out = tmp_path / "baseline.parquet"
    res = runner.invoke(main, [
        "attribute", "--flows", str(paths["flows"]), "--events", str(paths["events"]),
        "--method", "event", "--out", str(base_out), "--quiet",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    baseline = evaluate(pq.read_table(base_out), sim.truth)
    assert baseline.edges.false > 0.2 * baseline.edges.predicted


def test_cli_bad_input_exits_2_with_the_place(tmp_path: Path) -> None:
    bad = tmp_path / "flows.csv"
    bad.write_text(
        "flow_id,exporter,local_ip,local_port,remote_ip,remote_port,direction,start_ns,end_ns,"
        "state,bytes_sent,bytes_received\nf1,h,10.0.0.1,1,10.0.0.2,2,outbound,1,2,closed,0,0\n"
        "f2,h,10.0.0.1,1,10.0.0.2,2,outbound,1,2,half-open,0,0\n"
    )
    out = tmp_path / "out.parquet"
    res = CliRunner().invoke(main, ["attribute", "--flows", str(bad), "--out", str(out)])
    assert res.exit_code == 2
    assert "row 2" in res.output and "'state'" in res.output and str(bad) in res.output
    assert not out.exists()
    res = CliRunner().invoke(main, ["attribute", "--flows", str(bad), "--out", str(out),
                                    "--max-wait", "soon"])  # fmt: skip
    assert res.exit_code == 2 and "--max-wait" in res.output


@pytest.mark.parametrize("method", ["heartbeat", "event"])
def test_every_row_once_with_extra_columns_untouched(method: str) -> None:
    sim = simulate("churny", 5, flows=5_000)
    out = replay(sim.flows, sim.events, settings=Settings(method=method)).table
    assert out.num_rows == sim.flows.num_rows
    assert out.column("flow_id").equals(sim.flows.column("flow_id"))
    assert out.column("sim_conn_id").equals(sim.flows.column("sim_conn_id"))
    src = set(out.column("remote_source").to_pylist())
    assert src <= {"heartbeat", "event", "unattributed"}
    ns = np.asarray(out.column("attributed_ns"))
    assert np.all(ns >= np.asarray(out.column("received_ns")))


def test_loopback_is_per_host_and_never_names_another_hosts_workload() -> None:
    # Host a runs "cache" on 127.0.0.1:6379; host b talks to its own 127.0.0.1:6379, which no
    # evidence on host b names. Host b's flow must not inherit host a's "cache".
    def row(exporter: str, lport: int, rport: int, workload: str | None, direction: str,
            start: int) -> dict[str, object]:  # fmt: skip
        return {"exporter": exporter, "local_ip": "127.0.0.1", "local_port": lport,
                "remote_ip": "127.0.0.1", "remote_port": rport, "start_ns": start,
                "end_ns": start + 600 * S, "received_ns": start + 660 * S,
                "local_workload": workload, "direction": direction}  # fmt: skip

    flows = flows_table([
        row("a", 6379, 40000, "cache", "inbound", 0),
        row("a", 40000, 6379, "api", "outbound", 0),
        row("b", 40001, 6379, "worker", "outbound", 10 * S),
    ])  # fmt: skip
    out = replay(flows).table.column("remote_workload").to_pylist()
    assert out == ["api", "cache", None]


def test_pending_pool_hands_out_each_flow_once_by_deadline_or_handle() -> None:
    from flowtrail.engine.attributor import FLOW_DTYPE
    from flowtrail.engine.pending import PendingPool

    rng = np.random.default_rng(3)
    rec = np.zeros(5000, FLOW_DTYPE)
    rec["row"] = np.arange(5000)
    rec["deadline"] = rng.integers(0, 100 * S, 5000)
    pool = PendingPool(FLOW_DTYPE)
    for part in np.array_split(rec, 7):
        pool.add(part)
    seen: list[np.ndarray] = [pool.take_rows(np.array([5, 5, 17, 999_999]))["row"]]
    now = 0
    while len(pool):
        due = pool.next_deadline()
        assert due is not None
        now = due + int(rng.integers(0, 3 * S))
        got = pool.take_due(now)
        assert np.all(got["deadline"] <= now)
        seen.append(got["row"])
    rows = np.concatenate(seen)
    assert sorted(rows.tolist()) == list(range(5000))


def test_pending_ring_collision_only_delays_a_flow_to_its_deadline() -> None:
    from flowtrail.engine.attributor import FLOW_DTYPE
    from flowtrail.engine.pending import RING_CAP, PendingPool

    rec = np.zeros(2, FLOW_DTYPE)
    rec["row"] = [7, 7 + RING_CAP]  # same slot in the ring
    rec["deadline"] = [5 * S, 6 * S]
    pool = PendingPool(FLOW_DTYPE)
    pool.add(rec)
    assert pool.take_rows(np.array([7])).size == 0  # the newer flow holds the slot
    assert pool.take_rows(np.array([7 + RING_CAP]))["row"].tolist() == [7 + RING_CAP]
    assert pool.take_due(10 * S)["row"].tolist() == [7]  # still decided, at its deadline
    assert len(pool) == 0

"""The fleet simulator: contract-valid output, determinism, and the invariants the attribution
engine's evaluation relies on (truth is consistent with every row the agents wrote).

Everything here runs the real simulator; nothing is faked. Worlds are small to stay fast.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner

from flowtrail.cli import main
from flowtrail.errors import InputError
from flowtrail.schema import EVENTS, FLOWS, REGIONS, TRUTH
from flowtrail.sim import KNOBS, SCENARIOS, SimOutput, simulate, write_sim
from flowtrail.sim.addresses import region_of
from flowtrail.tables import read_table, validate

NS = 1_000_000_000
LB_NET = ipaddress.ip_network("198.18.0.0/15")
EXTERNAL_NET = ipaddress.ip_network("203.0.113.0/24")


@pytest.fixture(scope="module")
def hostile() -> SimOutput:
    return simulate("hostile", seed=11, flows=40_000, duration=900)


@pytest.fixture(scope="module")
def calm() -> SimOutput:
    return simulate("calm", seed=11, flows=20_000, duration=900)


def col(t: pa.Table, name: str) -> np.ndarray:
    return t.column(name).to_numpy(zero_copy_only=False)


def in_net(ips: np.ndarray, net: ipaddress.IPv4Network) -> np.ndarray:
    uniq = np.unique(ips.astype(str))
    hit = {u for u in uniq if ipaddress.ip_address(u) in net}
    return np.isin(ips.astype(str), list(hit))


def owner_at(truth: pa.Table, ips: np.ndarray, times: np.ndarray) -> np.ndarray:
    """The truth's owner of each ip at each time ('' where nobody owned it), vectorised."""
    t_ip = col(truth, "ip").astype(str)
    uniq, t_code = np.unique(t_ip, return_inverse=True)
    t_from = col(truth, "from_ns")
    t_to = truth.column("to_ns").fill_null(np.iinfo(np.int64).max).to_numpy()
    t_owner = col(truth, "workload").astype(str)
    q_ip = ips.astype(str)
    pos = np.searchsorted(uniq, q_ip)
    known = (pos < len(uniq)) & (uniq[np.minimum(pos, len(uniq) - 1)] == q_ip)
    lo = min(int(t_from.min()), int(times.min()))
    span = max(int(t_from.max()), int(times.max())) - lo + 1
    order = np.lexsort((t_from, t_code))
    keys = t_code[order].astype(np.int64) * span + (t_from[order] - lo)
    q = np.where(known, pos, 0).astype(np.int64) * span + (times - lo)
    idx = np.searchsorted(keys, q, side="right") - 1
    safe = order[np.maximum(idx, 0)]
    ok = known & (idx >= 0) & (t_code[safe] == pos) & (t_from[safe] <= times) & (t_to[safe] > times)
    return np.where(ok, t_owner[safe], "")


def test_outputs_follow_the_contract(hostile: SimOutput, tmp_path: Path) -> None:
    validate(hostile.flows, FLOWS)
    validate(hostile.events, EVENTS)
    validate(hostile.regions, REGIONS)
    validate(hostile.truth, TRUTH)
    paths = write_sim(hostile, tmp_path / "out")
    for name, table in (("flows", FLOWS), ("events", EVENTS), ("regions", REGIONS)):
        back = read_table(paths[name], table)
        assert back.num_rows == getattr(hostile, name).num_rows
    flows = read_table(paths["flows"], FLOWS)
    # The extra columns survive a round trip through the file.
    assert {"sim_true_start_ns", "sim_conn_id"} <= set(flows.column_names)
    meta = json.loads(paths["scenario"].read_text())
    assert meta["seed"] == 11 and meta["scenario"] == "hostile"
    assert meta["knobs"]["flows"] == 40_000 and meta["knobs"]["max_skew"] == 100
    assert meta["summary"]["rows"]["flows"] == hostile.flows.num_rows


def test_same_seed_same_output_other_seed_differs() -> None:
    a = simulate("churny", seed=3, flows=5_000, duration=300)
    b = simulate("churny", seed=3, flows=5_000, duration=300)
    c = simulate("churny", seed=4, flows=5_000, duration=300)
    for name in ("flows", "events", "regions", "truth"):
        assert getattr(a, name).equals(getattr(b, name)), name
    assert not a.flows.equals(c.flows)
    assert not a.truth.equals(c.truth)


def test_more_flows_same_world() -> None:
    """--flows scales the traffic only: the fleet, its truth and its event feed stay put."""
    small = simulate("hostile", seed=8, flows=3_000, duration=300)
    big = simulate("hostile", seed=8, flows=12_000, duration=300)
    assert small.truth.equals(big.truth)
    assert small.events.equals(big.events)
    assert 3 < big.flows.num_rows / small.flows.num_rows < 5


def test_truth_intervals_of_one_ip_never_overlap(hostile: SimOutput) -> None:
    t = hostile.truth.sort_by([("ip", "ascending"), ("from_ns", "ascending")])
    ip = col(t, "ip").astype(str)
    f = col(t, "from_ns")
    to = t.column("to_ns").to_numpy(zero_copy_only=False)
    same = ip[1:] == ip[:-1]
    prev_to = to[:-1][same]
    assert not np.isnan(prev_to.astype(float)).any(), "an open interval is followed by another"
    assert (f[1:][same] >= prev_to.astype(np.int64)).all()
    closed = ~np.isnan(to.astype(float))
    assert (to[closed].astype(np.int64) > f[closed]).all()


def test_every_remote_has_a_true_owner_at_the_true_start(hostile: SimOutput) -> None:
    f = hostile.flows
    target = pc.coalesce(f.column("nat_remote_ip"), f.column("remote_ip")).to_numpy(
        zero_copy_only=False
    )
    external = in_net(target, EXTERNAL_NET)
    owners = owner_at(hostile.truth, target, col(f, "sim_true_start_ns"))
    assert (owners[~external] != "").all()
    assert external.sum() > 0 and (owners[external] == "").all()
    # LB addresses are owned by the LB's own workload, never by a service.
    lb = in_net(target, LB_NET)
    assert lb.sum() > 0
    assert all(o.startswith("lb-") for o in np.unique(owners[lb]))


def test_local_side_is_truthful_from_start_to_end(hostile: SimOutput) -> None:
    """Each row's local side is a correct heartbeat: its owner at the true start and end."""
    f = hostile.flows
    true_start = col(f, "sim_true_start_ns")
    skew = col(f, "start_ns") - true_start
    true_end = col(f, "end_ns") - skew
    local = col(f, "local_ip")
    wl = col(f, "local_workload")
    known = np.array([w is not None for w in wl])
    # hostile: 0.5% of ends have no local workload (the agent could not tell); never a wrong one.
    assert 0.002 < 1 - known.mean() < 0.01
    assert (owner_at(hostile.truth, local, true_start)[known] == wl[known].astype(str)).all()
    assert (owner_at(hostile.truth, local, true_end)[known] == wl[known].astype(str)).all()


def test_both_rows_of_a_connection_mirror_each_other(hostile: SimOutput) -> None:
    f = hostile.flows.filter(pc.equal(hostile.flows.column("state"), "closed"))
    out = f.filter(pc.equal(f.column("direction"), "outbound"))
    inb = f.filter(pc.equal(f.column("direction"), "inbound"))
    o_id, i_id = col(out, "sim_conn_id"), col(inb, "sim_conn_id")
    both, oi, ii = np.intersect1d(o_id, i_id, return_indices=True)
    assert len(both) > 0.8 * len(o_id)
    o_remote = pc.coalesce(out.column("nat_remote_ip"), out.column("remote_ip"))
    o_remote_ip = o_remote.to_numpy(zero_copy_only=False)[oi]
    o_nat_port = out.column("nat_remote_port").to_numpy(zero_copy_only=False)[oi]
    o_port = np.where(np.isnan(o_nat_port.astype(float)), col(out, "remote_port")[oi], o_nat_port)
    assert (col(out, "local_ip")[oi] == col(inb, "remote_ip")[ii]).all()
    assert (col(out, "local_port")[oi] == col(inb, "remote_port")[ii]).all()
    # Where the client's NAT info is missing it saw only the VIP; elsewhere the real backend.
    nat_missing = in_net(o_remote_ip, ipaddress.ip_network("172.16.0.0/12"))
    assert nat_missing.sum() > 0
    assert (o_remote_ip[~nat_missing] == col(inb, "local_ip")[ii][~nat_missing]).all()
    assert (o_port[~nat_missing].astype(int) == col(inb, "local_port")[ii][~nat_missing]).all()
    assert (col(out, "bytes_sent")[oi] == col(inb, "bytes_received")[ii]).all()
    assert (col(out, "exporter")[oi] != "").all()
    # The two ends are on (usually) different hosts with different skews: starts disagree.
    diff = col(out, "start_ns")[oi] - col(inb, "start_ns")[ii]
    assert (diff != 0).mean() > 0.9


def test_no_two_live_connections_share_a_four_tuple() -> None:
    """A kernel cannot hold two connections with one 4-tuple at once; peers match on it.

    A dense world (two services, one or two instances each, half the connections long-lived)
    makes random source ports collide (about 30 overlaps for this seed); Linux-like ports don't.
    """
    import polars as pl

    out = simulate(
        "churny", seed=5, flows=60_000, services=2, replicas=1, hosts=2, long_lived=0.5,
        lifetime=900, duration=600, lb_share=0, vip_share=0,
    )  # fmt: skip
    closed = out.flows.filter(pc.equal(out.flows.column("state"), "closed"))
    f = pl.from_arrow(closed)
    assert isinstance(f, pl.DataFrame)
    tup = ["exporter", "local_ip", "local_port", "remote_ip", "remote_port"]
    f = f.with_columns(
        true_end=pl.col("end_ns") - (pl.col("start_ns") - pl.col("sim_true_start_ns"))
    ).sort([*tup, "sim_true_start_ns"])
    f = f.with_columns(prev_end=pl.col("true_end").cum_max().shift(1).over(tup))
    overlapping = f.filter(pl.col("prev_end") > pl.col("sim_true_start_ns"))
    assert f.height > 15_000
    assert overlapping.height == 0, overlapping.head(3)


@pytest.mark.parametrize(
    "knobs",
    [
        {"lb_share": 0, "vip_share": 0, "external_share": 1},
        {"lb_share": 1, "vip_share": 0, "ipv6_share": 1},
        {"lb_share": 0, "vip_share": 1, "both_regions": 1, "cross_region": 1},
        {"services": 2, "hosts": 2, "replicas": 1, "pool_slack": 1, "lifetime": 0.5},
        {"lost_batches": 1},
        {"flows": 1, "duration": 1},
    ],
)
def test_extreme_knobs_still_give_truthful_output(knobs: dict[str, float]) -> None:
    out = simulate("hostile", seed=1, **{"flows": 3_000, "duration": 300, **knobs})
    validate(out.flows, FLOWS)
    validate(out.events, EVENTS)
    validate(out.truth, TRUTH)
    if out.flows.num_rows == 0:
        assert knobs.get("lost_batches") == 1 and out.stats["flow_rows"]["lost_rows"] > 0
        return
    f = out.flows
    target = pc.coalesce(f.column("nat_remote_ip"), f.column("remote_ip")).to_numpy(
        zero_copy_only=False
    )
    owners = owner_at(out.truth, target, col(f, "sim_true_start_ns"))
    assert (owners[~in_net(target, EXTERNAL_NET)] != "").all()
    wl = col(f, "local_workload")
    known = np.array([w is not None for w in wl])
    owners = owner_at(out.truth, col(f, "local_ip"), col(f, "sim_true_start_ns"))
    assert (owners[known] == wl[known].astype(str)).all()


def test_vip_rows_name_vip_and_backend(hostile: SimOutput) -> None:
    f = hostile.flows
    vip = in_net(col(f, "remote_ip"), ipaddress.ip_network("172.16.0.0/12"))
    out = col(f, "direction") == "outbound"
    nat = f.column("nat_remote_ip").to_numpy(zero_copy_only=False)
    rows = vip & out
    missing = np.array([x is None for x in nat[rows]])
    assert 0.02 < missing.mean() < 0.09  # hostile: 5% of VIP client rows lack NAT info
    # The VIP and the backend it was translated to belong to the same service.
    t0 = col(f, "sim_true_start_ns")[rows][~missing]
    vip_owner = owner_at(hostile.truth, col(f, "remote_ip")[rows][~missing], t0)
    backend_owner = owner_at(hostile.truth, nat[rows][~missing], t0)
    assert (vip_owner == backend_owner).all() and (vip_owner != "").all()


def test_skew_is_per_host_and_bounded(hostile: SimOutput) -> None:
    f = hostile.flows
    skew = col(f, "start_ns") - col(f, "sim_true_start_ns")
    exporter = col(f, "exporter").astype(str)
    hosts, inv = np.unique(exporter, return_inverse=True)
    lo = np.full(len(hosts), np.iinfo(np.int64).max)
    hi = np.full(len(hosts), np.iinfo(np.int64).min)
    np.minimum.at(lo, inv, skew)
    np.maximum.at(hi, inv, skew)
    assert (lo == hi).all(), "one host, one skew"
    assert np.abs(skew).max() <= 100 * 1_000_000
    assert np.abs(lo).max() > 50 * 1_000_000  # hostile skew is really up to 100 ms


def test_addresses_are_reused_within_seconds_by_other_services(hostile: SimOutput) -> None:
    t = hostile.truth.sort_by([("ip", "ascending"), ("from_ns", "ascending")])
    ip, wl = col(t, "ip").astype(str), col(t, "workload").astype(str)
    f = col(t, "from_ns")
    to = t.column("to_ns").fill_null(0).to_numpy()
    same = (ip[1:] == ip[:-1]) & (wl[1:] != wl[:-1])
    gaps = (f[1:] - to[:-1])[same]
    assert (gaps < 5 * NS).sum() > 100
    assert any(":" in x for x in ip[1:][same]), "IPv6 addresses are reused too"


def test_calm_reuses_rarely(calm: SimOutput) -> None:
    t = calm.truth
    assert len(np.unique(col(t, "ip"))) == t.num_rows  # big pools: no address had two owners


def _orphans(out: SimOutput) -> int:
    """Closed connections without an LB or external caller that lack one of their two ends.

    (A connection still open at the end may have a snapshot from one end only: not counted.)
    """
    f = out.flows.filter(pc.equal(out.flows.column("state"), "closed"))
    remote = col(f, "remote_ip")
    special = in_net(remote, LB_NET) | in_net(remote, EXTERNAL_NET)
    ids = col(f, "sim_conn_id")[~special]
    dirs = col(f, "direction")[~special]
    has_out = np.unique(ids[dirs == "outbound"])
    has_in = np.unique(ids[dirs == "inbound"])
    return len(np.setxor1d(has_out, has_in))


def test_late_and_lost_batches_only_where_configured(hostile: SimOutput, calm: SimOutput) -> None:
    def late_rows(o: SimOutput) -> int:
        f = o.flows
        lag = col(f, "received_ns") - col(f, "end_ns")
        return int((lag > 125 * NS).sum())

    assert late_rows(hostile) > 100 and late_rows(calm) == 0
    assert _orphans(hostile) > 10 and _orphans(calm) == 0
    s = hostile.stats["flow_rows"]
    assert s["lost_batches"] > 0 and s["lost_rows"] > 0 and s["late_rows"] > 0


def test_received_ns_follows_the_flush_schedule(calm: SimOutput) -> None:
    f = calm.flows
    received, end = col(f, "received_ns"), col(f, "end_ns")
    lag = received - end
    assert (lag >= -2 * 1_000_000).all()  # a closed row leaves at the next flush (skew aside)
    assert lag.max() < 62 * NS
    # One batch per (exporter, flush): a host's rows arrive in a handful of distinct instants.
    exporter = col(f, "exporter")
    one = exporter == exporter[0]
    assert len(np.unique(received[one])) <= calm.config.duration / 60 + 3


def test_active_snapshots_share_flow_id(hostile: SimOutput) -> None:
    f = hostile.flows.sort_by([("flow_id", "ascending"), ("end_ns", "ascending")])
    state = col(f, "state")
    fid = col(f, "flow_id")
    active_ids = np.unique(fid[state == "active"])
    assert len(active_ids) > 50
    sel = np.isin(fid, active_ids)
    g = f.filter(pa.array(sel))
    gid = col(g, "flow_id")
    first = np.r_[True, gid[1:] != gid[:-1]]
    same = ~first
    for name in ("exporter", "local_ip", "local_port", "remote_ip", "start_ns"):
        v = col(g, name)
        assert (v[1:][same[1:]] == v[:-1][same[1:]]).all(), name
    for name in ("bytes_sent", "bytes_received", "segs_sent"):
        v = col(g, name)
        assert (v[1:][same[1:]] >= v[:-1][same[1:]]).all(), name
    e = col(g, "end_ns")
    assert (e[1:][same[1:]] > e[:-1][same[1:]]).all()
    # A closed row is last; flow ids never repeat for closed rows.
    closed = col(f, "state") == "closed"
    assert len(np.unique(fid[closed])) == closed.sum()
    gs = col(g, "state")
    last = np.r_[gid[1:] != gid[:-1], True]
    assert (gs[~last] == "active").all()


def test_events_cover_truth_and_arrive_reordered(hostile: SimOutput) -> None:
    ev, truth = hostile.events, hostile.truth
    assigns = ev.filter(pc.equal(ev.column("action"), "assign"))
    key_ev = set(
        zip(col(assigns, "ip"), col(assigns, "workload"), col(assigns, "time_ns"), strict=True)
    )
    key_tr = set(zip(col(truth, "ip"), col(truth, "workload"), col(truth, "from_ns"), strict=True))
    assert key_ev == key_tr
    unassigns = ev.filter(pc.equal(ev.column("action"), "unassign"))
    ended = truth.filter(pc.is_valid(truth.column("to_ns")))
    assert unassigns.num_rows == ended.num_rows
    received, t = col(ev, "received_ns"), col(ev, "time_ns")
    assert (np.diff(received) >= 0).all()  # the feed is in arrival order ...
    assert (np.diff(t) < 0).sum() > 100  # ... which is not the order things happened
    assert ((received - t) > 60 * NS).sum() > 50


def test_lbs_are_replaced_and_only_in_events(hostile: SimOutput) -> None:
    truth = hostile.truth
    wl = col(truth, "workload").astype(str)
    lb = np.char.startswith(wl, "lb-")
    _, counts = np.unique(wl[lb], return_counts=True)
    assert counts.max() >= 2, "hostile LBs get replaced"
    t = truth.filter(pa.array(lb)).sort_by([("ip", "ascending"), ("from_ns", "ascending")])
    ip, owner = col(t, "ip"), col(t, "workload")
    handed_on = (ip[1:] == ip[:-1]) & (owner[1:] != owner[:-1])
    assert handed_on.sum() > 0, "a released LB address goes to another LB"
    lb_ips = set(col(truth, "ip")[lb])
    assert not lb_ips & set(col(hostile.flows, "local_ip")), "an LB has no agent"
    assert lb_ips & set(col(hostile.events, "ip"))


def test_local_ips_match_exporter_region_by_longest_prefix(hostile: SimOutput) -> None:
    f = hostile.flows
    pairs = {(str(a), str(b)) for a, b in zip(col(f, "local_ip"), col(f, "region"), strict=True)}
    assert any(ip.startswith("10.70.") for ip, _ in pairs), "us-east pods in the nested /16"
    assert any(":" in ip for ip, _ in pairs), "IPv6 flows exist"
    for ip, region in pairs:
        assert region_of(ip) == region, ip
    for ip in col(hostile.truth, "ip"):
        assert ipaddress.ip_address(ip).compressed == ip


def test_flows_knob_sets_row_count() -> None:
    out = simulate("churny", seed=1, flows=60_000, duration=600)
    assert 0.9 * 60_000 < out.flows.num_rows < 1.1 * 60_000


@pytest.mark.parametrize(
    ("knobs", "needle"),
    [
        ({"hosts": -1}, "--hosts"),
        ({"services": 0}, "--services"),
        ({"lost_batches": 1.5}, "--lost-batches"),
        ({"max_skew": 40_000}, "--max-skew"),
        ({"flows": 2.5}, "--flows"),
        ({"lb_share": 0.7, "vip_share": 0.7}, "--vip-share"),
        ({"pool_slack": 200_000}, "--pool-slack: must be at most 100000"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_knobs_name_the_flag(knobs: dict[str, float], needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        simulate("churny", seed=0, **knobs)


def test_api_takes_a_config_or_a_name() -> None:
    cfg = SCENARIOS["calm"].with_knobs(flows=2_000, duration=120.0)
    by_config = simulate(scenario=cfg, seed=5)
    by_name = simulate(scenario="calm", seed=5, flows=2_000, duration=120.0)
    assert by_config.flows.equals(by_name.flows)
    assert by_config.config == by_name.config


def test_unknown_scenario_lists_the_known_ones() -> None:
    with pytest.raises(InputError, match=r"'nope'.*calm, churny, hostile, reuse-storm"):
        simulate("nope", seed=0)


def test_cli_writes_files_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    args = ["sim", "--out", str(out), "--scenario", "calm", "--flows", "3000", "--duration", "5m"]
    result = CliRunner().invoke(main, [*args, "--seed", "9"])
    assert result.exit_code == 0, result.output
    for name in ("flows", "events", "regions", "truth"):
        assert (out / f"{name}.parquet").exists()
    meta = json.loads((out / "scenario.json").read_text())
    assert meta["knobs"]["duration"] == 300 and meta["seed"] == 9
    assert "address reuse" in result.output and "rows: flows" in result.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--scenario", "nope"], "unknown scenario 'nope'"),
        (["--hosts", "-3"], "--hosts: must be at least 2"),
        (["--duration", "ten"], "--duration"),
        (["--seed", "-1"], "--seed"),
    ],
)
def test_cli_bad_flags_exit_2_with_message(tmp_path: Path, args: list[str], needle: str) -> None:
    result = CliRunner().invoke(main, ["sim", "--out", str(tmp_path / "x"), *args])
    assert result.exit_code == 2
    assert needle in result.output


def test_help_lists_every_knob_and_scenario() -> None:
    result = CliRunner().invoke(main, ["sim", "--help"])
    assert result.exit_code == 0
    for knob in KNOBS:
        assert knob.flag in result.output
    for name in ("calm", "churny", "hostile", "reuse-storm"):
        assert name in result.output


def test_docs_describe_every_knob_and_extra_column() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "simulator.md").read_text()
    for knob in KNOBS:
        assert f"`{knob.flag}`" in doc, knob.flag
    for name in ("sim_true_start_ns", "sim_conn_id", "reuse-storm"):
        assert name in doc


def test_large_run_is_fast() -> None:
    import time

    began = time.monotonic()
    out = simulate("hostile", seed=2, flows=400_000)
    elapsed = time.monotonic() - began
    assert out.flows.num_rows > 360_000
    assert elapsed < 30, f"{elapsed:.1f} s for {out.flows.num_rows} rows"

"""The scope rule (flowtrail/engine/scopes.py): an ownership lookup never crosses scopes.

Hand-made rows on the engine the collector, the cluster nodes and replay share; the kernel
test (tests/kernel/test_overlapping_networks.py) shows it on real traffic, and the agent's
detection is checked here on the texts `ip -j` and `nft` print.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flowtrail.addressranges import AddressRanges
from flowtrail.agent.scopes import ScopeMarker, host_local_prefixes
from flowtrail.cluster.node import EVIDENCE_COLUMNS, remote_regions
from flowtrail.collector.claims import check_claims
from flowtrail.collector.door import Refusal
from flowtrail.engine import scopes
from flowtrail.engine.ipkeys import NO_KEY, IpKeys
from flowtrail.engine.regions import RegionMap
from flowtrail.engine.replay import replay
from flowtrail.engine.stream import StreamingAttribution
from flowtrail.evaluate import evaluate
from flowtrail.lab.wait import until
from flowtrail.schema import FLOWS
from flowtrail.sim import SCENARIOS, simulate
from flowtrail.tables import validate

S = 1_000_000_000
T0 = 1_700_000_000 * S


def row(exporter: str, n: int, local: tuple[str, int], remote: tuple[str, int], direction: str,
        start: int, end: int, workload: str | None, **extra: Any) -> dict[str, Any]:  # fmt: skip
    return {
        "flow_id": f"{exporter}:{n}", "exporter": exporter, "local_ip": local[0],
        "local_port": local[1], "remote_ip": remote[0], "remote_port": remote[1],
        "direction": direction, "start_ns": start, "end_ns": end, "state": "closed",
        "bytes_sent": 1, "bytes_received": 1, "local_workload": workload, **extra,
    }  # fmt: skip


def overlapping(**marks: Any) -> pa.Table:
    """Host a: web (10.0.9.1) holds a connection to api (10.0.9.2:443) for 100 s. Host b, same
    addresses, nothing on 10.0.9.2: db's connect from 10.0.9.1 to 10.0.9.2:443 is refused."""
    one, two = ("10.0.9.1", 40000), ("10.0.9.2", 443)
    rows = [
        row("a", 1, one, two, "outbound", T0, T0 + 100 * S, "web", **marks),
        row("a", 2, two, one, "inbound", T0, T0 + 100 * S, "api", **marks),
        row(
            "b",
            1,
            ("10.0.9.1", 50000),
            two,
            "outbound",
            T0 + 50 * S,
            T0 + 50 * S,
            "db",
            outcome="refused",
            **marks,
        ),
    ]
    return validate(pa.Table.from_pylist(rows), FLOWS)


def setting(table: pa.Table, name: str, values: pa.Array | pa.ChunkedArray) -> pa.Table:
    """`table` with column `name` set to `values` (appended where absent)."""
    at = table.schema.get_field_index(name)
    if at < 0:
        return table.append_column(name, values)
    return table.set_column(at, name, values)


def names(table: pa.Table) -> dict[str, str | None]:
    return dict(
        zip(table["flow_id"].to_pylist(), table["remote_workload"].to_pylist(), strict=True)
    )


def streamed(flows: pa.Table) -> dict[str, str | None]:
    """The live collector's engine on the same rows (one batch, then past every wait)."""
    s = StreamingAttribution()
    now = T0 + 200 * S
    s.submit_flows(flows, now)
    out = s.tick(now + 3600 * S)
    return names(pa.concat_tables(out))


def test_host_local_addresses_are_owned_per_exporter() -> None:
    marked = overlapping(local_scope="host", remote_scope="host")
    for got in (names(replay(marked).table), streamed(marked)):
        assert got == {"a:1": "api", "a:2": "web", "b:1": None}


def test_rows_without_scopes_keep_one_owner_table_per_region() -> None:
    # Agents that do not mark scopes: the addresses are routable, as before scopes existed.
    assert names(replay(overlapping()).table)["b:1"] == "api"


@pytest.mark.parametrize("scope", [None, "network"])
def test_networks_keep_overlapping_routable_ranges_apart(scope: str | None) -> None:
    flows = overlapping(remote_scope=scope, local_scope=scope)
    net = pc.if_else(pc.equal(flows["exporter"], "a"), "vpc-a", "vpc-b")
    with_net = setting(flows, "network", net)
    assert names(replay(with_net).table) == {"a:1": "api", "a:2": "web", "b:1": None}
    # One network across exporters: routable addresses are shared, as ever.
    same = setting(flows, "network", pa.array(["vpc"] * 3))
    assert names(replay(same).table)["b:1"] == "api"


def test_a_connection_across_hosts_is_named_in_one_network_and_not_across_networks() -> None:
    rows = [
        row(
            "a",
            1,
            ("10.0.0.1", 40000),
            ("10.0.0.2", 443),
            "outbound",
            T0,
            T0 + S,
            "web",
            network="n1",
        ),
        row(
            "b",
            1,
            ("10.0.0.2", 443),
            ("10.0.0.1", 40000),
            "inbound",
            T0,
            T0 + S,
            "api",
            network="n1",
        ),
        row(
            "c",
            1,
            ("10.0.0.1", 40001),
            ("10.0.0.2", 443),
            "outbound",
            T0,
            T0 + S,
            "x",
            network="n2",
        ),
    ]
    got = names(replay(validate(pa.Table.from_pylist(rows), FLOWS)).table)
    assert got == {"a:1": "api", "b:1": "web", "c:1": None}


def test_keys_regions_and_text_of_scoped_addresses() -> None:
    ipkeys = IpKeys()
    table = validate(
        pa.Table.from_pylist(
            [
                row(
                    "a",
                    1,
                    ("10.0.9.1", 1),
                    ("10.1.0.1", 2),
                    "outbound",
                    T0,
                    T0,
                    "w",
                    local_scope="host",
                    network=None,  # from_pylist takes its columns from the first row
                    remote_scope=None,
                ),
                row("b", 1, ("10.0.9.1", 1), ("10.1.0.1", 2), "outbound", T0, T0, "w", network="n"),
                row(
                    "c",
                    1,
                    ("fd00::1", 1),
                    ("fd00::2", 2),
                    "outbound",
                    T0,
                    T0,
                    "w",
                    network="n",
                    remote_scope="host",
                ),
                row("d", 1, ("10.0.9.1", 1), ("10.1.0.1", 2), "outbound", T0, T0, "w"),
            ]
        ),
        FLOWS,
    )
    local, remote = scopes.local_keys(table, ipkeys), scopes.remote_keys(table, ipkeys)
    assert len(set(local[:3].tolist()) | {int(local[3])}) == 4  # four scopes, four keys
    assert remote[3] == int(ipaddress.IPv4Address("10.1.0.1"))  # default network: plain key
    plain = ipkeys.plain(np.concatenate([local, remote]))
    assert plain[0] == NO_KEY and plain[1] == plain[3]  # host-local: in no region
    assert [ipkeys.text(int(k)) for k in local] == ["10.0.9.1", "10.0.9.1", "fd00::1", "10.0.9.1"]
    regions = pa.table({"cidr": ["10.0.0.0/8", "fd00::/8"], "region": ["r1", "r2"]})
    rmap = RegionMap(regions)
    # A network's addresses are placed by prefix; host-local ones are in no region.
    assert remote_regions(table, rmap, ipkeys).tolist() == [0, 0, -1, 0]
    assert rmap.lookup(local, ipkeys).tolist() == [-1, 0, 1, 0]
    # Cluster nodes learn from evidence rows that keep the scope columns.
    assert set(scopes.SCOPE_COLUMNS) <= set(EVIDENCE_COLUMNS)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_simulator_scenarios_give_identical_results_with_scopes(name: str) -> None:
    """Every sim row in one declared network, every address marked `network`: the same
    answers as the default space (the keys differ, the rule must not), 0 misattributed."""
    sim = simulate(name, seed=5, flows=4_000, duration=300)
    base = replay(sim.flows, sim.events, sim.regions).table
    n = sim.flows.num_rows
    flows = sim.flows
    for column, value in (("network", "prod"), ("local_scope", "network"),
                          ("remote_scope", "network")):  # fmt: skip
        flows = setting(flows, column, pa.array([value] * n, pa.string()))
    scoped = replay(flows, sim.events.slice(0, 0), sim.regions).table
    unscoped = replay(sim.flows, sim.events.slice(0, 0), sim.regions).table
    assert scoped["remote_workload"].to_pylist() == unscoped["remote_workload"].to_pylist()
    assert evaluate(base, sim.truth).flows.misattributed == 0
    assert evaluate(scoped, sim.truth).flows.misattributed == 0


ADDRS = [
    {"ifname": "lo", "addr_info": [{"local": "127.0.0.1", "prefixlen": 8, "scope": "host"}]},
    {
        "ifname": "eth0",
        "addr_info": [{"local": "192.0.2.5", "prefixlen": 24, "scope": "global"}],
    },
    {
        "ifname": "docker0",
        "addr_info": [{"local": "172.17.0.1", "prefixlen": 16, "scope": "global"}],
    },
]
CONNECTED = [
    {"dst": "192.0.2.0/24", "dev": "eth0", "family": 4},
    {"dst": "172.17.0.0/16", "dev": "docker0", "family": 4},
]
ROUTED = [{"dst": "default", "gateway": "192.0.2.1", "dev": "eth0", "family": 4}, *CONNECTED]


def nets(*texts: str) -> set[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return {ipaddress.ip_network(t) for t in texts}


def test_detection_a_namespace_without_a_route_out() -> None:
    assert host_local_prefixes(ADDRS, CONNECTED, "", own=False) == nets(
        "192.0.2.0/24", "172.17.0.0/16"
    )
    # The agent's own namespace: its networks are the host's real ones.
    assert host_local_prefixes(ADDRS, CONNECTED, "", own=True) == set()
    assert host_local_prefixes(ADDRS, ROUTED, "", own=False) == set()


@pytest.mark.parametrize(
    "rule, found",
    [
        ('ip saddr 172.17.0.0/16 oifname != "docker0" masquerade', {"172.17.0.0/16"}),
        ("ip saddr { 10.1.0.0/24, 10.2.0.0/24 } snat to 192.0.2.5", {"10.1.0.0/24", "10.2.0.0/24"}),
        ('oifname "eth0" masquerade', {"172.17.0.0/16"}),  # all but the uplink
        ('oifname != "docker0" masquerade', set()),  # no saddr, no uplink: not read
        ("meta mark & 0x4000 == 0x4000 masquerade", set()),  # kube-proxy: pods are routable
        ("ip daddr 10.0.0.1 dnat to 10.0.0.2", set()),
    ],
)
def test_detection_behind_source_nat(rule: str, found: set[str]) -> None:
    ruleset = f"table ip nat {{\n chain post {{\n  {rule}\n }}\n}}\n"
    assert host_local_prefixes(ADDRS, ROUTED, ruleset, own=True) == nets(*found)


def test_marker_configuration_and_routable_override() -> None:
    marker = ScopeMarker(
        host_local=[ipaddress.ip_network("172.17.0.0/16"), ipaddress.ip_network("10.9.0.0/16")],
        routable=[ipaddress.ip_network("10.9.1.0/24")],
        detect=False,
    )
    raw = pa.table(
        {
            "netns_ino": pa.array([1, 1, 1, 1], pa.uint32()),
            "pid": pa.array([0, 0, 0, 0], pa.uint32()),
            "local_ip": ["172.17.0.2", "10.9.1.5", "127.0.0.1", "192.0.2.5"],
        }
    )
    remote = pa.array(["192.0.2.9", "10.9.2.5", "fe80::1", "172.17.0.3"])
    local_scope, remote_scope = marker.mark(raw, remote)
    assert local_scope.to_pylist() == ["host", None, "host", None]
    assert remote_scope.to_pylist() == [None, "host", "host", "host"]


def test_a_token_with_ranges_admits_rows_on_host_local_addresses() -> None:
    ranges = AddressRanges.parse("192.0.2.0/24", "ranges")
    flows = overlapping()
    with pytest.raises(Refusal, match=r"10\.0\.9"):
        check_claims(flows, ranges, "a", "batch")
    # Marked host-local, they speak for this exporter alone: nothing to refuse.
    check_claims(setting(flows, "local_scope", pa.array(["host"] * 3)), ranges, "a", "batch")


def test_marker_reads_a_namespace_at_first_sight_and_refreshes_in_the_background(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    marker = ScopeMarker()
    reads: list[int] = []
    answer = {"nets": frozenset(nets("10.7.0.0/24"))}

    def read(ino: int, pid: int) -> frozenset[Any]:
        reads.append(ino)
        return answer["nets"]

    monkeypatch.setattr(marker, "_read", read)
    assert marker._namespace(42, 0) == nets("10.7.0.0/24")  # read at once, not later
    assert reads == [42]
    assert marker._namespace(42, 0) == nets("10.7.0.0/24") and reads == [42]  # cached
    answer["nets"] = frozenset(nets("10.8.0.0/24"))
    monkeypatch.setattr("flowtrail.agent.scopes.RULES_TTL_S", 0.0)
    assert marker._namespace(42, 0) == nets("10.7.0.0/24")  # stale answer stands meanwhile
    until(lambda: marker._namespace(42, 0), lambda got: got == nets("10.8.0.0/24"), 10)
    assert marker._namespace(42, 0) == nets("10.8.0.0/24")


def test_every_exporter_name_is_a_scope_of_its_own() -> None:
    ipkeys = IpKeys()
    values = pa.array(["10.0.0.1"] * 4 + ["fd00::1"] * 2)
    exporters = pa.array(["", None, "a", "b", "a", "b"])
    keys = ipkeys.keys(values, exporters, host=np.ones(6, bool))
    assert len(set(keys.tolist())) == 6  # the empty name too: never another host's key
    assert (ipkeys.plain(keys) == NO_KEY).all()
    assert [ipkeys.text(int(k)) for k in keys] == ["10.0.0.1"] * 4 + ["fd00::1"] * 2

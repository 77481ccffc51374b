"""Addresses no workload owns, grouped by network: the SQL group against Python's ipaddress,
dependencies' split edges against the unsplit ones, each split edge's flows against what it
counts, and the same over the real HTTP API (QueryAPI over a DuckDB store)."""

from __future__ import annotations

import http.client
import ipaddress
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import duckdb
import pyarrow as pa
import pytest

from flowtrail.api import QueryAPI
from flowtrail.api.params import ParamError, parse_request
from flowtrail.engine.replay import replay
from flowtrail.errors import InputError
from flowtrail.query.external import external_group_sql
from flowtrail.query.queries import FlowFilter, dependencies, flows
from flowtrail.sim.simulation import simulate
from flowtrail.store import Store

KEYS = ("caller", "callee", "caller_external", "callee_external")


def network_of(ip: str) -> str:
    a = ipaddress.ip_address(ip)
    return str(ipaddress.ip_network(f"{ip}/{24 if a.version == 4 else 48}", strict=False))


def test_the_sql_group_is_the_network_python_writes() -> None:
    r = random.Random(7)
    ips = ["::", "::1", "1::", "0:0:5::1", "a:0:0:1::", "2001:db8::", "10.0.0.1", "0.0.0.0"]
    while len(ips) < 4000:
        if r.random() < 0.3:
            ips.append(str(ipaddress.IPv4Address(r.getrandbits(32))))
            continue
        # Zero hextets often, so that "::" falls in every place.
        hx = [r.choice((0, 0, 0, r.getrandbits(16), r.getrandbits(4))) for _ in range(8)]
        a = ipaddress.IPv6Address(int("".join(f"{h:04x}" for h in hx), 16))
        if a.ipv4_mapped is None:
            ips.append(str(a))
    con = duckdb.connect()
    con.register("t", pa.table({"ip": [*ips, None]}))
    got = [row[0] for row in con.execute(f"SELECT {external_group_sql('ip')} FROM t").fetchall()]
    assert got == [*(network_of(ip) for ip in ips), None]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simulated fleet whose unnamed sides are spread over a few IPv4 and IPv6 networks."""
    sim = simulate("churny", 9, flows=3_000)
    table = replay(sim.flows, sim.events, sim.regions).table
    table = table.select([n for n in table.column_names if not n.startswith("sim_")])
    nets = ["198.51.100.{}", "203.0.113.{}", "192.0.2.{}", "2001:db8:7::{:x}", "2001:db8::{:x}"]
    remote = table.column("remote_ip").to_pylist()
    # Every 30th row's remote side loses its name too, for more unnamed sides of each kind.
    named = [
        None if i % 30 == 0 else w
        for i, w in enumerate(table.column("remote_workload").to_pylist())
    ]
    source = [
        "unattributed" if w is None else s
        for w, s in zip(named, table.column("remote_source").to_pylist(), strict=True)
    ]
    for name, values in (("remote_workload", named), ("remote_source", source)):
        i = table.column_names.index(name)
        table = table.set_column(i, name, pa.array(values, pa.string()))
    # Unattributed remote addresses move to the networks in turn, others stay as simulated.
    moved, k = [], 0
    for ip, w in zip(remote, named, strict=True):
        if w is None:
            k += 1
            ip = nets[k % len(nets)].format(1 + k % 200)
        moved.append(ip)
    table = table.set_column(
        table.column_names.index("remote_ip"), "remote_ip", pa.array(moved, pa.string())
    )
    path = tmp_path_factory.mktemp("external") / "s.duckdb"
    with Store(path) as store:
        store.write(table)
    return path


@pytest.fixture()
def con(store_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    c = duckdb.connect(str(store_path), read_only=True)
    yield c
    c.close()


def test_split_edges_add_up_to_the_unsplit_ones(con: duckdb.DuckDBPyConnection) -> None:
    whole = {(e["caller"], e["callee"]): e for e in dependencies(con).to_pylist()}
    split = dependencies(con, group_external=True).to_pylist()
    groups = {e["caller_external"] for e in split} | {e["callee_external"] for e in split}
    assert len(groups - {None}) >= 4  # several networks, IPv4 and IPv6
    assert any(":" in g for g in groups - {None})
    sums: dict[tuple[Any, Any], dict[str, int]] = {}
    for e in split:
        for side in ("caller", "callee"):
            # A named side has no group; an unnamed one always has one.
            assert (e[side] is None) == (e[f"{side}_external"] is not None), e
        s = sums.setdefault((e["caller"], e["callee"]), {})
        for k in ("flows", "seen_both_ends", "failed_attempts", "bytes_to_callee", "retransmits"):
            s[k] = s.get(k, 0) + e[k]
    assert sums.keys() == whole.keys()
    for key, s in sums.items():
        assert s == {k: whole[key][k] for k in s}, key
    assert len({tuple(e[k] for k in KEYS) for e in split}) == len(split)  # one row per edge


def _edge(e: dict[str, Any]) -> FlowFilter:
    return FlowFilter(
        caller=e["caller"],
        callee=e["callee"],
        caller_external=e["caller_external"],
        callee_external=e["callee_external"],
        unnamed="both" if e["caller"] is None and e["callee"] is None else None,
    )


def test_each_split_edge_lists_exactly_its_rows(con: duckdb.DuckDBPyConnection) -> None:
    split = [
        e
        for e in dependencies(con, group_external=True).to_pylist()
        if e["caller_external"] or e["callee_external"]
    ]
    assert split
    for e in split:
        got = flows(con, where=_edge(e), limit=10_000).to_pylist()
        assert len(got) == e["flows"] + e["seen_both_ends"] + e["failed_attempts"], e
        for row in got:
            # The unnamed side's address (NAT-resolved for a callee) is in the edge's group.
            out = row["direction"] == "outbound"
            callee_ip = (row["nat_remote_ip"] or row["remote_ip"]) if out else row["local_ip"]
            caller_ip = row["local_ip"] if out else row["remote_ip"]
            if e["caller_external"] and (out or row["remote_workload"] is None):
                assert network_of(caller_ip) == e["caller_external"], (e, row)
            if e["callee_external"] and (not out or row["remote_workload"] is None):
                assert network_of(callee_ip) == e["callee_external"], (e, row)


def test_bad_groups_are_refused_by_name() -> None:
    for text in ("203.0.113.0/16", "203.0.113.7/24", "2001:db8:0::/48", "nonsense"):
        with pytest.raises(InputError, match="--callee-external"):
            FlowFilter(callee_external=text)
    with pytest.raises(InputError, match="choose one"):
        FlowFilter(callee="db", callee_external="203.0.113.0/24")
    for query, parameter in (
        ("callee_external=10.0.0.0/8", "callee_external"),
        ("caller=web&caller_external=10.0.0.0/24", "caller_external"),
    ):
        with pytest.raises(ParamError) as err:
            parse_request("flows", query, 10**18)
        assert err.value.parameter == parameter
    with pytest.raises(ParamError) as err:
        parse_request("dependencies", "group_external=maybe", 10**18)
    assert err.value.parameter == "group_external"


def test_the_http_api_groups_and_lists_an_external_edge(store_path: Path) -> None:
    store = Store(store_path)
    api = QueryAPI(store.cursor, "127.0.0.1", 0)
    port = api.start()

    def get(path: str, **params: str) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("GET", f"{path}?{urlencode(params)}")
            r = conn.getresponse()
            body = r.read()
            return r.status, json.loads(body)
        finally:
            conn.close()

    try:
        status, edges = get("/api/dependencies", group_external="true")
        assert status == 200
        ext = [e for e in edges if e["callee_external"] and e["caller"]]
        assert ext
        e = max(ext, key=lambda x: x["flows"])
        status, rows = get(
            "/api/flows", caller=e["caller"], callee_external=e["callee_external"], limit="10000"
        )
        assert status == 200
        assert len(rows) == e["flows"] + e["seen_both_ends"] + e["failed_attempts"]
        status, plain = get("/api/dependencies")
        assert status == 200 and "callee_external" not in plain[0]
        status, err = get("/api/flows", callee_external="203.0.113.5/24")
        assert status == 400 and err["parameter"] == "callee_external"
    finally:
        api.stop()
        store.close()

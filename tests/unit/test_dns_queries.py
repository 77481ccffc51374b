"""Queries over remote_dns: dependencies by name and domain, flows with the name (docs/dns.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from flowtrail.api.params import ParamError, parse_request
from flowtrail.cli import main
from flowtrail.engine.dnsnames import DnsNames
from flowtrail.engine.replay import replay
from flowtrail.errors import InputError
from flowtrail.query.api import run_query
from flowtrail.query.queries import FlowFilter, dependencies, flows
from flowtrail.store import Store
from tests.unit.dns_tables import STRIPE, S, answers_table, flows_table

CDN = "192.0.2.50"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    owner = {"exporter": "h9", "local_ip": "10.0.5.5", "local_port": 443,
             "local_workload": "payments", "remote_ip": "10.0.0.2", "remote_port": 41000,
             "direction": "inbound", "start_ns": 10 * S, "end_ns": 100 * S}  # fmt: skip
    rows = [
        {"start_ns": 10 * S},  # billing → api.stripe.com
        {"start_ns": 20 * S, "bytes_sent": 100},  # again
        {"start_ns": 10 * S, "remote_ip": CDN},  # billing → a CDN address with two names
        {"start_ns": 10 * S, "remote_ip": "198.51.100.1"},  # billing → nobody knows
        # search → payments: owned, and resolved as payments.internal: the workload stands
        {"start_ns": 10 * S, "remote_ip": "10.0.5.5", "local_ip": "10.0.0.2",
         "local_workload": "search", "local_port": 41000},
        owner,
    ]  # fmt: skip
    answers = answers_table([
        {"query_name": "api.stripe.com", "observed_ns": 0},
        {"query_name": "static.shop.example", "observed_ns": 0, "address": CDN},
        {"query_name": "assets.blog.example", "observed_ns": 0, "address": CDN},
        {"query_name": "payments.internal", "observed_ns": 0, "address": "10.0.5.5",
         "local_workload": "search"},
    ])  # fmt: skip
    dns = DnsNames()
    dns.add(answers)
    out = replay(flows_table(rows), dns=dns).table
    path = tmp_path_factory.mktemp("dnsq") / "store.duckdb"
    with Store(path) as s:
        s.write(out)
    return path


def _edges(con: Any, by: str, **kw: Any) -> list[dict[str, Any]]:
    got = dependencies(con, by=by, **kw).to_pylist()
    return sorted(got, key=lambda e: str(tuple(e.values())[:4]))


def test_dependencies_by_name_split_the_unowned_side_by_its_dns_names(store: Path) -> None:
    with Store(store) as s:
        edges = dependencies(s.cursor(), by="name").to_pylist()
    got = {(e["caller"], e["callee"], e["caller_name"], e["callee_name"]): e["flows"]
           for e in edges}  # fmt: skip
    assert got == {
        ("billing", None, None, "api.stripe.com"): 2,
        ("billing", None, None, "assets.blog.example,static.shop.example"): 1,
        ("billing", None, None, None): 1,
        ("search", "payments", None, None): 1,  # ownership wins: no DNS column beside it
    }


def test_dependencies_by_domain_and_known_only(store: Path) -> None:
    with Store(store) as s:
        con = s.cursor()
        edges = dependencies(con, by="domain", known_only=True).to_pylist()
        plain = dependencies(con).to_pylist()
        plain_known = dependencies(con, known_only=True).to_pylist()
    got = {(e["caller"], e["callee"], e["callee_domain"]): e["flows"] for e in edges}
    assert got == {
        ("billing", None, "stripe.com"): 2,
        ("billing", None, "blog.example,shop.example"): 1,
        ("search", "payments", None): 1,
    }
    # by workload (the default) is as before: no DNS columns, the unowned side one edge
    assert {(e["caller"], e["callee"]): e["flows"] for e in plain} == {
        ("billing", None): 4,
        ("search", "payments"): 1,
    }
    assert "callee_name" not in plain[0]
    assert [(e["caller"], e["callee"]) for e in plain_known] == [("search", "payments")]


def test_flows_carry_remote_dns_and_filter_by_one_name(store: Path) -> None:
    with Store(store) as s:
        con = s.cursor()
        rows = flows(con, where=FlowFilter(name="static.shop.example")).to_pylist()
        all_rows = flows(con).to_pylist()
    assert [(r["remote_ip"], r["remote_dns"]) for r in rows] == [
        (CDN, "assets.blog.example,static.shop.example")
    ]
    by_ip = {r["remote_ip"]: r["remote_dns"] for r in all_rows}
    assert by_ip[STRIPE] == "api.stripe.com"
    assert by_ip["198.51.100.1"] is None
    assert by_ip["10.0.5.5"] == "payments.internal"


def test_the_api_takes_by_and_name(store: Path) -> None:
    with Store(store) as s:
        con = s.cursor()
        edges = run_query(con, "dependencies", {"by": "domain"}).to_pylist()
        rows = run_query(con, "flows", {"name": "api.stripe.com"}).to_pylist()
        with pytest.raises(InputError, match="--by 'ip'"):
            run_query(con, "dependencies", {"by": "ip"})
    assert {e["callee_domain"] for e in edges} == {
        "stripe.com", "blog.example,shop.example", None
    }  # fmt: skip
    assert len(rows) == 2 and {r["remote_dns"] for r in rows} == {"api.stripe.com"}
    assert parse_request("dependencies", "by=name", 0).params == {"by": "name"}
    with pytest.raises(ParamError, match="by"):
        parse_request("dependencies", "by=ip", 0)
    assert parse_request("top-talkers", "by=ip", 0).params == {"by": "ip"}
    with pytest.raises(ParamError, match="by"):
        parse_request("top-talkers", "by=name", 0)


def test_cli_dependencies_by_name(store: Path) -> None:
    res = CliRunner().invoke(
        main, ["query", "dependencies", "--db", str(store), "--by", "name", "--format", "json"]
    )
    assert res.exit_code == 0, res.output
    assert "api.stripe.com" in res.output and "callee_name" in res.output
    res = CliRunner().invoke(main, ["query", "flows", "--db", str(store), "--name",
                                    "api.stripe.com", "--format", "csv"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert res.output.count("api.stripe.com") == 2


def test_by_name_and_group_external_together(store: Path) -> None:
    with Store(store) as s:
        edges = dependencies(s.cursor(), by="name", group_external=True).to_pylist()
    got = {(e["callee"], e["callee_external"], e["callee_name"]): e["flows"] for e in edges}
    assert got == {
        (None, "203.0.113.0/24", "api.stripe.com"): 2,
        (None, "192.0.2.0/24", "assets.blog.example,static.shop.example"): 1,
        (None, "198.51.100.0/24", None): 1,
        ("payments", None, None): 1,
    }

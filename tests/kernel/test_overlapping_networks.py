"""Two isolated networks on one host with the same addresses never name each other's workloads.

Real kernel traffic: two namespace pairs, A and B, each alone on its veth link with no route
out, both on 10.x.9.1 / 10.x.9.2 (x random). Each pair has its own real agent (its own
exporter, `--netns` its two namespaces), as two hosts with the same Docker bridge would.

* A: `web-a` (10.x.9.1) holds a long-lived connection to `api-a` (10.x.9.2:P); meanwhile
  `api-a` makes three connects to 10.x.9.1 that are refused.
* B, while A's long-lived connection stands: `db-b` (10.x.9.1) connects three times to
  10.x.9.2:P, where nothing in B listens (refused). Afterwards `db-b` serves on 10.x.9.1:Q and
  `cli-b` (10.x.9.2) connects to it three times.

All rows go through `replay()`, the engine the collector and the cluster nodes run. With one
owner table per region, B's refused connects were named `api-a` (A's heartbeat for 10.x.9.2
covered them). With address scopes, B's 10.x.9.2 is owned within B only, where nobody held it
then: unattributed. Every other connection is still named within its own pair.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flowtrail.agent.exporter import Delivery, ParquetDir
from flowtrail.engine.replay import replay
from flowtrail.lab import Client, Lab, Place, Server
from flowtrail.lab.agent import running_agent
from flowtrail.lab.overlap import lab_on, random_net
from flowtrail.lab.wait import until
from flowtrail.schema import FLOWS
from flowtrail.tables import validate

pytestmark = pytest.mark.kernel

CONNECTIONS = 3
GAP_S = 0.25
# A's heartbeat must cover each of B's refused connects by more than the engine's guard
# (2 x max skew = 0.2 s) on both sides: 4 writes apart is at least 0.75 s.
MARGIN_WRITES = 4


def rows_in(out: Path) -> list[dict[str, Any]]:
    files = sorted(out.glob("flows-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]).to_pylist() if files else []


def acked(netns: str, port: int) -> int:
    """Bytes acked so far on the long-lived connection to `port` (0 until it stands)."""
    r = subprocess.run(
        ["ip", "netns", "exec", netns, "ss", "-Htni", "state", "established", f"dport = :{port}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = re.search(r"bytes_acked:(\d+)", r.stdout)
    return int(found.group(1)) if found else 0


def finish(p: subprocess.Popen[str], expect: str | None = None, timeout: float = 60) -> None:
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out
    if expect is not None:
        assert out.strip() == expect, out


def refused(lab: Lab, where: Place, ip: str, port: int) -> None:
    """CONNECTIONS connects to ip:port, each refused (a client stops at its first refusal)."""
    for _ in range(CONNECTIONS):
        finish(lab.spawn(where, Client(ip, port, send=1, recv=1)), "refused")


def workload(lab: Lab, name: str) -> str:
    return f"systemd:{name}-{lab.tag}.service"


def test_overlapping_isolated_networks_never_name_each_other(tmp_path: Path) -> None:
    net = random_net()
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    with lab_on("ova", net) as a, lab_on("ovb", net) as b:
        ns_a = frozenset({a.client.netns_inode(), a.server.netns_inode()})
        ns_b = frozenset({b.client.netns_inode(), b.server.netns_inode()})
        with (
            running_agent(Delivery(ParquetDir(out_a)), exporter="pair-a", netns=ns_a),
            running_agent(Delivery(ParquetDir(out_b)), exporter="pair-b", netns=ns_b),
        ):
            web_a = a.client.at(a.service_cgroup(f"web-{a.tag}"))
            api_a = a.server.at(a.service_cgroup(f"api-{a.tag}"))
            db_b = b.client.at(b.service_cgroup(f"db-{b.tag}"))
            cli_b = b.server.at(b.service_cgroup(f"cli-{b.tag}"))
            port, port_b, closed_a = a.port(), a.port(), a.port()
            writes = [1] * 400  # open until its process is stopped
            srv = a.serve(api_a, Server(a.server.ip, port, recv=len(writes), send=1))
            held = a.spawn(web_a, Client(a.server.ip, port, send=writes, recv=1, gap_s=GAP_S))
            until(lambda: acked(a.client.netns, port), lambda n: n >= MARGIN_WRITES, 30)
            # B's address 10.x.9.2 has nothing listening on `port`: refused, in B.
            refused(b, db_b, b.server.ip, port)
            refused(a, api_a, a.client.ip, closed_a)
            after = acked(a.client.netns, port)
            until(lambda: acked(a.client.netns, port), lambda n: n >= after + MARGIN_WRITES, 30)
            held.kill()
            held.wait(10)
            srv.kill()
            # B's own connections, after A's heartbeat for 10.x.9.2 ended.
            srv_b = b.serve(db_b, Server(b.client.ip, port_b, recv=10, send=10,
                                         accepts=CONNECTIONS))  # fmt: skip
            finish(b.spawn(cli_b, Client(b.client.ip, port_b, send=10, recv=10,
                                         connections=CONNECTIONS)))  # fmt: skip
            finish(srv_b)

            def ours() -> list[dict[str, Any]]:
                return [
                    r for r in rows_in(out_a) + rows_in(out_b)
                    if {r["local_port"], r["remote_port"]} & {port, port_b, closed_a}
                    and r["state"] == "closed"
                ]  # fmt: skip

            # A: long-lived 2 + refused 3; B: refused 3 + connections 2 x 3
            want = 2 + CONNECTIONS + CONNECTIONS + 2 * CONNECTIONS
            rows = until(ours, lambda rs: len(rs) >= want, 60)
            assert len(rows) >= want, rows

    table = validate(pa.Table.from_pylist(rows_in(out_a) + rows_in(out_b)), FLOWS)
    got = [
        r for r in replay(table).table.to_pylist()
        if {r["local_port"], r["remote_port"]} & {port, port_b, closed_a}
    ]  # fmt: skip
    names_a = {workload(a, "web"), workload(a, "api")}
    names_b = {workload(b, "db"), workload(b, "cli")}
    # The premise: both pairs really use the same addresses, and the agents saw them host-local.
    assert {r["local_ip"] for r in got} == {f"{net}.1", f"{net}.2"}
    assert {(r["local_scope"], r["remote_scope"]) for r in got} == {("host", "host")}
    # No row names the other pair's workload.
    wrong = [
        (r["exporter"], r["local_ip"], r["local_port"], r["remote_ip"], r["remote_port"],
         r["outcome"], r["remote_workload"])
        for r in got
        if r["remote_workload"] in (names_b if r["exporter"] == "pair-a" else names_a)
    ]  # fmt: skip
    assert wrong == []
    refused_b = [r for r in got if r["exporter"] == "pair-b" and r["remote_port"] == port]
    assert len(refused_b) == CONNECTIONS
    assert {(r["outcome"], r["remote_workload"]) for r in refused_b} == {("refused", None)}
    # Each pair's own evidence still names its own connections.
    refused_a = [r for r in got if r["remote_port"] == closed_a]
    assert {(r["outcome"], r["remote_workload"]) for r in refused_a} == {
        ("refused", workload(a, "web"))
    }
    held_rows = [r for r in got if r["exporter"] == "pair-a" and port in
                 (r["local_port"], r["remote_port"])]  # fmt: skip
    assert {(r["direction"], r["remote_workload"]) for r in held_rows} == {
        ("outbound", workload(a, "api")),
        ("inbound", workload(a, "web")),
    }
    conn_b = [r for r in got if port_b in (r["local_port"], r["remote_port"])]
    assert len(conn_b) == 2 * CONNECTIONS
    assert {(r["direction"], r["remote_workload"]) for r in conn_b} == {
        ("outbound", workload(b, "db")),
        ("inbound", workload(b, "cli")),
    }

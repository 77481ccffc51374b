"""A NAT gateway is never named as the caller of the connections it translates.

Real kernel traffic: a LAN namespace behind a router namespace that masquerades whatever
leaves its uplink (flowtrail/lab/natgw.py), and a server namespace. The router has a
long-lived connection of its own to the server, so its address has a heartbeat (the router's
workload owns it over that connection's lifetime). Then a LAN host connects to the server
three times; the server sees the router's address (and, masquerade keeping it when free, the
LAN host's port). One real agent captures all three namespaces; its rows go through
`replay()`, the engine the collector runs.

Without the gateway's translation evidence the server's rows of the three translated
connections named the router's workload (3 of 3 wrong). The second test checks the agent's two
ways of seeing that it translates: the masquerade rule, and conntrack's SNAT entries once the
rule cannot be read. The last two check the marks of rows resolved when the namespace's
process has exited, or the namespace is gone: what once left a row of the router's unmarked.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flowtrail.agent import conntrack
from flowtrail.agent.conntrack import NatResolver
from flowtrail.agent.exporter import Delivery, ParquetDir
from flowtrail.agent.netlink import NetnsIndex
from flowtrail.engine.attributor import Settings
from flowtrail.engine.replay import replay
from flowtrail.lab import Client, Lab, Server
from flowtrail.lab.agent import running_agent
from flowtrail.lab.natgw import nat_gateway
from flowtrail.lab.netns import sh
from flowtrail.lab.wait import until
from flowtrail.schema import FLOWS
from flowtrail.tables import validate

pytestmark = pytest.mark.kernel

CONNECTIONS = 3
GAP_S = 0.25
# The router's heartbeat must cover each translated connection's start by more than the
# engine's guard (2 x max skew = 0.2 s) on both sides: 4 writes apart is at least 0.75 s.
MARGIN_WRITES = 4


def rows_in(out: Path) -> list[dict[str, Any]]:
    files = sorted(out.glob("flows-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]).to_pylist() if files else []


def acked(netns: str, port: int) -> int:
    """Bytes the server has acked on the router's own connection to `port` (0 until it stands).

    The router writes a byte every GAP_S: waiting for more acked bytes is waiting for the
    connection to have lived that much longer, observed rather than slept.
    """
    r = subprocess.run(
        ["ip", "netns", "exec", netns, "ss", "-Htni", "state", "established", f"dport = :{port}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = re.search(r"bytes_acked:(\d+)", r.stdout)
    return int(found.group(1)) if found else 0


def finish(p: subprocess.Popen[str], timeout: float = 60) -> None:
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out


def test_translated_connections_never_name_the_gateway(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with (
        Lab("nat") as lab,
        nat_gateway(lab) as lan,
        running_agent(Delivery(ParquetDir(out)), interval_s=1.0),
    ):
        router = lab.client.at(lab.service_cgroup(f"router-{lab.tag}"))
        api = lab.server.at(lab.service_cgroup(f"api-{lab.tag}"))
        pod_uid = str(uuid.uuid4())
        laptop = lan.at(lab.pod_cgroup(pod_uid))
        own_port, api_port = lab.port(), lab.port()
        writes = [1] * 400  # the router's own connection: open until its process is stopped
        own_srv = lab.serve(api, Server(lab.server.ip, own_port, recv=len(writes), send=1))
        api_srv = lab.serve(api, Server(lab.server.ip, api_port, recv=100, send=200,
                                        accepts=CONNECTIONS))  # fmt: skip
        own = lab.spawn(router, Client(lab.server.ip, own_port, send=writes, recv=1, gap_s=GAP_S))
        until(lambda: acked(lab.client.netns, own_port), lambda n: n >= MARGIN_WRITES, 30)
        finish(lab.spawn(laptop, Client(lab.server.ip, api_port, send=100, recv=200,
                                        connections=CONNECTIONS)))  # fmt: skip
        finish(api_srv)
        after = acked(lab.client.netns, own_port)
        until(lambda: acked(lab.client.netns, own_port), lambda n: n >= after + MARGIN_WRITES, 30)
        own.kill()  # the router's connection closes (reset) after the LAN host's
        own.wait(10)
        own_srv.kill()

        def ours() -> list[dict[str, Any]]:
            return [
                r for r in rows_in(out)
                if api_port in (r["local_port"], r["remote_port"])
                or (own_port in (r["local_port"], r["remote_port"]) and r["state"] == "closed")
            ]  # fmt: skip

        want = 2 * CONNECTIONS + 2  # client + server row per translated one; the router's own
        rows = until(ours, lambda rs: len(rs) >= want, 60)
        assert len(rows) >= want, rows

    # Every row of the router's own, the last one exported after its process was killed,
    # says that the router translates: an unmarked one is a heartbeat for the translated.
    exported = rows_in(out)
    marks = [r["local_translating"] for r in exported
             if r["local_ip"] == lab.client.ip and r["remote_port"] == own_port]  # fmt: skip
    assert marks and all(marks), marks
    table = validate(pa.Table.from_pylist(exported), FLOWS)
    router_wl = f"systemd:router-{lab.tag}.service"
    server_wl = f"systemd:api-{lab.tag}.service"
    result = replay(table)
    got = result.table.to_pylist()

    def mine(r: dict[str, Any]) -> bool:
        return api_port in (r["local_port"], r["remote_port"])

    server_side = [r for r in got if mine(r) and r["direction"] == "inbound"]
    client_side = [r for r in got if mine(r) and r["direction"] == "outbound"]
    own_rows = [r for r in got if own_port in (r["local_port"], r["remote_port"])]
    assert len(server_side) == len(client_side) == CONNECTIONS
    # The premise: the router's address has a heartbeat over the translated connections.
    router_own = [r for r in own_rows if r["direction"] == "outbound"]
    assert router_own and all(r["local_workload"] == router_wl for r in router_own)
    assert all(r["local_ip"] == lab.client.ip for r in router_own)
    first = min(r["start_ns"] for r in router_own)
    last = max(r["end_ns"] for r in router_own)
    guard = 2 * Settings().max_skew_ns
    assert all(first + guard < r["start_ns"] < last - guard for r in server_side)
    # The server saw the router's address, not the LAN host's.
    assert all(r["remote_ip"] == lab.client.ip for r in server_side)
    assert all(r["local_workload"] == server_wl for r in server_side)
    # Never the gateway. The translation itself is not exported, so: unknown.
    assert [r["remote_workload"] for r in server_side if r["remote_workload"] == router_wl] == []
    assert {(r["remote_workload"], r["remote_source"]) for r in server_side} == {
        (None, "unattributed")
    }
    # The gateway's own connection is still named, both ways, from its two rows.
    assert {(r["direction"], r["remote_workload"]) for r in own_rows} == {
        ("outbound", server_wl),
        ("inbound", router_wl),
    }
    shown = [(r["flow_id"], r["state"], r["local_ip"], r["local_port"], r["remote_port"],
              r["start_ns"], r["end_ns"], r["local_workload"], r.get("remote_workload"))
             for r in got if lab.server.ip in (r["local_ip"], r["remote_ip"])]  # fmt: skip
    assert {r["remote_workload"] for r in client_side} == {server_wl}, (result.summary, shown)


def raw_rows(*rows: tuple[int, str]) -> pa.Table:
    """Capture-shaped rows, only the columns marking reads: (netns inode, local_ip)."""
    return pa.table(
        {
            "netns_ino": pa.array([r[0] for r in rows], pa.uint32()),
            "pid": pa.array([0] * len(rows), pa.uint32()),
            "local_ip": pa.array([r[1] for r in rows], pa.string()),
        }
    )


def test_the_gateway_marks_its_address_from_rules_then_from_conntrack() -> None:
    with Lab("nat") as lab, nat_gateway(lab) as lan:
        router_ino, server_ino = lab.client.netns_inode(), lab.server.netns_inode()
        rows = raw_rows(
            (router_ino, lab.client.ip), (router_ino, "127.0.0.1"), (server_ino, lab.server.ip)
        )
        # The rule alone marks the router's addresses, before anything was translated.
        assert NatResolver().translating(rows).to_pylist() == [True, False, False]

        port = lab.port()
        api = lab.server.at(lab.service_cgroup(f"api-{lab.tag}"))
        srv = lab.serve(api, Server(lab.server.ip, port, recv=10, send=10))
        laptop = lan.at(lab.cgroup("laptop"))
        finish(lab.spawn(laptop, Client(lab.server.ip, port, send=10, recv=10)))
        finish(srv)
        # Rules it cannot read (iptables-legacy, say): conntrack's SNAT entry still shows it.
        sh("ip", "netns", "exec", lab.client.netns, "nft", "delete", "table", "ip",
           f"ftmasq{lab.tag}")  # fmt: skip
        nat = NatResolver()
        assert nat.translating(rows).to_pylist() == [True, False, False]
        lan_side = raw_rows((router_ino, lan.ip.rsplit(".", 1)[0] + ".254"))
        assert nat.translating(lan_side).to_pylist() == [False]  # not a translated source
        assert nat.stats["nat_translating_rows"] == 1


def netns_of(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def test_the_gateway_is_still_marked_once_the_process_its_namespace_was_found_by_exits() -> None:
    """What named the router again: its last row was resolved after its process had exited.

    The agent had found the router's namespace through a process's /proc path (the router's
    own client, or a short `ip netns exec` run there); with that process gone the path was
    stale, the next scan was up to a second away, and the rows went out unmarked, a
    heartbeat for the router's address over the translated connections.
    """
    with Lab("nat") as lab, nat_gateway(lab):
        ino = lab.client.netns_inode()
        proc = subprocess.Popen(["ip", "netns", "exec", lab.client.netns, "sleep", "120"])
        try:
            assert until(lambda: netns_of(proc.pid), lambda i: i == ino, 10) == ino
            index = NetnsIndex(rescan_s=3600)  # no timed rescan within the test
            assert index.path(ino) is not None  # a scan while the process lives
        finally:
            proc.kill()
            proc.wait()
        nat = NatResolver(index)
        assert nat.translating(raw_rows((ino, lab.client.ip))).to_pylist() == [True]
        assert nat.stats["nat_translating_unknown_rows"] == 0


def test_a_namespace_gone_keeps_its_last_answer_and_one_never_read_is_marked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rows are resolved after their sockets close, when their namespace may be gone.

    One read while it could be entered keeps that answer (a gateway stays a gateway); one
    never read cannot be told from a gateway, so its rows are marked: that costs names from
    ranges, where leaving them unmarked could name a gateway as the caller.
    """
    monkeypatch.setattr(conntrack, "RULES_TTL_S", 0.0)  # every call reads again
    monkeypatch.setattr(conntrack, "SNAT_TTL_S", 0.0)
    rule = (
        "nft add table ip t"
        " && nft add chain ip t post '{ type nat hook postrouting priority 100; }'"
        " && nft add rule ip t post masquerade && exec sleep 120"
    )
    gateway = subprocess.Popen(["unshare", "--net", "sh", "-c", rule])
    plain = subprocess.Popen(["unshare", "--net", "sleep", "120"])
    nat = NatResolver(NetnsIndex())
    try:
        own = os.stat("/proc/self/ns/net").st_ino
        gw_ino = until(lambda: netns_of(gateway.pid), lambda i: i not in (None, own), 10)
        plain_ino = until(lambda: netns_of(plain.pid), lambda i: i not in (None, own), 10)
        assert gw_ino is not None and plain_ino is not None
        rows = raw_rows((gw_ino, "10.9.9.1"), (plain_ino, "10.9.9.2"))
        # The rule shows once nft has run (then the shell becomes the sleep).
        got = until(lambda: nat.translating(rows).to_pylist(), lambda m: m == [True, False], 10)
        assert got == [True, False]
        assert nat.stats["nat_translating_unknown_rows"] == 0  # read, not guessed
    finally:
        for p in (gateway, plain):
            p.kill()
            p.wait()
    assert NetnsIndex().path(gw_ino) is None and NetnsIndex().path(plain_ino) is None
    before = nat.stats["nat_netns_unreachable"]
    assert nat.translating(rows).to_pylist() == [True, False]
    assert nat.stats["nat_netns_unreachable"] > before  # the answers were the kept ones
    assert nat.stats["nat_translating_unknown_rows"] == 0
    # No namespace has inode 1: never read, never readable.
    never = raw_rows((1, "10.9.9.3"), (1, "127.0.0.1"))
    assert nat.translating(never).to_pylist() == [True, False]  # loopback never
    assert nat.stats["nat_translating_unknown_rows"] == 1

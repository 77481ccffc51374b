"""The whole agent against the real kernel: BPF capture, cgroups, namespaces, conntrack, nftables.

The namespace lab (flowtrail/lab/): two network namespaces joined by a veth pair, a DNAT rule
in the client's, and cgroups under /sys/fs/cgroup/unified/flowtrail-agent-<tag>/ named like a
Kubernetes pod container and like systemd services. Peer processes move themselves into a
cgroup and a namespace before opening sockets, so the sockets really belong there. One agent
(real Capture, interval 1 s) runs in a thread for the module and writes Parquet; each test
picks its rows out of the output by port. Everything is removed at the end.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flowtrail.agent.capture import DROP_REASONS
from flowtrail.agent.conntrack import NatResolver
from flowtrail.agent.exporter import Delivery, ParquetDir
from flowtrail.agent.netlink import NetnsIndex
from flowtrail.agent.records import RAW_SCHEMA
from flowtrail.agent.runner import Agent
from flowtrail.lab import Client, Lab, Place, Server
from flowtrail.lab.agent import running_agent
from flowtrail.lab.wait import until
from flowtrail.schema import FLOWS
from flowtrail.tables import validate

pytestmark = pytest.mark.kernel

INTERVAL_S = 1.0


@dataclass
class AgentLab:
    """The lab, its two workloads' places, and the agent watching it."""

    net: Lab
    pod_uid: str
    pod: Place  # the client side: a Kubernetes pod's container
    svc: Place  # the server side: foo-<tag>.service
    out: Path
    agent: Agent

    def port(self) -> int:
        return self.net.port()

    def server(
        self, ip: str, port: int, recv: int, send: int, accepts: int = 1
    ) -> subprocess.Popen[str]:
        return self.net.serve(self.svc, Server(ip, port, recv=recv, send=send, accepts=accepts))

    def client(self, **spec: Any) -> subprocess.Popen[str]:
        return self.net.spawn(self.pod, Client(**spec))

    def capture_losses(self) -> int:
        m = self.agent.metrics()
        return sum(v for k, v in m.items() if k.startswith("capture_drop_"))

    def rows(self) -> pa.Table:
        files = sorted(self.out.glob("flows-*.parquet"))
        if not files:
            return pa.table({})
        return pa.concat_tables([pq.read_table(f) for f in files])

    def wait_rows(
        self, match: Callable[[dict[str, Any]], bool], want: int, timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        def found() -> list[dict[str, Any]]:
            t = self.rows()
            return [r for r in t.to_pylist() if match(r)] if t.num_rows else []

        return until(found, lambda rows: len(rows) >= want, timeout)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentLab]:
    out = tmp_path_factory.mktemp("agent") / "out"
    pod_uid = str(uuid.uuid4())
    with Lab("agent") as net:
        net.dnat(80, 8080)  # a ClusterIP-like VIP, translated in the client's namespace
        pod = net.client.at(net.pod_cgroup(pod_uid))
        svc = net.server.at(net.service_cgroup(f"foo-{net.tag}"))
        with running_agent(Delivery(ParquetDir(out)), interval_s=INTERVAL_S) as agent:
            yield AgentLab(net, pod_uid, pod, svc, out, agent)


def finish(p: subprocess.Popen[str], timeout: float = 10) -> str:
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out
    return out


def exchange(lab: AgentLab, server_ip: str, client_ip: str, up: int, down: int) -> tuple[int, int]:
    sport, cport = lab.port(), lab.port()
    srv = lab.server(server_ip, sport, recv=up, send=down)
    finish(
        lab.client(ip=server_ip, port=sport, bind=client_ip, bind_port=cport, send=up, recv=down)
    )
    finish(srv)
    return sport, cport


def until_seen(
    lab: AgentLab, scenario: Callable[[], tuple[list[dict[str, Any]], int]], tries: int = 3
) -> list[dict[str, Any]]:
    """Run `scenario` (traffic, then the rows it expects and how many) until its rows arrive.

    On a busy host capture may lose a record; that is only acceptable when capture counted
    it. A row missing with no counted loss fails at once (silent loss); a counted loss retries.
    """
    for _ in range(tries):
        before = lab.capture_losses()
        rows, want = scenario()
        if len(rows) >= want:
            return rows
        lost = lab.capture_losses() - before
        assert lost > 0, f"{want - len(rows)} row(s) missing and no capture loss counted"
    pytest.fail(f"rows lost to counted capture drops on all {tries} tries: host too busy")


def by_port(port: int) -> Callable[[dict[str, Any]], bool]:
    return lambda r: r["local_port"] == port or r["remote_port"] == port


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_both_ends_named_with_exact_ports_directions_bytes(lab: AgentLab, v6: bool) -> None:
    server_ip, client_ip = (
        (lab.net.server.ip6, lab.net.client.ip6) if v6 else (lab.net.server.ip, lab.net.client.ip)
    )
    ports: list[int] = []

    def scenario() -> tuple[list[dict[str, Any]], int]:
        ports[:] = exchange(lab, server_ip, client_ip, up=123_457, down=9_876)
        mine = lambda r: r["local_port"] in ports and r["remote_port"] in ports  # noqa: E731
        return lab.wait_rows(mine, 2), 2

    rows = until_seen(lab, scenario)
    sport, cport = ports
    assert len(rows) == 2, rows
    out = next(r for r in rows if r["direction"] == "outbound")
    inb = next(r for r in rows if r["direction"] == "inbound")
    assert (out["local_ip"], out["local_port"], out["remote_ip"], out["remote_port"]) == (
        client_ip,
        cport,
        server_ip,
        sport,
    )
    assert (inb["local_ip"], inb["local_port"], inb["remote_ip"], inb["remote_port"]) == (
        server_ip,
        sport,
        client_ip,
        cport,
    )
    assert (out["bytes_sent"], out["bytes_received"]) == (123_457, 9_876)
    assert (inb["bytes_sent"], inb["bytes_received"]) == (9_876, 123_457)
    assert out["local_workload"] == f"k8s:pod/{lab.pod_uid}"
    assert inb["local_workload"] == f"systemd:foo-{lab.net.tag}.service"
    for r in rows:
        assert r["state"] == "closed" and r["outcome"] == "established"
        assert r["exporter"] == "lab-host" and r["region"] == "lab"
        assert r["flow_id"].startswith("lab-host:")
        assert r["nat_remote_ip"] is None and r["nat_remote_port"] is None
        assert 0 < r["end_ns"] - r["start_ns"] < 10e9
        assert abs(r["end_ns"] - time.time_ns()) < 30e9  # epoch ns, not boot time
    assert out["flow_id"] != inb["flow_id"]
    validate(lab.rows(), FLOWS)


def test_dnat_resolved_to_real_backend(lab: AgentLab) -> None:
    def scenario() -> tuple[list[dict[str, Any]], int]:
        cport = lab.port()
        srv = lab.server(lab.net.server.ip, 8080, recv=500, send=600)
        finish(
            lab.client(
                ip=lab.net.vip, port=80, bind=lab.net.client.ip, bind_port=cport, send=500, recv=600
            )
        )
        finish(srv)
        return lab.wait_rows(lambda r: cport in (r["local_port"], r["remote_port"]), 2), 2

    rows = until_seen(lab, scenario)
    out = next(r for r in rows if r["direction"] == "outbound")
    inb = next(r for r in rows if r["direction"] == "inbound")
    # The client's kernel saw the VIP; conntrack knows the backend.
    assert (out["remote_ip"], out["remote_port"]) == (lab.net.vip, 80)
    assert (out["nat_remote_ip"], out["nat_remote_port"]) == (lab.net.server.ip, 8080)
    assert (out["bytes_sent"], out["bytes_received"]) == (500, 600)
    assert (inb["local_ip"], inb["local_port"], inb["remote_ip"]) == (
        lab.net.server.ip,
        8080,
        lab.net.client.ip,
    )
    assert inb["nat_remote_ip"] is None


def test_refused_connection_is_a_named_closed_row(lab: AgentLab) -> None:
    dead = lab.port()

    def scenario() -> tuple[list[dict[str, Any]], int]:
        cport = lab.port()
        out = finish(
            lab.client(
                ip=lab.net.server.ip,
                port=dead,
                bind=lab.net.client.ip,
                bind_port=cport,
                send=1,
                recv=1,
            )
        )
        assert "refused" in out
        return lab.wait_rows(lambda r: r["local_port"] == cport, 1), 1

    (row,) = until_seen(lab, scenario)
    assert row["outcome"] == "refused" and row["state"] == "closed"
    assert row["direction"] == "outbound" and row["remote_port"] == dead
    assert row["bytes_sent"] == 0 and row["bytes_received"] == 0
    assert row["local_workload"] == f"k8s:pod/{lab.pod_uid}"


def test_long_lived_connection_gets_active_snapshots(lab: AgentLab, tmp_path: Path) -> None:
    # The connection is held open (between its two writes, then before the server answers)
    # until the agent has exported a snapshot of each stage: however late a busy host runs
    # the agent's flushes, two snapshots are taken and the counters grow between them.
    chunks = (40_000, 80_000)
    ports: list[int] = []

    def scenario() -> tuple[list[dict[str, Any]], int]:
        sport, cport = lab.port(), lab.port()
        ports[:] = [cport]
        more, answer = tmp_path / f"more-{cport}", tmp_path / f"answer-{cport}"
        srv = lab.net.serve(
            lab.svc,
            Server(lab.net.server.ip, sport, recv=sum(chunks), send=77, answer_after=str(answer)),
        )
        cli = lab.client(
            ip=lab.net.server.ip,
            port=sport,
            bind=lab.net.client.ip,
            bind_port=cport,
            send=chunks,
            recv=77,
            hold_before=1,
            hold_until=str(more),
        )
        try:
            seen = 0
            for gate in (more, answer):
                snapshot = lab.wait_rows(
                    lambda r, at_least=seen + 1: (
                        r["local_port"] == cport
                        and r["state"] == "active"
                        and r["bytes_sent"] >= at_least
                    ),
                    1,
                    timeout=60,
                )
                seen = max([seen, *(r["bytes_sent"] for r in snapshot)])
                gate.touch()
        finally:
            more.touch()  # a snapshot that never came must not leave the peers waiting
            answer.touch()
        finish(cli, timeout=20)
        finish(srv)
        return lab.wait_rows(lambda r: r["local_port"] == cport and r["state"] == "closed", 1), 1

    until_seen(lab, scenario)
    mine = lambda r: r["local_port"] == ports[0]  # noqa: E731
    rows = sorted((r for r in lab.rows().to_pylist() if mine(r)), key=lambda r: r["end_ns"])
    active = [r for r in rows if r["state"] == "active"]
    closed = [r for r in rows if r["state"] == "closed"]
    assert len(closed) == 1 and len(active) >= 2, [(r["state"], r["bytes_sent"]) for r in rows]
    assert {r["flow_id"] for r in rows} == {closed[0]["flow_id"]}
    sent = [r["bytes_sent"] for r in active]
    assert sent == sorted(sent) and sent[-1] > sent[0] > 0  # counters grow between snapshots
    assert sent[-1] <= closed[0]["bytes_sent"] == sum(chunks)
    for r in active:
        assert r["start_ns"] == closed[0]["start_ns"]
        assert (
            r["end_ns"] - r["start_ns"] >= INTERVAL_S * 1e9
        )  # only connections older than the interval
        assert r["local_workload"] == f"k8s:pod/{lab.pod_uid}"
        assert r["segs_sent"] > 0 and r["srtt_us"] > 0


def test_removed_cgroup_still_named(lab: AgentLab) -> None:
    gone = lab.net.root / "system.slice" / f"short-lived-{lab.net.tag}.service"
    ids: list[int] = []

    def scenario() -> tuple[list[dict[str, Any]], int]:
        gone.mkdir(parents=True)
        ids[:] = [gone.stat().st_ino]
        sport, cport = lab.port(), lab.port()
        srv = lab.server(lab.net.server.ip, sport, recv=300, send=400)
        # The workload lives a little (past one cgroup rescan), talks, exits; its cgroup goes.
        cli = lab.net.spawn(
            lab.net.client.at(gone),
            Client(
                lab.net.server.ip,
                sport,
                send=300,
                recv=400,
                bind=lab.net.client.ip,
                bind_port=cport,
                wait_s=3.0,
            ),
        )
        finish(cli)
        finish(srv)
        gone.rmdir()
        assert not gone.exists()
        return lab.wait_rows(lambda r: r["local_port"] == cport, 1), 1

    (row,) = until_seen(lab, scenario)
    cg_id = ids[0]
    assert row["local_workload"] == f"systemd:short-lived-{lab.net.tag}.service"
    # And the name is still there for anything resolved after the removal.
    probe = pa.Table.from_pylist(
        [
            {
                **{f.name: None for f in RAW_SCHEMA},
                "cgroup_id": cg_id,
                "netns_ino": 1,
                "local_ip": "10.0.0.1",
                "local_port": 1,
            }
        ],
        schema=RAW_SCHEMA,
    )
    assert lab.agent.identity.resolve(probe).to_pylist() == [
        f"systemd:short-lived-{lab.net.tag}.service"
    ]


def test_agent_metrics_account_for_every_row(lab: AgentLab) -> None:
    """Counters moved by this test's own connection (through the DNAT rule), whatever ran
    before it; and captured rows agree exactly with what became of them."""
    before = lab.agent.metrics()
    assert {f"capture_drop_{reason}" for reason in DROP_REASONS} <= set(before)

    def scenario() -> tuple[list[dict[str, Any]], int]:
        cport = lab.port()
        srv = lab.server(lab.net.server.ip, 8080, recv=10, send=20)
        finish(
            lab.client(
                ip=lab.net.vip, port=80, bind=lab.net.client.ip, bind_port=cport, send=10, recv=20
            )
        )
        finish(srv)
        return lab.wait_rows(lambda r: cport in (r["local_port"], r["remote_port"]), 2), 2

    rows = until_seen(lab, scenario)
    assert sorted(r["direction"] for r in rows) == ["inbound", "outbound"]
    after = lab.agent.metrics()
    # Host-wide counters: others may add, but ours must be in them.
    assert after["closed_rows"] - before["closed_rows"] >= 2
    assert after["captured_rows"] - before["captured_rows"] >= 2
    assert after["nat_resolved"] - before["nat_resolved"] >= 1  # our outbound row's backend
    # Exact: every captured row was resolved or dropped as malformed. The agent counts them
    # together after each round; read until a moment between rounds (never, if one is lost).
    m = until(
        lab.agent.metrics,
        lambda m: m["captured_rows"] == m["closed_rows"] + m["dropped_malformed_rows"],
        timeout_s=30,
        every_s=0.01,
    )
    assert m["captured_rows"] == m["closed_rows"] + m["dropped_malformed_rows"], m


def test_cli_stdout_and_sigterm_flushes_last_batch(lab: AgentLab, tmp_path: Path) -> None:
    out = tmp_path / "cli-out"
    ident = tmp_path / "identity.toml"
    ident.write_text(f'[[register]]\nworkload = "registered-client"\nip = "{lab.net.client.ip}"\n')
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from flowtrail.cli import main; main()",
            "agent",
            "--stdout",
            "--out",
            str(out),
            "--interval",
            "60s",
            "--identity",
            str(ident),
            "--exporter",
            "cli-host",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        # The header is printed once the capture is attached: what closes from now is seen.
        assert "LOCAL_WORKLOAD" in proc.stdout.readline()
        sport, cport = exchange(lab, lab.net.server.ip, lab.net.client.ip, up=2048, down=4096)
        deadline = time.monotonic() + 60  # the host's other connections print first
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if f"{lab.net.client.ip}:{cport}" in line and "OUT" in line:
                break
        assert "registered-client" in line and f"{lab.net.server.ip}:{sport}" in line
        proc.send_signal(signal.SIGTERM)  # the interval is 60 s: only the shutdown flush writes
        # Shutdown flushes all the host's captured connections: on a loaded machine that takes
        # a while. A hang still fails.
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    files = list(out.glob("flows-*.parquet"))
    assert len(files) == 1
    rows = [r for r in pq.read_table(files[0]).to_pylist() if r["local_port"] == cport]
    assert len(rows) == 1 and rows[0]["local_workload"] == "registered-client"
    assert rows[0]["flow_id"].startswith("cli-host:")
    assert "captured_rows=" in err


def test_netns_gone_before_lookup_is_counted_not_fatal() -> None:
    # A namespace inode nobody can enter any more: NAT lookups are skipped and counted.
    nat = NatResolver(NetnsIndex(rescan_s=0))
    raw = pa.Table.from_pylist(
        [
            {
                **{f.name: None for f in RAW_SCHEMA},
                "direction": "outbound",
                "netns_ino": 1,
                "pid": 0,
                "local_ip": "10.0.0.1",
                "local_port": 1,
                "remote_ip": "10.0.0.2",
                "remote_port": 2,
            }
        ],
        schema=RAW_SCHEMA,
    )
    ip, port = nat.resolve(raw)
    assert ip.to_pylist() == [None] and port.to_pylist() == [None]
    # Counted as unreachable, nothing else: the host's own table was still read, no error.
    assert nat.stats == {
        "nat_resolved": 0, "nat_netns_unreachable": 1, "nat_errors": 0,
        "nat_translating_rows": 0, "nat_translating_unknown_rows": 0, "nat_rules_unreadable": 0,
    }  # fmt: skip
    # Source-NAT marking cannot tell whether it translated: marked (a doubt costs names from
    # ranges, never gives a wrong one), counted, no error.
    assert nat.translating(raw).to_pylist() == [True]
    assert nat.stats["nat_netns_unreachable"] == 2 and nat.stats["nat_errors"] == 0
    assert nat.stats["nat_translating_unknown_rows"] == 1

"""A quiet server's listening socket names its address; a closed or stranded one names nothing.

Real kernel, real agent (BPF capture plus its listener watch, exporting Parquet), the namespace
lab. A server workload listens and is never called; a client's attempts to a port nobody
serves on the server's address are refused (no row at the other end: only a heartbeat for the
address can name it). Attributed by the engine (replay) from what the agent wrote:
- while the server listens, the refused attempt names the server's workload;
- after the listener is closed and another (idle) workload holds the address, an attempt
  names nobody;
- a listener left listening on an address that was taken away from its namespace claims the
  address no more.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flowtrail.agent.exporter import Delivery, ParquetDir
from flowtrail.agent.runner import Agent
from flowtrail.engine.replay import replay
from flowtrail.lab import Client, Lab, Place, Server
from flowtrail.lab.agent import running_agent
from flowtrail.lab.netns import sh, stop
from flowtrail.lab.wait import until
from flowtrail.schema import FLOWS
from flowtrail.tables import validate

pytestmark = pytest.mark.kernel


@dataclass
class ListenLab:
    net: Lab
    out: Path
    agent: Agent
    caller: Place

    def rows(self) -> pa.Table:
        files = sorted(self.out.glob("flows-*.parquet"))
        return pa.concat_tables([pq.read_table(f) for f in files]) if files else pa.table({})

    def looks(self) -> int:
        return self.agent.metrics()["listener_looks"]

    def two_more_looks(self) -> None:
        """Until the agent's listener watch has looked twice more (it looks once a second)."""
        seen = self.looks()
        assert until(self.looks, lambda n: n >= seen + 2, 30) >= seen + 2

    def refused(self, ip: str) -> int:
        """A refused attempt from the caller to ip (a port nobody serves); its local port."""
        port = self.net.port()
        proc = self.net.spawn(
            self.caller,
            Client(ip=ip, port=self.net.port(), send=0, recv=0, bind=self.net.client.ip,
                   bind_port=port, connect_timeout_s=2.0),
        )  # fmt: skip
        out, _ = proc.communicate(timeout=30)
        assert out.split() in (["refused"], ["abandoned"]), out
        return port

    def wait(self, match: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        def found() -> list[dict[str, Any]]:
            t = self.rows()
            return [r for r in t.to_pylist() if match(r)] if t.num_rows else []

        got = until(found, bool, 30)
        assert got, "no such row within 30 s"
        return got


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ListenLab]:
    out = tmp_path_factory.mktemp("listen") / "out"
    with Lab("listen") as net:
        caller = net.client.at(net.service_cgroup(f"caller-{net.tag}"))
        with running_agent(Delivery(ParquetDir(out)), interval_s=1.0, listeners=True) as agent:
            yield ListenLab(net, out, agent, caller)


def named(lab: ListenLab, ports: list[int]) -> dict[int, tuple[str | None, str | None]]:
    """Every row the agent wrote, attributed; the caller's rows from these local ports."""
    rows = validate(lab.rows(), FLOWS)
    out = replay(rows).table.to_pylist()
    client = lab.net.client.ip
    mine = [
        r
        for r in out
        if r["local_ip"] == client and r["local_port"] in ports and r["direction"] == "outbound"
    ]
    assert sorted(r["local_port"] for r in mine) == sorted(ports), mine
    return {r["local_port"]: (r["remote_workload"], r["unattributed_reason"]) for r in mine}


def listening_rows(lab: ListenLab, ip: str, port: int) -> list[dict[str, Any]]:
    return lab.wait(
        lambda r: r["outcome"] == "listening" and r["local_ip"] == ip and r["local_port"] == port
    )


def test_an_attempt_to_a_quiet_listener_names_it_and_not_once_it_closed(lab: ListenLab) -> None:
    net = lab.net
    old = f"systemd:old-{net.tag}.service"
    sport = net.port()
    server = net.serve(
        net.server.at(net.service_cgroup(f"old-{net.tag}")),
        Server(net.server.ip, sport, recv=0, send=0),
    )
    heard = listening_rows(lab, net.server.ip, sport)
    assert {r["local_workload"] for r in heard} == {old}
    assert all(r["state"] == "active" and r["remote_port"] == 0 for r in heard)
    while_listening = lab.refused(net.server.ip)
    lab.two_more_looks()  # its run of sightings goes on past the attempt
    stop(server)
    lab.two_more_looks()
    # Another workload holds the address now; it listens nowhere and calls nobody.
    idle = net.spawn(
        net.server.at(net.service_cgroup(f"new-{net.tag}")),
        Client(ip=net.client.ip, port=net.port(), send=0, recv=0, wait_s=120),
    )
    try:
        after = lab.refused(net.server.ip)
        lab.wait(lambda r: r["local_port"] == after and r["local_ip"] == net.client.ip)
        got = named(lab, [while_listening, after])
    finally:
        stop(idle)
    assert got[while_listening] == (old, None)
    assert got[after] == (None, "no_evidence")
    ends = [r["end_ns"] for r in lab.rows().to_pylist() if r["flow_id"] in
            {h["flow_id"] for h in heard}]  # fmt: skip
    assert max(ends) < time.time_ns()


def test_a_listener_left_on_an_address_taken_from_its_namespace_claims_it_no_more(
    lab: ListenLab,
) -> None:
    net = lab.net
    stray = net.client.ip.rsplit(".", 1)[0] + ".77"
    iface = net.server.ifname
    sh("ip", "-n", net.server.netns, "addr", "add", f"{stray}/24", "dev", iface)
    sport = net.port()
    server = net.serve(
        net.server.at(net.service_cgroup(f"stray-{net.tag}")), Server(stray, sport, recv=0, send=0)
    )
    try:
        listening_rows(lab, stray, sport)
        before = lab.refused(stray)
        lab.two_more_looks()
        sh("ip", "-n", net.server.netns, "addr", "del", f"{stray}/24", "dev", iface)
        removed = time.time_ns()
        assert server.poll() is None  # still listening, on an address it no longer has
        lab.two_more_looks()
        lab.two_more_looks()  # a flush or two after
        heard = listening_rows(lab, stray, sport)
        assert max(r["end_ns"] for r in heard) < removed
        # Nobody holds the address now (an attempt finds no neighbour and gives up): the
        # stray listener must not name it.
        after = lab.refused(stray)
        lab.wait(lambda r: r["local_port"] == after and r["local_ip"] == net.client.ip)
        got = named(lab, [before, after])
    finally:
        stop(server)
        subprocess.run(
            ["ip", "-n", net.server.netns, "addr", "del", f"{stray}/24", "dev", iface],
            capture_output=True,
        )
    assert got[before] == (f"systemd:stray-{net.tag}.service", None)
    assert got[after][0] is None

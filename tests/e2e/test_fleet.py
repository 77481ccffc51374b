"""A fleet on one kernel: a server and two hosts, each a network namespace on a bridge.

The server is a real `flowtrail up --no-agent --listen <its address>` in its namespace. Each
host is enrolled with `flowtrail token add NAME --json` and runs the agent command that
printed (`flowtrail agent --sink collector --out https://... --ca-fingerprint ...`, the
token in its environment) inside its own namespace, plus what a namespace needs to stand
for a host (`--netns`, `--routable`). Batches go over TLS across the bridge, the agents
trusting the server's CA by fingerprint only. Then, through the query API from a third
vantage (the web host) with a read token:

- the web workload's connections to the db workload are one dependency edge, named at both
  ends (`systemd:web-<tag>.service` → `systemd:db-<tag>.service`), and both exporters are
  listed;
- an agent on the web host holding web's token but claiming to be db is refused (403
  `exporter_mismatch`): none of its rows is stored under db's name;
- `flowtrail token revoke db-<tag>` while the server runs: db's next batch is refused (401),
  its rows of later connections are never stored (they wait in its spool), while web's rows
  of the same connections are; the server is the same process throughout.

Root, real eBPF (kernel marker); about a minute.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet_server import FleetServer

from flowtrail.lab.bridged import BridgedHosts
from flowtrail.lab.peer import Client, Server
from flowtrail.lab.wait import until

pytestmark = pytest.mark.kernel

MISMATCH = 'flowtrail_collector_refused_batches_total{reason="exporter_mismatch"}'
UNAUTHENTICATED = 'flowtrail_collector_refused_batches_total{reason="unauthenticated"}'


class Agents:
    """Agents started from the command `flowtrail token add` printed."""

    def __init__(self, net: BridgedHosts, tmp: Path) -> None:
        self.net, self.tmp = net, tmp
        self.procs: dict[str, subprocess.Popen[Any]] = {}

    def start(self, label: str, host: str, printed: str, *extra: str) -> None:
        words = shlex.split(printed)
        env_word, flowtrail, *args = words
        assert flowtrail == "flowtrail" and args[0] == "agent", printed
        key, _, token = env_word.partition("=")
        env = {**os.environ, key: token}
        argv = [sys.executable, "-m", "flowtrail", *args, *extra]
        # What a namespace needs to stand for a host: only its sockets, its network routable.
        argv += ["--netns", self.net.netns(host), "--routable", self.net.cidr]
        argv += ["--interval", "1s", "--resolvers", "systemd", "--no-snapshots"]
        argv += ["--spool", str(self.tmp / f"{label}.spool")]
        argv += ["--metrics", str(self.metrics_file(label))]
        with (self.tmp / f"{label}.log").open("wb") as log:
            proc = self.net.popen(host, argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs[label] = proc
        until(
            lambda: self.metrics_file(label).exists() or proc.poll() is not None,
            lambda ok: ok,
            60,
        )
        assert proc.poll() is None, self.log(label)

    def metrics_file(self, label: str) -> Path:
        return self.tmp / f"{label}.json"

    def metrics(self, label: str) -> dict[str, int]:
        try:
            return dict(json.loads(self.metrics_file(label).read_text()))
        except (OSError, ValueError):
            return {}

    def log(self, label: str) -> str:
        return (self.tmp / f"{label}.log").read_text(errors="replace")[-3000:]

    def stop(self, label: str) -> None:
        proc = self.procs.pop(label)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for label in list(self.procs):
            self.stop(label)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[BridgedHosts, FleetServer, Agents]]:
    with BridgedHosts(["server", "web", "db"]) as net:
        server = FleetServer(net, "server", tmp_path / "data", "--max-wait", "5s")
        agents = Agents(net, tmp_path)
        try:
            yield net, server, agents
        finally:
            agents.stop_all()
            code = server.stop()
            assert code == 0, server.log_path.read_text()[-3000:]


def _connect(net: BridgedHosts, cg: dict[str, Path], port: int, n: int) -> None:
    """n connections from the web workload to the db workload on `port`."""
    db_ip = net.ip("db")
    server = net.serve("db", cg["db"], Server(db_ip, port, recv=300, send=500, accepts=n))
    client = net.spawn("web", cg["web"], Client(db_ip, port, send=300, recv=500, connections=n))
    assert client.stdout is not None
    assert client.stdout.readline().strip() == "done"
    assert client.wait(30) == 0 and server.wait(30) == 0


def test_two_hosts_enrol_send_over_tls_and_are_named(
    fleet: tuple[BridgedHosts, FleetServer, Agents],
) -> None:
    net, server, agents = fleet
    web, db = f"web-{net.tag}", f"db-{net.tag}"
    web_name, db_name = f"systemd:{web}.service", f"systemd:{db}.service"
    cg = {"web": net.service_cgroup(web), "db": net.service_cgroup(db)}
    server_pid = server.p.pid

    enrolled = {name: server.enrol(name) for name in (web, db)}
    reader = server.enrol("ops", "--read")["token"]
    for facts in enrolled.values():  # what the agent needs, printed by the one command
        assert facts["url"] == server.state["fleet"]["url"]
        assert facts["url"].startswith(f"https://{net.ip('server')}:")  # not loopback
        assert facts["ca_fingerprint"] == server.state["fleet"]["ca_fingerprint"]
        assert "--ca-fingerprint" in facts["command"] and facts["token"] in facts["command"]
    listed = server.token("list")
    assert web in listed and db in listed and "ops" in listed
    agents.start("web", "web", enrolled[web]["command"])
    agents.start("db", "db", enrolled[db]["command"])

    def api(path: str) -> Any:
        return server.api("web", path, reader)

    # Named at both ends, over the API, from the two hosts' own rows.
    p1, p2, p3 = 21_001 + int(net.tag[:2], 16), 22_001, 23_001
    _connect(net, cg, p1, 3)

    def edge() -> dict[str, Any] | None:
        rows = api(f"/api/dependencies?since=15m&workload={web_name}")
        hit = [r for r in rows if r["caller"] == web_name and r["callee"] == db_name]
        return hit[0] if hit else None

    got = until(edge, lambda e: e is not None and e["seen_both_ends"] >= 3, 120)
    assert got is not None and got["flows"] == 3 and got["seen_both_ends"] == 3, got
    exporters = {r["exporter"] for r in api("/api/exporters?since=15m")}
    assert {web, db} <= exporters, exporters

    # An agent speaks for itself only: web's token, claiming to be db.
    before = server.metric("web", reader, MISMATCH)
    agents.start("spoof", "web", enrolled[web]["command"].replace(web, db, 1).replace(
        f"--exporter {web}", f"--exporter {db}"))  # fmt: skip
    assert f"--exporter {db}" in " ".join(agents.procs["spoof"].args)
    _connect(net, cg, p2, 2)
    until(lambda: server.metric("web", reader, MISMATCH), lambda v: v > before, 60)
    rows = until(
        lambda: api(f"/api/flows?since=15m&port={p2}&limit=1000"),
        lambda r: (
            sum(x["local_ip"] == net.ip("web") for x in r) == 2
            and sum(x["local_ip"] == net.ip("db") for x in r) == 2
        ),
        90,
    )
    by_db = api(f"/api/flows?since=15m&exporter={db}&limit=10000")
    assert by_db and all(r["local_ip"] == net.ip("db") for r in by_db), by_db
    # Kept in its spool, not lost.
    until(lambda: agents.metrics("spoof").get("spooled_batches", 0), lambda v: v >= 1, 30)
    said = until(lambda: agents.log("spoof"), lambda log: "cannot export" in log, 30)
    assert "answered 403" in said and "exporter" in said, said
    agents.stop("spoof")
    assert len(rows) == 4

    # Revoked while the server runs: db's next batch is refused, web goes on.
    refused = server.metric("web", reader, UNAUTHENTICATED)
    server.token("revoke", db)
    _connect(net, cg, p3, 2)
    web_rows = until(
        lambda: api(f"/api/flows?since=15m&exporter={web}&port={p3}&limit=100"),
        lambda r: len(r) == 2,
        90,
    )
    assert all(r["local_ip"] == net.ip("web") for r in web_rows)
    until(lambda: server.metric("web", reader, UNAUTHENTICATED), lambda v: v > refused, 60)
    until(lambda: agents.metrics("db").get("spooled_batches", 0), lambda v: v >= 1, 30)
    assert api(f"/api/flows?since=15m&exporter={db}&port={p3}&limit=100") == []
    assert agents.metrics("db").get("export_failures", 0) >= 1
    said = until(lambda: agents.log("db"), lambda log: "cannot export" in log, 30)
    assert "answered 401" in said, said  # the agent says why
    assert server.p.poll() is None and server.p.pid == server_pid  # no restart

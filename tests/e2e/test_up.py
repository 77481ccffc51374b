"""`flowtrail up` end to end on the real kernel: capture → TLS + token → attribution → store → API.

A real `flowtrail up` process (eBPF agent, HTTPS collector, DuckDB store, query API, all on
loopback with free ports) watches real TCP connections in the namespace lab (flowtrail/lab/):
two network namespaces joined by a veth pair (unique names, test-only addresses that exist
only inside them). The client runs in a cgroup registered by an identity file (explicit
resolver); the server runs in a cgroup shaped like a systemd service (systemd resolver). Each
connection is captured at both ends by the one agent, so each end's row is the other end's
heartbeat. The test reads the answers only through the HTTP API, then stops `up` with SIGINT
and expects exit 0, and finally checks the store file holds each row once. Everything it
creates is removed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from urllib.request import urlopen

import duckdb
import pytest

from flowtrail.lab import Client, Lab, Place, Server
from flowtrail.lab.wait import started, until

pytestmark = pytest.mark.kernel

CONNECTIONS = 3
SEND, RECV = 20_000, 7_000


@dataclass
class UpLab:
    """The lab, where its client and server run, and the names `up` must give them."""

    net: Lab
    client: Place  # a cgroup the identity file registers
    server: Place  # api-<tag>.service
    client_name: str
    server_name: str
    identity: Path


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[UpLab]:
    with Lab("up") as net:
        client_cgroup = net.cgroup("web")
        server_cgroup = net.service_cgroup(f"api-{net.tag}")
        client_name = f"web-{net.tag}"
        identity = tmp_path / "identity.toml"
        identity.write_text(
            f'[[register]]\nworkload = "{client_name}"\ncgroup = "/{net.root.name}/web"\n'
        )
        yield UpLab(
            net, net.client.at(client_cgroup), net.server.at(server_cgroup),
            client_name, f"systemd:{server_cgroup.name}", identity,
        )  # fmt: skip


class Up:
    """A `flowtrail up` process with its own data directory and free ports."""

    def __init__(self, data: Path, *args: str) -> None:
        self.data = data
        self.log_path = data.parent / "up.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        self.p = subprocess.Popen(
            [sys.executable, "-m", "flowtrail.up", "--data", str(data), "--port-collector", "0",
             "--port-api", "0", *args],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        state = data / "up.json"

        def ours() -> bool:  # this process's state file, not one left by an earlier `up`
            return state.exists() and json.loads(state.read_text())["pid"] == self.p.pid

        started(self.p, ours, self.log_path, 45, "flowtrail up")
        self.state = json.loads(state.read_text())

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, endpoint: str, **params: Any) -> Any:
        url = f"{self.state['api']}/api/{endpoint}?{urlencode(params)}"
        with urlopen(url, timeout=10) as r:
            return json.loads(r.read())

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)
        self.log.close()


def test_up_captures_attributes_and_serves_both_ends(lab: UpLab, tmp_path: Path) -> None:
    up = Up(
        tmp_path / "data", "--interval", "1s", "--max-wait", "10s", "--status-every", "1s",
        "--identity", str(lab.identity), "--exporter", f"up-{lab.net.tag}",
    )  # fmt: skip
    try:
        assert up.state["collector"].startswith("https://127.0.0.1:")
        assert up.state["api"].startswith("http://127.0.0.1:")
        port = lab.net.port()
        server_role = Server(lab.net.server.ip, port, recv=SEND, send=RECV, accepts=CONNECTIONS)
        client_role = Client(lab.net.server.ip, port, send=SEND, recv=RECV, connections=CONNECTIONS)
        server = lab.net.serve(lab.server, server_role)  # returns once it listens
        client = lab.net.spawn(lab.client, client_role)
        assert client.stdout is not None and client.stdout.readline().strip() == "done"
        assert client.wait(10) == 0 and server.wait(10) == 0

        # Both ends of every connection, decided, through the API only.
        def closed_of(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [r for r in rows if r["state"] == "closed"]

        rows = until(
            lambda: up.get("flows", port=port, since="5m", limit=100),
            lambda rows: len(closed_of(rows)) >= 2 * CONNECTIONS,
            timeout_s=40,
            every_s=0.5,
        )
        closed = closed_of(rows)
        assert len(closed) == 2 * CONNECTIONS, f"rows {rows}\n{up.output()}"
        out = [r for r in closed if r["direction"] == "outbound"]
        inb = [r for r in closed if r["direction"] == "inbound"]
        assert len(out) == len(inb) == CONNECTIONS
        for r in out:
            assert (r["local_ip"], r["remote_ip"], r["remote_port"]) == (
                lab.net.client.ip, lab.net.server.ip, port
            )  # fmt: skip
            assert r["local_workload"] == lab.client_name
            assert r["remote_workload"] == lab.server_name
            assert r["remote_source"] == "heartbeat"
            assert r["bytes_sent"] == SEND and r["bytes_received"] == RECV
            assert r["exporter"] == f"up-{lab.net.tag}"
        for r in inb:
            assert (r["local_ip"], r["local_port"], r["remote_ip"]) == (
                lab.net.server.ip, port, lab.net.client.ip
            )  # fmt: skip
            assert r["local_workload"] == lab.server_name
            assert r["remote_workload"] == lab.client_name
            assert r["remote_source"] == "heartbeat"
            assert r["bytes_sent"] == RECV and r["bytes_received"] == SEND
        # The caller (client) → callee (server) edge, each connection counted once.
        edges = up.get("dependencies", workload=lab.client_name, since="5m")
        assert len(edges) == 1, edges
        edge = edges[0]
        assert (edge["caller"], edge["callee"]) == (lab.client_name, lab.server_name)
        assert edge["flows"] == edge["seen_both_ends"] == CONNECTIONS
        assert edge["bytes_to_callee"] == CONNECTIONS * SEND
        assert edge["bytes_to_caller"] == CONNECTIONS * RECV
        talkers = {t["workload"]: t for t in up.get("top-talkers", since="5m", limit=100)}
        assert talkers[lab.server_name]["bytes_received"] == CONNECTIONS * SEND

        # One more connection, then Ctrl-C at once: the agent's last batch must still be
        # exported, decided and stored by the ordered stop, which exits 0.
        last_port = lab.net.port()
        server = lab.net.serve(
            lab.server, dataclasses.replace(server_role, port=last_port, accepts=1)
        )
        client = lab.net.spawn(
            lab.client, dataclasses.replace(client_role, port=last_port, connections=1)
        )
        assert client.wait(10) == 0 and server.wait(10) == 0
        # The ordered stop's one wait is capped (15 s for the collector's tick); 60 s only
        # guards against a hang, so a loaded machine cannot fail it. What it must achieve is
        # checked below: that last connection stored, attributed at both ends.
        up.p.send_signal(signal.SIGINT)
        assert up.p.wait(60) == 0, up.output()
        text = up.output()
        assert "flowtrail up: stopped" in text
        assert "attributed" in text  # the status line ran
        assert not (tmp_path / "data" / "up.json").exists()  # nothing listens any more
    finally:
        up.close()  # the lab stops any peer still running

    # The store file, opened after the stop: each row once (no duplicates from the final tick).
    con = duckdb.connect(str(tmp_path / "data" / "flows.duckdb"), read_only=True)
    try:
        n, keys = con.execute(
            "SELECT count(*), count(DISTINCT (exporter, flow_id, state, end_ns)) FROM flows "
            "WHERE local_port = ? OR remote_port = ?",
            [port, port],
        ).fetchone() or (0, 0)
        last = con.execute(
            "SELECT direction, local_workload, remote_workload FROM flows "
            "WHERE state = 'closed' AND (local_port = ? OR remote_port = ?) ORDER BY direction",
            [last_port, last_port],
        ).fetchall()
    finally:
        con.close()
    assert n == keys == 2 * CONNECTIONS
    assert last == [
        ("inbound", lab.server_name, lab.client_name),
        ("outbound", lab.client_name, lab.server_name),
    ], up.output()
    tokens = tmp_path / "data" / "tokens.txt"
    assert tokens.stat().st_mode & 0o077 == 0  # the secret is readable by its owner only
    token_text = tokens.read_text()

    # Started again on the same data: same token, the stored rows are there, none twice.
    again = Up(tmp_path / "data", "--no-agent", "--exporter", f"up-{lab.net.tag}")
    try:
        rows = again.get("flows", port=port, limit=100) + again.get("flows", port=last_port)
        assert len(rows) == 2 * CONNECTIONS + 2
        # A second `up` on a data directory in use is refused before it touches anything.
        second = subprocess.run(
            [sys.executable, "-m", "flowtrail.up", "--data", str(tmp_path / "data"),
             "--no-agent", "--port-collector", "0", "--port-api", "0"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 2
        assert f"in use by another flowtrail up (pid {again.p.pid})" in second.stderr
        again.p.send_signal(signal.SIGTERM)
        assert again.p.wait(30) == 0, again.output()
    finally:
        again.close()
    assert tokens.read_text() == token_text


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory user nobody can reach (pytest's tmp_path sits below a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="flowtrail-up-test-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_up_without_root_says_what_is_missing(open_dir: Path) -> None:
    """As an unprivileged user (setpriv to nobody): a clear error, and --no-agent works."""
    tmp_path = open_dir
    data = tmp_path / "data"
    env = {**os.environ, "HOME": str(tmp_path)}
    base = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
            "-m", "flowtrail.up", "--data", str(data)]  # fmt: skip
    r = subprocess.run(base, capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2, r.stderr
    assert "not root" in r.stderr and "--no-agent" in r.stderr
    assert not data.exists()  # refused before anything was made

    r = subprocess.run(
        [*base, "--listen", "example.com", "--no-agent"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and "IPv4 address" in r.stderr and not data.exists()

    log = tmp_path / "noagent.log"
    with open(log, "wb") as out:
        p = subprocess.Popen(
            [*base, "--no-agent", "--port-collector", "0", "--port-api", "0"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        try:
            started(p, (data / "up.json").exists, log, 30, "flowtrail up --no-agent")
            state = json.loads((data / "up.json").read_text())
            assert state["agent"] is False
            with urlopen(state["api"] + "/api/health", timeout=10) as resp:
                assert json.loads(resp.read())[0]["rows"] == 0
            p.send_signal(signal.SIGTERM)
            assert p.wait(30) == 0, log.read_text()
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(5)


def _agent_metric(up: Up, name: str) -> float:
    """One of the agent's counters from `up`'s /metrics (HTTPS, trusting up's own CA)."""
    tls = ssl.create_default_context(cafile=up.state["cafile"])
    with urlopen(up.state["collector"] + "/metrics", timeout=10, context=tls) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(f"flowtrail_agent_{name}_total ") or line.startswith(
            f"flowtrail_agent_{name} "
        ):
            return float(line.split()[1])
    raise AssertionError(f"no flowtrail_agent_{name} in /metrics")


def _own_cgroup_name() -> str:
    """What a first run names this test process's own sockets (host netns): its systemd unit
    when it runs in one, else the host's name."""
    path = Path("/proc/self/cgroup").read_text().splitlines()[-1].split("::", 1)[-1]
    units = [p for p in path.split("/") if p.endswith(".service")]
    return f"systemd:{units[-1]}" if units else f"host:{socket.gethostname()}"


def test_a_first_run_names_flows_without_configuration(tmp_path: Path) -> None:
    """No identity file, no --host-workload: a process in a plain cgroup of its own netns is
    named by its cgroup, a systemd-shaped one by its unit, the host's own sockets by the host
    name; flowtrail's own traffic (agent → collector, queries to the API) is left out."""
    with Lab("first") as net:
        web = net.cgroup("web")
        api_unit = net.service_cgroup(f"api-{net.tag}")
        up = Up(tmp_path / "data", "--interval", "1s", "--max-wait", "10s",
                "--exporter", f"first-{net.tag}")  # fmt: skip
        try:
            out = up.output()
            assert "resolvers explicit,kubernetes,container,systemd,host,cgroup" in out, out
            assert f"host sockets named 'host:{socket.gethostname()}'" in out
            assert "no identity file" in out
            port = net.port()
            server = net.serve(net.server.at(api_unit), Server(net.server.ip, port, recv=100,
                               send=50, accepts=2))  # fmt: skip
            client = net.spawn(net.client.at(web), Client(net.server.ip, port, send=100,
                               recv=50, connections=2))  # fmt: skip
            assert client.stdout is not None and client.stdout.readline().strip() == "done"
            assert client.wait(10) == 0 and server.wait(10) == 0
            with socket.create_server(("127.0.0.1", 0)) as listener:  # the host's own sockets
                host_port = listener.getsockname()[1]
                with socket.create_connection(("127.0.0.1", host_port)) as c:
                    peer, _ = listener.accept()
                    c.sendall(b"x")
                    assert peer.recv(1) == b"x"
                    peer.close()

            def closed(p: int) -> list[dict[str, Any]]:
                rows = up.get("flows", port=p, since="5m", limit=100)
                return [r for r in rows if r["state"] == "closed"]

            lab_rows = until(lambda: closed(port), lambda r: len(r) >= 4, 40, 0.5)
            host_rows = until(lambda: closed(host_port), lambda r: len(r) >= 2, 40, 0.5)
            web_name = f"cgroup:/{net.root.name}/web"
            api_name = f"systemd:{api_unit.name}"
            for r in lab_rows:
                want = (
                    (web_name, api_name) if r["direction"] == "outbound" else (api_name, web_name)
                )
                assert (r["local_workload"], r["remote_workload"]) == want, r  # fmt: skip
            me = _own_cgroup_name()
            assert {(r["local_workload"], r["remote_workload"]) for r in host_rows} == {(me, me)}

            # flowtrail's own traffic: the agent's exports and these very queries
            collector_port = int(up.state["collector"].rsplit(":", 1)[1])
            api_port = int(up.state["api"].rsplit(":", 1)[1])
            for _ in range(3):
                up.get("health")
            # left out, and counted: the three queries at least, and the agent's exports
            assert until(lambda: _agent_metric(up, "own_traffic_rows"), lambda v: v >= 3, 40, 0.5)
            assert up.get("flows", port=collector_port, since="5m", limit=10) == []
            assert up.get("flows", port=api_port, since="5m", limit=10) == []
        finally:
            up.p.send_signal(signal.SIGINT)
            up.p.wait(30)
            up.close()


def test_own_traffic_kept_on_request_and_missing_identity_targets_warned(
    tmp_path: Path,
) -> None:
    """--keep-own-traffic: queries to the API are kept, their server end named flowtrail:api
    (and the client's view of it by heartbeat). An identity entry whose cgroup or netns does
    not exist is named in a warning at start."""
    tag = os.urandom(4).hex()
    identity = tmp_path / "identity.toml"
    identity.write_text(
        f'[[register]]\nworkload = "ghost"\ncgroup = "/no-such-cgroup-{tag}"\n'
        f'[[register]]\nworkload = "phantom"\nnetns = "no-such-netns-{tag}"\n'
    )
    up = Up(tmp_path / "data", "--interval", "1s", "--max-wait", "10s", "--keep-own-traffic",
            "--identity", str(identity), "--exporter", f"own-{tag}")  # fmt: skip
    try:
        out = up.output()
        assert f"entry 1 ('ghost'): cgroup /no-such-cgroup-{tag} does not exist" in out, out
        assert f"entry 2 ('phantom'): netns 'no-such-netns-{tag}' does not exist" in out, out
        assert f"identity file {identity} (2 registrations)" in out
        api_port = int(up.state["api"].rsplit(":", 1)[1])
        for _ in range(3):
            up.get("health")

        def closed() -> list[dict[str, Any]]:
            rows = up.get("flows", port=api_port, since="5m", limit=100)
            return [
                r for r in rows if r["state"] == "closed" and r["remote_source"] != "unattributed"
            ]

        rows = until(closed, lambda r: len(r) >= 4, 40, 0.5)
        inbound = [r for r in rows if r["direction"] == "inbound"]
        outbound = [r for r in rows if r["direction"] == "outbound"]
        assert inbound and outbound
        assert {r["local_workload"] for r in inbound} == {"flowtrail:api"}
        assert {r["remote_workload"] for r in outbound} == {"flowtrail:api"}
        assert _agent_metric(up, "own_traffic_rows") == 0
    finally:
        up.p.send_signal(signal.SIGINT)
        up.p.wait(30)
        up.close()

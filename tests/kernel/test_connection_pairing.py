"""The two ends of one real connection are paired exactly, and failed attempts are not connections.

Real kernel traffic in the namespace lab: `web` (client namespace) connects to `api` (server
namespace), each a systemd-like service cgroup; one real agent captures both ends. nftables in
the server's namespace drops the first SYNs of each connection, so the client's row starts
seconds before the server's. Then the captured rows go through the engine (peer matching) and
the dependencies query, which must both pair every client row with its own server row: with
0, 1, 2 and 5 lost SYNs, and with one 4-tuple used by five connections in a row (each through
the server's TIME_WAIT). Attempts that never established, and resets, are told apart.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from flowtrail.agent.exporter import Delivery, ParquetDir
from flowtrail.agent.runner import Agent
from flowtrail.engine.replay import replay
from flowtrail.lab import Client, Lab, Place, Server
from flowtrail.lab.agent import running_agent
from flowtrail.lab.netns import FILTER_INPUT, nft_chain, sh
from flowtrail.lab.wait import until
from flowtrail.query.queries import FlowFilter, dependencies, flows

pytestmark = pytest.mark.kernel

SECOND = 1_000_000_000
# A lost SYN is sent again after the initial RTO (1 s). Kernels with tcp_syn_linear_timeouts
# wait that long for the first `linear` + 1 retries (the lab's client namespace sets 4), then
# double the wait; older kernels double it from the first (1 s, 3 s, 31 s for 1, 2, 5 lost).
# Either way five lost SYNs put seconds between the ends' start times, far past the 1 s
# pairing tolerance; the linear start makes that 5 s instead of 31 s of waiting.
LINEAR_SYN_TIMEOUTS = Path("/proc/sys/net/ipv4/tcp_syn_linear_timeouts")
LINEAR_RETRIES = 4 if LINEAR_SYN_TIMEOUTS.exists() else 0


def handshake_delay_s(lost: int) -> int:
    """Seconds from the first SYN to the one that gets through, `lost` lost before it."""
    return sum(2 ** max(0, k - LINEAR_RETRIES) for k in range(lost))


@dataclass
class PairLab:
    net: Lab
    web: Place
    api: Place
    out: Path
    agent: Agent

    @property
    def web_name(self) -> str:
        return f"systemd:web-{self.net.tag}.service"

    @property
    def api_name(self) -> str:
        return f"systemd:api-{self.net.tag}.service"

    def rows(self, *ports: int) -> pa.Table:
        """Every row the agent exported so far that has one of `ports` at either end."""
        files = sorted(self.out.glob("flows-*.parquet"))
        if not files:
            return pa.table({})
        t = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
        mine = pc.or_(
            pc.is_in(t.column("local_port"), pa.array(ports, pa.int32())),
            pc.is_in(t.column("remote_port"), pa.array(ports, pa.int32())),
        )
        return t.filter(mine)

    def wait_closed(self, ports: tuple[int, ...], want: int, timeout_s: float = 60) -> pa.Table:
        def closed() -> pa.Table:
            t = self.rows(*ports)
            return t.filter(pc.equal(t.column("state"), "closed")) if t.num_rows else t

        got = until(closed, lambda t: t.num_rows >= want, timeout_s)
        assert got.num_rows == want, got.to_pylist()
        return self.rows(*ports)

    def drop_syns(self, port: int, lost: int, of: int | None = None) -> None:
        """In api's namespace: of every `of` SYNs to `port` (default lost + 1), drop `lost`."""
        of = lost + 1 if of is None else of
        rule = f"tcp dport {port} tcp flags & (syn | ack) == syn numgen inc mod {of} < {lost} drop"
        nft_chain(self.net.server.netns, f"inet ftsyn{port}", "in", FILTER_INPUT, rule)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PairLab]:
    out = tmp_path_factory.mktemp("pairing") / "out"
    with Lab("pair") as net:
        if LINEAR_SYN_TIMEOUTS.exists():
            sh("ip", "netns", "exec", net.client.netns, "sysctl", "-qw",
               f"net.ipv4.tcp_syn_linear_timeouts={LINEAR_RETRIES}")  # fmt: skip
        web = net.client.at(net.service_cgroup(f"web-{net.tag}"))
        api = net.server.at(net.service_cgroup(f"api-{net.tag}"))
        with running_agent(Delivery(ParquetDir(out)), interval_s=1.0) as agent:
            yield PairLab(net, web, api, out, agent)


def finish(p: subprocess.Popen[str], timeout: float) -> str:
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out
    return out


def attributed(rows: pa.Table) -> tuple[pa.Table, dict[str, Any]]:
    result = replay(rows)
    return result.table, result.summary


def query(table: pa.Table) -> duckdb.DuckDBPyConnection:
    """The attributed rows as a store lays them out: the columns beyond the contract's in
    `extra` (here none the queries need)."""
    con = duckdb.connect()
    con.register("attributed_rows", table)
    con.execute("CREATE VIEW flows AS SELECT *, NULL::VARCHAR AS extra FROM attributed_rows")
    return con


def check_paired(lab: PairLab, rows: pa.Table, n: int, up: int) -> None:
    """n connections web → api: the engine names all 2n rows by their other end, and the
    dependencies count n connections, each seen at both ends."""
    table, summary = attributed(rows)
    assert summary["heartbeat_via_peer_row"] == 2 * n, summary
    for r in table.to_pylist():
        want = lab.api_name if r["direction"] == "outbound" else lab.web_name
        assert r["remote_workload"] == want, r
    deps = dependencies(query(table)).to_pylist()
    assert [(d["caller"], d["callee"]) for d in deps] == [(lab.web_name, lab.api_name)], deps
    (edge,) = deps
    assert (edge["flows"], edge["seen_both_ends"], edge["failed_attempts"]) == (n, n, 0), edge
    assert edge["bytes_to_callee"] == n * up, edge


@pytest.mark.parametrize("lost", [0, 1, 2, 5])
def test_lost_syns_do_not_split_a_connection(lab: PairLab, lost: int) -> None:
    n = 2 if handshake_delay_s(lost) <= 5 else 1  # 31 s each with the classic backoff
    port = lab.net.port()
    lab.drop_syns(port, lost)
    srv = lab.net.serve(lab.api, Server(lab.net.server.ip, port, recv=300, send=70, accepts=n))
    cli = lab.net.spawn(lab.web, Client(lab.net.server.ip, port, send=300, recv=70, connections=n))
    finish(cli, timeout=n * (handshake_delay_s(lost) + 30))
    finish(srv, timeout=10)
    rows = lab.wait_closed((port,), 2 * n)

    for r in rows.to_pylist():
        assert r["outcome"] == "established", r
        waited = r["established_ns"] - r["start_ns"]
        if r["direction"] == "outbound":  # from the first SYN to the SYN-ACK
            assert (
                handshake_delay_s(lost) * SECOND <= waited < (handshake_delay_s(lost) + 1) * SECOND
            )
        else:  # the server's socket is made when the handshake completes
            assert 0 <= waited < SECOND // 2, r
    check_paired(lab, rows, n, up=300)


@pytest.mark.parametrize("lost", [0, 1])
def test_one_four_tuple_reused_five_times_pairs_one_to_one(lab: PairLab, lost: int) -> None:
    n = 5
    port, cport = lab.net.port(), lab.net.port()
    lab.drop_syns(port, lost)
    srv = lab.net.serve(lab.api, Server(lab.net.server.ip, port, recv=40, send=9, accepts=n))
    cli = lab.net.spawn(
        lab.web,
        Client(
            lab.net.server.ip, port, send=40, recv=9, bind=lab.net.client.ip, bind_port=cport,
            connections=n, server_closes_first=True,
        ),
    )  # fmt: skip
    finish(cli, timeout=n * (handshake_delay_s(lost) + 10))
    finish(srv, timeout=10)
    rows = lab.wait_closed((port,), 2 * n)

    tuples = {
        (r["local_port"], r["remote_port"]) if r["direction"] == "outbound"
        else (r["remote_port"], r["local_port"])
        for r in rows.to_pylist()
    }  # fmt: skip
    assert tuples == {(cport, port)}  # one 4-tuple, five connections
    starts = sorted(r["start_ns"] for r in rows.to_pylist() if r["direction"] == "outbound")
    assert starts[-1] - starts[0] < (n * handshake_delay_s(lost) + 5) * SECOND
    check_paired(lab, rows, n, up=40)


def test_failed_attempts_and_resets_are_told_apart(lab: PairLab, tmp_path: Path) -> None:
    ip = lab.net.server.ip
    long_port, dead, silent, slow, reset = (lab.net.port() for _ in range(5))
    lab.drop_syns(silent, 1, of=1)  # every SYN dropped: the handshake times out
    lab.drop_syns(slow, 1, of=1)
    # a connection held open until the attempts are over keeps api's address owned (its
    # snapshots are heartbeats), so the attempts' target has an owner to be named by
    go = tmp_path / "answer"
    long_srv = lab.net.serve(
        lab.api, Server(ip, long_port, recv=1_000, send=5, answer_after=str(go))
    )
    long_cli = lab.net.spawn(lab.web, Client(ip, long_port, send=1_000, recv=5))
    snapshots = until(
        lambda: lab.rows(long_port),
        lambda t: t.num_rows > 0 and "active" in t.column("state").to_pylist(),
        timeout_s=60,
    )
    assert snapshots.num_rows and "active" in snapshots.column("state").to_pylist()
    said = [
        finish(lab.net.spawn(lab.web, Client(ip, dead, send=1, recv=1)), 10),
        finish(lab.net.spawn(lab.web, Client(ip, silent, send=1, recv=1, syn_retries=1)), 20),
        finish(lab.net.spawn(lab.web, Client(ip, slow, send=1, recv=1, connect_timeout_s=0.5)), 10),
    ]
    assert [s.split() for s in said] == [["refused"], ["timeout"], ["abandoned"]]
    reset_srv = lab.net.serve(lab.api, Server(ip, reset, recv=10, send=0, reset=True))
    assert finish(lab.net.spawn(lab.web, Client(ip, reset, send=10, recv=1)), 10).split() == [
        "reset"
    ]
    finish(reset_srv, 10)
    go.touch()
    finish(long_cli, 40)
    finish(long_srv, 10)
    ports = (long_port, dead, silent, slow, reset)
    rows = lab.wait_closed(ports, 2 + 3 + 2)

    closed = rows.filter(pc.equal(rows.column("state"), "closed")).to_pylist()
    outcome = {(r["direction"], r["local_port"] if r["direction"] == "inbound"
                else r["remote_port"]): r["outcome"] for r in closed}  # fmt: skip
    assert outcome == {
        ("outbound", long_port): "established", ("inbound", long_port): "established",
        ("outbound", dead): "refused", ("outbound", silent): "timeout",
        ("outbound", slow): "abandoned",
        ("outbound", reset): "reset", ("inbound", reset): "reset",
    }  # fmt: skip
    for r in closed:
        assert (r["established_ns"] is None) == (
            r["outcome"] in ("refused", "timeout", "abandoned")
        )

    table, _ = attributed(rows)
    con = query(table)
    deps = dependencies(con).to_pylist()
    # the attempts went to an address api owned at the time: named, but not connections
    assert [(d["caller"], d["callee"], d["flows"], d["seen_both_ends"], d["failed_attempts"])
            for d in deps] == [(lab.web_name, lab.api_name, 2, 2, 3)], deps  # fmt: skip
    attempts = flows(con, where=FlowFilter(outcome="attempts")).to_pylist()
    assert sorted(r["outcome"] for r in attempts) == ["abandoned", "refused", "timeout"]
    assert {r["remote_workload"] for r in attempts} == {lab.api_name}
    resets = flows(con, where=FlowFilter(outcome="reset")).to_pylist()
    assert len(resets) == 2 and {r["local_port"] for r in resets} >= {reset}
    connected = flows(con, where=FlowFilter(outcome="connected", port=long_port)).to_pylist()
    assert connected and all(r["outcome"] == "established" for r in connected)

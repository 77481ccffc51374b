"""DNS answers captured from the real kernel, parsed, named and exported as `dns_answers`.

A namespace lab (flowtrail/lab/): dnsmasq (Debian's dnsmasq-base) in the server namespace
answers made-up names only: an --address name with --local-ttl, host records with their own
TTL, and a two-link CNAME chain with a TTL per link. Resolver clients (flowtrail/lab/dnspeer.py)
run in the client namespace under a systemd-service-shaped cgroup and in the server namespace
under a Kubernetes pod's cgroup, asking over UDP and TCP, IPv4 and IPv6. A fake server sends
crafted answers (truncated, malformed) from port 53 with a plain UDP socket. One agent (real
flow and DNS capture, limited to the lab's two namespaces, 1 s interval) writes Parquet; the
tests read dns_answers-*.parquet and the agent's counters.
"""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flowtrail.agent.dns_capture import DnsCapture
from flowtrail.agent.exporter import Delivery, ParquetDir
from flowtrail.agent.runner import Agent
from flowtrail.engine.dnsnames import DnsNames
from flowtrail.engine.replay import replay
from flowtrail.lab import Client, Lab, Place, Server
from flowtrail.lab.agent import EXPORTER, REGION, running_agent
from flowtrail.lab.dnspeer import Receive, Resolve, Send, argv, dnsmasq_argv, encode_name
from flowtrail.lab.wait import until
from flowtrail.schema import DNS_ANSWERS, FLOWS
from flowtrail.tables import validate

pytestmark = pytest.mark.kernel


@dataclass
class DnsLab:
    net: Lab
    svc: Place  # client namespace, a systemd service's cgroup
    pod: Place  # server namespace, a Kubernetes pod container's cgroup
    pod_uid: str
    out: Path
    agent: Agent

    def name(self, stem: str) -> str:
        return f"{stem}-{self.net.tag}.test"

    def run(self, where: Place, role: Resolve | Receive | Send) -> subprocess.Popen[str]:
        proc = subprocess.Popen(argv(where.netns, where.cgroup, role), stdout=subprocess.PIPE,
                                text=True)  # fmt: skip
        self.net.adopt(proc)
        return proc

    def resolve(self, where: Place, server: str, queries: list[tuple[str, str]],
                tcp: bool = False) -> list[str]:  # fmt: skip
        proc = self.run(where, Resolve(server, queries, tcp))
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        lines = out.splitlines()
        assert lines[-1] == "done", out
        return lines[:-1]

    def rows(self) -> list[dict[str, Any]]:
        files = sorted(self.out.glob("dns_answers-*.parquet"))
        if not files:
            return []
        table = pa.concat_tables([pq.read_table(f) for f in files])
        validate(table, DNS_ANSWERS)
        return table.to_pylist()

    def wait_rows(self, query_name: str, want: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        def mine() -> list[dict[str, Any]]:
            return [r for r in self.rows() if r["query_name"] == query_name]

        got = until(mine, lambda rows: len(rows) >= want, timeout)
        assert len(got) >= want, f"{query_name}: {got}"
        return got


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsLab]:
    out = tmp_path_factory.mktemp("dns") / "out"
    pod_uid = str(uuid.uuid4())
    with Lab("dns") as net:
        t = net.tag
        records = [
            f"--address=/pay-{t}.test/10.77.1.1",
            "--local-ttl=45",
            f"--host-record=lb.cdn-{t}.test,10.77.0.5,fd00:77::5,600",
            f"--cname=edge.cdn-{t}.test,lb.cdn-{t}.test,120",
            f"--cname=www.shop-{t}.test,edge.cdn-{t}.test,300",
            f"--host-record=db-{t}.test,10.77.2.2,fd00:77::22,1800",
            f"--host-record=later-{t}.test,10.77.3.3,90",
            f"--host-record=api-{t}.test,{net.server.ip},300",
        ]
        dnsmasq = subprocess.Popen(
            dnsmasq_argv(net.server.netns, [net.server.ip, net.server.ip6], records),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        net.adopt(dnsmasq)
        svc = net.client.at(net.service_cgroup(f"resolver-{t}"))
        pod = net.server.at(net.pod_cgroup(pod_uid))
        mine = frozenset({net.client.netns_inode(), net.server.netns_inode()})
        with running_agent(
            Delivery(ParquetDir(out)),
            interval_s=1.0,
            netns=mine,
            dns=Delivery(ParquetDir(out, prefix="dns_answers")),
        ) as agent:
            yield DnsLab(net, svc, pod, pod_uid, out, agent)


def test_udp_answers_with_cname_chain_ttl_and_receiving_workload(lab: DnsLab) -> None:
    www, pay = lab.name("www.shop"), lab.name("pay")
    before = time.time_ns()
    said = lab.resolve(lab.svc, lab.net.server.ip, [(www, "A"), (www, "AAAA"), (pay, "A")])
    after = time.time_ns()
    assert said == [
        f"answer {www} A rcode=0 ancount=3",
        f"answer {www} AAAA rcode=0 ancount=3",
        f"answer {pay} A rcode=0 ancount=1",
    ]
    rows = lab.wait_rows(www, 2) + lab.wait_rows(pay, 1)
    workload = f"systemd:resolver-{lab.net.tag}.service"
    chain = f"{lab.name('edge.cdn')} {lab.name('lb.cdn')}"
    got = sorted((r["query_name"], r["cname_chain"], r["address"], r["ttl_s"]) for r in rows)
    assert got == sorted(
        [
            (www, chain, "10.77.0.5", 120),  # the chain's smallest TTL: its second link's
            (www, chain, "fd00:77::5", 120),
            (pay, None, "10.77.1.1", 45),  # --local-ttl
        ]
    )
    for r in rows:
        assert r["local_workload"] == workload
        assert (r["exporter"], r["region"], r["network"]) == (EXPORTER, REGION, None)
        assert before <= r["observed_ns"] <= after


def test_tcp_over_ipv6_in_another_namespace_and_cgroup(lab: DnsLab) -> None:
    db = lab.name("db")
    said = lab.resolve(lab.pod, lab.net.server.ip6, [(db, "AAAA"), (db, "A")], tcp=True)
    assert said == [f"answer {db} AAAA rcode=0 ancount=1", f"answer {db} A rcode=0 ancount=1"]
    rows = lab.wait_rows(db, 2)
    assert sorted((r["address"], r["ttl_s"], r["cname_chain"]) for r in rows) == [
        ("10.77.2.2", 1800, None),
        ("fd00:77::22", 1800, None),
    ]
    assert {r["local_workload"] for r in rows} == {f"k8s:pod/{lab.pod_uid}"}
    assert lab.agent.metrics()["dns_drop_tcp_split"] == 0


def test_negative_answer_gives_no_rows_and_no_drop(lab: DnsLab) -> None:
    nowhere = lab.name("nowhere")
    said = lab.resolve(lab.svc, lab.net.server.ip, [(nowhere, "A")])
    assert said == [f"answer {nowhere} A rcode=5 ancount=0"]  # REFUSED: not its own name
    # a name answered after it proves the negative answer was read by now
    later = lab.name("later")
    lab.resolve(lab.svc, lab.net.server.ip, [(later, "A")])
    assert [r["ttl_s"] for r in lab.wait_rows(later, 1)] == [90]
    assert [r for r in lab.rows() if r["query_name"] == nowhere] == []
    assert lab.agent.metrics()["dns_responses_without_address"] >= 1


def _answer(name: str, *, flags: int = 0x8180, rdlength: int = 4, self_pointer: bool = False,
            cut: int = 0) -> str:  # fmt: skip
    """A response to `name` A with one answer 10.77.9.9 (TTL 30), made up byte for byte."""
    question = encode_name(name) + struct.pack(">HH", 1, 1)
    head = struct.pack(">HHHHHH", 0x1234, flags, 1, 1, 0, 0) + question
    # the answer's owner: a pointer to the question's name, or (malformed) to itself
    owner = 0xC000 | (len(head) if self_pointer else 12)
    rr = struct.pack(">HHHIH", owner, 1, 1, 30, rdlength) + bytes([10, 77, 9, 9, 0][:rdlength])
    msg = head + rr
    return (msg[: len(msg) - cut] if cut else msg).hex()


def test_truncated_and_malformed_answers_counted_and_capture_goes_on(lab: DnsLab) -> None:
    fake = lab.name("fake")
    payloads = [
        _answer(fake),  # good: one row
        _answer(fake, cut=2),  # ends inside the address
        "81800001",  # ends inside the header
        _answer(fake, self_pointer=True),  # a compression pointer to itself
        _answer(fake, rdlength=5),  # an A record of 5 bytes
        _answer(fake, flags=0x8380),  # TC: the server truncated it
    ]
    before = {k: v for k, v in lab.agent.metrics().items() if k.startswith("dns_drop_")}
    port = lab.net.port()
    # the fake server: loopback in the client's namespace (dnsmasq holds the server's :53)
    receiver = lab.run(lab.svc, Receive("127.0.0.1", port, len(payloads)))
    assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
    sender = lab.run(lab.svc, Send("127.0.0.1", "127.0.0.1", port, payloads))
    assert sender.communicate(timeout=30)[0].strip() == "sent"
    assert receiver.communicate(timeout=30)[0].strip() == f"got {len(payloads)}"

    rows = lab.wait_rows(fake, 1)
    assert [(r["address"], r["ttl_s"]) for r in rows] == [("10.77.9.9", 30)]
    assert rows[0]["local_workload"] == f"systemd:resolver-{lab.net.tag}.service"

    def delta() -> dict[str, int]:
        m = lab.agent.metrics()
        return {k: m[k] - before[k] for k in before if m[k] != before[k]}

    want = {"dns_drop_truncated": 2, "dns_drop_malformed": 2, "dns_drop_server_truncated": 1}
    assert until(delta, lambda d: d == want, 30) == want
    # still capturing and parsing: one more answer comes out as a row
    pay = lab.name("pay")
    had = len([r for r in lab.rows() if r["query_name"] == pay])
    lab.resolve(lab.svc, lab.net.server.ip, [(pay, "A")])
    lab.wait_rows(pay, had + 1)
    assert lab.agent.metrics()["dns_drop_ringbuf_full"] == 0


def _agent_command(lab: DnsLab, out: Path, metrics: Path, *extra: str) -> subprocess.Popen[str]:
    argv = [
        sys.executable, "-c", "from flowtrail.cli import main; main()", "agent",
        "--out", str(out), "--interval", "60s", "--exporter", "cli-host",
        "--netns", lab.net.client.netns, "--netns", lab.net.server.netns,
        "--metrics", str(metrics), *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lab.net.adopt(proc)
    assert proc.stderr is not None
    said = []
    while not (line := proc.stderr.readline()).startswith("flowtrail agent: capturing"):
        assert line, f"the agent exited: {''.join(said)}"
        said.append(line)
    return proc


@pytest.mark.parametrize("dns", [True, False], ids=["dns", "no-dns"])
def test_agent_command_writes_dns_answers_beside_flows_unless_no_dns(
    lab: DnsLab, tmp_path: Path, dns: bool
) -> None:
    out, metrics = tmp_path / "out", tmp_path / "metrics.json"
    proc = _agent_command(lab, out, metrics, *(() if dns else ("--no-dns",)))
    pay = lab.name("pay")
    # the program copied the answer before the client could read it: it is in the ring now
    lab.resolve(lab.svc, lab.net.server.ip, [(pay, "A")])
    proc.send_signal(signal.SIGTERM)  # the interval is 60 s: only the shutdown flush writes
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    files = sorted(out.glob("dns_answers-*.parquet"))
    summary = json.loads(metrics.read_text())
    if not dns:
        assert files == [] and not [k for k in summary if k.startswith("dns_")]
        return
    table = validate(pa.concat_tables([pq.read_table(f) for f in files]), DNS_ANSWERS)
    rows = [r for r in table.to_pylist() if r["query_name"] == pay]
    assert [(r["exporter"], r["address"], r["ttl_s"], r["local_workload"]) for r in rows] == [
        ("cli-host", "10.77.1.1", 45, f"systemd:resolver-{lab.net.tag}.service")
    ]
    assert summary["dns_rows"] == summary["dns_exported_rows"] == table.num_rows
    assert "DNS drops: ringbuf_full=0" in err


def test_one_poll_takes_at_most_its_limit_and_leaves_the_rest(lab: DnsLab) -> None:
    """A flood must not hold the agent loop in one endless poll: each poll stops at its
    limit, the packets past it wait in the ring for the next one."""
    with DnsCapture(poll_limit=5) as capture:
        port = lab.net.port()
        receiver = lab.run(lab.svc, Receive("127.0.0.1", port, 12))
        assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
        sender = lab.run(lab.svc, Send("127.0.0.1", "127.0.0.1", port, ["00"] * 12))
        assert sender.communicate(timeout=30)[0].strip() == "sent"
        assert receiver.communicate(timeout=30)[0].strip() == "got 12"
        ns = lab.net.client.netns_inode()
        sizes: list[int] = []
        mine: list[int] = []

        def poll() -> int:
            packets = capture.poll(0)
            sizes.append(len(packets))
            here = packets.headers[packets.headers["netns_ino"] == ns]
            mine.extend(int(p) for p in here["dport"])
            return len(mine)

        assert until(poll, lambda n: n >= 12, 30) == 12
        assert max(sizes) == 5 and mine == [port] * 12


def test_a_workload_resolves_a_name_then_connects_and_the_flow_carries_the_name(
    lab: DnsLab,
) -> None:
    """End to end on the real kernel: the agent captures the answer and the connection made to
    its address; attribution (the batch schedule) over the exported flows and answers names the
    flow's remote side `remote_dns`, beside whoever owns the address."""
    api = lab.name("api")
    assert lab.resolve(lab.svc, lab.net.server.ip, [(api, "A")])
    port = lab.net.port()
    server = lab.net.serve(lab.net.server.at(lab.net.cgroup("api")), Server(lab.net.server.ip,
                           port, recv=10, send=20))  # fmt: skip
    client = lab.net.spawn(lab.svc, Client(lab.net.server.ip, port, send=10, recv=20))
    assert client.wait(60) == 0 and server.wait(60) == 0
    lab.wait_rows(api, 1)

    def flows() -> pa.Table:
        files = sorted(lab.out.glob("flows-*.parquet"))
        return (
            pa.concat_tables([pq.read_table(f) for f in files])
            if files
            else FLOWS.schema.empty_table()
        )

    def outbound(table: pa.Table) -> list[dict[str, Any]]:
        return [r for r in table.to_pylist()
                if r["remote_port"] == port and r["direction"] == "outbound"]  # fmt: skip

    until(flows, lambda t: len(outbound(t)) == 1, 30)
    names = DnsNames()
    names.add(pa.Table.from_pylist(lab.rows(), DNS_ANSWERS.schema))
    (row,) = outbound(replay(flows(), dns=names).table)
    assert row["remote_dns"] == api
    assert row["local_workload"] == f"systemd:resolver-{lab.net.tag}.service"

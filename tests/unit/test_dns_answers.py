"""The agent's DNS side after capture: packets to named dns_answers rows, drops counted by
reason, export through its own Delivery (spooled when the sink cannot take the table), and the
counters in Prometheus form. Packets come from a stand-in for the kernel capture (built with
the capture's own record dtype); tests/kernel/test_dns_capture.py runs the real one."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from flowtrail.agent.dns_answers import DROP_REASONS, DnsAnswers
from flowtrail.agent.dns_capture import CAPTURE_MAX, DNS_DTYPE, DnsPackets
from flowtrail.agent.exporter import Delivery, ParquetDir, Refusing, Spool
from flowtrail.agent.identity import IdentityChain
from flowtrail.agent.prometheus import render
from flowtrail.lab.dnspeer import encode_name
from flowtrail.schema import DNS_ANSWERS
from flowtrail.tables import validate

HOST_NS, OTHER_NS = 4026531840, 4026532000


def answer(name: str, address: bytes, ttl: int = 60) -> bytes:
    head = struct.pack(">HHHHHH", 1, 0x8180, 1, 1, 0, 0) + encode_name(name) + b"\0\1\0\1"
    rtype = 1 if len(address) == 4 else 28
    return head + struct.pack(">HHHIH", 0xC00C, rtype, 1, ttl, len(address)) + address


class Packets:
    """Stands in for DnsCapture: hands out what `add` queued, as DnsPackets."""

    def __init__(self, limit: int = 1 << 30) -> None:
        self.limit = limit  # packets one poll takes at most, as DnsCapture's poll_limit
        self.queue: list[tuple[bytes, int, int, int]] = []

    def add(self, msg: bytes, *, netns: int = HOST_NS, proto: int = 17, msg_len: int = 0) -> None:
        self.queue.append((msg, netns, proto, msg_len or len(msg)))

    def poll(self, timeout_ms: int = 0) -> DnsPackets:
        items, self.queue = self.queue[: self.limit], self.queue[self.limit :]
        headers = np.zeros(len(items), DNS_DTYPE)
        data, starts = b"", []
        for i, (msg, netns, proto, msg_len) in enumerate(items):
            cap = msg[:CAPTURE_MAX]
            h = headers[i]
            h["ts_ns"], h["cgroup_id"], h["netns_ino"] = 10**18 + i, 1, netns
            h["msg_len"], h["cap_len"], h["family"], h["proto"] = msg_len, len(cap), 2, proto
            h["sport"], h["dport"] = 53, 40000
            h["daddr"][:4] = [10, 0, 0, 1]
            starts.append(len(data))
            data += cap
        observed = headers["ts_ns"].astype(np.int64)
        return DnsPackets(headers, np.array(starts, np.int64), data, observed)

    def stats(self) -> dict[str, int]:
        return {"ringbuf_full": 0, "read_failed": 0, "bad_record_size": 0}


def make(
    tmp_path: Path, delivery: Delivery | None = None, **kw: object
) -> tuple[Packets, DnsAnswers]:
    source = Packets()
    identity = IdentityChain.build(("host",), host_workload="box", host_netns=HOST_NS)
    delivery = delivery or Delivery(ParquetDir(tmp_path, prefix="dns_answers"))
    return source, DnsAnswers(source, delivery, identity, exporter="h1", **kw)  # type: ignore[arg-type]


def test_rows_named_and_exported_as_contract_rows(tmp_path: Path) -> None:
    source, dns = make(tmp_path, region="eu", network="vpc-a")
    source.add(answer("Api.Example.com", bytes([192, 0, 2, 7]), ttl=30))
    source.add(answer("v6.example.com", bytes(15) + b"\1"), netns=OTHER_NS)
    assert dns.poll() == 2
    assert dns.flush() == 2
    [path] = tmp_path.glob("dns_answers-*.parquet")
    rows = validate(pq.read_table(path), DNS_ANSWERS).to_pylist()
    assert [(r["query_name"], r["address"], r["ttl_s"], r["local_workload"]) for r in rows] == [
        ("api.example.com", "192.0.2.7", 30, "box"),
        ("v6.example.com", "::1", 60, None),  # another namespace: not the host's own socket
    ]
    assert {(r["exporter"], r["region"], r["network"]) for r in rows} == {("h1", "eu", "vpc-a")}
    assert rows[0]["observed_ns"] == 10**18  # the capture's epoch time, unchanged


def test_every_bad_packet_counted_by_reason(tmp_path: Path) -> None:
    source, dns = make(tmp_path, netns=frozenset({HOST_NS}))
    good = answer("a.test", bytes(4))
    source.add(good[:-1])  # truncated
    source.add(good[:12] + b"\xc0\x0c" + good[14:])  # the question's name points at itself
    source.add(good, msg_len=len(good) + 5000)  # longer than the program copies
    source.add(struct.pack(">H", len(good) + 9) + good, proto=6)  # TCP, continues elsewhere
    source.add(struct.pack(">H", len(good)) + good, proto=6)  # TCP, whole
    source.add(good, netns=OTHER_NS)  # not this agent's namespace
    assert dns.poll() == 1
    m = dns.metrics()
    assert {r: m[f"dns_drop_{r}"] for r in DROP_REASONS} == {
        "ringbuf_full": 0, "read_failed": 0, "bad_record_size": 0, "truncated": 1,
        "malformed": 1, "server_truncated": 0, "too_long": 1, "tcp_split": 1,
    }  # fmt: skip
    assert (m["dns_packets"], m["dns_other_netns_packets"], m["dns_rows"]) == (6, 1, 1)
    text = render(dns.metrics).decode()
    assert 'flowtrail_agent_dns_dropped_packets_total{reason="tcp_split"} 1.0' in text


def test_a_sink_that_cannot_take_the_table_spools_and_counts(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 1 << 20)
    source, dns = make(tmp_path, Delivery(Refusing("custom", "dns_answers"), spool))
    source.add(answer("a.test", bytes(4)))
    dns.poll()
    dns.flush()
    m = dns.metrics()
    assert (m["dns_exported_rows"], m["dns_spooled_rows"], m["dns_spool_pending_batches"]) == (
        0, 1, 1,
    )  # fmt: skip
    assert "cannot take the dns_answers table" in (dns.delivery.last_error or "")


def test_drain_takes_what_several_polls_hold(tmp_path: Path) -> None:
    source, dns = make(tmp_path)
    source.limit = 3
    for i in range(8):
        source.add(answer(f"n{i}.test", bytes([10, 0, 0, i])))
    dns.drain()
    assert (dns.counters["dns_rows"], source.queue) == (8, [])

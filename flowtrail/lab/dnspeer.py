"""DNS peers for the lab: a resolver client, a crafted-answer sender and its receiver.

Each runs as its own process that first joins its cgroup and network namespace (as the TCP
peers of flowtrail.lab.peer do), so the kernel files its sockets there:

    Resolve(server, [(name, qtype), ...], tcp=False)   asks a DNS server, one query after another,
        retrying each until it is answered (the server may still be starting); prints one
        `answer <name> <qtype> rcode=<n> ancount=<n>` line per query, then "done".
    Receive(ip, port, count)   binds a UDP socket, prints "ready", and "got <n>" once `count`
        datagrams came (or its deadline passed).
    Send(ip, port, payloads)   sends each payload (hex) from <its address>:53 to ip:port: a fake
        DNS server whose answers are made up byte for byte (truncated, malformed).

`dnsmasq_argv` is the command line of a real resolver (Debian's dnsmasq-base) for the lab.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flowtrail.lab.peer import family, join

ENTRY = "from flowtrail.lab.dnspeer import main; main()"
QTYPES = {"A": 1, "CNAME": 5, "AAAA": 28}


@dataclass(frozen=True)
class Resolve:
    server: str
    queries: list[tuple[str, str]]
    tcp: bool = False
    timeout_s: float = 20.0


@dataclass(frozen=True)
class Receive:
    ip: str
    port: int
    count: int
    timeout_s: float = 20.0


@dataclass(frozen=True)
class Send:
    source: str  # the fake server's address (it sends from port 53)
    ip: str
    port: int
    payloads: list[str] = field(default_factory=list)  # hex


def argv(netns: str, cgroup: Path, role: Resolve | Receive | Send) -> list[str]:
    spec = {"netns": netns, "cgroup": str(cgroup), type(role).__name__.lower(): asdict(role)}
    return [sys.executable, "-c", ENTRY, json.dumps(spec)]


def encode_name(name: str) -> bytes:
    out = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p)
    return out + b"\0"


def build_query(name: str, qtype: str, qid: int) -> bytes:
    """A standard query with recursion desired, one question of class IN."""
    return (
        struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
        + encode_name(name)
        + struct.pack(">HH", QTYPES[qtype], 1)
    )


def _ask_udp(server: str, query: bytes, deadline: float) -> bytes:
    with socket.socket(family(server), socket.SOCK_DGRAM) as s:
        while True:
            s.settimeout(min(0.5, max(deadline - time.monotonic(), 0.01)))
            s.sendto(query, (server, 53))
            try:
                answer, _ = s.recvfrom(65535)
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise
                continue
            if answer[:2] == query[:2]:
                return answer


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        part = s.recv(n - len(buf))
        if not part:
            raise ConnectionError("closed mid-answer")
        buf += part
    return buf


def _ask_tcp(server: str, query: bytes, deadline: float) -> bytes:
    while True:
        try:
            with socket.create_connection((server, 53), timeout=2) as s:
                s.sendall(struct.pack(">H", len(query)) + query)
                (length,) = struct.unpack(">H", _recv_exact(s, 2))
                return _recv_exact(s, length)
        except OSError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)  # the server is still starting: ask again


def resolve(r: Resolve) -> None:
    deadline = time.monotonic() + r.timeout_s
    for name, qtype in r.queries:
        query = build_query(name, qtype, random.randrange(1 << 16))
        answer = (_ask_tcp if r.tcp else _ask_udp)(r.server, query, deadline)
        _, flags, _, ancount = struct.unpack_from(">HHHH", answer)
        print(f"answer {name} {qtype} rcode={flags & 0xF} ancount={ancount}", flush=True)
    print("done", flush=True)


def receive(r: Receive) -> None:
    with socket.socket(family(r.ip), socket.SOCK_DGRAM) as s:
        s.bind((r.ip, r.port))
        print("ready", flush=True)
        got = 0
        deadline = time.monotonic() + r.timeout_s
        while got < r.count and time.monotonic() < deadline:
            s.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                s.recvfrom(65535)
            except TimeoutError:
                break
            got += 1
        print(f"got {got}", flush=True)


def send(r: Send) -> None:
    with socket.socket(family(r.ip), socket.SOCK_DGRAM) as s:
        s.bind((r.source, 53))
        for payload in r.payloads:
            s.sendto(bytes.fromhex(payload), (r.ip, r.port))
    print("sent", flush=True)


def main() -> None:
    spec = json.loads(sys.argv[1])
    join(spec["netns"], Path(spec["cgroup"]))
    if "resolve" in spec:
        r = spec["resolve"]
        resolve(Resolve(r["server"], [tuple(q) for q in r["queries"]], r["tcp"], r["timeout_s"]))
    elif "receive" in spec:
        receive(Receive(**spec["receive"]))
    else:
        send(Send(**spec["send"]))


def dnsmasq_argv(netns: str, listen: list[str], records: list[str]) -> list[str]:
    """dnsmasq in `netns`, answering only from `records` (its own options: --address=...,
    --host-record=..., --cname=..., --local-ttl=...), on UDP and TCP port 53 of `listen`."""
    return [
        "ip", "netns", "exec", netns, "dnsmasq", "--keep-in-foreground", "--no-resolv",
        "--no-hosts", "--conf-file=/dev/null", "--pid-file=", "--user=root", "--group=root",
        "--bind-dynamic", *(f"--listen-address={a}" for a in listen), "--port=53",
        "--log-facility=-", *records,
    ]  # fmt: skip

"""The agent's CPU per DNS answer, beside its per-flow cost.

    sudo .venv/bin/python bench/dns_answers.py [--seconds 10] [--rows 20000]

1. Under load, real kernel: bpf/dns.bpf.o attached to the cgroup v2 root (as `flowtrail
   agent` does) while a generator process in a network namespace of its own sends DNS answers
   from 127.0.0.1:53 to a UDP socket there as fast as it can (each answer: a two-link CNAME
   chain, then two A records: two rows). This process runs the agent's DNS side (DnsAnswers:
   ring buffer, parsing, naming by the identity chain, Parquet export every second), polled
   every 0.25 s as the agent's loop does, and
   reports its user and system CPU per answer row and per packet (`--rate`: answers per
   second; by default as many as the generator can send), the rows exported and every
   drop counter. With kernel.bpf_stats_enabled set for the run (restored after), also the
   program's mean run time: over every packet any local socket received, DNS or not.
2. The same pipeline alone (no kernel) on synthetic packets, by packets per poll.
3. The per-flow pipeline alone (bench/agent_pipeline.py's synthetic rounds), the same way,
   for the comparison on the same machine at the same time.

Only traffic inside the namespace it creates (removed at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from flowtrail.agent.dns_answers import DnsAnswers
from flowtrail.agent.dns_capture import DNS_DTYPE, PROGRAM, DnsCapture, DnsPackets
from flowtrail.agent.exporter import Delivery, ParquetDir
from flowtrail.agent.identity import IdentityChain
from flowtrail.agent.libbpf import prog_stats
from flowtrail.lab.dnspeer import encode_name

STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")

# Runs inside the namespace: answers from 127.0.0.1:53 to a socket that drains them.
GENERATOR = r"""
import ctypes, os, socket, sys, threading, time
fd = os.open(sys.argv[1], os.O_RDONLY)
assert ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) == 0
os.system("ip link set lo up")
msg, seconds, rate = bytes.fromhex(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
sport = int(sys.argv[5])
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind(("127.0.0.1", 0))
rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
def drain():
    while True:
        rx.recv(4096)
threading.Thread(target=drain, daemon=True).start()
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
tx.bind(("127.0.0.1", sport))
dest, sent, start = rx.getsockname(), 0, time.monotonic()
end = start + seconds
print("ready", flush=True)
while (now := time.monotonic()) < end:
    if rate and sent >= rate * (now - start):
        time.sleep(0.002)
        continue
    for _ in range(20):
        tx.sendto(msg, dest)
    sent += 20
print(sent, flush=True)
"""


def answer_message() -> bytes:
    """www.shop.example → edge.cdn.example → lb.cdn.example → 2 A records."""
    q = encode_name("www.shop.example")
    head = struct.pack(">HHHHHH", 9, 0x8180, 1, 4, 0, 0) + q + struct.pack(">HH", 1, 1)
    edge = encode_name("edge.cdn.example")
    first = struct.pack(">HHHIH", 0xC00C, 5, 1, 300, len(edge)) + edge
    edge_at = len(head) + 12
    lb = b"\x02lb" + struct.pack(">H", 0xC000 | (edge_at + 5))
    second = struct.pack(">HHHIH", 0xC000 | edge_at, 5, 1, 120, len(lb)) + lb
    lb_at = len(head) + len(first) + 12
    rrs = b"".join(
        struct.pack(">HHHIH", 0xC000 | lb_at, 1, 1, 60, 4) + bytes([192, 0, 2, i]) for i in (1, 2)
    )
    return head + first + second + rrs


def cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def under_load(seconds: float, rate: int, sport: int = 53) -> dict[str, object]:
    ns = f"ftbench-dns-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    stats_before = STATS_SYSCTL.read_text().strip()
    out = Path(tempfile.mkdtemp(prefix="flowtrail-dns-bench-"))
    try:
        STATS_SYSCTL.write_text("1")
        with DnsCapture(ringbuf_bytes=4 << 20) as capture:
            dns = DnsAnswers(
                capture,
                Delivery(ParquetDir(out, prefix="dns_answers")),
                IdentityChain.build(host_workload="bench-host"),
                exporter="bench",
            )
            gen = subprocess.Popen(
                [sys.executable, "-c", GENERATOR, f"/run/netns/{ns}",
                 answer_message().hex(), str(seconds), str(rate), str(sport)],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert gen.stdout is not None and gen.stdout.readline().strip() == "ready"
            stop = threading.Event()
            u0, s0 = cpu()
            w0 = time.monotonic()
            next_flush = w0 + 1

            def loop() -> None:
                # as the agent's main loop does: a poll every 0.25 s, a flush every second
                nonlocal next_flush
                while not stop.wait(0.25):
                    dns.poll()
                    if time.monotonic() >= next_flush:
                        dns.flush()
                        next_flush += 1

            reader = threading.Thread(target=loop)
            reader.start()
            sent = int(gen.stdout.readline())
            gen.wait()
            time.sleep(0.3)  # the last packets: the loop keeps polling meanwhile
            stop.set()
            reader.join()
            dns.poll()
            dns.flush()
            u1, s1 = cpu()
            wall = time.monotonic() - w0
            assert capture._link is not None and capture._obj is not None
            kernel = prog_stats(capture._obj.prog_fd(PROGRAM))
            m = dns.metrics()
    finally:
        STATS_SYSCTL.write_text(stats_before)
        subprocess.run(["ip", "netns", "del", ns], check=False)
        for f in out.glob("*"):
            f.unlink()
        out.rmdir()
    rows, packets = int(m["dns_rows"]), int(m["dns_packets"])
    return {
        "seconds": round(wall, 2),
        "rate_asked": rate or "as fast as it can",
        "answers_sent": sent,
        "packets_read": packets,
        "packets_per_s": round(packets / wall),
        "rows": rows,
        "rows_exported": m["dns_exported_rows"],
        "user_us_per_row": round((u1 - u0) / max(rows, 1) * 1e6, 2),
        "sys_us_per_row": round((s1 - s0) / max(rows, 1) * 1e6, 2),
        "user_us_per_packet": round((u1 - u0) / max(packets, 1) * 1e6, 2),
        "cpu_of_one_core": round((u1 - u0 + s1 - s0) / wall, 3),
        "drops": {k: v for k, v in m.items() if k.startswith("dns_drop_")},
        "bpf_runs": kernel["run_cnt"],
        "bpf_ns_per_run": round(kernel["run_time_ns"] / max(kernel["run_cnt"], 1), 1),
        "packets_from_elsewhere": packets - sent if packets > sent else 0,
    }


class Synthetic:
    """Stands in for DnsCapture: the same answer message, `n` packets per poll."""

    def __init__(self, n: int) -> None:
        msg = answer_message()
        self.headers = np.zeros(n, DNS_DTYPE)
        self.headers["cgroup_id"] = 1 + np.arange(n) % 59
        self.headers["netns_ino"] = 4026531840
        self.headers["family"], self.headers["proto"], self.headers["sport"] = 2, 17, 53
        self.headers["dport"] = 40000 + np.arange(n) % 1000
        self.headers["msg_len"] = self.headers["cap_len"] = len(msg)
        self.headers["daddr"][:, :4] = [10, 0, 0, 1]
        self.data = msg * n
        self.starts = np.arange(n, dtype=np.int64) * len(msg)
        self.observed = np.full(n, time.time_ns(), np.int64)

    def poll(self, timeout_ms: int = 0) -> DnsPackets:
        return DnsPackets(self.headers, self.starts, self.data, self.observed)

    def stats(self) -> dict[str, int]:
        return {}


def pipeline_alone(per_poll: int, rows_total: int) -> dict[str, object]:
    out = Path(tempfile.mkdtemp(prefix="flowtrail-dns-bench-"))
    source = Synthetic(per_poll)
    dns = DnsAnswers(
        source,  # type: ignore[arg-type]
        Delivery(ParquetDir(out, prefix="dns_answers")),
        IdentityChain.build(host_workload="bench-host"),
        exporter="bench",
        batch_rows=rows_total * 10,
    )
    rounds = max(rows_total // (2 * per_poll), 1)
    u0, s0 = cpu()
    for _ in range(rounds):
        dns.poll()
    dns.flush()
    u1, s1 = cpu()
    rows = dns.counters["dns_rows"]
    for f in out.glob("*"):
        f.unlink()
    out.rmdir()
    return {
        "packets_per_poll": per_poll,
        "rows": rows,
        "user_us_per_row": round((u1 - u0) / rows * 1e6, 2),
        "sys_us_per_row": round((s1 - s0) / rows * 1e6, 2),
    }


def flows_alone(rows_per_round: int, rows_total: int) -> dict[str, object]:
    """bench/agent_pipeline.py's pipeline alone, run in its own process."""
    code = (
        "import json, sys; sys.path.insert(0, 'bench'); import agent_pipeline as p; "
        f"print(json.dumps(p.pipeline_only({rows_total}, {rows_per_round})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate", type=int, default=0, help="answers/s the generator sends (0: max)")
    ap.add_argument("--rows", type=int, default=200_000, help="synthetic rows per pipeline run")
    ap.add_argument("--no-kernel", action="store_true", help="the pipelines alone")
    ap.add_argument(
        "--source-port",
        type=int,
        default=53,
        help="send from this port instead: not DNS, so the program only looks and lets go "
        "(its cost on every other packet a socket receives)",
    )
    args = ap.parse_args()
    os.chdir(Path(__file__).resolve().parents[1])
    report: dict[str, object] = {}
    if not args.no_kernel:
        report["under_load"] = under_load(args.seconds, args.rate, args.source_port)
    if args.source_port != 53:
        print(json.dumps(report, indent=1))
        return
    report["dns_pipeline_alone"] = [pipeline_alone(n, args.rows) for n in (50, 500, 5000)]
    try:
        report["flow_pipeline_alone"] = [flows_alone(n, args.rows) for n in (500, 20000)]
    except (subprocess.CalledProcessError, AttributeError, ValueError) as exc:
        report["flow_pipeline_alone"] = f"not measured: {exc}"
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

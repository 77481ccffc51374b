"""State changes that interrupt other BPF programs are captured (the kernel's recursion guard).

The kernel runs a classic tracepoint program only if no kprobe or classic tracepoint program is
already running on that CPU (one per-CPU guard for all of them): a server's SYN_RECV and
ESTABLISHED changes, made in softirq, that interrupt the accept program (or any such program on
the host) in process context were skipped. The state-change program now sits on the raw
tracepoint, whose guard is its own, and a second copy handles the changes that interrupt its own
runs. docs/bpf.md.

The burst below makes such interruptions common: the server namespace's veth steers every
arriving packet (RPS) to the CPU the acceptors are pinned to, so they are processed in softirq
on that CPU while the acceptors run their accept() exits and closes there, and a second capture
on the classic tracepoints (another agent, another tool) adds programs for them to interrupt.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flowtrail.agent.capture import CLASSIC_TRACEPOINT, RAW_TRACEPOINT, Capture
from flowtrail.agent.records import RAW_SCHEMA
from flowtrail.errors import CapabilityError
from flowtrail.lab import Client, Lab, Server
from flowtrail.lab.netns import sh

pytestmark = pytest.mark.kernel

CONNECTIONS = 600
ACCEPTORS = 3


class Drain:
    """A started capture read by a background thread into one table, picked by port."""

    def __init__(self, capture: Capture) -> None:
        self.capture = capture
        self._batches: list[pa.RecordBatch] = []
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                batch = self.capture.poll(50)
                if batch is not None:
                    self._batches.append(batch)
        except BaseException as exc:  # said by rows(), not lost with the thread
            self._error = exc

    def rows(self, *ports: int) -> list[dict[str, Any]]:
        if self._error is not None:
            raise self._error
        table = pa.Table.from_batches(list(self._batches), RAW_SCHEMA)
        wanted = pa.array(ports, pa.int32())
        near = pc.or_(
            pc.is_in(table["local_port"], value_set=wanted),
            pc.is_in(table["remote_port"], value_set=wanted),
        )
        return table.filter(near).to_pylist()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def busy_host() -> Iterator[Capture]:
    """Another capture on the classic tracepoints: its programs share the kernel's guard."""
    with Capture(attach=CLASSIC_TRACEPOINT) as other:
        drain = Drain(other)  # keeps its ring from filling; its rows are not looked at
        try:
            yield other
        finally:
            drain.stop()


def steer_to(lab: Lab, cpu: int) -> None:
    """Every packet arriving on the server namespace's veth is processed on `cpu` (RPS)."""
    queue = f"/sys/class/net/{lab.server.ifname}/queues/rx-0/rps_cpus"
    sh("ip", "netns", "exec", lab.server.netns, "sh", "-c", f"echo {1 << cpu:x} > {queue}")


def burst(capture: Capture) -> tuple[list[dict[str, Any]], set[int], Counter[tuple[int, int]]]:
    """CONNECTIONS connections into ACCEPTORS pinned servers: (the rows of their ports, the
    acceptors' pids, the (server port, client port) of every connection a client completed,
    counted: a client port can come again for the same server once the last one closed).

    A client stops at its first failed attempt (a full accept queue can reset one): what it
    completed, it reports, and those are what must be captured."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs: one steered and busy, one sending")
    drain = Drain(capture)
    try:
        with Lab("guard") as lab:
            steer_to(lab, cpus[0])
            ports = [lab.port() for _ in range(ACCEPTORS)]
            each = CONNECTIONS // ACCEPTORS
            servers, clients = [], []
            for i, port in enumerate(ports):
                server = Server(lab.server.ip, port, recv=64, send=64, accepts=each)
                servers.append(lab.serve(lab.server.at(lab.cgroup(f"s{i}")), server))
                os.sched_setaffinity(servers[-1].pid, {cpus[0]})
            for i, port in enumerate(ports):
                role = Client(lab.server.ip, port, send=64, recv=64, connections=each, report=True)
                clients.append(lab.spawn(lab.client.at(lab.cgroup(f"c{i}")), role))
                os.sched_setaffinity(clients[-1].pid, {cpus[1]})
            made: Counter[tuple[int, int]] = Counter()
            for proc in clients:
                assert proc.stdout is not None
                for line in proc.stdout:  # until it exits
                    if line.startswith("conn "):
                        seen = dict(kv.split("=") for kv in line.split()[1:])
                        made[int(seen["remote_port"]), int(seen["local_port"])] += 1
                assert proc.wait(120) == 0
            for proc in servers:
                proc.kill()  # one may wait for connections a stopped client never made
                proc.wait(10)
            assert made.total() > CONNECTIONS // 2, "most connections completed"
            # Until every connection made has both ends (a count of rows would also count the
            # rows of a client's failed attempt, and stop before the last closes: ends of
            # connections the killed servers never closed come after the kill).
            # A lost end never comes: stop once nothing new came for 5 s.
            deadline, seen, quiet = time.monotonic() + 60, -1, time.monotonic() + 5
            while (rows := drain.rows(*ports)) and missing_ends(rows, made):
                if len(rows) != seen:
                    seen, quiet = len(rows), time.monotonic() + 5
                if time.monotonic() > min(deadline, quiet):
                    break
                time.sleep(0.1)
            return drain.rows(*ports), {s.pid for s in servers}, made
    finally:
        drain.stop()


def ends(rows: list[dict[str, Any]]) -> dict[str, Counter[tuple[int, int]]]:
    """(server port, client port) of each row, counted, by which end it is."""
    return {
        "client ends": Counter(
            (r["remote_port"], r["local_port"]) for r in rows if r["direction"] == "outbound"
        ),
        "server ends": Counter(
            (r["local_port"], r["remote_port"]) for r in rows if r["direction"] == "inbound"
        ),
    }


def missing_ends(
    rows: list[dict[str, Any]], made: Counter[tuple[int, int]]
) -> dict[str, Counter[tuple[int, int]]]:
    """The ends of connections made that have no row (empty when all are there)."""
    return {k: made - got for k, got in ends(rows).items() if made - got}


def assert_each_connection_whole(
    rows: list[dict[str, Any]],
    acceptors: set[int],
    made: Counter[tuple[int, int]],
    counted: dict[str, int],
) -> None:
    """Every connection made: one outbound and one inbound row, established (both ends saw the
    handshake complete) and the inbound one named by the process that accepted it."""
    out = [r for r in rows if r["direction"] == "outbound"]
    inb = [r for r in rows if r["direction"] == "inbound"]
    out = [r for r in out if (r["remote_port"], r["local_port"]) in made]
    inb = [r for r in inb if (r["local_port"], r["remote_port"]) in made]
    extra = {k: got - made for k, got in ends(out + inb).items() if got - made}
    assert not extra, f"a connection twice: {extra}"
    # What this test is about: every change the kernel's recursion guard skipped the first
    # program for, the second took over (on the classic tracepoint this burst lost 39-125 state
    # changes every run, all to the guard).
    assert counted["raw_misses"] == counted["nested_handled"], counted
    # A rare loss of another kind remains: in about one run in ten on a loaded machine, a
    # window of a millisecond or so on the steered CPU where neither program handles the
    # changes of the connections opening then (their server ends and client ESTABLISHED
    # times), with no recursion miss (docs/bpf.md, "Known loss"). Bounded here, not hidden.
    missing = missing_ends(rows, made)
    unstamped = [r for r in out + inb if r["established_ns"] is None]
    assert len(unstamped) <= counted["established_unseen"], (unstamped, counted)
    lost = sum(c.total() for c in missing.values()) + len(unstamped)
    assert lost <= made.total() // 50, f"missing: {missing}; unstamped: {unstamped}; {counted}"
    assert all(r["outcome"] == "established" for r in out + inb)
    assert {r["pid"] for r in inb} <= acceptors, "an accepted socket not named by its acceptor"


def test_a_burst_into_busy_acceptors_loses_no_state_change_to_the_guard(busy_host: Capture) -> None:
    with Capture(ringbuf_bytes=16 << 20) as capture:
        assert capture.attach_mode == RAW_TRACEPOINT  # this kernel has raw tracepoints
        rows, acceptors, made = burst(capture)
        counted = {
            **capture.stats(),
            "nested_handled": capture.nested_handled(),
            "raw_misses": capture.program_stats()["recursion_misses"],
        }
    assert_each_connection_whole(rows, acceptors, made, counted)


def test_the_classic_tracepoint_gives_the_same_facts() -> None:
    """Both programs attached at once see the same connections: the same rows but for the
    instants each stamps itself (start, end, established) and the socket ids."""
    with (
        Capture(attach=RAW_TRACEPOINT) as raw,
        Capture(attach=CLASSIC_TRACEPOINT) as classic,
        Lab("guard") as lab,
    ):
        got = {}
        drains = {"raw": Drain(raw), "classic": Drain(classic)}
        try:
            port = lab.port()
            server = lab.serve(
                lab.server.at(lab.cgroup("s")),
                Server(lab.server.ip6, port, recv=3000, send=70000, accepts=3),
            )
            client = lab.spawn(
                lab.client.at(lab.cgroup("c")),
                Client(lab.server.ip6, port, send=3000, recv=70000, connections=3),
            )
            refused = lab.spawn(
                lab.client.at(lab.cgroup("r")), Client(lab.server.ip, port + 1, send=1, recv=0)
            )
            assert client.wait(30) == 0 and server.wait(30) == 0 and refused.wait(30) == 0
            for name, drain in drains.items():
                deadline = time.monotonic() + 20
                while len(drain.rows(port)) < 6 and time.monotonic() < deadline:
                    time.sleep(0.1)
                got[name] = drain.rows(port) + drain.rows(port + 1)
        finally:
            for drain in drains.values():
                drain.stop()
    own = {"sock_id", "start_ns", "end_ns", "established_ns"}

    def facts(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted(
            (
                *((k, v) for k, v in sorted(r.items()) if k not in own),
                ("established", r["established_ns"] is not None),
            )
            for r in rows
        )

    assert len(got["raw"]) == 7, got["raw"]  # 3 connections, both ends; 1 refused attempt
    assert facts(got["raw"]) == facts(got["classic"])


class RefusingRaw(Capture):
    """Stands in for a kernel without raw tracepoint programs (this one has them): the raw
    attempt fails as a refused load would, everything after it is real."""

    def _start(self, mode: str) -> None:
        if mode == RAW_TRACEPOINT:
            raise CapabilityError("the kernel could not load flow.bpf.o: [Errno 22] EINVAL")
        super()._start(mode)


def test_a_kernel_refusing_the_raw_tracepoint_falls_back_to_the_classic_one() -> None:
    with RefusingRaw() as capture, Lab("guard") as lab:
        assert capture.attach_mode == CLASSIC_TRACEPOINT
        assert capture.fallback_reason and "EINVAL" in capture.fallback_reason
        assert capture.nested_handled() == 0
        drain = Drain(capture)
        try:
            port = lab.port()
            server = lab.serve(lab.server.at(lab.cgroup("s")), Server(lab.server.ip, port, 5, 7))
            client = lab.spawn(
                lab.client.at(lab.cgroup("c")), Client(lab.server.ip, port, send=5, recv=7)
            )
            assert client.wait(30) == 0 and server.wait(30) == 0
            deadline = time.monotonic() + 20
            while len(drain.rows(port)) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            rows = drain.rows(port)
        finally:
            drain.stop()
    assert sorted((r["direction"], r["bytes_sent"], r["bytes_received"]) for r in rows) == [
        ("inbound", 7, 5),
        ("outbound", 5, 7),
    ]
    assert all(r["pid"] == server.pid for r in rows if r["direction"] == "inbound")

"""The lab's TCP peers: a server and a client that each run as their own process.

A peer first joins its cgroup, then its network namespace, and only then opens sockets, so
the kernel files every socket under that cgroup and namespace (the socket keeps the cgroup it
was created in). The parent describes the role with `Server` or `Client`; `argv()` turns it
into a command line and `main()` is what that command runs.

What a peer prints, one word a line, lets a test sequence roles without sleeping blindly:
a server prints "ready" once it listens; a client prints "refused" when the connection is
refused, "timeout" when the kernel gave up its handshake, "abandoned" when the client's own
connect timeout ran out first, "reset" when the server reset the connection (and exits 0 in
each case), or "done" after its last connection. A role with `report=True` also prints, per
connection once it is closed, what it saw: `conn local_port=<n> remote_port=<n> got=<n>`
(got: every byte it received on that connection); `read_report` reads such a line back.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CLONE_NEWNET = 0x40000000

# Run through `-c`, not `-m`: the package imports this module, and `-m` would run it twice.
ENTRY = "from flowtrail.lab.peer import main; main()"


@dataclass(frozen=True)
class Server:
    """Listen on ip:port; per accepted connection read `recv` bytes, answer `send` bytes."""

    ip: str
    port: int
    recv: int
    send: int
    accepts: int = 1
    report: bool = False
    reset: bool = False  # after reading, close with SO_LINGER 0: a RST, not a FIN, ends it
    # a path: answer only once it exists, so a test holds the connection open as long as it needs
    answer_after: str | None = None


@dataclass(frozen=True)
class Client:
    """Connect to ip:port `connections` times; send, then read `recv` bytes, then close.

    `send` is a byte count, or several writes made `gap_s` apart (a long-lived connection).
    `bind`/`bind_port` fix the local address (several connections from one `bind_port` need
    `server_closes_first`). `wait_s` keeps the process alive in its cgroup before it connects.
    `syn_retries` sets TCP_SYNCNT, so a handshake nobody answers times out in seconds;
    `connect_timeout_s` is the client's own limit on connect(), after which it closes the socket.
    `server_closes_first`: read until the server's FIN before closing, so the server holds the
    TIME_WAIT and a fixed `bind_port` can connect again at once (through that TIME_WAIT).
    `hold_until`: a path; write number `hold_before` waits until it exists, so a test holds
    the connection between two writes for as long as it needs.
    """

    ip: str
    port: int
    send: int | Sequence[int]
    recv: int
    bind: str | None = None
    bind_port: int = 0
    gap_s: float = 0.0
    connections: int = 1
    wait_s: float = 0.0
    syn_retries: int | None = None
    connect_timeout_s: float | None = None
    server_closes_first: bool = False
    report: bool = False
    hold_before: int = 1
    hold_until: str | None = None

    def writes(self) -> list[int]:
        return [self.send] if isinstance(self.send, int) else list(self.send)


def argv(netns: str, cgroup: Path, role: Server | Client) -> list[str]:
    """The command line of a peer playing `role` inside `netns` and `cgroup`."""
    spec = {"netns": netns, "cgroup": str(cgroup), type(role).__name__.lower(): asdict(role)}
    return [sys.executable, "-c", ENTRY, json.dumps(spec)]


def main() -> None:
    """A peer's process: `argv()`'s JSON spec is its only argument."""
    spec = json.loads(sys.argv[1])
    join(spec["netns"], Path(spec["cgroup"]))
    if "server" in spec:
        serve(Server(**spec["server"]))
    else:
        connect(Client(**spec["client"]))


def join(netns: str, cgroup: Path) -> None:
    """Move this process into `cgroup`, then into the named network namespace."""
    (cgroup / "cgroup.procs").write_text("0")  # "0" means the writing process
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        # os.setns arrived in Python 3.12; flowtrail supports 3.11.
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {netns}: {os.strerror(err)}")
    finally:
        os.close(fd)


def listen(s: Server) -> socket.socket:
    listener = socket.socket(family(s.ip), socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((s.ip, s.port))
    listener.listen(16)
    return listener


def serve(s: Server) -> None:
    listener = listen(s)
    say("ready")
    serve_on(listener, s)


def serve_on(listener: socket.socket, s: Server) -> None:
    """Accept and answer `s.accepts` connections on `listener`, then close it."""
    for _ in range(s.accepts):
        conn, remote = listener.accept()
        local = conn.getsockname()
        recv_exact(conn, s.recv)
        if s.reset:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            continue
        while s.answer_after is not None and not Path(s.answer_after).exists():
            time.sleep(0.05)
        conn.sendall(b"s" * s.send)
        got = s.recv + drain_and_close(conn)
        if s.report:
            tell(local, remote, got)
    listener.close()


def connect(c: Client) -> None:
    time.sleep(c.wait_s)
    for _ in range(c.connections):
        try:
            sock = open_connection(c)
        except (ConnectionRefusedError, TimeoutError) as e:
            if isinstance(e, ConnectionRefusedError):
                say("refused")
            else:  # the kernel's ETIMEDOUT carries its errno; settimeout's own has none
                say("timeout" if e.errno == errno.ETIMEDOUT else "abandoned")
            return
        sock.settimeout(None)
        local, remote = sock.getsockname(), sock.getpeername()
        try:
            for i, n in enumerate(c.writes()):
                if i:
                    time.sleep(c.gap_s)
                while i == c.hold_before and c.hold_until and not Path(c.hold_until).exists():
                    time.sleep(0.05)
                sock.sendall(b"c" * n)
            recv_exact(sock, c.recv)
        except ConnectionResetError:
            sock.close()
            say("reset")
            return
        if c.server_closes_first:
            got = c.recv + drain(sock)
            sock.close()
        else:
            got = c.recv + drain_and_close(sock)
        if c.report:
            tell(local, remote, got)
    say("done")


def open_connection(c: Client) -> socket.socket:
    """A connected socket as `c` describes. A fixed local port whose last connection's socket
    is still finishing its close (LAST_ACK) is tried again for a few seconds."""
    deadline = time.monotonic() + 5
    while True:
        sock = socket.socket(family(c.ip), socket.SOCK_STREAM)
        if c.syn_retries is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, c.syn_retries)
        sock.settimeout(c.connect_timeout_s)
        try:
            if c.bind is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((c.bind, c.bind_port))
            sock.connect((c.ip, c.port))
            return sock
        except OSError as e:
            sock.close()
            busy = e.errno in (errno.EADDRNOTAVAIL, errno.EADDRINUSE)
            if not busy or c.bind_port == 0 or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def drain(sock: socket.socket) -> int:
    """Read until the peer's FIN; returns how many bytes came meanwhile."""
    extra = 0
    while chunk := sock.recv(65536):
        extra += len(chunk)
    return extra


def family(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def recv_exact(sock: socket.socket, n: int) -> None:
    while n > 0:
        chunk = sock.recv(min(65536, n))
        if not chunk:
            raise ConnectionError(f"peer closed early, {n} bytes short")
        n -= len(chunk)


def drain_and_close(sock: socket.socket) -> int:
    """Half-close and wait for the peer's FIN, so both ends have seen every byte at close.

    Returns how many bytes arrived meanwhile (none, when the peer sent what it was asked to).
    """
    sock.shutdown(socket.SHUT_WR)
    extra = 0
    while chunk := sock.recv(65536):
        extra += len(chunk)
    sock.close()
    return extra


def say(word: str) -> None:
    print(word, flush=True)


def tell(local: tuple[Any, ...], remote: tuple[Any, ...], got: int) -> None:
    say(f"conn local_port={local[1]} remote_port={remote[1]} got={got}")


def read_report(proc: subprocess.Popen[str]) -> dict[str, int]:
    """The next `conn` line of a peer started with `report=True`, as {local_port, remote_port, got}.

    Fails when the peer printed something else or exited first.
    """
    assert proc.stdout is not None
    line = proc.stdout.readline()
    word, *pairs = line.split() or [""]
    if word != "conn":
        raise AssertionError(f"peer {proc.pid} did not report a connection: {line!r}")
    return {k: int(v) for k, v in (p.split("=") for p in pairs)}

"""Connection admission and deadlines for the threaded HTTP servers (collector, query API, ops).

`http.server` gives each connection a thread and a per-`recv` timeout, nothing more: a client
that sends one byte every few seconds holds its thread forever, and enough of them hold every
slot. `GuardedServer` adds what a production server has:

- a deadline for the TLS handshake plus the first request's line and headers
  (`header_timeout_s`), and for each later request on a kept-alive connection
  (`idle_timeout_s`), counted from when the wait began, not per byte;
- a deadline for a request body, from its declared length and a minimum rate;
- at most `max_per_peer` connections from one IP address, `max_connections` in all; when all
  are taken, the connection that has waited longest without sending any request is closed to
  make room (it loses nothing), else the longest idle kept-alive one (its client reconnects),
  and only when every connection is busy with a request is the newcomer turned away;
- a lingering close: the answer is sent, the write side shut, and what the client still sends
  is read and dropped for a moment, so it reads the answer instead of a reset.

A reaper thread enforces the deadlines by shutting the socket down under the blocked reader.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WAITING, BODY, BUSY = "waiting", "body", "busy"


def host_name(header: str) -> str:
    """The name in a Host header, without port or brackets, lower-case, no trailing dot."""
    name = header.strip().lower()
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else name[1:]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    return name.rstrip(".")


def local_host_allowed(header: str | None, names: frozenset[str] = frozenset()) -> bool:
    """For a server on loopback: may a request carrying this Host header be answered?

    Loopback address literals, `localhost` and `names` may; any other name means a browser
    was sent here under a foreign name (DNS rebinding), so it may not. Without a Host header
    (HTTP/1.0) it is not a browser, which always sends one."""
    if header is None:
        return True
    name = host_name(header)
    if name == "localhost" or name in names:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 1024  # threads: a blocked one costs little
    max_per_peer: int = 16
    header_timeout_s: float = 10.0  # TLS handshake + request line + headers of the first request
    idle_timeout_s: float = (
        30.0  # a kept-alive connection's wait for its next request, and per recv
    )
    min_body_rate: float = 256 * 1024  # bytes/s a body must average (after header_timeout_s)
    linger_s: float = 2.0
    linger_bytes: int = 16 << 20


class _Conn:
    __slots__ = ("deadline", "peer", "phase", "requests", "since", "sock")

    def __init__(self, sock: socket.socket, peer: str, deadline: float) -> None:
        self.sock, self.peer = sock, peer
        self.phase, self.since, self.deadline = WAITING, time.monotonic(), deadline
        self.requests = 0


def _cut(sock: socket.socket) -> None:
    """Unblock whoever reads this socket: shut the file descriptor itself (an SSLSocket's own
    shutdown would drop its TLS state under the reading thread)."""
    with contextlib.suppress(OSError):  # already gone
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class Guard:
    """Which connections are open, from where, in which phase, and until when."""

    def __init__(self, limits: ConnectionLimits, refused: Callable[[str], None]) -> None:
        self.limits = limits
        self._refused = refused
        self._lock = threading.Lock()
        self._conns: dict[int, _Conn] = {}
        self._per_peer: dict[str, int] = {}
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="http-deadlines", daemon=True)

    def start(self) -> None:
        self._reaper.start()

    def stop(self) -> None:
        self._stop.set()
        if self._reaper.is_alive():
            self._reaper.join()

    def admit(self, sock: socket.socket, peer: str) -> _Conn | None:
        lim = self.limits
        victim: _Conn | None = None
        with self._lock:
            if self._per_peer.get(peer, 0) >= lim.max_per_peer:
                reason: str | None = "too_many_connections_from_peer"
            elif len(self._conns) >= lim.max_connections:
                victim = self._victim()
                reason = None if victim is not None else "too_many_connections"
            else:
                reason = None
            if reason is None:
                if victim is not None:  # it leaves now; its thread finishes on its own
                    self._forget(victim)
                conn = _Conn(sock, peer, time.monotonic() + lim.header_timeout_s)
                self._conns[id(conn)] = conn
                self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        if victim is not None:
            self._refused("evicted_waiting")
            _cut(victim.sock)
        if reason is not None:
            self._refused(reason)
            return None
        return conn

    def _victim(self) -> _Conn | None:
        waiting = [c for c in self._conns.values() if c.phase == WAITING]
        never_asked = [c for c in waiting if c.requests <= 1]
        return min(never_asked or waiting, key=lambda c: c.since, default=None)

    def _forget(self, conn: _Conn) -> None:
        if self._conns.pop(id(conn), None) is not None:
            left = self._per_peer[conn.peer] - 1
            if left:
                self._per_peer[conn.peer] = left
            else:
                del self._per_peer[conn.peer]

    def replace_socket(self, conn: _Conn, sock: socket.socket) -> bool:
        """The connection now reads through `sock`; False if it was cut meanwhile."""
        with self._lock:
            conn.sock = sock
            return id(conn) in self._conns

    def release(self, conn: _Conn) -> None:
        with self._lock:
            self._forget(conn)

    def _set(self, conn: _Conn, phase: str, deadline: float) -> None:
        with self._lock:
            conn.phase, conn.since, conn.deadline = phase, time.monotonic(), deadline

    def wait_request(self, conn: _Conn) -> None:
        """About to read a request line: the first within the accept deadline, later ones
        within the keep-alive idle time."""
        conn.requests += 1
        if conn.requests > 1:
            self._set(conn, WAITING, time.monotonic() + self.limits.idle_timeout_s)

    def body(self, conn: _Conn, length: int) -> None:
        lim = self.limits
        allowed = max(lim.header_timeout_s, length / lim.min_body_rate)
        self._set(conn, BODY, time.monotonic() + allowed)

    def busy(self, conn: _Conn) -> None:
        """Working on a request or writing its answer: no deadline beyond the per-recv timeout."""
        self._set(conn, BUSY, float("inf"))

    def _reap(self) -> None:
        while not self._stop.wait(0.2):
            now = time.monotonic()
            with self._lock:
                late = [c for c in self._conns.values() if c.deadline <= now]
                for c in late:
                    self._forget(c)
            for c in late:
                if c.phase == BODY:
                    self._refused("timeout_body")
                elif c.requests <= 1:  # never sent a whole request
                    self._refused("timeout_waiting")
                # else: a kept-alive connection left idle, closed as usual, not a refusal
                _cut(c.sock)


_current = threading.local()  # the _Conn served by this thread


class GuardedHandler(BaseHTTPRequestHandler):
    """A request handler whose phases drive the guard's deadlines."""

    server: GuardedServer
    protocol_version = "HTTP/1.1"  # keep-alive

    def handle_one_request(self) -> None:
        conn: _Conn = _current.conn
        self.server.guard.wait_request(conn)
        super().handle_one_request()

    def parse_request(self) -> bool:
        ok = super().parse_request()
        if ok:
            self.server.guard.busy(_current.conn)
        return ok

    def handle_expect_100(self) -> bool:
        self.server.guard.busy(_current.conn)  # before the client hears it is being served
        return super().handle_expect_100()

    def reading_body(self, length: int) -> None:
        """Call before reading a body of `length` bytes; `done_reading()` after."""
        self.server.guard.body(_current.conn, length)

    def done_reading(self) -> None:
        self.server.guard.busy(_current.conn)

    def read_and_drop(self, length: int, limit: int) -> None:
        """Read and drop a body that is refused, so the sender reads the answer; bounded by
        `limit` (beyond it the connection closes and the lingering close does what it can)."""
        self.close_connection = True
        if length > limit:
            return
        self.reading_body(length)
        left = length
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                return
            left -= len(chunk)
        self.done_reading()


class GuardedServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer with a `Guard`, TLS in each connection's own thread (a slow
    handshake cannot stall accepting) and a lingering close."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 1024  # the listen backlog: socketserver's 5 drops SYNs under a burst

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[GuardedHandler],
        *,
        tls: ssl.SSLContext | None = None,
        limits: ConnectionLimits | None = None,
        refused: Callable[[str], None] = lambda reason: None,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6  # an IPv6 address such as ::1
        super().__init__(address, handler)
        self.tls = tls
        self.guard = Guard(limits or ConnectionLimits(), refused)
        self.guard.start()
        self._refused = refused

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        conn = self.guard.admit(request, str(client_address[0]))
        if conn is None:
            self.shutdown_request(request)
            return
        try:
            threading.Thread(
                target=self._serve, args=(request, client_address, conn), daemon=True
            ).start()
        except BaseException:
            self.guard.release(conn)
            self.shutdown_request(request)
            raise

    def _serve(self, request: socket.socket, client_address: Any, conn: _Conn) -> None:
        sock: socket.socket = request
        try:
            sock.settimeout(self.guard.limits.idle_timeout_s)
            if self.tls is not None:
                # Wrapping takes the file descriptor over from `request`: the reaper must cut
                # the new socket, so it is handed over before the handshake starts.
                sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                if not self.guard.replace_socket(conn, sock):
                    return  # its deadline passed in between
                try:
                    sock.do_handshake()  # type: ignore[attr-defined]
                except (ssl.SSLError, OSError):
                    self._refused("tls_handshake")
                    return
            _current.conn = conn
            self.finish_request(sock, client_address)
            self._linger(sock)
        except (OSError, ssl.SSLError):
            pass  # the peer vanished, timed out or was cut: nothing was acknowledged
        finally:
            self.guard.release(conn)
            _current.conn = None
            try:
                sock.close()
            finally:
                request.close()

    def _linger(self, sock: socket.socket) -> None:
        """Shut the write side after the answer, then read and drop what the client still
        sends (a body we did not read) until it closes: closing with unread bytes would reset
        the connection and could destroy the answer before the client reads it."""
        lim = self.guard.limits
        try:
            socket.socket.shutdown(sock, socket.SHUT_WR)
        except OSError:
            return
        end = time.monotonic() + lim.linger_s
        left = lim.linger_bytes
        while left > 0:
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            sock.settimeout(remaining)
            try:
                chunk = socket.socket.recv(sock, 1 << 16)  # raw bytes: only dropped
            except OSError:
                return
            if not chunk:
                return
            left -= len(chunk)

    def server_close(self) -> None:
        super().server_close()
        self.guard.stop()

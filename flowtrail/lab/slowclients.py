"""Slow clients for tests of servers' deadlines: many connections that each send one byte now
and then and never finish a request (a "slowloris"), reconnecting whenever the server closes
one, so that `count` connections are always trying.

    with SlowClients(("127.0.0.1", port), sources=["127.0.0.2"] * 64, every_s=2.0) as slow:
        ...  # good clients work meanwhile
    slow.lifetimes  # seconds each connection the server closed had lived
    slow.oldest()   # age of the oldest connection still open

Sources are loopback addresses (the whole of 127/8 answers on Linux), so a test can stand for
several peers. One thread drives every socket with a selector. A closed connection is
replaced after `reconnect_s`, so one that the server refuses at once does not spin.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from types import TracebackType


class _Slow:
    __slots__ = ("born", "next_byte", "sock", "source")

    def __init__(self, source: str, target: tuple[str, int]) -> None:
        self.source = source
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.sock.bind((source, 0))
        self.sock.connect_ex(target)
        self.born = time.monotonic()
        self.next_byte = self.born


class SlowClients:
    def __init__(
        self,
        target: tuple[str, int],
        sources: list[str],
        every_s: float,
        payload: bytes = b"P",
        reconnect_s: float = 0.5,
    ) -> None:
        self.target, self.sources, self.every_s = target, sources, every_s
        self.reconnect_s = reconnect_s
        self._again: list[tuple[float, str]] = []  # (when, source) to reconnect
        # What is dribbled, byte by byte, over and over: by default the start of a request line
        # (or, against TLS, of a ClientHello that never completes).
        self.payload = payload
        self.lifetimes: list[float] = []
        self.connections_made = 0
        self._open: dict[int, tuple[_Slow, int]] = {}  # fd -> (conn, bytes sent)
        self._sel = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)

    def __enter__(self) -> SlowClients:
        for source in self.sources:
            self._connect(source)
        self._thread.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        for conn, _ in self._open.values():
            conn.sock.close()
        self._sel.close()

    def _connect(self, source: str) -> None:
        conn = _Slow(source, self.target)
        with self._lock:
            self._open[conn.sock.fileno()] = (conn, 0)
        self._sel.register(conn.sock, selectors.EVENT_READ)
        self.connections_made += 1

    def _closed(self, fd: int) -> None:
        with self._lock:
            conn, _ = self._open.pop(fd)
            self.lifetimes.append(time.monotonic() - conn.born)
        self._sel.unregister(conn.sock)
        conn.sock.close()
        self._again.append((time.monotonic() + self.reconnect_s, conn.source))

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=0.1):
                fd = key.fd
                if fd not in self._open:
                    continue
                try:
                    data = self._open[fd][0].sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:  # the server closed it (or answered and closed)
                    self._closed(fd)
            now = time.monotonic()
            due = [source for when, source in self._again if when <= now]
            self._again = [(when, source) for when, source in self._again if when > now]
            for source in due:
                self._connect(source)
            for fd, (conn, sent) in list(self._open.items()):
                if now < conn.next_byte:
                    continue
                conn.next_byte = now + self.every_s
                byte = self.payload[sent % len(self.payload) : sent % len(self.payload) + 1]
                try:
                    conn.sock.send(byte)
                    with self._lock:
                        self._open[fd] = (conn, sent + 1)
                except BlockingIOError:
                    pass  # still connecting: try at the next turn
                except OSError:
                    self._closed(fd)

    def closed_lifetimes(self) -> list[float]:
        with self._lock:
            return list(self.lifetimes)

    def oldest(self) -> float:
        """Age of the oldest connection the server still keeps open (0 if none)."""
        now = time.monotonic()
        with self._lock:
            born = [conn.born for conn, _ in self._open.values()]
        return now - min(born) if born else 0.0

    def open_count(self) -> int:
        with self._lock:
            return len(self._open)

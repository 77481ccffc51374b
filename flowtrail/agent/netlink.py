"""Minimal netlink plumbing shared by NAT resolution (conntrack) and snapshots (sock_diag).

Only what those two need: open a netlink socket inside a given network namespace, send one
dump request, and walk the replies and their (nested) attributes. Written against the kernel's
uapi headers (linux/netlink.h, linux/netfilter/nfnetlink.h, linux/inet_diag.h).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator

NETLINK_SOCK_DIAG = 4
NETLINK_NETFILTER = 12
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED / NLA_F_NET_BYTEORDER
CLONE_NEWNET = 0x40000000

_HDR = struct.Struct("=IHHII")
_ATTR = struct.Struct("=HH")
_libc: ctypes.CDLL | None = None
_switch_lock = threading.Lock()


class NetlinkError(OSError):
    pass


def _align(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded."""
    raw = _ATTR.pack(_ATTR.size + len(payload), kind) + payload
    return raw + b"\0" * (_align(len(raw)) - len(raw))


def attrs(
    data: bytes | memoryview, start: int = 0, end: int | None = None
) -> dict[int, memoryview]:
    """Attributes in data[start:end] by type (last one wins), values as memoryviews."""
    view = memoryview(data)
    end = len(view) if end is None else end
    out: dict[int, memoryview] = {}
    pos = start
    while pos + _ATTR.size <= end:
        length, kind = _ATTR.unpack_from(view, pos)
        if length < _ATTR.size:
            break
        out[kind & NLA_TYPE_MASK] = view[pos + _ATTR.size : pos + length]
        pos += _align(length)
    return out


def dump(sock: socket.socket, msg_type: int, payload: bytes, seq: int = 1) -> Iterator[bytes]:
    """Send one dump request; yield each reply message's payload (after the nlmsghdr)."""
    sock.send(
        _HDR.pack(_HDR.size + len(payload), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + payload
    )
    while True:
        data = sock.recv(1 << 20)
        if not data:
            return
        pos = 0
        while pos + _HDR.size <= len(data):
            length, kind, _flags, _seq, _pid = _HDR.unpack_from(data, pos)
            if length < _HDR.size:
                return
            body = data[pos + _HDR.size : pos + length]
            pos += _align(length)
            if kind == NLMSG_DONE:
                return
            if kind == NLMSG_ERROR:
                (errno,) = struct.unpack_from("=i", body)
                if errno:
                    raise NetlinkError(-errno, os.strerror(-errno))
                continue
            yield body


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetlinkError(err, f"setns: {os.strerror(err)}")


def netlink_socket(protocol: int, netns_path: str | None = None) -> socket.socket:
    """A netlink socket bound inside the netns at `netns_path` (None: this thread's own).

    A socket keeps the namespace it was made in, so the thread switches in only to create it.
    """
    if netns_path is None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
    else:
        target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            with _switch_lock:
                _setns(target)
                try:
                    sock = socket.socket(
                        socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol
                    )
                finally:
                    _setns(home)
        finally:
            os.close(target)
            os.close(home)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sock.bind((0, 0))
    return sock


def own_netns() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def _entries(directory: str, suffix: str = "", *, any_name: bool = False) -> list[str]:
    """`directory/NAME{suffix}` for each entry (only numeric names unless any_name), in
    directory order; [] when the directory cannot be read."""
    try:
        with os.scandir(directory) as it:
            return [
                f"{e.path}{suffix}"
                for e in it
                if (any_name and not e.name.startswith(".")) or e.name.isdigit()
            ]
    except OSError:
        return []


class NetnsIndex:
    """Network namespace inode → a path that opens it (/run/netns/NAME or /proc/PID/ns/net).

    Bind mounts under /run/netns are preferred: they last as long as the namespace is named,
    while a /proc/PID path goes stale when its process exits (a short `ip netns exec` child
    is enough). Paths are checked before use. A path that went stale since the last scan
    rescans at once; a namespace the last scan did not find rescans at most once per
    `rescan_s`. A namespace with no process and no bind mount left cannot be entered.
    """

    def __init__(self, rescan_s: float = 1.0) -> None:
        self.own = own_netns()
        self.rescan_s = rescan_s
        self._paths: dict[int, str] = {}
        self._last_scan = -float("inf")  # the first miss scans

    @staticmethod
    def _ino(path: str) -> int | None:
        try:
            return os.stat(path).st_ino
        except OSError:
            return None

    def _scan(self) -> None:
        self._last_scan = time.monotonic()
        found: dict[int, str] = {}
        # scandir, not glob: this runs every second, and glob's pattern matching and
        # existence checks cost three times the stat calls themselves
        for path in _entries("/run/netns", any_name=True) + _entries("/proc", "/ns/net"):
            ino = self._ino(path)
            if ino is not None:
                found.setdefault(ino, path)
        self._paths = found

    def known(self) -> list[int]:
        """Every namespace a process or a bind mount holds now (rescanned at most once per
        `rescan_s`)."""
        if time.monotonic() - self._last_scan >= self.rescan_s:
            self._scan()
        return list(self._paths)

    def path(self, ino: int, pid_hint: int = 0) -> str | None:
        """A path for `ino`; '' for this process's own netns; None when unreachable."""
        if ino == self.own:
            return ""
        known = self._paths.get(ino)
        if known is not None and self._ino(known) == ino:
            return known
        if pid_hint:
            hint = f"/proc/{pid_hint}/ns/net"
            if self._ino(hint) == ino:
                self._paths[ino] = hint
                return hint
        # A stale path says the namespace was there a moment ago: look again now. One the
        # last scan did not find is looked for again only after rescan_s.
        if known is not None or time.monotonic() - self._last_scan >= self.rescan_s:
            self._paths.pop(ino, None)
            self._scan()
            return self._paths.get(ino)
        return None


@contextlib.contextmanager
def socket_in(
    index: NetnsIndex, ino: int, protocol: int, pid_hint: int = 0
) -> Iterator[socket.socket | None]:
    """A netlink socket in netns `ino`, or None when that namespace can no longer be entered."""
    path = index.path(ino, pid_hint)
    if path is None:
        yield None
        return
    sock = netlink_socket(protocol, path or None)
    try:
        yield sock
    finally:
        sock.close()

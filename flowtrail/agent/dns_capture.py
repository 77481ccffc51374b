"""DnsCapture: bpf/dns.bpf.o attached to the cgroup v2 root, read as packets from port 53.

    with DnsCapture() as dns:
        packets = dns.poll()        # DnsPackets: headers (numpy) + the DNS messages' bytes
        dns.stats()                 # cumulative drops by reason, zeros included

The program copies every UDP datagram and TCP segment from source port 53 that a local socket
receives, in any network namespace, with the socket's cgroup v2 id and netns inode (as flows
carry them). Parsing is flowtrail.agent.dns_parse's; see docs/dns.md ("Capture").
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from flowtrail.agent import libbpf
from flowtrail.agent.capture import BPF_DIR, DEFAULT_BTF, _check_power_of_two_pages
from flowtrail.agent.clock import MonotonicClock
from flowtrail.agent.identity import CGROUP2_ROOT
from flowtrail.errors import CapabilityError

DNS_OBJECT_PATH = BPF_DIR / "dns.bpf.o"
PROGRAM = "dns_ingress"
DEFAULT_DNS_RINGBUF_BYTES = 1 << 20
POLL_LIMIT = 8192  # packets taken by one poll at most (the rest wait for the next)
CAPTURE_MAX = 2048  # DNS_CAPTURE_MAX (bpf/dns.h)

# struct dns_record (bpf/dns.h), byte for byte: (member, numpy format, byte offset).
DNS_FIELDS: tuple[tuple[str, Any, int], ...] = (
    ("ts_ns", "<u8", 0),
    ("cgroup_id", "<u8", 8),
    ("netns_ino", "<u4", 16),
    ("msg_len", "<u4", 20),
    ("family", "<u2", 24),
    ("proto", "u1", 26),
    ("sport", "<u2", 28),
    ("dport", "<u2", 30),
    ("cap_len", "<u2", 32),
    ("saddr", ("u1", 16), 36),
    ("daddr", ("u1", 16), 52),
)
DNS_DTYPE = np.dtype(
    {
        "names": [f[0] for f in DNS_FIELDS],
        "formats": [f[1] for f in DNS_FIELDS],
        "offsets": [f[2] for f in DNS_FIELDS],
        "itemsize": 72,
    }
)
HEADER_SIZE = DNS_DTYPE.itemsize

# enum dns_drop_reason (bpf/dns.h), in index order.
KERNEL_DROP_REASONS = ("ringbuf_full", "read_failed")


@dataclass
class DnsPackets:
    """Packets polled at once: `headers[i]` describes `data[starts[i] : starts[i] + cap_len]`."""

    headers: npt.NDArray[Any]  # DNS_DTYPE
    starts: npt.NDArray[np.int64]
    data: bytes
    observed_ns: npt.NDArray[np.int64]  # epoch ns

    def __len__(self) -> int:
        return len(self.headers)

    def payload(self, i: int) -> memoryview:
        start = int(self.starts[i])
        return memoryview(self.data)[start : start + int(self.headers["cap_len"][i])]


def empty_packets() -> DnsPackets:
    return DnsPackets(np.empty(0, DNS_DTYPE), np.empty(0, np.int64), b"", np.empty(0, np.int64))


class _Collector:
    """libbpf's per-record callback: copy the bytes, nothing more (parsing comes after).

    At most `limit` records a round: libbpf's poll would otherwise go on for as long as a
    flood keeps the ring from running empty, holding up the agent loop that called it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buf = bytearray()
        self.starts: list[int] = []
        self.bad_size = 0

    def __call__(self, data: int, size: int) -> int:
        if size < HEADER_SIZE or size > HEADER_SIZE + CAPTURE_MAX:
            self.bad_size += 1
            return 0
        # 8-byte aligned, so every header can be viewed in place with one dtype
        pad = -len(self.buf) % 8
        if pad:
            self.buf += bytes(pad)
        self.starts.append(len(self.buf))
        self.buf += ctypes.string_at(data, size)
        return libbpf.STOP if len(self.starts) >= self.limit else 0

    def take(self, clock: MonotonicClock) -> DnsPackets:
        if not self.starts:
            return empty_packets()
        data, starts = bytes(self.buf), np.array(self.starts, np.int64)
        self.buf, self.starts = bytearray(), []
        raw = np.frombuffer(data, np.uint8)
        rows = raw[starts[:, None] + np.arange(HEADER_SIZE)]
        headers = rows.view(DNS_DTYPE).ravel()
        cap = headers["cap_len"].astype(np.int64)
        if np.any(starts + HEADER_SIZE + cap > len(data)):  # never expected: the sizes agree
            ok = starts + HEADER_SIZE + cap <= len(data)
            self.bad_size += int((~ok).sum())
            headers, starts = headers[ok], starts[ok]
        return DnsPackets(headers, starts + HEADER_SIZE, data, clock.to_epoch(headers["ts_ns"]))


class DnsCapture:
    """The DNS answer capture of this host's kernel; see the module docstring."""

    def __init__(
        self,
        ringbuf_bytes: int = DEFAULT_DNS_RINGBUF_BYTES,
        *,
        cgroup_root: str = CGROUP2_ROOT,
        object_path: str | Path = DNS_OBJECT_PATH,
        btf_path: str = DEFAULT_BTF,
        poll_limit: int = POLL_LIMIT,
    ) -> None:
        _check_power_of_two_pages("dns ringbuf_bytes", ringbuf_bytes)
        self.ringbuf_bytes = ringbuf_bytes
        self.cgroup_root = cgroup_root
        self.object_path = Path(object_path)
        self.btf_path = btf_path
        self.clock: MonotonicClock | None = None
        self._obj: libbpf.BpfObject | None = None
        self._link: libbpf.Link | None = None
        self._ring: libbpf.RingBuffer | None = None
        self._drops_fd = -1
        self._collector = _Collector(poll_limit)

    def start(self) -> None:
        """Load and attach; CapabilityError saying what is missing."""
        if self._link is not None:
            return
        if not self.object_path.is_file():
            raise CapabilityError(
                f"the BPF object {self.object_path} is missing: run scripts/build-bpf"
            )
        if not Path(self.cgroup_root, "cgroup.procs").is_file():
            raise CapabilityError(
                f"no cgroup v2 hierarchy at {self.cgroup_root}: DNS capture attaches there"
                " (or run the agent with --no-dns)"
            )
        libbpf.lib()
        libbpf.clear_log()
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        custom_btf = None if self.btf_path == DEFAULT_BTF else self.btf_path
        try:
            self._obj = libbpf.BpfObject(str(self.object_path), btf_custom_path=custom_btf)
            self._obj.set_max_entries("dns_events", self.ringbuf_bytes)
            self._obj.load()
        except OSError as exc:
            raise CapabilityError(
                f"the kernel could not load {self.object_path}: {exc}" + _log_tail()
            ) from exc
        self._drops_fd = self._obj.map_fd("dns_drops")
        self.clock = MonotonicClock()
        self._ring = libbpf.RingBuffer(self._obj.map_fd("dns_events"), self._collector)
        fd = os.open(self.cgroup_root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self._link = self._obj.attach_cgroup(PROGRAM, fd)
        except OSError as exc:
            raise CapabilityError(
                f"cannot attach {PROGRAM} to the ingress of cgroup {self.cgroup_root}: {exc}"
                + _log_tail()
            ) from exc
        finally:
            os.close(fd)

    def close(self) -> None:
        """Detach and free everything; packets not yet polled are lost (poll first)."""
        if self._link is not None:
            self._link.destroy()
            self._link = None
        if self._ring is not None:
            self._ring.free()
            self._ring = None
        if self._obj is not None:
            self._obj.close()
            self._obj = None
        self._drops_fd = -1

    def __enter__(self) -> DnsCapture:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._link is not None

    def poll(self, timeout_ms: int = 0) -> DnsPackets:
        """Packets since the last poll, at most poll_limit (waiting up to timeout_ms for the
        first one)."""
        if self._ring is None or self.clock is None:
            raise RuntimeError("DnsCapture is not started")
        self._ring.poll(timeout_ms)
        return self._collector.take(self.clock)

    def stats(self) -> dict[str, int]:
        """Cumulative packets lost before parsing, by reason (every reason, zero or not)."""
        if self._drops_fd < 0:
            raise RuntimeError("DnsCapture is not started")
        values = (ctypes.c_uint64 * libbpf.num_possible_cpus())()
        out: dict[str, int] = {}
        for index, reason in enumerate(KERNEL_DROP_REASONS):
            libbpf.map_lookup(self._drops_fd, ctypes.c_uint32(index), values)
            out[reason] = int(sum(values))
        out["bad_record_size"] = self._collector.bad_size
        return out


def _log_tail() -> str:
    log = libbpf.recent_log(15)
    return f"\nlibbpf said:\n{log}" if log else ""


def started_or_off(say: Callable[[str], None]) -> DnsCapture | None:
    """A started DnsCapture, or None where this host cannot capture DNS (no cgroup v2, an
    older kernel), said through `say`: flows are the agent's job and go on without it."""
    capture = DnsCapture()
    try:
        capture.start()
    except CapabilityError as exc:
        say(f"DNS capture off: {exc}")
        return None
    return capture

"""Capture: the BPF flow program loaded into this kernel, read as RAW_SCHEMA Arrow batches.

    with Capture() as cap:          # start(): checks, loads, attaches
        batch = cap.poll(1000)      # closed connections since the last poll, or None
        live = cap.live()           # sockets open right now (from the BPF start map)
        cap.stats()                 # cumulative drops by reason, zeros included

The ring buffer is read straight from its memory mapping, each run of committed records as one
numpy array (or, with reader="libbpf", through ring_buffer__poll with a callback that only copies
bytes); decoding is done in bulk with a numpy structured dtype that mirrors `struct flow_record`
in bpf/flow.h (a kernel test checks it against the compiled object's BTF). See docs/bpf.md.
"""

from __future__ import annotations

import ctypes
import ipaddress
import mmap
import os
import platform
import select
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from flowtrail.agent import libbpf
from flowtrail.agent.clock import MonotonicClock
from flowtrail.agent.records import OUTCOMES, RAW_SCHEMA
from flowtrail.errors import CapabilityError, InputError

BPF_DIR = Path(__file__).parent / "bpf"
OBJECT_PATH = BPF_DIR / "flow.bpf.o"
DEFAULT_BTF = "/sys/kernel/btf/vmlinux"
TRACEFS = "/sys/kernel/tracing"
TRACEPOINT = ("sock", "inet_sock_set_state")
# The state-change programs, by how they are attached (flow.bpf.c). The raw tracepoint comes
# first: its recursion guard is the program's own, while a classic tracepoint program shares one
# per CPU with every kprobe and classic tracepoint program on the host (the accept programs
# too) and skips a state change in softirq that interrupts any of them. On the raw tracepoint a
# second copy handles the changes that interrupt the first one's own run. The classic one is
# the fallback for a kernel that refuses the raw one.
RAW_TRACEPOINT, CLASSIC_TRACEPOINT = "raw_tracepoint", "tracepoint"
ATTACH_MODES = (RAW_TRACEPOINT, CLASSIC_TRACEPOINT)
STATE_PROGRAMS = {
    RAW_TRACEPOINT: ("flow_set_state_raw", "flow_set_state_second"),
    CLASSIC_TRACEPOINT: ("flow_set_state",),
}
# syscalls:sys_exit_accept4 / sys_exit_accept: who accepted an inbound socket (flow.bpf.c)
ACCEPT_PROGRAMS = ("flow_accept4", "flow_accept")

DEFAULT_RINGBUF_BYTES = 4 << 20
DEFAULT_MAX_SOCKETS = 65536

AF_INET, AF_INET6 = 2, 10

# struct flow_record (bpf/flow.h), byte for byte: (member, numpy format, byte offset).
FLOW_FIELDS: tuple[tuple[str, Any, int], ...] = (
    ("sock_id", "<u8", 0),
    ("start_ns", "<u8", 8),
    ("end_ns", "<u8", 16),
    ("bytes_acked", "<u8", 24),
    ("bytes_received", "<u8", 32),
    ("cgroup_id", "<u8", 40),
    ("segs_out", "<u4", 48),
    ("segs_in", "<u4", 52),
    ("total_retrans", "<u4", 56),
    ("srtt_us", "<u4", 60),
    ("netns_ino", "<u4", 64),
    ("pid", "<u4", 68),
    ("saddr", ("u1", 16), 72),
    ("daddr", ("u1", 16), 88),
    ("sport", "<u2", 104),
    ("dport", "<u2", 106),
    ("family", "<u2", 108),
    ("direction", "u1", 110),
    ("outcome", "u1", 111),
    ("sk_err", "<i4", 112),
    ("established", "u1", 116),
    ("seq_flags", "u1", 117),
    ("accepted", "u1", 118),
    ("comm", "S16", 120),
    ("established_ns", "<u8", 136),
)
FLOW_DTYPE = np.dtype(
    {
        "names": [f[0] for f in FLOW_FIELDS],
        "formats": [f[1] for f in FLOW_FIELDS],
        "offsets": [f[2] for f in FLOW_FIELDS],
        "itemsize": 144,
    }
)
RECORD_SIZE = FLOW_DTYPE.itemsize

# enum flow_seq_flags (bpf/flow.h)
SEQ_SYN_ACKED, SEQ_FIN_ACKED, SEQ_FIN_RECEIVED = 1, 2, 4

# enum flow_drop_reason (bpf/flow.h), in index order.
DROP_REASONS = ("ringbuf_full", "map_full", "untracked_close", "read_failed", "stale_start")

# enum flow_direction / enum flow_outcome (bpf/flow.h) to RAW_SCHEMA text, by code.
_DIRECTIONS = pa.array([None, "outbound", "inbound"], pa.string())
_OUTCOMES = pa.array(OUTCOMES, pa.string())

# CAP_* bit numbers (linux/capability.h)
_CAP_SYS_ADMIN, _CAP_PERFMON, _CAP_BPF = 21, 38, 39


def _effective_caps() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def capability_problems(
    *, btf_path: str = DEFAULT_BTF, tracefs: str = TRACEFS, object_path: Path = OBJECT_PATH
) -> list[str]:
    """Everything missing for capture on this machine, each said exactly; [] when all is there."""
    problems = []
    caps = _effective_caps()

    def has(bit: int) -> bool:
        return bool(caps >> bit & 1)

    if not (has(_CAP_SYS_ADMIN) or (has(_CAP_BPF) and has(_CAP_PERFMON))):
        missing = [
            n for n, b in (("CAP_BPF", _CAP_BPF), ("CAP_PERFMON", _CAP_PERFMON)) if not has(b)
        ]
        problems.append(
            f"missing {' and '.join(missing)} (or CAP_SYS_ADMIN):"
            " run as root with its capabilities, or grant them"
        )
    if not Path(btf_path).is_file():
        problems.append(
            f"no kernel BTF at {btf_path}: CO-RE needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
        )
    if not _is_dir(tracefs, "events"):
        problems.append(f"tracefs is not mounted at {tracefs} (mount -t tracefs tracefs {tracefs})")
    elif not _is_dir(tracefs, "events", *TRACEPOINT):
        problems.append(f"the kernel has no tracepoint {':'.join(TRACEPOINT)}")
    if not object_path.is_file():
        problems.append(f"the BPF object {object_path} is missing: run scripts/build-bpf")
    return problems


def _is_dir(*parts: str) -> bool:
    try:
        return Path(*parts).is_dir()
    except OSError:  # e.g. EACCES on tracefs for an unprivileged user
        return False


def _mount_tracefs(tracefs: str) -> None:
    """Mount tracefs at the standard place when it is absent (libbpf reads tracepoint ids there).

    Only the standard path, only as root; any failure is reported by capability_problems().
    """
    if tracefs != TRACEFS or os.geteuid() != 0 or _is_dir(tracefs, "events"):
        return
    if _is_dir(tracefs):
        subprocess.run(
            ["mount", "-t", "tracefs", "tracefs", tracefs], check=False, capture_output=True
        )


def _check_power_of_two_pages(name: str, value: int) -> None:
    page = os.sysconf("SC_PAGE_SIZE")
    if value < page or value & (value - 1):
        raise InputError(
            f"{name}={value}: must be a power of two and at least the page size ({page})"
        )


_RB_BUSY, _RB_DISCARD, _RB_HDR = 1 << 31, 1 << 30, 8
SLOT_SIZE = (RECORD_SIZE + _RB_HDR + 7) // 8 * 8  # one record's footprint in the ring


class _MmapRing:
    """Reads the BPF ring buffer straight from its memory mapping, many records per step.

    The kernel's layout (kernel/bpf/ringbuf.c): a writable consumer-position page, then a
    read-only producer-position page followed by the data area mapped twice in a row, so any
    span up to the ring size is contiguous. Each record is an 8-byte header (length with BUSY
    and DISCARD bits) plus the record, padded to 8 bytes. All of ours have one size, so a run of
    committed records is a (n, SLOT_SIZE) array: no per-record Python work at all.
    Ordering: headers are read before the data they guard and the consumer position is stored
    after the copy, which x86-64's TSO keeps in order; elsewhere use reader="libbpf".
    """

    def __init__(self, map_fd: int, size: int) -> None:
        page = mmap.PAGESIZE
        self._size, self._mask = size, size - 1
        self._cons_map = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._prod_map = mmap.mmap(
            map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
        )
        self._cons = np.frombuffer(self._cons_map, np.uint64, count=1)
        self._prod = np.frombuffer(self._prod_map, np.uint64, count=1)
        self._data = np.frombuffer(self._prod_map, np.uint8, offset=page)
        self._epoll = select.epoll()
        # edge-triggered: woken by the program's wakeups (wakeup_bytes queued), not by any data
        self._epoll.register(map_fd, select.EPOLLIN | select.EPOLLET)
        self.bad_size = 0

    def read(self, timeout_ms: int) -> npt.NDArray[Any]:
        """Wait for a wakeup or timeout_ms (0: don't wait, <0: forever), then take everything."""
        if timeout_ms != 0:
            self._epoll.poll(timeout_ms / 1000 if timeout_ms > 0 else -1)
        return self._drain()

    def _drain(self) -> npt.NDArray[Any]:
        parts = []
        for _ in range(2):  # a second pass for a burst that lands while we copy; no more
            cons, prod = int(self._cons[0]), int(self._prod[0])
            if prod == cons:
                break
            start, avail = cons & self._mask, prod - cons
            if avail % SLOT_SIZE:
                parts.append(self._walk(cons, prod))
                break
            slots = self._data[start : start + avail].reshape(-1, SLOT_SIZE)
            lens = slots[:, :4].copy().view("<u4").ravel()  # headers first, then the data
            busy = np.flatnonzero(lens & _RB_BUSY)
            n = int(busy[0]) if len(busy) else len(lens)
            if n == 0:
                break
            lens = lens[:n]
            if np.any((lens & ~np.uint32(_RB_BUSY | _RB_DISCARD)) != RECORD_SIZE):
                parts.append(self._walk(cons, prod))
                break
            keep = (lens & _RB_DISCARD) == 0
            records = slots[:n, _RB_HDR : _RB_HDR + RECORD_SIZE][keep].copy()
            self._cons[0] = cons + n * SLOT_SIZE
            parts.append(records.view(FLOW_DTYPE).ravel())
            if n < len(slots):
                break
        if not parts:
            return np.empty(0, FLOW_DTYPE)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _walk(self, cons: int, prod: int) -> npt.NDArray[Any]:
        """Record by record, for a ring holding records of another size (never expected)."""
        found = []
        while cons < prod:
            at = cons & self._mask
            header = int(self._data[at : at + 4].view("<u4")[0])
            if header & _RB_BUSY:
                break
            length = header & ~(_RB_BUSY | _RB_DISCARD)
            if not header & _RB_DISCARD:
                if length == RECORD_SIZE:
                    found.append(self._data[at + _RB_HDR : at + _RB_HDR + length].copy())
                else:
                    self.bad_size += 1
            cons += (length + _RB_HDR + 7) // 8 * 8
        self._cons[0] = cons
        if not found:
            return np.empty(0, FLOW_DTYPE)
        return np.concatenate(found).view(FLOW_DTYPE)

    def close(self) -> None:
        self._epoll.close()
        del self._cons, self._prod, self._data
        self._cons_map.close()
        self._prod_map.close()


class _LibbpfRing:
    """libbpf's ring_buffer__poll with a per-record callback that only copies bytes.

    Portable (libbpf does the memory ordering) but slower: a ctypes callback per record.
    """

    def __init__(self, map_fd: int) -> None:
        self._buf = np.empty(1024 * RECORD_SIZE, np.uint8)
        self._buf_addr = self._buf.ctypes.data
        self._used = 0
        self.bad_size = 0
        self._ring = libbpf.RingBuffer(map_fd, self._on_sample)

    def read(self, timeout_ms: int) -> npt.NDArray[Any]:
        self._ring.poll(timeout_ms)
        n = self._used // RECORD_SIZE
        records = np.frombuffer(self._buf, FLOW_DTYPE, count=n).copy()
        self._used = 0
        return records

    def _on_sample(self, data: int, size: int) -> int:
        """libbpf calls this per record: copy the bytes, nothing more (decoding is bulk)."""
        if size != RECORD_SIZE:
            self.bad_size += 1
            return 0
        if self._used + size > self._buf.size:
            grown = np.empty(self._buf.size * 2, np.uint8)
            grown[: self._used] = self._buf[: self._used]
            self._buf, self._buf_addr = grown, grown.ctypes.data
        ctypes.memmove(self._buf_addr + self._used, data, size)
        self._used += size
        return 0

    def close(self) -> None:
        self._ring.free()


class Capture:
    """The flow capture of this host's kernel; see the module docstring."""

    def __init__(
        self,
        ringbuf_bytes: int = DEFAULT_RINGBUF_BYTES,
        max_sockets: int = DEFAULT_MAX_SOCKETS,
        *,
        btf_path: str = DEFAULT_BTF,
        tracefs: str = TRACEFS,
        object_path: str | Path = OBJECT_PATH,
        reader: str | None = None,
        wakeup_bytes: int | None = None,
        accepts: bool = True,
        attach: str | None = None,
    ) -> None:
        """`accepts=False` leaves the accept tracepoints out (an accepted socket is then named
        by its listener's cgroup): for measuring what they cost, not for production.
        `attach` ("raw_tracepoint" or "tracepoint") insists on one way of attaching the
        state-change program; by default the raw tracepoint, else the classic one."""
        _check_power_of_two_pages("ringbuf_bytes", ringbuf_bytes)
        # the mmap reader relies on x86-64's memory ordering; elsewhere libbpf does the fencing
        if reader is None:
            reader = "mmap" if platform.machine() in ("x86_64", "AMD64") else "libbpf"
        if reader not in ("mmap", "libbpf"):
            raise InputError(f"reader={reader!r}: must be 'mmap' or 'libbpf'")
        if max_sockets < 1:
            raise InputError(f"max_sockets={max_sockets}: must be at least 1")
        if attach is not None and attach not in ATTACH_MODES:
            raise InputError(f"attach={attach!r}: must be one of {', '.join(ATTACH_MODES)}")
        self.ringbuf_bytes = ringbuf_bytes
        self.max_sockets = max_sockets
        self.btf_path = btf_path
        self.tracefs = tracefs
        self.object_path = Path(object_path)
        self.reader = reader
        self.accepts = accepts
        self.attach = attach
        # how the state-change program is attached once started, and why not the raw way
        # when the kernel refused it
        self.attach_mode: str | None = None
        self.fallback_reason: str | None = None
        self._prog_fd = -1
        self._expired = 0  # start-map entries live() found certainly dead and removed
        self._unstamped = 0  # records closed past the handshake whose ESTABLISHED change was missed
        # default: wake the reader when an eighth of the ring is queued
        self.wakeup_bytes = ringbuf_bytes // 8 if wakeup_bytes is None else wakeup_bytes
        if not 0 <= self.wakeup_bytes <= ringbuf_bytes:
            raise InputError(f"wakeup_bytes={wakeup_bytes}: must be 0..ringbuf_bytes")
        self.clock: MonotonicClock | None = None
        self._obj: libbpf.BpfObject | None = None
        self._link: libbpf.Link | None = None
        self._extra_links: list[libbpf.Link] = []
        self._ring: _MmapRing | _LibbpfRing | None = None
        self._fds: dict[str, int] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Load and attach the program; CapabilityError naming exactly what is missing."""
        if self._link is not None:
            return
        _mount_tracefs(self.tracefs)
        problems = capability_problems(
            btf_path=self.btf_path, tracefs=self.tracefs, object_path=self.object_path
        )
        if problems:
            raise CapabilityError("eBPF capture cannot start: " + "; ".join(problems))
        libbpf.lib()
        modes = (self.attach,) if self.attach else ATTACH_MODES
        for mode in modes:
            try:
                self._start(mode)
            except CapabilityError as exc:
                self.close()
                if mode == modes[-1]:
                    if self.fallback_reason:
                        raise CapabilityError(
                            f"{exc}\n(the raw tracepoint was refused first: {self.fallback_reason})"
                        ) from exc
                    raise
                self.fallback_reason = str(exc).splitlines()[0]
            except BaseException:
                self.close()
                raise
            else:
                self.attach_mode = mode
                return

    def _start(self, mode: str) -> None:
        """One attempt: open, size, load (the state-change program of `mode` only), attach."""
        libbpf.clear_log()
        custom_btf = None if self.btf_path == DEFAULT_BTF else self.btf_path
        try:
            obj = libbpf.BpfObject(str(self.object_path), btf_custom_path=custom_btf)
        except OSError as exc:
            raise CapabilityError(f"cannot open {self.object_path}: {exc}") from exc
        self._obj = obj
        programs = STATE_PROGRAMS[mode]
        for names in STATE_PROGRAMS.values():
            for name in names:
                obj.set_autoload(name, name in programs)
        obj.set_max_entries("flow_events", self.ringbuf_bytes)
        obj.set_max_entries("flow_starts", self.max_sockets)
        try:
            obj.load()
        except OSError as exc:
            raise CapabilityError(self._load_problem(exc, mode)) from exc
        self._fds = {
            name: obj.map_fd(name)
            for name in (
                "flow_starts",
                "flow_events",
                "flow_drops",
                "flow_seq",
                "flow_config",
                "flow_nesting",
            )
        }
        self._prog_fd = obj.prog_fd(programs[0])
        self._seed_sock_ids()
        libbpf.map_update(
            self._fds["flow_config"], ctypes.c_uint32(0), ctypes.c_uint64(self.wakeup_bytes)
        )
        self.clock = MonotonicClock()
        events = self._fds["flow_events"]
        self._ring = (
            _MmapRing(events, self.ringbuf_bytes) if self.reader == "mmap" else _LibbpfRing(events)
        )
        for name in ACCEPT_PROGRAMS if self.accepts else ():  # first: no accept goes unseen
            try:
                self._extra_links.append(obj.attach(name))
            except OSError as exc:
                raise CapabilityError(
                    f"cannot attach {name} to its syscall exit tracepoint: {exc}" + self._log_tail()
                ) from exc
        where = TRACEPOINT[1] if mode == RAW_TRACEPOINT else ":".join(TRACEPOINT)
        # in this order: the kernel calls a tracepoint's programs in the order they were
        # attached, and the second copy must run after the first for each change
        for name in programs:
            try:
                link = obj.attach(name)
            except OSError as exc:
                raise CapabilityError(
                    f"cannot attach {name} to the {mode.replace('_', ' ')} {where}: {exc}"
                    + self._log_tail()
                ) from exc
            if name == programs[0]:
                self._link = link
            else:
                self._extra_links.append(link)

    def close(self) -> None:
        """Detach and free everything; records not yet polled are lost (poll first)."""
        if self._link is not None:
            self._link.destroy()
            self._link = None
        for link in self._extra_links:
            link.destroy()
        self._extra_links = []
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._obj is not None:
            self._obj.close()
            self._obj = None
        self._fds = {}

    def __enter__(self) -> Capture:
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

    # -- reading -----------------------------------------------------------------------------

    def poll(self, timeout_ms: int = 0) -> pa.RecordBatch | None:
        """Closed connections since the last poll as one RAW_SCHEMA batch; None when none.

        Waits until wakeup_bytes of records are queued or timeout_ms passes (0: no wait), then
        takes everything queued: timeout_ms bounds the latency, wakeup_bytes the batch size.
        """
        ring: _MmapRing | _LibbpfRing = self._require(self._ring)
        records = ring.read(timeout_ms)
        if len(records) == 0:
            return None
        # established (it closed from past the handshake) but no ESTABLISHED time: the
        # change itself was missed (the row goes on, established_ns null)
        self._unstamped += int(
            np.count_nonzero((records["established"] == 1) & (records["established_ns"] == 0))
        )
        return decode(records, self._require(self.clock))

    def live(self) -> pa.RecordBatch:
        """RAW_SCHEMA rows for sockets established right now, from the BPF start map.

        start, tuple, cgroup, netns, direction and sock_id are real; end_ns is the time of this
        call and the counters are 0 (the map keeps no counters: sock_diag has them).
        """
        fd = self._fds.get("flow_starts")
        if fd is None:
            raise RuntimeError("Capture is not started")
        keys = np.empty(self.max_sockets, np.uint64)
        values = np.empty(self.max_sockets, FLOW_DTYPE)
        n = libbpf.map_lookup_batched(
            fd, keys.ctypes.data, 8, values.ctypes.data, RECORD_SIZE, self.max_sockets
        )
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        records, keys = values[:n], keys[:n]
        dead = dead_entries(records, now)
        if dead.any():
            # their closes were missed (recursion_miss): free the slots, never report them
            for key in keys[dead]:
                libbpf.map_delete(fd, ctypes.c_uint64(int(key)))
            self._expired += int(dead.sum())
            records = records[~dead]
        records = records[records["established"] == 1].copy()
        records["end_ns"] = now
        return decode(records, self._require(self.clock))

    def stats(self) -> dict[str, int]:
        """Cumulative drops by reason since start (every reason present, zero or not)."""
        fd = self._fds.get("flow_drops")
        if fd is None:
            raise RuntimeError("Capture is not started")
        ncpu = libbpf.num_possible_cpus()
        values = (ctypes.c_uint64 * ncpu)()
        out: dict[str, int] = {}
        for index, reason in enumerate(DROP_REASONS):
            key = ctypes.c_uint32(index)
            libbpf.map_lookup(fd, key, values)
            out[reason] = int(sum(values))
        out["bad_record_size"] = self._ring.bad_size if self._ring is not None else 0
        out["expired_start"] = self._expired
        out["established_unseen"] = self._unstamped
        # state changes no program handled (the kernel skipped the first, its recursion guard
        # taken on that CPU, and the second copy did not take over): opens, establishments or
        # closes lost
        skipped = libbpf.prog_stats(self._prog_fd)["recursion_misses"]
        out["recursion_miss"] = max(skipped - self.nested_handled(), 0)
        return out

    def nested_handled(self) -> int:
        """State changes the second copy handled because the first program was skipped for
        them (it was running on that CPU when they came); 0 on the classic tracepoint."""
        fd = self._fds.get("flow_nesting")
        if fd is None:
            raise RuntimeError("Capture is not started")
        if self.attach_mode != RAW_TRACEPOINT:
            return 0
        ncpu = libbpf.num_possible_cpus()
        values = (ctypes.c_uint64 * ncpu)()
        libbpf.map_lookup(fd, ctypes.c_uint32(1), values)
        return int(sum(values))

    def program_stats(self, program: str | None = None) -> dict[str, int]:
        """The kernel's counters for an attached program (default: the state-change program;
        or one of ACCEPT_PROGRAMS): run_cnt and run_time_ns (kept only while sysctl
        kernel.bpf_stats_enabled=1) and recursion_misses."""
        if self._link is None or self._obj is None:
            raise RuntimeError("Capture is not started")
        fd = self._prog_fd if program is None else self._obj.prog_fd(program)
        return libbpf.prog_stats(fd)

    # -- internals ---------------------------------------------------------------------------

    def _seed_sock_ids(self) -> None:
        """Start the socket id counter at CLOCK_MONOTONIC now: ids never repeat within a boot.

        Every earlier capture on this boot handed out fewer ids than nanoseconds have passed.
        """
        key = ctypes.c_uint32(0)
        value = ctypes.c_uint64(time.clock_gettime_ns(time.CLOCK_MONOTONIC))
        libbpf.map_update(self._fds["flow_seq"], key, value)

    def _load_problem(self, exc: OSError, mode: str) -> str:
        which = f"{self.object_path} (state changes from the {mode.replace('_', ' ')})"
        if exc.errno == 1:  # EPERM: privilege, lockdown or an LSM said no
            what = "the kernel refused to load the BPF program (EPERM): needs CAP_BPF+CAP_PERFMON"
            what += " or root, and no lockdown/LSM policy forbidding BPF"
        elif exc.errno == 13:  # EACCES: the verifier rejected the program
            what = f"the BPF verifier of this kernel rejected {which}"
        else:
            what = f"the kernel could not load {which}: {exc}"
        return what + self._log_tail()

    @staticmethod
    def _log_tail() -> str:
        log = libbpf.recent_log(15)
        return f"\nlibbpf said:\n{log}" if log else ""

    @staticmethod
    def _require(value: Any) -> Any:
        if value is None:
            raise RuntimeError("Capture is not started")
        return value


HANDSHAKE_LIMIT_NS = 600 * 10**9  # SYN retries give up long before (127 s by default)


def dead_entries(records: npt.NDArray[Any], now_mono_ns: int) -> npt.NDArray[np.bool_]:
    """Start-map entries whose socket is certainly gone though its close was never seen.

    - an entry still in its handshake after HANDSHAKE_LIMIT_NS;
    - an established entry whose 4-tuple (in its netns) a newer established entry also has:
      one tuple cannot name two live sockets, so the older one closed unseen.
    """
    dead = (records["established"] == 0) & (
        records["start_ns"].astype(np.int64) < now_mono_ns - HANDSHAKE_LIMIT_NS
    )
    est = np.flatnonzero(records["established"] == 1)
    if len(est) > 1:
        r = records[est]
        tuples = np.zeros(len(r), [("ns", "<u4"), ("fam", "<u2"), ("sp", "<u2"), ("dp", "<u2"),
                                   ("s", "V16"), ("d", "V16")])  # fmt: skip
        tuples["ns"], tuples["fam"] = r["netns_ino"], r["family"]
        tuples["sp"], tuples["dp"] = r["sport"], r["dport"]
        tuples["s"] = r["saddr"].copy().view("V16").ravel()
        tuples["d"] = r["daddr"].copy().view("V16").ravel()
        keys = tuples.view(f"V{tuples.dtype.itemsize}")
        tuple_id = np.unique(keys, return_inverse=True)[1].ravel()
        order = np.lexsort((r["start_ns"], tuple_id))  # by tuple, then oldest first
        group = tuple_id[order]
        older = np.zeros(len(r), bool)
        older[order[:-1]] = group[:-1] == group[1:]  # not the newest of its tuple
        dead[est[older]] = True
    return np.asarray(dead, dtype=np.bool_)


def _addresses(
    family: npt.NDArray[np.uint16], raw: npt.NDArray[np.uint8]
) -> tuple[pa.Array, npt.NDArray[np.uint8]]:
    """Canonical address text and IP version (4/6) per row; IPv4-mapped IPv6 becomes IPv4.

    Text is made once per distinct address (np.unique), then spread back with `take`.
    """
    n = len(family)
    is6 = family == AF_INET6
    mapped = is6 & (raw[:, :10] == 0).all(axis=1) & (raw[:, 10] == 0xFF) & (raw[:, 11] == 0xFF)
    v4 = ~is6 | mapped
    norm = np.zeros((n, 17), np.uint8)
    norm[:, 0] = np.where(v4, 4, 6)
    plain4 = ~is6
    norm[plain4, 1:5] = raw[plain4, 0:4]
    norm[mapped, 1:5] = raw[mapped, 12:16]
    norm[~v4, 1:17] = raw[~v4]
    keys = np.ascontiguousarray(norm).view("V17").ravel()
    uniques, inverse = np.unique(keys, return_inverse=True)
    texts = []
    for u in uniques:
        b = bytes(u)
        texts.append(
            str(ipaddress.IPv4Address(b[1:5]) if b[0] == 4 else ipaddress.IPv6Address(b[1:]))
        )
    text = pa.array(texts, pa.string()).take(pa.array(inverse.ravel().astype(np.int64)))
    return text, np.where(v4, 4, 6).astype(np.uint8)


def _comms(comm: npt.NDArray[np.bytes_]) -> pa.Array:
    uniques, inverse = np.unique(comm, return_inverse=True)
    texts = [bytes(u).decode("utf-8", errors="replace") for u in uniques]
    return pa.array(texts, pa.string()).take(pa.array(inverse.ravel().astype(np.int64)))


def payload_bytes(
    records: npt.NDArray[Any],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Payload bytes sent (acked by the peer) and received: the kernel's sequence-space counters
    less the SYN/FIN sequence numbers the BPF program saw inside them (enum flow_seq_flags)."""
    flags = records["seq_flags"].astype(np.int64)
    sent = records["bytes_acked"].astype(np.int64) - (flags & SEQ_SYN_ACKED > 0)
    sent -= flags & SEQ_FIN_ACKED > 0
    received = records["bytes_received"].astype(np.int64) - (flags & SEQ_FIN_RECEIVED > 0)
    return np.maximum(sent, 0), np.maximum(received, 0)


def decode(records: npt.NDArray[Any], clock: MonotonicClock) -> pa.RecordBatch:
    """struct flow_record rows (numpy, FLOW_DTYPE) to one RAW_SCHEMA batch, vectorised."""
    if len(records) == 0:
        return _empty_batch()
    local_ip, version = _addresses(records["family"], records["saddr"])
    remote_ip, _ = _addresses(records["family"], records["daddr"])
    sent, received = payload_bytes(records)
    columns = {
        "sock_id": pa.array(records["sock_id"], pa.uint64()),
        "family": pa.array(version, pa.uint8()),
        "local_ip": local_ip,
        "local_port": pa.array(records["sport"].astype(np.int32), pa.int32()),
        "remote_ip": remote_ip,
        "remote_port": pa.array(records["dport"].astype(np.int32), pa.int32()),
        "direction": _DIRECTIONS.take(pa.array(records["direction"].astype(np.int64))),
        "outcome": _OUTCOMES.take(pa.array(records["outcome"].astype(np.int64))),
        "start_ns": pa.array(clock.to_epoch(records["start_ns"]), pa.int64()),
        "end_ns": pa.array(clock.to_epoch(records["end_ns"]), pa.int64()),
        "established_ns": _established(records["established_ns"], clock),
        "bytes_sent": pa.array(sent, pa.int64()),
        "bytes_received": pa.array(received, pa.int64()),
        "segs_sent": pa.array(records["segs_out"].astype(np.int64), pa.int64()),
        "segs_received": pa.array(records["segs_in"].astype(np.int64), pa.int64()),
        "retransmits": pa.array(records["total_retrans"].astype(np.int64), pa.int64()),
        "srtt_us": pa.array(records["srtt_us"].astype(np.int64), pa.int64()),
        "cgroup_id": pa.array(records["cgroup_id"], pa.uint64()),
        "netns_ino": pa.array(records["netns_ino"], pa.uint32()),
        "pid": pa.array(records["pid"], pa.uint32()),
        "comm": _comms(records["comm"]),
    }
    return pa.RecordBatch.from_arrays(
        [columns[name] for name in RAW_SCHEMA.names], schema=RAW_SCHEMA
    )


def _established(mono: npt.NDArray[np.uint64], clock: MonotonicClock) -> pa.Array:
    """Epoch ns of the change to ESTABLISHED; null where the program saw none (0)."""
    return pa.array(clock.to_epoch(mono), pa.int64(), mask=mono == 0)


def _empty_batch() -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array([], f.type) for f in RAW_SCHEMA], schema=RAW_SCHEMA)

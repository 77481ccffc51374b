"""The only libbpf FFI in flowtrail: the system's libbpf.so.1 through ctypes.

Small on purpose: open/load/attach an object, size its maps, read maps (one element or in
batches), consume a ring buffer, and read a struct's layout from an object's BTF. Everything
libbpf prints is kept (the last lines) so a failed load can say why.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import errno as errno_mod
import os
from collections.abc import Callable
from typing import Any

from flowtrail.errors import CapabilityError

_LIB_NAME = "libbpf.so.1"
_LOG_LINES: collections.deque[str] = collections.deque(maxlen=200)

# libbpf's print callback gets a C va_list; on x86-64 (and arm64, by reference) it arrives as a
# pointer that libc's vsnprintf accepts as is.
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)

_lib: ctypes.CDLL | None = None
_libc = ctypes.CDLL(None, use_errno=True)
_libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
_libc.vsnprintf.restype = ctypes.c_int


_PRINT_BUF = ctypes.create_string_buffer(1 << 20)  # a verifier log arrives as one message


def _on_print(level: int, fmt: bytes | None, args: int | None) -> int:
    _libc.vsnprintf(_PRINT_BUF, len(_PRINT_BUF), fmt, args)
    for line in _PRINT_BUF.value.decode(errors="replace").splitlines():
        if line.strip():
            _LOG_LINES.append(line)
    return 0


_print_cb = _PRINT_FN(_on_print)  # kept alive for the life of the process


class _OpenOpts(ctypes.Structure):
    """struct bpf_object_open_opts (libbpf 1.x), up to kernel_log_level."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("object_name", ctypes.c_char_p),
        ("relaxed_maps", ctypes.c_bool),
        ("pin_root_path", ctypes.c_char_p),
        ("_removed_attach_prog_fd", ctypes.c_uint32),
        ("kconfig", ctypes.c_char_p),
        ("btf_custom_path", ctypes.c_char_p),
        ("kernel_log_buf", ctypes.c_char_p),
        ("kernel_log_size", ctypes.c_size_t),
        ("kernel_log_level", ctypes.c_uint32),
    ]


class _BatchOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class _BtfType(ctypes.Structure):
    _fields_ = [
        ("name_off", ctypes.c_uint32),
        ("info", ctypes.c_uint32),
        ("size", ctypes.c_uint32),  # a union with `type`; size for structs
    ]


class _BtfMember(ctypes.Structure):
    _fields_ = [
        ("name_off", ctypes.c_uint32),
        ("type", ctypes.c_uint32),
        ("offset", ctypes.c_uint32),
    ]


_P = ctypes.c_void_p
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "libbpf_set_print": (_P, [_PRINT_FN]),
    "libbpf_num_possible_cpus": (ctypes.c_int, []),
    "bpf_object__open_file": (_P, [ctypes.c_char_p, ctypes.POINTER(_OpenOpts)]),
    "bpf_object__load": (ctypes.c_int, [_P]),
    "bpf_object__close": (None, [_P]),
    "bpf_object__find_map_by_name": (_P, [_P, ctypes.c_char_p]),
    "bpf_object__find_program_by_name": (_P, [_P, ctypes.c_char_p]),
    "bpf_map__set_max_entries": (ctypes.c_int, [_P, ctypes.c_uint32]),
    "bpf_map__fd": (ctypes.c_int, [_P]),
    "bpf_program__attach": (_P, [_P]),
    "bpf_program__attach_cgroup": (_P, [_P, ctypes.c_int]),
    "bpf_program__set_autoload": (ctypes.c_int, [_P, ctypes.c_bool]),
    "bpf_program__fd": (ctypes.c_int, [_P]),
    "bpf_obj_get_info_by_fd": (ctypes.c_int, [ctypes.c_int, _P, ctypes.POINTER(ctypes.c_uint32)]),
    "bpf_link__destroy": (ctypes.c_int, [_P]),
    "bpf_map_lookup_elem": (ctypes.c_int, [ctypes.c_int, _P, _P]),
    "bpf_map_update_elem": (ctypes.c_int, [ctypes.c_int, _P, _P, ctypes.c_uint64]),
    "bpf_map_delete_elem": (ctypes.c_int, [ctypes.c_int, _P]),
    "bpf_map_lookup_batch": (
        ctypes.c_int,
        [ctypes.c_int, _P, _P, _P, _P, ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(_BatchOpts)],
    ),
    "ring_buffer__new": (_P, [ctypes.c_int, SAMPLE_FN, _P, _P]),
    "ring_buffer__poll": (ctypes.c_int, [_P, ctypes.c_int]),
    "ring_buffer__consume": (ctypes.c_int, [_P]),
    "ring_buffer__free": (None, [_P]),
    "btf__parse_elf": (_P, [ctypes.c_char_p, _P]),
    "btf__free": (None, [_P]),
    "btf__find_by_name_kind": (ctypes.c_int32, [_P, ctypes.c_char_p, ctypes.c_uint32]),
    "btf__type_by_id": (ctypes.POINTER(_BtfType), [_P, ctypes.c_uint32]),
    "btf__name_by_offset": (ctypes.c_char_p, [_P, ctypes.c_uint32]),
    "btf__resolve_size": (ctypes.c_int64, [_P, ctypes.c_uint32]),
}


def lib(path: str | None = None) -> ctypes.CDLL:
    """The loaded libbpf, with typed signatures; CapabilityError when it is not installed."""
    global _lib
    if _lib is not None and path is None:
        return _lib
    name = path or _LIB_NAME
    try:
        handle = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise CapabilityError(
            f"cannot load {name} ({exc}): install the system libbpf"
            " (Debian: apt-get install libbpf1)"
        ) from exc
    for fn, (restype, argtypes) in _SIGNATURES.items():
        try:
            f = getattr(handle, fn)
        except AttributeError as exc:
            raise CapabilityError(f"{name} lacks {fn}: flowtrail needs libbpf >= 1.0") from exc
        f.restype, f.argtypes = restype, argtypes
    handle.libbpf_set_print(_print_cb)
    if path is None:
        _lib = handle
    return handle


def recent_log(lines: int = 30) -> str:
    """The last lines libbpf printed (verifier output on a failed load)."""
    return "\n".join(list(_LOG_LINES)[-lines:])


def clear_log() -> None:
    _LOG_LINES.clear()


def num_possible_cpus() -> int:
    n = int(lib().libbpf_num_possible_cpus())
    if n <= 0:
        raise OSError(-n, f"libbpf_num_possible_cpus: {os.strerror(-n)}")
    return n


def _errno_error(what: str, code: int | None = None) -> OSError:
    err = ctypes.get_errno() if code is None else code
    return OSError(err, f"{what}: {os.strerror(err)}")


class Link:
    """An attached program; destroying it detaches."""

    def __init__(self, ptr: int) -> None:
        self._ptr: int | None = ptr

    def destroy(self) -> None:
        if self._ptr is not None:
            lib().bpf_link__destroy(self._ptr)
            self._ptr = None


class BpfObject:
    """An opened (then loaded) BPF ELF object."""

    def __init__(self, path: str, *, btf_custom_path: str | None = None) -> None:
        opts = _OpenOpts(sz=ctypes.sizeof(_OpenOpts))
        if btf_custom_path is not None:
            opts.btf_custom_path = btf_custom_path.encode()
        ptr = lib().bpf_object__open_file(path.encode(), ctypes.byref(opts))
        if not ptr:
            raise _errno_error(f"bpf_object__open_file({path})")
        self._ptr: int | None = ptr
        self.path = path

    def _obj(self) -> int:
        if self._ptr is None:
            raise ValueError("BPF object is closed")
        return self._ptr

    def _map(self, name: str) -> int:
        ptr = lib().bpf_object__find_map_by_name(self._obj(), name.encode())
        if not ptr:
            raise KeyError(f"no map {name!r} in {self.path}")
        return int(ptr)

    def set_max_entries(self, map_name: str, entries: int) -> None:
        rc = lib().bpf_map__set_max_entries(self._map(map_name), entries)
        if rc != 0:
            raise _errno_error(f"bpf_map__set_max_entries({map_name}, {entries})", -rc)

    def load(self) -> None:
        rc = lib().bpf_object__load(self._obj())
        if rc != 0:
            raise _errno_error(f"bpf_object__load({self.path})", -rc)

    def map_fd(self, name: str) -> int:
        fd = int(lib().bpf_map__fd(self._map(name)))
        if fd < 0:
            raise _errno_error(f"bpf_map__fd({name})", -fd)
        return fd

    def _prog(self, prog_name: str) -> int:
        prog = lib().bpf_object__find_program_by_name(self._obj(), prog_name.encode())
        if not prog:
            raise KeyError(f"no program {prog_name!r} in {self.path}")
        return int(prog)

    def set_autoload(self, prog_name: str, autoload: bool) -> None:
        """Whether load() loads this program (before load only): a program this kernel might
        refuse is left out, so the rest of the object loads."""
        rc = lib().bpf_program__set_autoload(self._prog(prog_name), autoload)
        if rc != 0:
            raise _errno_error(f"bpf_program__set_autoload({prog_name})", -rc)

    def attach(self, prog_name: str) -> Link:
        link = lib().bpf_program__attach(self._prog(prog_name))
        if not link:
            raise _errno_error(f"bpf_program__attach({prog_name})")
        return Link(int(link))

    def attach_cgroup(self, prog_name: str, cgroup_fd: int) -> Link:
        """Attach a cgroup program (a BPF link: other programs on that cgroup stay, and the
        program detaches when the link is destroyed or the process exits)."""
        link = lib().bpf_program__attach_cgroup(self._prog(prog_name), cgroup_fd)
        if not link:
            raise _errno_error(f"bpf_program__attach_cgroup({prog_name})")
        return Link(int(link))

    def prog_fd(self, prog_name: str) -> int:
        fd = int(lib().bpf_program__fd(self._prog(prog_name)))
        if fd < 0:
            raise _errno_error(f"bpf_program__fd({prog_name})", -fd)
        return fd

    def close(self) -> None:
        if self._ptr is not None:
            lib().bpf_object__close(self._ptr)
            self._ptr = None


def map_lookup(fd: int, key: ctypes.Array[ctypes.c_char] | Any, value: Any) -> bool:
    """Look one key up into `value` (a ctypes buffer); False when absent."""
    rc = lib().bpf_map_lookup_elem(fd, ctypes.addressof(key), ctypes.addressof(value))
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err == errno_mod.ENOENT:
        return False
    raise _errno_error("bpf_map_lookup_elem", err)


def map_update(fd: int, key: Any, value: Any, flags: int = 0) -> None:
    rc = lib().bpf_map_update_elem(fd, ctypes.addressof(key), ctypes.addressof(value), flags)
    if rc != 0:
        raise _errno_error("bpf_map_update_elem")


def map_delete(fd: int, key: Any) -> bool:
    """Delete one key; False when it was already gone."""
    if lib().bpf_map_delete_elem(fd, ctypes.addressof(key)) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno_mod.ENOENT:
        return False
    raise _errno_error("bpf_map_delete_elem", err)


def map_lookup_batched(
    fd: int, keys_addr: int, key_size: int, values_addr: int, value_size: int, capacity: int
) -> int:
    """Copy up to `capacity` elements of a hash map into caller buffers; returns the count.

    BPF_MAP_LOOKUP_BATCH, chunk after chunk, until the kernel reports the end (ENOENT).
    """
    opts = _BatchOpts(sz=ctypes.sizeof(_BatchOpts))
    token_in = ctypes.c_uint64(0)
    token_out = ctypes.c_uint64(0)
    total = 0
    first = True
    while total < capacity:
        count = ctypes.c_uint32(capacity - total)
        rc = lib().bpf_map_lookup_batch(
            fd,
            None if first else ctypes.addressof(token_in),
            ctypes.addressof(token_out),
            keys_addr + total * key_size,
            values_addr + total * value_size,
            ctypes.byref(count),
            ctypes.byref(opts),
        )
        err = ctypes.get_errno() if rc != 0 else 0
        total += count.value
        if rc != 0:
            # ENOENT: the end. ENOSPC: the next bucket has more entries than slots are left,
            # which only happens when the map is fuller than `capacity` allows: keep what we got
            if err in (errno_mod.ENOENT, errno_mod.ENOSPC):
                return total
            raise _errno_error("bpf_map_lookup_batch", err)
        token_in.value = token_out.value
        first = False
    return total


# struct bpf_prog_info (uapi linux/bpf.h): stable ABI offsets of the run statistics
_PROG_INFO_SIZE = 232
_PROG_INFO_FIELDS = {"run_time_ns": 192, "run_cnt": 200, "recursion_misses": 208}


def prog_stats(prog_fd: int) -> dict[str, int]:
    """run_time_ns and run_cnt (counted only while kernel.bpf_stats_enabled=1), and
    recursion_misses: how often the kernel skipped the program because its recursion guard
    was taken on that CPU (a tracepoint hit from softirq interrupting a run in process context:
    of any kprobe or classic tracepoint program for a classic tracepoint program, of the same
    program for a raw tracepoint one)."""
    info = (ctypes.c_uint8 * _PROG_INFO_SIZE)()
    length = ctypes.c_uint32(_PROG_INFO_SIZE)
    if lib().bpf_obj_get_info_by_fd(prog_fd, info, ctypes.byref(length)) != 0:
        raise _errno_error("bpf_obj_get_info_by_fd")
    raw = bytes(info)
    return {
        name: int.from_bytes(raw[off : off + 8], "little") if length.value >= off + 8 else 0
        for name, off in _PROG_INFO_FIELDS.items()
    }


# a sample callback's return value that stops a poll round on purpose (libbpf stops at any
# negative value and returns it; this errno is one libbpf itself never gives back from a poll)
STOP = -errno_mod.ECANCELED


class RingBuffer:
    """libbpf's ring_buffer over one BPF_MAP_TYPE_RINGBUF map, calling `callback(data, size)`."""

    def __init__(self, map_fd: int, callback: Callable[[int, int], int]) -> None:
        def trampoline(_ctx: int | None, data: int | None, size: int) -> int:
            return callback(data or 0, size)

        self._cb = SAMPLE_FN(trampoline)  # must outlive the ring buffer
        ptr = lib().ring_buffer__new(map_fd, self._cb, None, None)
        if not ptr:
            raise _errno_error("ring_buffer__new")
        self._ptr: int | None = ptr

    def poll(self, timeout_ms: int) -> int:
        """Wait up to timeout_ms for data, then consume all there is; returns records consumed.

        A callback returning STOP ends the round early (its record is consumed, the rest
        stay for the next poll): how a reader bounds one round against a producer that never
        lets the ring run empty. Such a round returns 0."""
        if self._ptr is None:
            raise ValueError("ring buffer is closed")
        n = int(lib().ring_buffer__poll(self._ptr, timeout_ms))
        if n < 0 and n not in (-errno_mod.EINTR, STOP):
            raise _errno_error("ring_buffer__poll", -n)
        return max(n, 0)

    def consume(self) -> int:
        if self._ptr is None:
            raise ValueError("ring buffer is closed")
        n = int(lib().ring_buffer__consume(self._ptr))
        if n < 0:
            raise _errno_error("ring_buffer__consume", -n)
        return n

    def free(self) -> None:
        if self._ptr is not None:
            lib().ring_buffer__free(self._ptr)
            self._ptr = None


BTF_KIND_STRUCT = 4


def struct_layout(obj_path: str, struct_name: str) -> tuple[int, dict[str, tuple[int, int]]]:
    """(size, {member: (byte offset, byte size)}) of a struct in an ELF object's BTF."""
    L = lib()
    btf = L.btf__parse_elf(obj_path.encode(), None)
    if not btf:
        raise _errno_error(f"btf__parse_elf({obj_path})")
    try:
        type_id = L.btf__find_by_name_kind(btf, struct_name.encode(), BTF_KIND_STRUCT)
        if type_id < 0:
            raise KeyError(f"struct {struct_name} not in the BTF of {obj_path}")
        t = L.btf__type_by_id(btf, type_id)
        vlen = t.contents.info & 0xFFFF
        kind_flag = bool(t.contents.info >> 31)
        members_addr = ctypes.addressof(t.contents) + ctypes.sizeof(_BtfType)
        members = (_BtfMember * vlen).from_address(members_addr)
        layout: dict[str, tuple[int, int]] = {}
        for m in members:
            bit_offset = m.offset & 0xFFFFFF if kind_flag else m.offset
            name = (L.btf__name_by_offset(btf, m.name_off) or b"").decode()
            layout[name] = (bit_offset // 8, int(L.btf__resolve_size(btf, m.type)))
        return int(t.contents.size), layout
    finally:
        L.btf__free(btf)

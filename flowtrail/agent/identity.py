"""Local identity: which workload owns this end of a connection, or null, never a guess.

A chain of resolvers is asked in order; the first non-null answer for a row wins:

    explicit     registrations from a file or the Python API: (IP, port), IP, cgroup path, netns
    kubernetes   pod cgroup paths (kubepods…pod<uid>…), named from /var/log/pods when present
    container    container-runtime scopes: docker, containerd, cri-o, podman, nerdctl
    systemd      the innermost `*.service` unit in the cgroup path
    host         the host's identity (its host name unless configured), only for sockets in the
                 host's network namespace
    cgroup       any other cgroup but the root, by its path: true of every socket in it

Resolution is vectorised: IP-keyed registrations are Arrow lookups over the whole batch, and the
path-keyed resolvers run once per distinct cgroup id (a handful per batch), cached by id. Cgroup
ids are never reused within a boot, so a cgroup learned once keeps its name after it is removed:
the agent learns paths as soon as it sees an id (and by scanning the tree every interval).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import re
import socket
import struct
import threading
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.agent.kubernetes import NAMINGS, KubeApi, PodDirectory, kubernetes_workload
from flowtrail.errors import InputError

CGROUP2_ROOT = (
    "/sys/fs/cgroup/unified" if os.path.isdir("/sys/fs/cgroup/unified") else "/sys/fs/cgroup"
)
RESOLVERS = ("explicit", "kubernetes", "container", "systemd", "host", "cgroup")
DEFAULT_RESOLVERS = RESOLVERS
MAX_CACHED = 1 << 16  # cgroup ids / netns remembered; oldest forgotten first past this

_FILEID_KERNFS = 0xFE  # file-handle type of kernfs (cgroup2): the handle is the 64-bit cgroup id
_O_PATH_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def canonical_ip(text: str) -> str:
    """The contract's canonical text for an address (IPv4-mapped IPv6 written as IPv4)."""
    ip = ipaddress.ip_address(text.strip())
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


# --------------------------------------------------------------------------- cgroup paths


class CgroupPaths:
    """Cgroup v2 id → path (relative to the cgroup2 mount, starting with '/'), learned early.

    A lookup miss asks the kernel directly (open_by_handle_at with the id as a kernfs handle,
    which needs CAP_DAC_READ_SEARCH) and falls back to the last full scan of the tree.
    """

    def __init__(self, root: str = CGROUP2_ROOT, max_cached: int = MAX_CACHED) -> None:
        self.root = root.rstrip("/") or "/"
        self.max_cached = max_cached
        self._paths: dict[int, str] = {}
        self._lock = threading.Lock()
        self._libc: ctypes.CDLL | None = None
        self._by_handle_ok = True
        self._missing: dict[int, None] = {}  # ids the kernel could not open: gone for good
        self.stats = {"cgroup_lookups": 0, "cgroup_unknown": 0}

    def _remember(self, cg_id: int, path: str) -> None:
        if cg_id not in self._paths and len(self._paths) >= self.max_cached:
            self._paths.pop(next(iter(self._paths)))  # forget the oldest learned
        self._paths[cg_id] = path

    def _relative(self, absolute: str) -> str:
        rel = os.path.relpath(absolute, self.root)
        return "/" if rel == "." else "/" + rel

    def scan(self) -> int:
        """Walk the whole tree once, learning every cgroup's id; returns how many exist.

        Runs every second on every host, so it reads directories only: a directory entry's
        inode number (d_ino) is the cgroup id, as stat's is (kernfs gives both the node id)."""
        try:
            root_ino = os.stat(self.root).st_ino
        except OSError:
            return 0
        seen = [(root_ino, "/")]
        pending = [(self.root, "")]
        while pending:
            directory, rel = pending.pop()
            try:
                with os.scandir(directory) as entries:
                    for e in entries:
                        if e.is_dir(follow_symlinks=False):
                            seen.append((e.inode(), f"{rel}/{e.name}"))
                            pending.append((e.path, f"{rel}/{e.name}"))
            except OSError:
                continue  # removed while walking
        with self._lock:
            for ino, path in seen:
                self._remember(ino, path)
        return len(seen)

    def _by_handle(self, cg_id: int) -> str | None:
        if not self._by_handle_ok:
            return None
        if self._libc is None:
            self._libc = ctypes.CDLL(None, use_errno=True)
        handle = ctypes.create_string_buffer(struct.pack("=IiQ", 8, _FILEID_KERNFS, cg_id))
        try:
            mount_fd = os.open(self.root, _O_PATH_DIR)
        except OSError:
            self._by_handle_ok = False
            return None
        try:
            fd = self._libc.open_by_handle_at(mount_fd, handle, _O_PATH_DIR)
            if fd < 0:
                err = ctypes.get_errno()
                if err in (1, 38, 95):  # EPERM, ENOSYS, EOPNOTSUPP: never going to work here
                    self._by_handle_ok = False
                return None
            try:
                return self._relative(os.readlink(f"/proc/self/fd/{fd}"))
            finally:
                os.close(fd)
        finally:
            os.close(mount_fd)

    def path(self, cg_id: int) -> str | None:
        with self._lock:
            known = self._paths.get(cg_id)
        if known is not None:
            return known
        if cg_id in self._missing:
            return None
        self.stats["cgroup_lookups"] += 1
        found = self._by_handle(cg_id)
        if found is None:
            # Ids are never reused, so a cgroup that cannot be opened now never will be;
            # only a scan that still finds it (a race with creation) can name it later.
            self.stats["cgroup_unknown"] += 1
            if len(self._missing) >= self.max_cached:
                self._missing.pop(next(iter(self._missing)))
            self._missing[cg_id] = None
            return None
        with self._lock:
            self._remember(cg_id, found)
        return found

    def learn(self, ids: Iterable[int]) -> None:
        for cg_id in ids:
            self.path(int(cg_id))

    def add(self, cg_id: int, path: str) -> None:
        """Teach a path directly (tests, or an orchestrator that knows it first)."""
        with self._lock:
            self._remember(cg_id, path)


# --------------------------------------------------------------------------- netns names


def netns_inode(spec: str | int) -> int | None:
    """A network namespace's inode from a name under /run/netns, a path, or the number."""
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        return int(spec)
    path = spec if "/" in spec else f"/run/netns/{spec}"
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def own_netns_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino


# --------------------------------------------------------------------------- the batch view


@dataclass(frozen=True)
class LocalKeys:
    """The columns the resolvers read, taken from a RAW_SCHEMA batch once."""

    cgroup_id: np.ndarray  # uint64
    netns_ino: np.ndarray  # uint32
    local_ip: pa.Array  # string
    local_port: pa.Array  # int32

    @classmethod
    def of(cls, batch: pa.RecordBatch | pa.Table) -> LocalKeys:
        def col(name: str) -> pa.Array:
            c = batch.column(name)
            return c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c

        return cls(
            cgroup_id=col("cgroup_id").fill_null(0).to_numpy(zero_copy_only=False),
            netns_ino=col("netns_ino").fill_null(0).to_numpy(zero_copy_only=False),
            local_ip=col("local_ip"),
            local_port=col("local_port"),
        )

    def __len__(self) -> int:
        return len(self.cgroup_id)


def _per_unique(values: np.ndarray, name_of: Callable[[int], str | None]) -> pa.Array:
    """Apply `name_of` once per distinct value and spread the answers back over the rows."""
    if len(values) == 0:
        return pa.array([], pa.string())
    uniq, inverse = np.unique(values, return_inverse=True)
    names = pa.array([name_of(int(v)) for v in uniq], pa.string())
    return names.take(pa.array(inverse.astype(np.int64)))


def _nulls(n: int) -> pa.Array:
    return pa.nulls(n, pa.string())


class Resolver(Protocol):
    name: str

    def resolve(self, keys: LocalKeys) -> pa.Array:
        """A string array, one per row: the workload, or null for "not mine to say"."""
        ...


class _PathResolver:
    """Base for resolvers that name a cgroup from its path; answers cached per cgroup id."""

    name = "path"

    def __init__(self, cgroups: CgroupPaths) -> None:
        self.cgroups = cgroups
        self._cache: dict[int, str | None] = {}

    def name_path(self, path: str) -> str | None:
        raise NotImplementedError

    def _name_id(self, cg_id: int) -> str | None:
        if cg_id in self._cache:
            return self._cache[cg_id]
        path = self.cgroups.path(cg_id) if cg_id else None
        if path is None:
            return None  # not cached: a later scan may still learn it
        answer = self.name_path(path)
        if len(self._cache) >= MAX_CACHED:
            self._cache.pop(next(iter(self._cache)))
        self._cache[cg_id] = answer
        return answer

    def resolve(self, keys: LocalKeys) -> pa.Array:
        return _per_unique(keys.cgroup_id, self._name_id)

    def forget(self) -> None:
        self._cache.clear()


# --------------------------------------------------------------------------- kubernetes

_POD_UID = r"([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})"
# systemd driver: kubepods-burstable-pod<uid with _>.slice; cgroupfs driver: /kubepods/…/pod<uid>
_K8S_POD_RE = re.compile(r"[/-]pod" + _POD_UID + r"(?:\.slice)?(?:/|$)")


def kubernetes_pod_uid(path: str) -> str | None:
    """The pod UID in a kubelet-made cgroup path (below a `kubepods` component), or None."""
    start = path.find("kubepods")
    m = _K8S_POD_RE.search(path, start) if start >= 0 else None
    return m.group(1).replace("_", "-") if m else None


class KubernetesResolver(_PathResolver):
    """Pods by cgroup path, named `k8s:<namespace>/<workload>`: the Deployment, StatefulSet,
    DaemonSet, Job or CronJob that owns the pod (asked of the in-cluster API when reachable,
    else read from the pod's name; flowtrail/agent/kubernetes.py), or `k8s:<namespace>/<pod>`
    with naming `pod`. A pod the node's directories do not name is `k8s:pod/<uid>` (the UID
    is itself exact). One answer per pod for its whole life, whichever container asks."""

    name = "kubernetes"

    def __init__(
        self,
        cgroups: CgroupPaths,
        pod_logs: str = "/var/log/pods",
        *,
        kubelet_pods: str = "/var/lib/kubelet/pods",
        naming: str = "workload",
        api: KubeApi | None = None,
    ) -> None:
        super().__init__(cgroups)
        if naming not in NAMINGS:
            raise InputError(f"kubernetes naming must be one of {', '.join(NAMINGS)}: {naming!r}")
        self.pods = PodDirectory(pod_logs, kubelet_pods)
        self.naming = naming
        self.api = api
        self._by_uid: dict[str, tuple[str, str | None]] = {}
        self._pod_of_id: dict[int, str | None] = {}

    def _pod(self, path: str) -> tuple[str, str | None] | None:
        """(workload, pod name or None) of the pod whose cgroup `path` is, or None."""
        uid = kubernetes_pod_uid(path)
        if uid is None:
            return None
        if uid not in self._by_uid:
            # The kubelet makes a pod's directories before any of its processes start, so
            # the first answer is final: one name per pod keeps its heartbeats agreeing.
            pod = self.pods.get(uid)
            self._by_uid[uid] = (
                (kubernetes_workload(pod, self.naming, self.api), pod.name)
                if pod is not None
                else (f"k8s:pod/{uid}", None)
            )
        return self._by_uid[uid]

    def name_path(self, path: str) -> str | None:
        found = self._pod(path)
        return found[0] if found else None

    def pod_name(self, cg_id: int) -> str | None:
        """The pod of a cgroup id, or None (not a pod's, or not named by the node)."""
        if cg_id in self._pod_of_id:
            return self._pod_of_id[cg_id]
        path = self.cgroups.path(cg_id) if cg_id else None
        found = self._pod(path) if path else None
        if found is None:
            return None  # not cached: a later scan may still learn the path
        if len(self._pod_of_id) >= MAX_CACHED:
            self._pod_of_id.pop(next(iter(self._pod_of_id)))
        self._pod_of_id[cg_id] = found[1]
        return found[1]

    def resolve_pods(self, keys: LocalKeys) -> pa.Array:
        return _per_unique(keys.cgroup_id, self.pod_name)


# --------------------------------------------------------------------------- containers

_CONTAINER_RES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("containerd", re.compile(r"(?:^|/)cri-containerd-([0-9a-f]{64})\.scope$")),
    ("crio", re.compile(r"(?:^|/)crio-([0-9a-f]{64})\.scope$")),
    ("docker", re.compile(r"(?:^|/)docker-([0-9a-f]{64})\.scope$")),
    ("docker", re.compile(r"(?:^|/)docker/([0-9a-f]{64})$")),
    ("podman", re.compile(r"(?:^|/)libpod-([0-9a-f]{64})\.scope(?:/container)?$")),
    ("podman", re.compile(r"(?:^|/)libpod_parent/libpod-([0-9a-f]{64})$")),
    ("nerdctl", re.compile(r"(?:^|/)nerdctl-([0-9a-f]{64})\.scope$")),
)


def container_of(path: str) -> tuple[str, str] | None:
    """(runtime, container id) for a container runtime's cgroup path, or None."""
    for runtime, pattern in _CONTAINER_RES:
        m = pattern.search(path)
        if m:
            return runtime, m.group(1)
    return None


class ContainerResolver(_PathResolver):
    """Containers by runtime scope: `<runtime>:<name>` where the runtime's state names it
    (docker's config.v2.json), else `<runtime>:<first 12 hex of the id>`."""

    name = "container"

    def __init__(self, cgroups: CgroupPaths, docker_root: str = "/var/lib/docker") -> None:
        super().__init__(cgroups)
        self.docker_root = docker_root

    def _docker_name(self, cid: str) -> str | None:
        cfg = Path(self.docker_root, "containers", cid, "config.v2.json")
        try:
            name = json.loads(cfg.read_text()).get("Name")
        except (OSError, ValueError):
            return None
        return name.lstrip("/") if isinstance(name, str) and name.strip("/") else None

    def name_path(self, path: str) -> str | None:
        found = container_of(path)
        if found is None:
            return None
        runtime, cid = found
        named = self._docker_name(cid) if runtime == "docker" else None
        return f"{runtime}:{named or cid[:12]}"


# --------------------------------------------------------------------------- systemd


class SystemdResolver(_PathResolver):
    """The innermost `*.service` unit: `systemd:<unit>`. Scopes and slices are not workloads."""

    name = "systemd"

    def name_path(self, path: str) -> str | None:
        for part in reversed(path.split("/")):
            if part.endswith(".service") and len(part) > len(".service"):
                return f"systemd:{part}"
        return None


# --------------------------------------------------------------------------- any cgroup


class CgroupResolver(_PathResolver):
    """Any cgroup but the root: `cgroup:<path>`. Last in the default chain, it names what the
    others do not (a process in its own cgroup and netns, a login session's scope): the
    socket's own cgroup, read in the kernel, so the name is true of its owner. The root
    cgroup holds unrelated processes of many namespaces: no name."""

    name = "cgroup"

    def name_path(self, path: str) -> str | None:
        return f"cgroup:{path}" if path != "/" else None


def default_host_workload(hostname: str | None = None) -> str:
    """The host's identity when none is configured: `host:<host name>`."""
    return f"host:{hostname or socket.gethostname()}"


# --------------------------------------------------------------------------- host


class HostResolver:
    """The host's configured identity, for sockets in the host's own network namespace only:
    a socket in another netns has another IP, so naming it after the host would be a guess."""

    name = "host"

    def __init__(self, workload: str | None, host_netns: int | None = None) -> None:
        self.workload = workload
        self.host_netns = own_netns_inode() if host_netns is None else host_netns

    def resolve(self, keys: LocalKeys) -> pa.Array:
        if not self.workload:
            return _nulls(len(keys))
        mine = pa.array(keys.netns_ino == self.host_netns)
        return pc.if_else(mine, pa.scalar(self.workload), pa.scalar(None, pa.string()))


# --------------------------------------------------------------------------- explicit


@dataclass(frozen=True)
class Registration:
    """One explicit claim: `workload` owns this IP (optionally only this port), cgroup or netns."""

    workload: str
    ip: str | None = None
    port: int | None = None
    cgroup: str | None = None
    netns: str | None = None

    def key(self) -> tuple[str, str]:
        if self.ip is not None:
            return (
                ("ip+port", f"{self.ip}|{self.port}") if self.port is not None else ("ip", self.ip)
            )
        if self.cgroup is not None:
            return ("cgroup", self.cgroup)
        return ("netns", str(self.netns))


def make_registration(
    workload: object,
    ip: object = None,
    port: object = None,
    cgroup: object = None,
    netns: object = None,
) -> Registration:
    """Validate one registration; raises ValueError with a plain message."""
    if not isinstance(workload, str) or not workload.strip():
        raise ValueError("'workload' must be a non-empty string")
    given = [k for k, v in (("ip", ip), ("cgroup", cgroup), ("netns", netns)) if v is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of 'ip' (optionally with 'port'), 'cgroup', 'netns'")
    if port is not None and ip is None:
        raise ValueError("'port' needs 'ip'")
    canon_ip = None
    if ip is not None:
        if not isinstance(ip, str):
            raise ValueError("'ip' must be a string")
        try:
            canon_ip = canonical_ip(ip)
        except ValueError:
            raise ValueError(f"'ip' {ip!r} is not an IP address") from None
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
        raise ValueError("'port' must be an integer")
    if isinstance(port, int) and not 0 < port < 65536:
        raise ValueError(f"'port' {port} is not 1..65535")
    cg = None
    if cgroup is not None:
        if not isinstance(cgroup, str) or not cgroup.startswith("/"):
            raise ValueError("'cgroup' must be a path starting with '/' (relative to cgroup2)")
        cg = "/" + cgroup.strip("/") if cgroup.strip("/") else "/"
    ns = None
    if netns is not None:
        if isinstance(netns, bool) or not isinstance(netns, str | int):
            raise ValueError("'netns' must be a name under /run/netns, a path, or an inode number")
        ns = str(netns)
    return Registration(workload.strip(), canon_ip, port, cg, ns)  # type: ignore[arg-type]


@dataclass
class IdentityFile:
    """What an identity file says (TOML; see docs/agent.md)."""

    host: str | None = None
    resolvers: list[str] | None = None
    registrations: list[Registration] = field(default_factory=list)


def load_identity_file(path: str | os.PathLike[str]) -> IdentityFile:
    """Parse an identity file; every problem is an InputError naming the file and entry."""
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text())
    except OSError as exc:
        raise InputError(f"identity file {p}: cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"identity file {p}: not valid TOML: {exc}") from exc
    unknown = set(doc) - {"host", "resolvers", "register"}
    if unknown:
        raise InputError(f"identity file {p}: unknown key(s) {sorted(unknown)}")
    out = IdentityFile()
    host = doc.get("host")
    if host is not None and (not isinstance(host, str) or not host.strip()):
        raise InputError(f"identity file {p}: 'host' must be a non-empty string")
    out.host = host
    if "resolvers" in doc:
        try:
            out.resolvers = parse_resolvers(doc["resolvers"])
        except InputError as exc:
            raise InputError(f"identity file {p}: {exc}") from None
    entries = doc.get("register", [])
    if not isinstance(entries, list):
        raise InputError(f"identity file {p}: 'register' must be an array of tables [[register]]")
    for n, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise InputError(f"identity file {p}: [[register]] entry {n} is not a table")
        extra = set(entry) - {"workload", "ip", "port", "cgroup", "netns"}
        if extra:
            raise InputError(f"identity file {p}: [[register]] entry {n}: unknown {sorted(extra)}")
        try:
            out.registrations.append(make_registration(**entry))
        except ValueError as exc:
            raise InputError(f"identity file {p}: [[register]] entry {n}: {exc}") from None
    try:
        _check_conflicts(out.registrations)
    except ValueError as exc:
        raise InputError(f"identity file {p}: {exc}") from None
    return out


def parse_resolvers(spec: object) -> list[str]:
    """A resolver order from 'a,b,c' or a list; unknown names are an InputError."""
    items = spec.split(",") if isinstance(spec, str) else spec
    if not isinstance(items, list | tuple) or not items:
        raise InputError(f"resolvers: expected a list of {', '.join(RESOLVERS)}")
    names = [str(i).strip() for i in items]
    bad = [n for n in names if n not in RESOLVERS]
    if bad:
        raise InputError(f"resolvers: unknown {bad}; choose from {', '.join(RESOLVERS)}")
    if len(set(names)) != len(names):
        raise InputError(f"resolvers: {names} names one twice")
    return names


def _check_conflicts(regs: Sequence[Registration]) -> None:
    seen: dict[tuple[str, str], str] = {}
    for r in regs:
        k = r.key()
        if k in seen and seen[k] != r.workload:
            raise ValueError(f"{k[0]} {k[1]!r} registered to both {seen[k]!r} and {r.workload!r}")
        seen[k] = r.workload


class Registry:
    """Explicit registrations (the IP-manager analogue); thread-safe, reloads its file on change.

    Entries from the file are replaced as a whole on reload; entries from the API stay.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._api: list[Registration] = []
        self._file: list[Registration] = []
        self._mtime: float | None = None
        self.generation = 0
        self.host: str | None = None
        self.resolvers: list[str] | None = None
        if self.path is not None:
            self.reload()

    def reload(self) -> bool:
        """Re-read the file if it changed; returns True when it did. Errors leave the old set."""
        if self.path is None:
            return False
        mtime = self.path.stat().st_mtime if self.path.exists() else None
        if mtime == self._mtime and self._mtime is not None:
            return False
        parsed = load_identity_file(self.path)
        with self._lock:
            _check_conflicts(parsed.registrations + self._api)
            self._file, self._mtime = parsed.registrations, mtime
            self.host, self.resolvers = parsed.host, parsed.resolvers
            self.generation += 1
        return True

    def register(
        self,
        workload: str,
        *,
        ip: str | None = None,
        port: int | None = None,
        cgroup: str | None = None,
        netns: str | int | None = None,
    ) -> Registration:
        try:
            reg = make_registration(workload, ip, port, cgroup, netns)
            with self._lock:
                _check_conflicts([*self._file, *self._api, reg])
                self._api.append(reg)
                self.generation += 1
        except ValueError as exc:
            raise InputError(f"register {workload!r}: {exc}") from None
        return reg

    def unregister(self, workload: str) -> int:
        with self._lock:
            before = len(self._api)
            self._api = [r for r in self._api if r.workload != workload]
            self.generation += 1
            return before - len(self._api)

    def entries(self) -> list[Registration]:
        """The file's entries in file order, then those registered at run time."""
        with self._lock:
            return [*self._file, *self._api]

    def file_entries(self) -> int:
        with self._lock:
            return len(self._file)


def _cgroup_prefix_match(path: str, prefixes: dict[str, str]) -> str | None:
    """The workload of the longest registered cgroup path that is `path` or an ancestor."""
    probe = path
    while True:
        if probe in prefixes:
            return prefixes[probe]
        if probe == "/":
            return None
        probe = probe.rsplit("/", 1)[0] or "/"


class ExplicitResolver:
    """Registrations, most specific first: (IP, port), then IP, then cgroup subtree, then netns."""

    name = "explicit"

    def __init__(self, registry: Registry, cgroups: CgroupPaths) -> None:
        self.registry = registry
        self.cgroups = cgroups
        self._generation = -1
        self._tables: dict[str, dict[str, str]] = {}
        self._netns: dict[int, str] = {}

    def _rebuild(self) -> None:
        tables: dict[str, dict[str, str]] = {"ip+port": {}, "ip": {}, "cgroup": {}, "netns": {}}
        for reg in self.registry.entries():
            kind, key = reg.key()
            tables[kind][key] = reg.workload
        self._tables = tables
        self._generation = self.registry.generation
        self.refresh_netns()

    def refresh_netns(self) -> None:
        """Named netns may be created after registration: map names to inodes again."""
        mapping: dict[int, str] = {}
        for spec, workload in self._tables.get("netns", {}).items():
            ino = netns_inode(spec)
            if ino is not None:
                mapping[ino] = workload
        self._netns = mapping

    @staticmethod
    def _lookup(values: pa.Array, table: dict[str, str]) -> pa.Array:
        keys = pa.array(list(table), pa.string())
        idx = pc.index_in(values, value_set=keys)
        return pa.array(list(table.values()), pa.string()).take(idx)

    def resolve(self, keys: LocalKeys) -> pa.Array:
        if self._generation != self.registry.generation:
            self._rebuild()
        n = len(keys)
        answers: list[pa.Array] = []
        t = self._tables
        if t["ip+port"]:
            ip_port = pc.binary_join_element_wise(
                keys.local_ip, pc.cast(keys.local_port, pa.string()), "|"
            )
            answers.append(self._lookup(ip_port, t["ip+port"]))
        if t["ip"]:
            answers.append(self._lookup(keys.local_ip, t["ip"]))
        if t["cgroup"]:
            prefixes = t["cgroup"]

            def by_cgroup(cg_id: int) -> str | None:
                path = self.cgroups.path(cg_id) if cg_id else None
                return _cgroup_prefix_match(path, prefixes) if path else None

            answers.append(_per_unique(keys.cgroup_id, by_cgroup))
        if self._netns:
            answers.append(_per_unique(keys.netns_ino, self._netns.get))
        if not answers:
            return _nulls(n)
        return answers[0] if len(answers) == 1 else pc.coalesce(*answers)


# --------------------------------------------------------------------------- the chain


class IdentityChain:
    """Asks resolvers in order; the first answer per row wins. Counts rows left unnamed."""

    def __init__(
        self,
        resolvers: Sequence[Resolver],
        cgroups: CgroupPaths,
        registry: Registry | None = None,
    ) -> None:
        self.resolvers = list(resolvers)
        self.cgroups = cgroups
        self.registry = registry
        self.stats = {"identity_named": 0, "identity_unnamed": 0}
        self.by_resolver: dict[str, int] = {r.name: 0 for r in self.resolvers}

    @classmethod
    def build(
        cls,
        order: Sequence[str] = DEFAULT_RESOLVERS,
        *,
        registry: Registry | None = None,
        host_workload: str | None = None,
        cgroup_root: str = CGROUP2_ROOT,
        pod_logs: str = "/var/log/pods",
        kubelet_pods: str = "/var/lib/kubelet/pods",
        k8s_naming: str = "workload",
        k8s_api: KubeApi | None = None,
        docker_root: str = "/var/lib/docker",
        host_netns: int | None = None,
    ) -> IdentityChain:
        names = parse_resolvers(list(order))
        cgroups = CgroupPaths(cgroup_root)
        registry = registry if registry is not None else Registry()
        built: list[Resolver] = []
        for name in names:
            if name == "explicit":
                built.append(ExplicitResolver(registry, cgroups))
            elif name == "kubernetes":
                built.append(
                    KubernetesResolver(
                        cgroups, pod_logs, kubelet_pods=kubelet_pods, naming=k8s_naming, api=k8s_api
                    )
                )
            elif name == "container":
                built.append(ContainerResolver(cgroups, docker_root))
            elif name == "systemd":
                built.append(SystemdResolver(cgroups))
            elif name == "host":
                built.append(HostResolver(host_workload or registry.host, host_netns))
            elif name == "cgroup":
                built.append(CgroupResolver(cgroups))
        return cls(built, cgroups, registry)

    def describe(self) -> str:
        """What is in force, for the start-up line: resolvers in order, host identity, file."""
        parts = [f"resolvers {','.join(r.name for r in self.resolvers)}"]
        k8s = next((r for r in self.resolvers if isinstance(r, KubernetesResolver)), None)
        if k8s is not None:
            source = "the Kubernetes API" if k8s.api is not None else "pod names"
            parts.append(f"pods named by {k8s.naming} (owners from {source})")
        host = next((r for r in self.resolvers if isinstance(r, HostResolver)), None)
        if host is not None:
            parts.append(f"host sockets named {host.workload!r}" if host.workload else
                         "host sockets unnamed (no host identity)")  # fmt: skip
        path = self.registry.path if self.registry is not None else None
        entries = self.registry.file_entries() if self.registry is not None else 0
        parts.append(f"identity file {path} ({entries} registrations)" if path else
                     "no identity file")  # fmt: skip
        return "; ".join(parts)

    def missing_targets(self) -> list[str]:
        """A warning for each registration whose cgroup or named netns does not exist now: its
        sockets stay unnamed until it does (a typo looks exactly like this)."""
        if self.registry is None:
            return []
        where = f"identity file {self.registry.path}" if self.registry.path else "registration"
        out = []
        file_entries = self.registry.file_entries()
        for n, reg in enumerate(self.registry.entries(), start=1):
            if n > file_entries:
                where = "registration"
            if reg.cgroup is not None:
                full = os.path.join(self.cgroups.root, reg.cgroup.lstrip("/"))
                if not os.path.isdir(full):
                    out.append(f"{where}: entry {n} ({reg.workload!r}): cgroup {reg.cgroup} "
                               f"does not exist (under {self.cgroups.root})")  # fmt: skip
            elif reg.netns is not None and netns_inode(reg.netns) is None:
                out.append(f"{where}: entry {n} ({reg.workload!r}): netns {reg.netns!r} "
                           "does not exist")  # fmt: skip
        return out

    def observe(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Learn the paths of cgroups seen in `batch` now, before they can disappear."""
        if batch.num_rows:
            ids = np.unique(batch.column("cgroup_id").fill_null(0).to_numpy(zero_copy_only=False))
            self.cgroups.learn(int(i) for i in ids if i)

    def refresh(self) -> None:
        """Periodic upkeep: rescan cgroups, reload the identity file, re-map named netns."""
        self.cgroups.scan()
        if self.registry is not None:
            with contextlib.suppress(InputError, OSError):
                self.registry.reload()  # a broken edit keeps the last good set
        for r in self.resolvers:
            if isinstance(r, ExplicitResolver):
                r.refresh_netns()

    def pods(self, batch: pa.RecordBatch | pa.Table) -> pa.Array | None:
        """local_pod for each row (the Kubernetes pod its socket's cgroup belongs to), or None
        when no kubernetes resolver is in the chain."""
        k8s = next((r for r in self.resolvers if isinstance(r, KubernetesResolver)), None)
        return k8s.resolve_pods(LocalKeys.of(batch)) if k8s is not None else None

    def resolve(self, batch: pa.RecordBatch | pa.Table) -> pa.Array:
        """local_workload for each row of a RAW_SCHEMA batch (string, null = unknown)."""
        keys = LocalKeys.of(batch)
        out = _nulls(len(keys))
        for r in self.resolvers:
            if out.null_count == 0:
                break
            answer = r.resolve(keys)
            newly = pc.and_(pc.is_null(out), pc.is_valid(answer))
            self.by_resolver[r.name] += int(pc.sum(newly).as_py() or 0)
            out = pc.coalesce(out, answer)
        named = len(out) - out.null_count
        for r in self.resolvers:
            if isinstance(r, KubernetesResolver) and r.api is not None:
                self.stats["k8s_api_lookups"] = r.api.asked
                self.stats["k8s_api_errors"] = r.api.errors
        self.stats["identity_named"] += named
        self.stats["identity_unnamed"] += out.null_count
        return out

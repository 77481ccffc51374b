"""Listening sockets as heartbeats: a workload listening on an address owns that address.

A server that nobody calls for a while makes no connection rows, so no heartbeat names its
address, and a failed attempt to it (refused on another port, a handshake given up) has no
row at the other end either: it would stay unattributed. Its listening socket says who holds
the address all along. Every `look` (once a second) reads the listening TCP sockets of each
watched network namespace through sock_diag (INET_DIAG, which gives each socket's cookie and
cgroup id) and the namespace's addresses (rtnetlink), and each flush exports one row per
(listener, address) seen: outcome `listening`, [first seen, last seen] (docs/contract.md).

A listener is evidence for an address only while all of this holds at a look:
- the address is configured in the listener's namespace, and is neither loopback nor
  link-local (those mean something else on every host, and every service listens there): a
  listener left bound to an address that moved elsewhere claims nothing;
- its cgroup still exists and holds a process of its own (a socket kept open by a leftover
  process after its workload's cgroup went names nobody; nor does a listener bound in one
  cgroup and served from another, as socket activation or a server that moved after binding
  does: the cgroup left behind is not the server's), and the identity chain names a workload
  for it;
- a wildcard listener (0.0.0.0 or ::) stands for every such address of its namespace, but only
  where every listener of that namespace is named as one workload: in a namespace several
  workloads share, a wildcard says nothing about whose address is whose.
A run of sightings at consecutive looks is taken as continuous; a missed look (more than
three look periods apart) or a sighting that stops ends the run. Listeners are few, so this
is plain Python per socket, once a second: not the per-close hot path. What a look costs is
kept small all the same, since the agent pays it on every host even when nothing happens: one
identity lookup for all namespaces, and none while the same listeners were named less than
NAMES_TTL_NS ago (a registration change or a listener coming or going looks up again).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from flowtrail.agent.identity import IdentityChain
from flowtrail.agent.netlink import NETLINK_SOCK_DIAG, NetnsIndex, attrs, dump, socket_in
from flowtrail.agent.records import RAW_SCHEMA
from flowtrail.schema import LISTENING

NETLINK_ROUTE = 0
RTM_GETADDR = 22
IFA_ADDRESS, IFA_LOCAL = 1, 2
SOCK_DIAG_BY_FAMILY = 20
INET_DIAG_SKV6ONLY = 11
INET_DIAG_CGROUP_ID = 21
_LISTEN = 1 << 10  # TCP_LISTEN
_REQ = struct.Struct("=BBBBI48x")  # inet_diag_req_v2, no extensions asked for
_IFADDRMSG = struct.Struct("=BBBBI")
_MSG_SIZE = 72  # sizeof(struct inet_diag_msg)
_WILDCARD = ("0.0.0.0", "::")

Key = tuple[int, int, str, str]  # (netns, socket cookie, address, workload)
# The same listeners (socket, address, cgroup) keep the names of the last lookup this long;
# a registration change, or any listener coming or going, looks them up again at once.
NAMES_TTL_NS = 10 * 10**9


@dataclass
class Listener:
    """One listening socket as sock_diag showed it."""

    cookie: int
    family: int  # 4 or 6
    ip: str  # bound address; 0.0.0.0 / :: for a wildcard
    port: int
    cgroup_id: int
    v6only: bool


@dataclass
class Run:
    """Consecutive sightings of one listener standing for one address, named one workload."""

    first_ns: int
    last_ns: int
    netns: int
    listener: Listener
    ip: str
    workload: str = ""

    @property
    def key(self) -> Key:
        return (self.netns, self.listener.cookie, self.ip, self.workload)


def _text(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    ip = ipaddress.IPv6Address(raw[:16])
    return str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else str(ip)


def dump_listeners(sock: socket.socket) -> list[Listener]:
    """Every listening TCP socket (IPv4 and IPv6) in the netlink socket's namespace."""
    out = []
    for family in (socket.AF_INET, socket.AF_INET6):
        request = _REQ.pack(family, socket.IPPROTO_TCP, 0, 0, _LISTEN)
        for body in dump(sock, SOCK_DIAG_BY_FAMILY, request):
            fam = body[0]
            (sport,) = struct.unpack_from(">H", body, 4)
            lo, hi = struct.unpack_from("=II", body, 44)
            found = attrs(body, _MSG_SIZE)
            cg = found.get(INET_DIAG_CGROUP_ID)
            only = found.get(INET_DIAG_SKV6ONLY)
            ip = _text(fam, bytes(body[8:24]))
            out.append(
                Listener(
                    cookie=lo | hi << 32,
                    family=6 if fam == socket.AF_INET6 and ":" in ip else 4,
                    ip=ip,
                    port=sport,
                    cgroup_id=struct.unpack_from("=Q", cg)[0] if cg is not None else 0,
                    v6only=bool(only[0]) if only is not None and len(only) else False,
                )
            )
    return out


def dump_addresses(sock: socket.socket) -> set[str]:
    """The namespace's configured addresses that name it to others (no loopback, no
    link-local)."""
    out = set()
    for body in dump(sock, RTM_GETADDR, _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
        family = body[0]
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        found = attrs(body, _IFADDRMSG.size)
        raw = found.get(IFA_LOCAL) if family == socket.AF_INET else None
        raw = raw if raw is not None else found.get(IFA_ADDRESS)
        if raw is not None and shared_address(_text(family, bytes(raw))):
            out.add(_text(family, bytes(raw)))
    return out


def shared_address(ip: str) -> bool:
    """An address other hosts can reach this one at: not loopback, link-local or unspecified."""
    addr = ipaddress.ip_address(ip)
    return not (addr.is_loopback or addr.is_link_local or addr.is_unspecified)


def cgroup_inhabited(identity: IdentityChain, cg_id: int) -> bool:
    """Does the cgroup with this id exist now (its directory, with this inode) and hold a
    process of its own? A listener whose cgroup is empty was handed to a process elsewhere
    (socket activation, a server that moved on after binding): its cgroup names nobody."""
    if not cg_id:
        return False
    path = identity.cgroups.path(cg_id)
    if path is None:
        return False
    where = os.path.join(identity.cgroups.root, path.lstrip("/"))
    try:
        if os.stat(where).st_ino != cg_id:
            return False
        with open(os.path.join(where, "cgroup.procs"), "rb") as procs:
            return bool(procs.read(1))
    except OSError:
        return False


def covered(listener: Listener, addresses: set[str]) -> list[str]:
    """The addresses of its namespace a listener stands for (see the module's rules)."""
    if listener.ip == "0.0.0.0":
        return sorted(a for a in addresses if ":" not in a)
    if listener.ip == "::":
        v4 = () if listener.v6only else (a for a in addresses if ":" not in a)
        return sorted([*(a for a in addresses if ":" in a), *v4])
    return [listener.ip] if listener.ip in addresses else []


def named_runs(runs: list[Run], names: list[str | None]) -> list[Run]:
    """One namespace's runs with their workloads set: unnamed ones dropped, and wildcard ones
    too where the namespace's listeners name more than one workload."""
    named = [(r, n) for r, n in zip(runs, names, strict=True) if n is not None]
    if len({n for _, n in named}) > 1:
        named = [(r, n) for r, n in named if r.listener.ip not in _WILDCARD]
    for r, n in named:
        r.workload = n
    return [r for r, _ in named]


class ListenerWatch:
    """Runs of (listener, address) sightings, exported as `listening` RAW_SCHEMA rows."""

    def __init__(
        self,
        netns: NetnsIndex | None = None,
        only: frozenset[int] | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.netns = netns or NetnsIndex()
        self.only = only  # the agent's namespaces (--netns); None: every one it can enter
        self.clock_ns = clock_ns
        self._runs: dict[Key, Run] = {}
        self._ended: list[Run] = []
        self._last_look: int | None = None
        self._names: tuple[object, int, list[str | None]] | None = None  # (inputs, when, names)
        self.stats = {
            "listener_looks": 0,
            "listener_rows": 0,
            "listener_unnamed": 0,  # listening, but no workload named (or its cgroup gone)
            "listener_wildcards_shared": 0,  # a wildcard in a namespace of several workloads
            "listener_netns_errors": 0,
        }

    def _namespaces(self) -> Iterable[int]:
        if self.only is not None:
            return sorted(self.only)
        return sorted({self.netns.own, *self.netns.known()})

    def look(self, identity: IdentityChain, max_gap_ns: int) -> None:
        """Take one sighting of every watched namespace's listeners now."""
        now = self.clock_ns()
        seen: dict[Key, Run] = {}
        for run in self._named(
            identity, [self._sightings(ino, identity, now) for ino in self._namespaces()]
        ):
            seen[run.key] = run
        self.stats["listener_looks"] += 1
        recent = self._last_look is not None and now - self._last_look <= max_gap_ns
        for key, run in self._runs.items():
            if key not in seen or not recent:
                self._ended.append(run)
        runs: dict[Key, Run] = {}
        for key, run in seen.items():
            known = self._runs.get(key) if recent else None
            if known is not None:
                known.last_ns = now
                runs[key] = known
            else:
                runs[key] = run
        self._runs = runs
        self._last_look = now

    def _sightings(self, ino: int, identity: IdentityChain, now: int) -> list[Run]:
        try:
            with socket_in(self.netns, ino, NETLINK_SOCK_DIAG) as diag:
                if diag is None:
                    self.stats["listener_netns_errors"] += 1
                    return []
                listeners = dump_listeners(diag)
            if not listeners:
                return []
            with socket_in(self.netns, ino, NETLINK_ROUTE) as route:
                if route is None:
                    self.stats["listener_netns_errors"] += 1
                    return []
                addresses = dump_addresses(route)
        except OSError:
            self.stats["listener_netns_errors"] += 1
            return []
        # Addresses first: most listeners are on loopback and stand for nothing, and reading
        # a cgroup's process list (every second) is the dearer check.
        return [
            Run(now, now, ino, lst, ip)
            for lst, ips in ((lst, covered(lst, addresses)) for lst in listeners)
            if ips and cgroup_inhabited(identity, lst.cgroup_id)
            for ip in ips
        ]

    def _named(self, identity: IdentityChain, per_netns: list[list[Run]]) -> list[Run]:
        """Each namespace's runs named (named_runs): one identity lookup for all of them,
        since a lookup's fixed cost (~1 ms), not its rows, is what a look pays once a second."""
        everyone = [run for runs in per_netns for run in runs]
        if not everyone:
            return []
        generation = identity.registry.generation if identity.registry is not None else 0
        inputs = (
            generation,
            [(r.netns, r.listener.cookie, r.ip, r.listener.cgroup_id) for r in everyone],
        )
        now = everyone[0].last_ns
        cached = self._names
        if cached is not None and cached[0] == inputs and now - cached[1] < NAMES_TTL_NS:
            found = cached[2]
        else:
            found = identity.resolve(self._raw(everyone)).to_pylist()
            self._names = (inputs, now, found)
        names = iter(found)
        kept: list[Run] = []
        for runs in per_netns:
            mine = [next(names) for _ in runs]
            named = named_runs(runs, mine)
            self.stats["listener_unnamed"] += sum(1 for n in mine if n is None)
            wild = sum(
                1 for r, n in zip(runs, mine, strict=True) if n and r.listener.ip in _WILDCARD
            )
            self.stats["listener_wildcards_shared"] += wild - sum(
                1 for r in named if r.listener.ip in _WILDCARD
            )
            kept += named
        return kept

    def take(self) -> tuple[pa.Table, pa.Array]:
        """Rows for every run seen since the last take (ended ones for the last time), and
        their workloads."""
        runs = [*self._ended, *self._runs.values()]
        self._ended = []
        if not runs:
            return RAW_SCHEMA.empty_table(), pa.array([], pa.string())
        self.stats["listener_rows"] += len(runs)
        return self._raw(runs), pa.array([r.workload for r in runs], pa.string())

    @staticmethod
    def _raw(runs: list[Run]) -> pa.Table:
        n = len(runs)
        v6 = [":" in r.ip for r in runs]
        zeros = pa.array(np.zeros(n, np.int64))
        columns = {
            "sock_id": pa.array([r.listener.cookie for r in runs], pa.uint64()),
            "family": pa.array([6 if v else 4 for v in v6], pa.uint8()),
            "local_ip": pa.array([r.ip for r in runs], pa.string()),
            "local_port": pa.array([r.listener.port for r in runs], pa.int32()),
            "remote_ip": pa.array(["::" if v else "0.0.0.0" for v in v6], pa.string()),
            "remote_port": pa.array(np.zeros(n, np.int32)),
            "direction": pa.array(["inbound"] * n, pa.string()),
            "outcome": pa.array([LISTENING] * n, pa.string()),
            "start_ns": pa.array([r.first_ns for r in runs], pa.int64()),
            "end_ns": pa.array([r.last_ns for r in runs], pa.int64()),
            "established_ns": pa.nulls(n, pa.int64()),
            "bytes_sent": zeros,
            "bytes_received": zeros,
            "segs_sent": zeros,
            "segs_received": zeros,
            "retransmits": zeros,
            "srtt_us": zeros,
            "cgroup_id": pa.array([r.listener.cgroup_id for r in runs], pa.uint64()),
            "netns_ino": pa.array([r.netns for r in runs], pa.uint32()),
            "pid": pa.array(np.zeros(n, np.uint32)),
            "comm": pa.array([""] * n, pa.string()),
        }
        return pa.table(columns, schema=RAW_SCHEMA)

"""NAT as this host does it: the real destination of DNATed connections, and source NAT.

A connection to a Kubernetes ClusterIP or a local load balancer's VIP leaves the socket
believing it talks to the VIP; conntrack knows the backend. For each network namespace with
outbound rows in a batch we dump that namespace's conntrack entries that carry the DST_NAT
status (filtered in the kernel), plus the host namespace's (kube-proxy translates pod traffic
there), and join them to the rows on the original tuple: one dump per namespace per batch,
never one request per flow.

Why netlink and not the `conntrack` CLI: no process per batch, the kernel-side status filter,
and entering another namespace's table needs only a socket created there.

The other way round, a NAT gateway (a router's masquerade, a Docker host's uplink) gives
other hosts' connections its own address as their source. Rows of the gateway's own sockets
on such an address are marked `local_translating` (see `translating`), so the collector never
takes the gateway's heartbeat as naming the connections it translates.

Entries for closed connections linger (TIME_WAIT 120 s, CLOSE 10 s), which is why the agent
resolves each polled batch as soon as it arrives rather than at export time.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import struct
import subprocess
import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.agent.netlink import (
    NETLINK_NETFILTER,
    NetlinkError,
    NetnsIndex,
    attr,
    attrs,
    dump,
    socket_in,
)

IPCTNL_MSG_CT_GET = (1 << 8) | 1  # NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_STATUS_MASK = 1, 2, 3, 26
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
IPS_SRC_NAT, IPS_DST_NAT = 1 << 4, 1 << 5
IPPROTO_TCP = 6
# How stale a namespace's answer may be: a rule is read by running `nft` (a process), the
# SNAT entries by walking the kernel's conntrack table (milliseconds per namespace).
RULES_TTL_S = 10.0
SNAT_TTL_S = 2.0
# A source-translating statement in `nft list ruleset` (iptables-nft rules show up there too).
_SOURCE_NAT_RULE = re.compile(r"\b(masquerade|snat)\b")


def _ip(addr: memoryview) -> str:
    ip = ipaddress.ip_address(bytes(addr))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _tuple(nested: memoryview) -> tuple[str, int, str, int] | None:
    """(src ip, src port, dst ip, dst port) of a TCP conntrack tuple, else None."""
    top = attrs(nested)
    if CTA_TUPLE_IP not in top or CTA_TUPLE_PROTO not in top:
        return None
    ip, proto = attrs(top[CTA_TUPLE_IP]), attrs(top[CTA_TUPLE_PROTO])
    if CTA_PROTO_NUM not in proto or proto[CTA_PROTO_NUM][0] != IPPROTO_TCP:
        return None
    if CTA_IP_V4_SRC in ip:
        src, dst = ip[CTA_IP_V4_SRC], ip[CTA_IP_V4_DST]
    elif CTA_IP_V6_SRC in ip:
        src, dst = ip[CTA_IP_V6_SRC], ip[CTA_IP_V6_DST]
    else:
        return None
    (sport,) = struct.unpack(">H", proto[CTA_PROTO_SRC_PORT])
    (dport,) = struct.unpack(">H", proto[CTA_PROTO_DST_PORT])
    return _ip(src), sport, _ip(dst), dport


def _entries(
    sock: socket.socket, status_bit: int
) -> Iterator[tuple[tuple[str, int, str, int], tuple[str, int, str, int]]]:
    """(original, reply) tuples of the TCP entries with `status_bit` set."""
    head = struct.pack("=BBH", socket.AF_UNSPEC, 0, 0)
    status = struct.pack(">I", status_bit)
    request = head + attr(CTA_STATUS, status) + attr(CTA_STATUS_MASK, status)
    try:
        replies = list(dump(sock, IPCTNL_MSG_CT_GET, request))
    except NetlinkError:
        replies = list(dump(sock, IPCTNL_MSG_CT_GET, head, seq=2))  # kernel without the filter
    for body in replies:
        top = attrs(body, 4)  # after struct nfgenmsg
        st = top.get(CTA_STATUS)
        if st is None or not struct.unpack(">I", st)[0] & status_bit:
            continue
        if CTA_TUPLE_ORIG not in top or CTA_TUPLE_REPLY not in top:
            continue
        orig, reply = _tuple(top[CTA_TUPLE_ORIG]), _tuple(top[CTA_TUPLE_REPLY])
        if orig is not None and reply is not None:
            yield orig, reply


def dump_dnat(sock: socket.socket) -> dict[str, tuple[str, int]]:
    """`"src|sport|dst|dport"` (original direction) → the real (ip, port) it was sent to."""
    out: dict[str, tuple[str, int]] = {}
    for orig, reply in _entries(sock, IPS_DST_NAT):
        # The reply comes from the real backend: its source is where the packets really went.
        if (reply[0], reply[1]) != (orig[2], orig[3]):
            out[f"{orig[0]}|{orig[1]}|{orig[2]}|{orig[3]}"] = (reply[0], reply[1])
    return out


def dump_snat_sources(sock: socket.socket) -> set[str]:
    """The addresses this namespace gives other hosts' connections as their source."""
    out: set[str] = set()
    for orig, reply in _entries(sock, IPS_SRC_NAT):
        # Replies go back to the translated source: that is the address the far end saw.
        if reply[2] != orig[0]:
            out.add(reply[2])
    return out


class NatResolver:
    """Fills nat_remote_ip / nat_remote_port for outbound rows whose destination was DNATed."""

    def __init__(self, netns: NetnsIndex | None = None, *, host_table: bool = True) -> None:
        self.netns = netns or NetnsIndex()
        self.host_table = host_table
        self.stats = {
            "nat_resolved": 0,
            "nat_netns_unreachable": 0,
            "nat_errors": 0,
            "nat_translating_rows": 0,
            "nat_translating_unknown_rows": 0,
            "nat_rules_unreadable": 0,
        }
        self._rules: dict[int, tuple[float, bool]] = {}  # netns → (read at, translates)
        self._snat: dict[int, tuple[float, set[str]]] = {}  # netns → (dumped at, sources)

    def _table(self, ino: int, pid_hint: int) -> dict[str, tuple[str, int]]:
        try:
            with socket_in(self.netns, ino, NETLINK_NETFILTER, pid_hint) as sock:
                if sock is None:
                    self.stats["nat_netns_unreachable"] += 1
                    return {}
                return dump_dnat(sock)
        except OSError:
            self.stats["nat_errors"] += 1
            return {}

    def _snat_sources(self, ino: int, pid_hint: int) -> set[str] | None:
        """Translated source addresses in namespace `ino` (dumped at most every SNAT_TTL_S).

        Once the namespace cannot be entered, the last dump's answer; None if there was none.
        """
        now = time.monotonic()
        cached = self._snat.get(ino)
        if cached is not None and now - cached[0] < SNAT_TTL_S:
            return cached[1]
        found: set[str] = set()
        try:
            with socket_in(self.netns, ino, NETLINK_NETFILTER, pid_hint) as sock:
                if sock is None:
                    self.stats["nat_netns_unreachable"] += 1
                    return None if cached is None else cached[1]
                found = dump_snat_sources(sock)
        except OSError:
            self.stats["nat_errors"] += 1
        self._snat[ino] = (now, found)
        return found

    def _rules_translate(self, ino: int, pid_hint: int) -> bool | None:
        """Has namespace `ino` an nftables masquerade or snat rule (read at most every 10 s)?

        Once the namespace cannot be entered, the last answer read; None if there was none.
        """
        now = time.monotonic()
        cached = self._rules.get(ino)
        if cached is not None and now - cached[0] < RULES_TTL_S:
            return cached[1]
        path = self.netns.path(ino, pid_hint)
        if path is None:
            self.stats["nat_netns_unreachable"] += 1
            return None if cached is None else cached[1]
        argv = ["nft", "list", "ruleset"]
        if path:
            argv = ["nsenter", f"--net={path}", *argv]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=5)
            text = r.stdout.lower() if r.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            text = None
        if text is None:
            self.stats["nat_rules_unreadable"] += 1
        found = text is not None and _SOURCE_NAT_RULE.search(text) is not None
        self._rules[ino] = (now, found)
        return found

    def _forget_gone_namespaces(self) -> None:
        """Answers not read again for a minute go (namespaces come and go with containers)."""
        old = time.monotonic() - 60.0
        for cache in (self._rules, self._snat):
            for ino in [k for k, (at, _) in cache.items() if at < old]:
                del cache[ino]

    def translating(self, raw: pa.RecordBatch | pa.Table) -> pa.Array:
        """Per row: does this host source-translate other hosts' connections to its local_ip?

        Yes where the socket's namespace has a masquerade/snat rule (before any translated
        connection exists, so no row of the gateway's own is ever exported without it), or
        where its conntrack holds a source-translated connection to that address (rules this
        cannot read, such as iptables-legacy ones, once they have been used). Loopback never.

        A namespace gone before its rows are resolved (its last process exited, no bind mount
        left) keeps the last answer read while it could be entered. One never read at all
        cannot be told apart from a gateway: its rows are marked too (counted in
        nat_translating_unknown_rows). The mark only narrows what names the address (to the
        other end's row of the same connection), so a doubt costs coverage, never a wrong name.
        """
        n = raw.num_rows
        out = np.zeros(n, dtype=bool)
        if n == 0:
            return pa.array(out)
        netns = _arr(raw, "netns_ino").fill_null(0).to_numpy(zero_copy_only=False)
        pids = _arr(raw, "pid").fill_null(0).to_numpy(zero_copy_only=False)
        local = _arr(raw, "local_ip")
        loopback = pc.fill_null(
            pc.or_(pc.starts_with(local, "127."), pc.equal(local, "::1")), True
        ).to_numpy(zero_copy_only=False)
        self._forget_gone_namespaces()
        unknown = np.zeros(n, dtype=bool)
        for ino in np.unique(netns):
            rows = np.flatnonzero(netns == ino)
            rules = self._rules_translate(int(ino), int(pids[rows[0]]))
            if rules:
                out[rows] = True
                continue
            sources = None if rules is None else self._snat_sources(int(ino), int(pids[rows[0]]))
            if sources is None:
                unknown[rows] = True
            elif sources:
                hit = pc.is_in(local.take(pa.array(rows)), value_set=pa.array(list(sources)))
                out[rows] = pc.fill_null(hit, False).to_numpy(zero_copy_only=False)
        unknown &= ~loopback
        out = (out | unknown) & ~loopback
        self.stats["nat_translating_rows"] += int(np.count_nonzero(out))
        self.stats["nat_translating_unknown_rows"] += int(np.count_nonzero(unknown))
        return pa.array(out)

    def resolve(self, raw: pa.RecordBatch | pa.Table) -> tuple[pa.Array, pa.Array]:
        """(nat_remote_ip string, nat_remote_port int32) per row; null where no DNAT."""
        n = raw.num_rows
        none_ip, none_port = pa.nulls(n, pa.string()), pa.nulls(n, pa.int32())
        if n == 0:
            return none_ip, none_port
        direction = _arr(raw, "direction")
        outbound = pc.fill_null(pc.equal(direction, "outbound"), False)
        out_idx = np.flatnonzero(outbound.to_numpy(zero_copy_only=False))
        if len(out_idx) == 0:
            return none_ip, none_port
        take = pa.array(out_idx)
        netns = _arr(raw, "netns_ino").take(take).fill_null(0).to_numpy(zero_copy_only=False)
        pids = _arr(raw, "pid").take(take).fill_null(0).to_numpy(zero_copy_only=False)
        keys = pc.binary_join_element_wise(
            _arr(raw, "local_ip").take(take),
            pc.cast(_arr(raw, "local_port").take(take), pa.string()),
            _arr(raw, "remote_ip").take(take),
            pc.cast(_arr(raw, "remote_port").take(take), pa.string()),
            "|",
        )
        host: dict[str, tuple[str, int]] | None = None
        # Per row: index into `found_ips`/`found_ports` (-1 = not translated), filled per netns.
        where = np.full(n, -1, dtype=np.int64)
        found_ips: list[str] = []
        found_ports: list[int] = []
        for ino in np.unique(netns):
            rows = np.flatnonzero(netns == ino)
            table = self._table(int(ino), int(pids[rows[0]]))
            if self.host_table and int(ino) != self.netns.own:
                if host is None:
                    host = self._table(self.netns.own, 0)
                table = {**host, **table}  # the socket's own namespace wins
            if not table:
                continue
            found = pc.index_in(keys.take(pa.array(rows)), value_set=pa.array(list(table)))
            pos = found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
            hit = pos >= 0
            where[out_idx[rows[hit]]] = pos[hit] + len(found_ips)
            found_ips += [ip for ip, _ in table.values()]
            found_ports += [port for _, port in table.values()]
        resolved = int(np.count_nonzero(where >= 0))
        self.stats["nat_resolved"] += resolved
        if resolved == 0:
            return none_ip, none_port
        idx = pa.array(where, mask=where < 0)
        return (
            pa.array(found_ips, pa.string()).take(idx),
            pa.array(found_ports, pa.int32()).take(idx),
        )


def _arr(batch: pa.RecordBatch | pa.Table, name: str) -> pa.Array:
    col = batch.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col

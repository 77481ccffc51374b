"""DNAT resolution: the real destination of outbound connections this host translates.

A connection to a Kubernetes ClusterIP or a local load balancer's VIP leaves the socket
believing it talks to the VIP; conntrack knows the backend. For each network namespace with
outbound rows in a batch we dump that namespace's conntrack entries that carry the DST_NAT
status (filtered in the kernel), plus the host namespace's (kube-proxy translates pod traffic
there), and join them to the rows on the original tuple: one dump per namespace per batch,
never one request per flow.

Why netlink and not the `conntrack` CLI: no process per batch, the kernel-side status filter,
and entering another namespace's table needs only a socket created there.

Entries for closed connections linger (TIME_WAIT 120 s, CLOSE 10 s), which is why the agent
resolves each polled batch as soon as it arrives rather than at export time.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

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
IPS_DST_NAT = 1 << 5
IPPROTO_TCP = 6


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


def dump_dnat(sock: socket.socket) -> dict[str, tuple[str, int]]:
    """`"src|sport|dst|dport"` (original direction) → the real (ip, port) it was sent to."""
    head = struct.pack("=BBH", socket.AF_UNSPEC, 0, 0)
    status = struct.pack(">I", IPS_DST_NAT)
    request = head + attr(CTA_STATUS, status) + attr(CTA_STATUS_MASK, status)
    try:
        replies = list(dump(sock, IPCTNL_MSG_CT_GET, request))
    except NetlinkError:
        replies = list(dump(sock, IPCTNL_MSG_CT_GET, head, seq=2))  # kernel without the filter
    out: dict[str, tuple[str, int]] = {}
    for body in replies:
        top = attrs(body, 4)  # after struct nfgenmsg
        st = top.get(CTA_STATUS)
        if st is None or not struct.unpack(">I", st)[0] & IPS_DST_NAT:
            continue
        if CTA_TUPLE_ORIG not in top or CTA_TUPLE_REPLY not in top:
            continue
        orig, reply = _tuple(top[CTA_TUPLE_ORIG]), _tuple(top[CTA_TUPLE_REPLY])
        if orig is None or reply is None:
            continue
        # The reply comes from the real backend: its source is where the packets really went.
        if (reply[0], reply[1]) != (orig[2], orig[3]):
            out[f"{orig[0]}|{orig[1]}|{orig[2]}|{orig[3]}"] = (reply[0], reply[1])
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
        }

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

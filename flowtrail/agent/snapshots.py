"""Active snapshots: interim rows for connections open longer than one interval.

A connection that stays open for hours would otherwise produce no row (and no heartbeat for
its IP) until it closes. Every interval, each connection that Capture.live() reports as open
for longer than the interval gets an `active` row: the same sock_id (so the same flow_id as
its eventual closed row), end_ns = the snapshot time, and cumulative counters read from the
kernel's tcp_info through sock_diag (INET_DIAG) in the socket's own network namespace.

One sock_diag dump per namespace per interval, joined to the live rows on the 4-tuple. The
dump is parsed in Python, once per socket per interval: this is not the per-close hot path.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.agent.netlink import NETLINK_SOCK_DIAG, NetnsIndex, attrs, dump, socket_in
from flowtrail.agent.records import RAW_SCHEMA

SOCK_DIAG_BY_FAMILY = 20
INET_DIAG_INFO = 2
_REQ = struct.Struct("=BBBBI48x")  # inet_diag_req_v2 with an all-zero inet_diag_sockid
_MSG_HEAD = struct.Struct("=BBBB")
_SOCKID_PORTS = struct.Struct(">HH")
_MSG_SIZE = 72  # sizeof(struct inet_diag_msg)
# Only ESTABLISHED sockets: their counters hold payload bytes plus, for an active open, the
# SYN (bytes_acked counts sequence space). Closing sockets are about to give a closed row.
_STATES = 1 << 1

# struct tcp_info offsets (include/uapi/linux/tcp.h); checked against getsockopt(TCP_INFO)
# in tests/kernel/test_agent_snapshots.py.
_TI_RTT = 68  # tcpi_rtt: smoothed RTT in µs
_TI_TOTAL_RETRANS = 100
_TI_BYTES_ACKED = 120
_TI_BYTES_RECEIVED = 128
_TI_SEGS_OUT = 136
_TI_SEGS_IN = 140
_TI_MIN_LEN = 144

COUNTERS = ("bytes_sent", "bytes_received", "segs_sent", "segs_received", "retransmits", "srtt_us")


def _addr(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    ip = ipaddress.IPv6Address(raw)
    return str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else str(ip)


@dataclass
class TcpInfoRows:
    """Columns of one sock_diag dump: 4-tuple key and tcp_info counters per socket."""

    keys: list[str]
    counters: dict[str, list[int]]


def dump_tcp_info(sock: socket.socket) -> TcpInfoRows:
    """Every open TCP socket (IPv4 and IPv6) in the socket's namespace, with its counters."""
    out = TcpInfoRows([], {c: [] for c in COUNTERS})
    for family in (socket.AF_INET, socket.AF_INET6):
        request = _REQ.pack(family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), 0, _STATES)
        for body in dump(sock, SOCK_DIAG_BY_FAMILY, request):
            fam = body[0]
            sport, dport = _SOCKID_PORTS.unpack_from(body, 4)
            src, dst = _addr(fam, body[8:24]), _addr(fam, body[24:40])
            info = attrs(body, _MSG_SIZE).get(INET_DIAG_INFO)
            if info is None or len(info) < _TI_MIN_LEN:
                continue
            out.keys.append(f"{src}|{sport}|{dst}|{dport}")
            c = out.counters
            c["bytes_sent"].append(struct.unpack_from("=Q", info, _TI_BYTES_ACKED)[0])
            c["bytes_received"].append(struct.unpack_from("=Q", info, _TI_BYTES_RECEIVED)[0])
            c["segs_sent"].append(struct.unpack_from("=I", info, _TI_SEGS_OUT)[0])
            c["segs_received"].append(struct.unpack_from("=I", info, _TI_SEGS_IN)[0])
            c["retransmits"].append(struct.unpack_from("=I", info, _TI_TOTAL_RETRANS)[0])
            c["srtt_us"].append(struct.unpack_from("=I", info, _TI_RTT)[0])
    return out


def tuple_keys(raw: pa.RecordBatch | pa.Table) -> pa.Array:
    """'local_ip|local_port|remote_ip|remote_port' per row."""
    cols = [raw.column(n) for n in ("local_ip", "local_port", "remote_ip", "remote_port")]
    cols = [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in cols]
    return pc.binary_join_element_wise(
        cols[0], pc.cast(cols[1], pa.string()), cols[2], pc.cast(cols[3], pa.string()), "|"
    )


class Snapshotter:
    """Turns Capture.live() rows into `active` RAW_SCHEMA rows with fresh kernel counters."""

    def __init__(self, netns: NetnsIndex | None = None) -> None:
        self.netns = netns or NetnsIndex()
        self.stats = {
            "snapshots": 0,
            "snapshot_missed": 0,  # live per capture but gone (closed) by the time we looked
            "snapshot_netns_unreachable": 0,
            "snapshot_errors": 0,
        }

    def snapshot(self, live: pa.RecordBatch | pa.Table, now_ns: int, min_age_ns: int) -> pa.Table:
        """Active rows for live connections that started at least `min_age_ns` before now."""
        if live.num_rows == 0:
            return RAW_SCHEMA.empty_table()
        table = pa.Table.from_batches([live]) if isinstance(live, pa.RecordBatch) else live
        old = pc.less_equal(table.column("start_ns"), now_ns - min_age_ns)
        table = table.filter(pc.fill_null(old, False))
        if table.num_rows == 0:
            return RAW_SCHEMA.empty_table()
        keys = tuple_keys(table)
        netns = table.column("netns_ino").fill_null(0).to_numpy()
        pids = table.column("pid").fill_null(0).to_numpy()
        parts: list[pa.Table] = []
        for ino in np.unique(netns):
            rows = np.flatnonzero(netns == ino)
            try:
                with socket_in(self.netns, int(ino), NETLINK_SOCK_DIAG, int(pids[rows[0]])) as s:
                    if s is None:
                        self.stats["snapshot_netns_unreachable"] += len(rows)
                        continue
                    found = dump_tcp_info(s)
            except OSError:
                self.stats["snapshot_errors"] += len(rows)
                continue
            sub = table.take(pa.array(rows))
            pos = pc.index_in(
                keys.take(pa.array(rows)), value_set=pa.array(found.keys, pa.string())
            )
            hit = pc.is_valid(pos)
            self.stats["snapshot_missed"] += len(rows) - int(pc.sum(hit).as_py() or 0)
            sub, pos = sub.filter(hit), pos.filter(hit)
            for name in COUNTERS:
                values = pa.array(found.counters[name], pa.int64()).take(pos)
                if name == "bytes_sent":  # payload only: an active open's SYN is not a byte
                    syn = pc.cast(pc.equal(sub.column("direction"), "outbound"), pa.int64())
                    values = pc.max_element_wise(pc.subtract(values, syn), 0)
                sub = sub.set_column(
                    sub.schema.get_field_index(name), RAW_SCHEMA.field(name), values
                )
            parts.append(sub)
        if not parts:
            return RAW_SCHEMA.empty_table()
        out = pa.concat_tables(parts)
        out = out.set_column(
            out.schema.get_field_index("end_ns"),
            RAW_SCHEMA.field("end_ns"),
            pa.array(np.full(out.num_rows, now_ns, dtype=np.int64)),
        )
        self.stats["snapshots"] += out.num_rows
        return out.cast(RAW_SCHEMA)

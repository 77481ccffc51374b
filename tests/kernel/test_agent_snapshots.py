"""sock_diag snapshots and conntrack dumps against the real kernel, without the BPF capture.

Real loopback sockets in this process's namespace; the live row that Capture.live() would
give is written by hand here (capture itself is covered in test_capture.py and, joined with
this, in test_agent_e2e.py).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import pyarrow as pa
import pytest

from flowtrail.agent.netlink import NETLINK_SOCK_DIAG, NetnsIndex, netlink_socket, own_netns
from flowtrail.agent.records import RAW_SCHEMA
from flowtrail.agent.snapshots import Snapshotter, dump_tcp_info
from flowtrail.lab.loopback import exchange, tcp_pair
from flowtrail.lab.wait import until

pytestmark = pytest.mark.kernel


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ls, c, a = tcp_pair(socket.AF_INET, "127.0.0.1")
    ls.close()
    yield c, a
    c.close()
    a.close()


def unacked(s: socket.socket) -> int:
    """tcpi_unacked: segments sent and not yet acknowledged."""
    return int(
        struct.unpack_from("=I", s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232), 24)[0]
    )


def settle(c: socket.socket, a: socket.socket, up: int, down: int) -> None:
    """Exchange, then wait until each side's last segment is acknowledged (the counters
    compared below are final only then)."""
    exchange(c, a, up, down)
    outstanding = until(
        lambda: (unacked(c), unacked(a)), lambda u: u == (0, 0), timeout_s=30, every_s=0.005
    )
    assert outstanding == (0, 0), outstanding


def established_keys() -> list[str]:
    sock = netlink_socket(NETLINK_SOCK_DIAG)
    try:
        return dump_tcp_info(sock).keys
    finally:
        sock.close()


def test_tcp_info_offsets_match_getsockopt(pair: tuple[socket.socket, socket.socket]) -> None:
    c, a = pair
    settle(c, a, 70_001, 3_333)
    sock = netlink_socket(NETLINK_SOCK_DIAG)
    try:
        found = dump_tcp_info(sock)
    finally:
        sock.close()
    lip, lport = c.getsockname()
    rip, rport = c.getpeername()
    i = found.keys.index(f"{lip}|{lport}|{rip}|{rport}")
    info = c.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
    acked, received = struct.unpack_from("=QQ", info, 120)
    segs_out, segs_in = struct.unpack_from("=II", info, 136)
    assert found.counters["bytes_sent"][i] == acked == 70_002  # the SYN is in bytes_acked
    assert found.counters["bytes_received"][i] == received == 3_333
    assert (
        found.counters["segs_sent"][i] == segs_out and found.counters["segs_received"][i] == segs_in
    )
    assert found.counters["srtt_us"][i] == struct.unpack_from("=I", info, 68)[0]


def live_row(s: socket.socket, sock_id: int, direction: str, start_ns: int) -> dict[str, object]:
    lip, lport = s.getsockname()[:2]
    rip, rport = s.getpeername()[:2]
    row: dict[str, object] = {f.name: 0 for f in RAW_SCHEMA}
    row.update(
        sock_id=sock_id,
        family=4,
        local_ip=lip,
        local_port=lport,
        remote_ip=rip,
        remote_port=rport,
        direction=direction,
        outcome="established",
        start_ns=start_ns,
        end_ns=time.time_ns(),
        netns_ino=own_netns(),
        comm="t",
    )
    return row


def test_snapshot_rows_carry_payload_counters(pair: tuple[socket.socket, socket.socket]) -> None:
    c, a = pair
    settle(c, a, 5_000, 700)
    now = time.time_ns()
    live = pa.Table.from_pylist(
        [
            live_row(c, 1, "outbound", now - 5_000_000_000),
            live_row(a, 2, "inbound", now - 5_000_000_000),
            live_row(c, 3, "outbound", now - 100),  # too young for a snapshot
        ],
        schema=RAW_SCHEMA,
    )
    snap = Snapshotter(NetnsIndex())
    rows = {r["sock_id"]: r for r in snap.snapshot(live, now, 1_000_000_000).to_pylist()}
    assert set(rows) == {1, 2}
    assert (rows[1]["bytes_sent"], rows[1]["bytes_received"]) == (5_000, 700)  # SYN taken off
    assert (rows[2]["bytes_sent"], rows[2]["bytes_received"]) == (700, 5_000)
    assert rows[1]["end_ns"] == now and rows[1]["segs_sent"] > 0
    key = "{}|{}|{}|{}".format(*c.getsockname(), *c.getpeername())
    c.close()  # gone before the next snapshot: missed, counted, no row
    keys = until(established_keys, lambda k: key not in k, timeout_s=30, every_s=0.005)
    assert key not in keys
    again = snap.snapshot(live.slice(0, 1), time.time_ns(), 1_000_000_000)
    assert again.num_rows == 0 and snap.stats["snapshot_missed"] == 1
    assert snap.stats["snapshots"] == 2

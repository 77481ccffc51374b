"""The raw capture record as user space sees it, one row per TCP socket observation.

This is the interface between capture (the BPF program and its loader) and the rest of the
agent (identity, NAT resolution, snapshots, export). Times are already converted from kernel
monotonic time to ns since the Unix epoch by the capture module (done once, there).
"""

from __future__ import annotations

import pyarrow as pa

from flowtrail.schema import OUTCOMES as OUTCOMES  # enum flow_outcome (bpf/flow.h), in code order

RAW_SCHEMA = pa.schema(
    [
        pa.field("sock_id", pa.uint64()),  # unique per socket per boot: flow_id's basis
        pa.field("family", pa.uint8()),  # 4 or 6
        pa.field("local_ip", pa.string()),  # canonical text (IPv4-mapped IPv6 written as IPv4)
        pa.field("local_port", pa.int32()),
        pa.field("remote_ip", pa.string()),
        pa.field("remote_port", pa.int32()),
        pa.field("direction", pa.string()),  # "outbound" (active open) / "inbound" (passive)
        pa.field("outcome", pa.string()),  # one of OUTCOMES
        pa.field("start_ns", pa.int64()),  # epoch ns
        pa.field("end_ns", pa.int64()),  # epoch ns
        pa.field("established_ns", pa.int64()),  # epoch ns of ESTABLISHED; null if never
        pa.field("bytes_sent", pa.int64()),  # tcp bytes_acked
        pa.field("bytes_received", pa.int64()),
        pa.field("segs_sent", pa.int64()),
        pa.field("segs_received", pa.int64()),
        pa.field("retransmits", pa.int64()),
        pa.field("srtt_us", pa.int64()),
        pa.field("cgroup_id", pa.uint64()),  # cgroup v2 id: the accepting task's, else the socket's
        pa.field("netns_ino", pa.uint32()),  # the socket's network namespace inode number
        pa.field("pid", pa.uint32()),  # task that opened/accepted it, where known (0 = unknown)
        pa.field("comm", pa.string()),
    ]
)

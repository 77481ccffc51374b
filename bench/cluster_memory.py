"""Per-node memory of cluster mode's ownership state: `python bench/cluster_memory.py`.

Not a test. Starts a 3-server NATS lab (R1 streams: a node's memory does not depend on NATS)
and NODES real node processes (`python -m flowtrail.cluster`, one region), warms them up
with a few thousand flows of other addresses (imports, compiled kernels), then publishes
ADDRESSES synthetic flows whose local addresses are all distinct, so every node
learns one heartbeat range for each of ADDRESSES addresses (broadcast evidence: every node
learns the whole region). Every flow's remote address is one of those addresses, so
flows are decided and written as they would be live. Reports, per node: the engine's own
buffers read from the node's /metrics (ownership ranges, the peer-row index, the waiting
pool), the process's resident memory after the warm-up, after, and at its peak, and its
CPU time per row of the region (every node pays for every row: learning is broadcast).
Then one more node starts and the time until its /readyz answers 200 (it has rebuilt the
whole state from the evidence stream) is reported.

With `--layout sharded` the same traffic goes to NODES shards instead (regions-table
entries splitting the addresses by prefix, one node each): evidence partitioned by address
rather than broadcast. Each agent row goes to the shard of its local address; a row whose
remote address is in another shard is forwarded there. The report then shows what each
node holds and spends when it learns only its share.

    python bench/cluster_memory.py --addresses 1000000 --nodes 2
    python bench/cluster_memory.py --addresses 1000000 --nodes 2 --layout sharded
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.cluster.bus import SECOND, Bus, BusConfig
from flowtrail.cluster.natslab import NatsLab
from flowtrail.engine.ipkeys import IpKeys
from flowtrail.engine.regions import RegionMap
from flowtrail.lab.wait import stop_all
from flowtrail.tables import write_table

T0 = 1_767_225_600 * SECOND  # 2026-01-01
REGION = "r"


def synthetic_flows(addresses: int, first_octet: int = 10) -> pa.Table:
    """One flow per address i (10.0.0.0 + i), towards another of the addresses."""
    i = np.arange(addresses, dtype=np.int64)
    base = first_octet << 24

    def ips(values: np.ndarray) -> pa.Array:
        v = values.astype(np.int64) + base
        parts = [pc.cast(pa.array((v >> s) & 255), pa.string()) for s in (24, 16, 8, 0)]
        return pc.binary_join_element_wise(*parts, ".")

    start = T0 + i * 1_000  # 1M flows within 1 ms of each other: the worst case for state
    return pa.table(
        {
            "flow_id": pc.binary_join_element_wise(
                str(first_octet), pc.cast(pa.array(i), pa.string()), "-"
            ),
            "exporter": pc.binary_join_element_wise(
                "h", pc.cast(pa.array(i % 5000), pa.string()), ""
            ),
            "local_ip": ips(i),
            "local_port": pa.array(np.full(addresses, 443, np.int32)),
            "remote_ip": ips((i * 7919 + 13) % addresses),
            "remote_port": pa.array((40000 + i % 20000).astype(np.int32)),
            "direction": pa.array(np.where(i % 2 == 0, "outbound", "inbound")),
            "start_ns": pa.array(start),
            "end_ns": pa.array(start + 2 * SECOND),
            "state": pa.array(["closed"] * addresses),
            "bytes_sent": pa.array(i % 9000 + 100),
            "bytes_received": pa.array(i % 7000 + 100),
            "local_workload": pc.binary_join_element_wise(
                "svc-", pc.cast(pa.array(i % 20_000), pa.string()), ""
            ),
            "received_ns": pa.array(start + 3 * SECOND),
        }
    )


LEARNED = ("rows_submitted_total", "rows_evidence_total")


def _start_node(
    lab: NatsLab, tmp: Path, name: str, region: str = REGION
) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "flowtrail.cluster", "--nats", lab.urls[0]]
    args += ["--region", region, "--name", name, "--replicas", "1"]
    args += ["--regions", str(tmp / "regions.parquet")]
    args += ["--sink", "parquet", "--out", str(tmp / f"out-{name}"), "--trust-received"]
    args += ["--no-events", "--listen", "127.0.0.1:0"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def _listen_port(proc: subprocess.Popen[bytes]) -> int:
    assert proc.stdout is not None
    return int(json.loads(proc.stdout.readline())["listen"])


def _rss_mib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            out[line.split(":")[0]] = int(line.split()[1]) // 1024
    return out


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found = re.findall(r"^flowtrail_node_(\w+) ([0-9.e+]+)$", text, re.M)
    return {k: float(v) for k, v in found}


async def _settle(
    bus: Bus, ports: list[int], regions: list[str], flows: pa.Table, tag: str, total: int
) -> None:
    """Clock marks past every wait until the nodes wrote `total` rows and hold nothing."""
    mark = int(pc.max(flows.column("received_ns")).as_py()) + 200 * SECOND
    k = 0
    while True:
        for region in regions:
            await bus.publish_clock(region, mark + k * SECOND, f"{tag}{k}")
        k += 1
        m = [_metrics(port) for port in ports]
        written = sum(x.get("rows_written_total", 0) for x in m)
        idle = all(
            x.get(g, 1) == 0
            for x in m
            for g in ("held_batches", "waiting_flows", "evidence_pending")
        )
        if written >= total and idle:
            return
        await asyncio.sleep(0.5)


def _layout(addresses: int, nodes: int, sharded: bool) -> tuple[pa.Table, list[str], list[str]]:
    """(regions table, region names, each node's region) for the layout."""
    if not sharded:
        return pa.table({"cidr": ["0.0.0.0/0"], "region": [REGION]}), [REGION], [REGION] * nodes
    bits = (nodes - 1).bit_length()
    span = max((addresses - 1).bit_length(), bits)  # the addresses fill 10.0.0.0/(32 - span)
    if 1 << bits != nodes or span > 24:
        raise SystemExit("--layout sharded: --nodes must be a power of two, --addresses <= 2^24")
    # Cut that block into `nodes` prefixes of equal size (the last one is partly empty).
    size = 1 << (span - bits)
    names = [f"s{k}" for k in range(nodes)]
    cidrs = [
        f"10.{(k * size) >> 16}.{((k * size) >> 8) & 255}.{(k * size) & 255}/{32 - span + bits}"
        for k in range(nodes)
    ]
    return pa.table({"cidr": cidrs, "region": names}), names, names


async def _run(
    lab: NatsLab, tmp: Path, flows: pa.Table, nodes: int, batch: int, sharded: bool
) -> dict[str, object]:
    table, names, homes = _layout(flows.num_rows, nodes, sharded)
    write_table(table, tmp / "regions.parquet")
    bus = Bus(BusConfig(servers=lab.urls, replicas=1))
    await bus.connect()
    await bus.ensure_streams(names)
    procs = [_start_node(lab, tmp, f"n{i}", homes[i]) for i in range(nodes)]
    ports = [_listen_port(proc) for proc in procs]
    warm = synthetic_flows(5_000, first_octet=11)
    await bus.publish_batch(names[0], warm, "warm-up")
    await _settle(bus, ports, names, warm, "w", warm.num_rows)
    before = [_rss_mib(p.pid)["VmRSS"] for p in procs]
    cpu_before = [_cpu_s(p.pid) for p in procs]
    n = flows.num_rows
    # Each agent row goes to the shard of its local address (its agent's region).
    rmap, ipkeys = RegionMap(table), IpKeys()
    home = rmap.lookup(ipkeys.keys(flows.column("local_ip")), ipkeys)
    began = time.monotonic()
    for k, start in enumerate(range(0, n, batch)):
        part, where = flows.slice(start, batch), home[start : start + batch]
        for rid, name in enumerate(rmap.names):
            mine = part.filter(pa.array(where == rid))
            if mine.num_rows:
                await bus.publish_batch(name, mine, f"b{k}-{name}")
        if k % 10 == 0:
            print(f"published {min(start + batch, n):,}/{n:,}", file=sys.stderr)
    await _settle(bus, ports, names, flows, "m", n + warm.num_rows)
    seconds = time.monotonic() - began
    time.sleep(1.0)  # let the allocator settle before reading resident memory
    m = [_metrics(port) for port in ports]
    rss = [_rss_mib(p.pid) for p in procs]
    cpu = [_cpu_s(p.pid) - c for p, c in zip(procs, cpu_before, strict=True)]
    # A node (re)starting now rebuilds from the evidence stream: time until /readyz says so.
    joined = time.monotonic()
    late = _start_node(lab, tmp, "late", homes[0])
    procs.append(late)
    late_port = _listen_port(late)
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{late_port}/readyz", timeout=10):
                break
        except urllib.error.HTTPError:
            time.sleep(0.1)
    rebuild = {
        "evidence_rows": int(sum(v for k, v in _metrics(late_port).items() if k in LEARNED)),
        "seconds_until_ready": round(time.monotonic() - joined, 1),
        "rss_mib": _rss_mib(late.pid)["VmRSS"],
    }
    stop_all(procs, grace_s=30)
    await bus.close()
    mib = 1024 * 1024
    return {
        "addresses": n,
        "nodes": nodes,
        "layout": "sharded" if sharded else "broadcast",
        "seconds_until_all_learned_and_stored": round(seconds, 1),
        "node_started_afterwards": rebuild,
        "per_node": [
            {
                "ownership_ranges": int(x["ownership_ranges"]),
                "ownership_mib": round(x["ownership_bytes"] / mib, 1),
                "ownership_bytes_per_range": round(
                    x["ownership_bytes"] / max(x["ownership_ranges"], 1), 1
                ),
                "peer_index_mib": round(x["peer_bytes"] / mib, 1),
                "waiting_pool_mib": round(x["waiting_bytes"] / mib, 1),
                "rss_after_warm_up_mib": b,
                "rss_after_mib": r["VmRSS"],
                "rss_growth_mib": r["VmRSS"] - b,
                "rss_peak_mib": r["VmHWM"],
                "region": home,
                "rows_learned": int(sum(x[k] for k in LEARNED)),
                "rows_forwarded": int(x["rows_forwarded_total"]),
                "rows_not_learned": int(x["rows_not_learned_total"]),
                "rows_written": int(x["rows_written_total"]),
                "batches_redelivered": int(x["batches_redelivered_total"]),
                "cpu_s": round(c, 2),
                "cpu_us_per_row_published": round(c / n * 1e6, 2),
            }
            for x, r, b, c, home in zip(m, rss, before, cpu, homes, strict=True)
        ],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--addresses", type=int, default=1_000_000, help="distinct addresses")
    p.add_argument("--nodes", type=int, default=2, help="node processes (each learns all)")
    p.add_argument("--batch", type=int, default=20_000, help="rows per published batch")
    p.add_argument(
        "--layout",
        choices=["broadcast", "sharded"],
        default="broadcast",
        help="broadcast: one region, every node learns all; sharded: one shard per node",
    )
    args = p.parse_args()
    flows = synthetic_flows(args.addresses)
    with tempfile.TemporaryDirectory() as d, NatsLab(Path(d) / "nats") as lab:
        report = asyncio.run(
            _run(lab, Path(d), flows, args.nodes, args.batch, args.layout == "sharded")
        )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""Throughput of cluster mode: `python bench/cluster_throughput.py --rows 500000 --nodes 1 2`.

With `--partitions N` the nodes split the region by connection (docs/cluster.md) and the
report adds what that design is about: evidence bytes per flow (the stream every node
reads), rows-stream bytes per flow, and each node's CPU spent learning ownership runs,
per row of the region.

Not a test (pytest does not collect it). For each node count: starts a 3-server NATS lab and
that many node processes (`python -m flowtrail.cluster`, one region, Parquet sink, no
events), publishes the `churny` simulator's rows in 10,000-row batches as fast as JetStream
takes them, then clock marks until every row is stored. Prints one JSON line per node count:
seconds to publish, seconds until all stored, rows/s, rows per node, each node's CPU seconds
and peak RSS, and the ratio of rows/s to the first node count's. Everything (NATS servers,
publisher, nodes) shares the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.cluster.bus import SECOND, Bus, BusConfig
from flowtrail.cluster.natslab import NatsLab
from flowtrail.lab.wait import stop_all
from flowtrail.sim.simulation import simulate
from flowtrail.tables import write_table

BATCH = 10_000


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) // 1024
    return -1


async def _run(
    lab: NatsLab, tmp: Path, flows: pa.Table, nodes: int, partitions: int
) -> dict[str, object]:
    bus = Bus(BusConfig(servers=lab.urls))
    await bus.connect()
    await bus.ensure_streams(["r"])
    procs = []
    for i in range(nodes):
        args = [sys.executable, "-m", "flowtrail.cluster"]
        for url in lab.urls:
            args += ["--nats", url]
        args += ["--region", "r", "--name", f"n{i}", "--regions", str(tmp / "regions.parquet")]
        args += ["--sink", "parquet", "--out", str(tmp / "out"), "--trust-received"]
        args += ["--no-events", "--partitions", str(partitions)]
        args += ["--status-file", str(tmp / f"n{i}.json")]
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL))
    for proc in procs:
        assert proc.stdout is not None and b"ready" in proc.stdout.readline()
    while partitions:  # every node sees the others before rows come
        try:
            status = [json.loads((tmp / f"n{i}.json").read_text()) for i in range(nodes)]
        except (OSError, ValueError):
            status = []
        if status and all(s["members"] == nodes for s in status):
            break
        await asyncio.sleep(0.1)
    cpu_before = [_cpu_s(p.pid) for p in procs]
    n = flows.num_rows
    began = time.monotonic()
    for k, start in enumerate(range(0, n, BATCH)):
        await bus.publish_batch("r", flows.slice(start, BATCH), f"b{k}")
    published = time.monotonic() - began
    mark = int(pc.max(flows.column("received_ns")).as_py()) + 200 * SECOND
    k = 0
    while True:
        await bus.publish_clock("r", mark + k * SECOND, f"m{k}")
        k += 1
        status = [json.loads((tmp / f"n{i}.json").read_text()) for i in range(nodes)]
        if sum(s["rows_written"] for s in status) >= n:
            break
        await asyncio.sleep(0.1)
    stored = time.monotonic() - began
    rss = [_peak_rss_mib(p.pid) for p in procs]
    cpu = [round(_cpu_s(p.pid) - c, 2) for p, c in zip(procs, cpu_before, strict=True)]
    stop_all(procs, grace_s=20)
    evidence = await bus.evidence_state("r")
    rows_bytes = 0
    if partitions:
        info = await bus.js.stream_info(bus.rows_stream("r"))
        rows_bytes = int(info.state.bytes)
    await bus.close()
    learn_ns = [s.get("learn_runs_cpu_ns", 0) for s in status]
    return {
        "rows": n,
        "nodes": nodes,
        "publish_s": round(published, 2),
        "all_stored_s": round(stored, 2),
        "rows_per_s": round(n / stored),
        "rows_per_node": [s["rows_written"] for s in status],
        "cpu_s_per_node": cpu,
        "peak_rss_mib": rss,
        "partitions": partitions,
        "evidence_bytes_per_flow": round(int(evidence.bytes) / n, 1),
        "rows_stream_bytes_per_flow": round(rows_bytes / n, 1),
        "learn_runs_us_per_region_row": [round(x / 1000 / n, 4) for x in learn_ns],
        "cpu_us_per_decided_row": round(sum(cpu) * 1e6 / n, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=500_000, help="simulated flows to publish")
    p.add_argument("--nodes", type=int, nargs="+", default=[1, 2], help="node counts to run")
    p.add_argument("--partitions", type=int, default=0, help="split by connection (0: not)")
    args = p.parse_args()
    sim = simulate("churny", 7, flows=args.rows)
    flows = sim.flows.sort_by("received_ns")
    region = flows.column_names.index("region")
    flows = flows.set_column(region, "region", pa.array(["r"] * flows.num_rows))
    regions = pa.table({"cidr": ["0.0.0.0/0", "::/0"], "region": ["r", "r"]})
    first: float | None = None
    for nodes in args.nodes:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            write_table(regions, tmp / "regions.parquet")
            with NatsLab(tmp / "nats") as lab:
                report = asyncio.run(_run(lab, tmp, flows, nodes, args.partitions))
        rate = float(report["rows_per_s"])  # type: ignore[arg-type]
        first = first or rate
        report["ratio_to_first"] = round(rate / first, 3)
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()

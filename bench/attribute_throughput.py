"""Benchmark: `flowtrail attribute` end to end (read, attribute, write) vs a plain read+write.

Usage:  python bench/attribute_throughput.py [--flows 2000000] [--scenario churny] [--dir DIR]
        python bench/attribute_throughput.py --addresses 1000000   (ownership memory only)

Both runs happen in this one process, on the same Parquet file, one after the other, so the
ratio compares like with like on whatever this machine is doing. CPU seconds are the
process's user+system time (all threads), wall seconds are elapsed time.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from flowtrail.engine.attributor import Settings
from flowtrail.engine.ownership import OwnershipRanges
from flowtrail.engine.replay import replay
from flowtrail.schema import EVENTS, FLOWS, REGIONS
from flowtrail.sim.simulation import simulate, write_sim
from flowtrail.tables import read_table, write_table


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(label: str, fn):  # type: ignore[no-untyped-def]
    c0, w0 = cpu(), time.perf_counter()
    out = fn()
    c, w = cpu() - c0, time.perf_counter() - w0
    print(f"{label:<34} cpu {c:7.2f} s   wall {w:7.2f} s", flush=True)
    return out, c, w


def throughput(args: argparse.Namespace) -> dict[str, float]:
    work = Path(args.dir or tempfile.mkdtemp(prefix="flowtrail-bench-"))
    flows_path = work / "flows.parquet"
    if not flows_path.exists():
        print(f"simulating {args.flows:,} flows ({args.scenario}) into {work}", flush=True)
        write_sim(simulate(args.scenario, args.seed, flows=args.flows), work)
    rows = pq.read_metadata(flows_path).num_rows
    print(f"input: {rows:,} flow rows, {flows_path.stat().st_size / 1e6:.0f} MB Parquet")

    def plain() -> None:
        write_table(pq.read_table(flows_path), work / "plain-copy.parquet")

    def attribute() -> dict[str, object]:
        flows = read_table(flows_path, FLOWS)
        events = read_table(work / "events.parquet", EVENTS)
        regions = read_table(work / "regions.parquet", REGIONS)
        result = replay(flows, events, regions, settings=Settings())
        write_table(result.table, work / "attributed.parquet")
        return result.summary

    _, plain_cpu, plain_wall = measure("plain read+write", plain)
    summary, att_cpu, att_wall = measure("flowtrail attribute (end to end)", attribute)
    report = {
        "rows": rows,
        "plain_cpu_s": round(plain_cpu, 2),
        "plain_wall_s": round(plain_wall, 2),
        "attribute_cpu_s": round(att_cpu, 2),
        "attribute_wall_s": round(att_wall, 2),
        "flows_per_cpu_second": round(rows / att_cpu),
        "ratio_cpu_vs_plain": round(att_cpu / plain_cpu, 2),
        "ratio_wall_vs_plain": round(att_wall / plain_wall, 2),
        "engine_seconds": summary["seconds"],  # type: ignore[index]
        "unattributed": summary["unattributed"],  # type: ignore[index]
    }
    print(json.dumps(report, indent=2))
    return report


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited on exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def ownership_memory(addresses: int, segments_per_address: int) -> None:
    """Peak memory of ownership ranges tracking `addresses` addresses (run in a child)."""
    rng = np.random.default_rng(0)
    base = peak_rss_mb()
    r = OwnershipRanges()
    batch = 200_000
    total = addresses * segments_per_address
    t0 = time.perf_counter()
    for i in range(0, total, batch):
        n = min(batch, total - i)
        idx = np.arange(i, i + n)
        key = (idx % addresses).astype(np.uint64) + np.uint64(167772160)  # 10.0.0.0 upward
        start = (idx // addresses).astype(np.int64) * 10_000_000_000 + rng.integers(0, 10**9, n)
        r.add(key, (idx % 97).astype(np.int32), start, start + 5_000_000_000)
    peak = peak_rss_mb()
    print(
        json.dumps(
            {
                "addresses": r.addresses,
                "segments": len(r),
                "ownership_bytes": r.nbytes,
                "bytes_per_address": round(r.nbytes / r.addresses, 1),
                "process_peak_rss_mb": round(peak, 1),
                "peak_growth_mb": round(peak - base, 1),
                "build_seconds": round(time.perf_counter() - t0, 2),
            },
            indent=2,
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--flows", type=int, default=2_000_000)
    p.add_argument("--scenario", default="churny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", help="work directory (kept; reused if it holds flows.parquet)")
    p.add_argument("--addresses", type=int, help="only measure ownership memory at this size")
    p.add_argument("--segments", type=int, default=3, help="ranges per address (with --addresses)")
    args = p.parse_args()
    if args.addresses:
        ownership_memory(args.addresses, args.segments)
        return
    throughput(args)
    # Memory at 1M addresses in a fresh process, so the throughput run's peak does not count.
    subprocess.run(
        [sys.executable, __file__, "--addresses", "1000000", "--segments", str(args.segments)],
        check=True,
    )


if __name__ == "__main__":
    main()

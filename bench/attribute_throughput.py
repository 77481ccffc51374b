"""Benchmark: `flowtrail attribute` (the CLI, end to end) vs a plain polars read + write.

Usage:  python bench/attribute_throughput.py [--flows 2000000] [--scenario churny] [--dir DIR]
                                             [--rounds 1]
        python bench/attribute_throughput.py --addresses 1000000   (ownership memory only)

Each round runs, one after the other on the same flows file, two child processes:
1. `polars.read_parquet` + `DataFrame.write_parquet` (polars' defaults), and
2. `flowtrail attribute --flows ... --events ... --regions ... --out ...` as a user runs it
   (start-up, imports, strict read, attribution, the atomic write).
For each: wall seconds, CPU seconds (user + system of the child, all threads) and peak
resident memory (the child's ru_maxrss), from os.wait4. The ratios compare like with like on
whatever the machine is doing at that moment.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from flowtrail.engine.ownership import OwnershipRanges
from flowtrail.sim.simulation import simulate, write_sim

PLAIN = "import polars as pl, sys; pl.read_parquet(sys.argv[1]).write_parquet(sys.argv[2])"


def run_child(argv: list[str]) -> dict[str, float]:
    """Run a child; its wall and CPU seconds and peak RSS."""
    w0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - w0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{argv[:4]} failed with {proc.returncode}")
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
        "user_s": round(ru.ru_utime, 2),
        "sys_s": round(ru.ru_stime, 2),
        "peak_rss_mb": round(ru.ru_maxrss / 1024, 1),
    }


def throughput(args: argparse.Namespace) -> list[dict[str, object]]:
    work = Path(args.dir or tempfile.mkdtemp(prefix="flowtrail-bench-"))
    flows_path = work / "flows.parquet"
    if not flows_path.exists():
        print(f"simulating {args.flows:,} flows ({args.scenario}) into {work}", flush=True)
        write_sim(simulate(args.scenario, args.seed, flows=args.flows), work)
    rows = pq.read_metadata(flows_path).num_rows
    print(f"input: {rows:,} flow rows, {flows_path.stat().st_size / 1e6:.0f} MB Parquet")
    plain_cmd = [sys.executable, "-c", PLAIN, str(flows_path), str(work / "plain-copy.parquet")]
    attribute_cmd = [
        sys.executable, "-m", "flowtrail", "attribute", "--quiet",
        "--flows", str(flows_path), "--events", str(work / "events.parquet"),
        "--regions", str(work / "regions.parquet"), "--out", str(work / "attributed.parquet"),
    ]  # fmt: skip
    env_note = os.getloadavg()[0]
    reports = []
    for r in range(args.rounds):
        plain = run_child(plain_cmd)
        attribute = run_child(attribute_cmd)
        report: dict[str, object] = {
            "round": r + 1,
            "rows": rows,
            "load_average_1m_before": round(env_note, 2),
            "plain_polars": plain,
            "flowtrail_attribute": attribute,
            "ratio_wall": round(attribute["wall_s"] / plain["wall_s"], 2),
            "ratio_cpu": round(attribute["cpu_s"] / plain["cpu_s"], 2),
            "attribute_flows_per_cpu_second": round(rows / attribute["cpu_s"]),
        }
        print(json.dumps(report, indent=2), flush=True)
        reports.append(report)
        env_note = os.getloadavg()[0]
    return reports


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
    p.add_argument("--rounds", type=int, default=1, help="plain/attribute pairs to run")
    p.add_argument("--no-memory", action="store_true", help="skip the ownership memory run")
    args = p.parse_args()
    if args.addresses:
        ownership_memory(args.addresses, args.segments)
        return
    throughput(args)
    if args.no_memory:
        return
    # Memory at 1M addresses in a fresh process, so the throughput run's peak does not count.
    subprocess.run(
        [sys.executable, __file__, "--addresses", "1000000", "--segments", str(args.segments)],
        check=True,
    )


if __name__ == "__main__":
    main()

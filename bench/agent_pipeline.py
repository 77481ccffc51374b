"""The whole agent under load: user CPU per flow and losses, BPF capture to Parquet files.

    sudo .venv/bin/python bench/agent_pipeline.py [--seconds 10] [--rate 0] [--threads 2]

Runs the real Agent (Capture, identity chain, conntrack NAT, snapshots, Parquet export every
second) in this process while bench/loadgen.c (compiled here if needed) runs a loopback
connect/send/close loop in another process. Reports the agent process's user and system CPU
per captured flow (each loopback connection is two flows: both ends), the rows exported and
every drop counter. Then times the pipeline alone (no kernel) on synthetic RAW_SCHEMA
batches of several sizes, which is the cost per flow of identity + NAT + assembly + export.
Only loopback traffic.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from flowtrail.agent.capture import Capture
from flowtrail.agent.conntrack import NatResolver
from flowtrail.agent.exporter import Delivery, NullExporter, ParquetDir
from flowtrail.agent.identity import IdentityChain
from flowtrail.agent.netlink import NetnsIndex, own_netns
from flowtrail.agent.records import RAW_SCHEMA
from flowtrail.agent.runner import Agent, AgentConfig
from flowtrail.agent.snapshots import Snapshotter

HERE = Path(__file__).parent


def loadgen() -> Path:
    out = Path(tempfile.gettempdir()) / "flowtrail-loadgen"
    src = HERE / "loadgen.c"
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["cc", "-O2", "-pthread", "-o", str(out), str(src)], check=True)
    return out


def cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def under_load(seconds: float, threads: int, rate: int) -> dict[str, object]:
    out_dir = Path(tempfile.mkdtemp(prefix="flowtrail-bench-"))
    capture = Capture()
    capture.start()
    netns = NetnsIndex()
    agent = Agent(
        capture,
        AgentConfig(exporter="bench", interval_s=1.0),
        IdentityChain.build(host_workload="bench-host"),
        Delivery(ParquetDir(out_dir)),
        nat=NatResolver(netns),
        snapshotter=Snapshotter(netns),
    )
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,))
    u0, s0 = cpu()
    t0 = time.monotonic()
    thread.start()
    gen = subprocess.run(
        [str(loadgen()), str(seconds), str(threads), str(rate)],
        capture_output=True,
        text=True,
        check=True,
    )
    time.sleep(1.5)  # let the last interval export
    stop.set()
    thread.join()
    u1, s1 = cpu()
    wall = time.monotonic() - t0
    m = agent.metrics()
    capture.close()
    stats = dict(kv.split("=") for kv in gen.stdout.split())
    flows = m["captured_rows"]
    return {
        "loadgen": stats,
        "wall_s": round(wall, 2),
        "flows_captured": flows,
        "flows_exported": m["exported_rows"],
        "close_rate_per_s": round(flows / float(stats["seconds"]), 0),
        "agent_user_us_per_flow": round((u1 - u0) / max(flows, 1) * 1e6, 2),
        "agent_sys_us_per_flow": round((s1 - s0) / max(flows, 1) * 1e6, 2),
        "agent_cpu_share_of_one_core": round((u1 - u0 + s1 - s0) / wall, 3),
        "drops": {k: v for k, v in m.items() if k.startswith("capture_drop_")},
        "dropped_malformed_rows": m["dropped_malformed_rows"],
        "export_failures": m["export_failures"],
        "identity_named": m["identity_named"],
    }


def synthetic(n: int, seed: int = 1) -> pa.RecordBatch:
    rng = np.random.default_rng(seed)
    ints = {
        k: pa.array(rng.integers(0, 1 << 20, n), pa.int64())
        for k in ("bytes_sent", "bytes_received", "segs_sent", "segs_received")
    }
    return pa.RecordBatch.from_pydict(
        {
            "sock_id": pa.array(np.arange(n, dtype=np.uint64)),
            "family": pa.array(np.full(n, 4, np.uint8)),
            "local_ip": pa.array([f"10.0.{i % 4}.{i % 200}" for i in range(n)]),
            "local_port": pa.array(rng.integers(1024, 65535, n).astype(np.int32)),
            "remote_ip": pa.array([f"10.1.{i % 7}.{i % 100}" for i in range(n)]),
            "remote_port": pa.array(np.full(n, 443, np.int32)),
            "direction": pa.array(np.where(rng.random(n) < 0.5, "outbound", "inbound")),
            "outcome": pa.array(["established"] * n),
            "start_ns": pa.array(np.full(n, 1_700_000_000_000_000_000, np.int64)),
            "end_ns": pa.array(np.full(n, 1_700_000_000_100_000_000, np.int64)),
            "established_ns": pa.array(np.full(n, 1_700_000_000_000_100_000, np.int64)),
            **ints,
            "retransmits": pa.array(np.zeros(n, np.int64)),
            "srtt_us": pa.array(np.full(n, 50, np.int64)),
            "cgroup_id": pa.array(rng.integers(1, 60, n).astype(np.uint64)),
            "netns_ino": pa.array(np.full(n, own_netns(), np.uint32)),
            "pid": pa.array(np.zeros(n, np.uint32)),
            "comm": pa.array(["x"] * n),
        },
        schema=RAW_SCHEMA,
    )


class Replay:
    """Stand-in capture for the pipeline-only timing: hands out prepared batches."""

    def __init__(self, batches: list[pa.RecordBatch]) -> None:
        self.batches = batches

    def poll(self, timeout_ms: int = 0) -> pa.RecordBatch | None:
        return self.batches.pop() if self.batches else None

    def live(self) -> pa.RecordBatch:
        return pa.RecordBatch.from_pylist([], schema=RAW_SCHEMA)

    def stats(self) -> dict[str, int]:
        return {}


def pipeline_only(total: int, batch: int) -> dict[str, object]:
    """identity + NAT (real conntrack dumps) + assembly + Parquet, per flow, no kernel capture."""
    rounds = [synthetic(batch, seed) for seed in range(total // batch)]
    out_dir = Path(tempfile.mkdtemp(prefix="flowtrail-bench-"))
    agent = Agent(
        Replay(rounds),
        AgentConfig(exporter="bench", interval_s=3600),
        IdentityChain.build(host_workload="bench-host"),
        Delivery(ParquetDir(out_dir) if batch else NullExporter()),
        nat=NatResolver(),
    )
    u0, s0 = cpu()
    t0 = time.perf_counter()
    while agent.capture.batches:  # type: ignore[attr-defined]
        agent.ingest(agent.capture.poll())  # type: ignore[arg-type]
    agent.flush(snapshots=False)
    wall = time.perf_counter() - t0
    u1, s1 = cpu()
    return {
        "rows_per_resolution_round": batch,
        "user_us_per_flow": round((u1 - u0) / total * 1e6, 2),
        "sys_us_per_flow": round((s1 - s0) / total * 1e6, 2),
        "wall_us_per_flow": round(wall / total * 1e6, 2),
    }


def bare_rate(seconds: float, threads: int, rate: int) -> float:
    alone = subprocess.run(
        [str(loadgen()), str(seconds), str(threads), str(rate)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(dict(kv.split("=") for kv in alone.stdout.split())["rate"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each timed run")
    ap.add_argument("--rounds", type=int, default=1, help="alone/attached pairs, interleaved")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rate", type=int, default=0, help="connections/s, 0 = as fast as possible")
    ap.add_argument("--skip-load", action="store_true")
    args = ap.parse_args()
    report: dict[str, object] = {}
    if not args.skip_load:
        # Pairs of the same loop without any agent, then with the whole agent attached,
        # interleaved so that drift (and other load on the host) hits both sides alike.
        pairs = []
        for _ in range(args.rounds):
            bare = bare_rate(args.seconds, args.threads, args.rate)
            loaded = under_load(args.seconds, args.threads, args.rate)
            with_agent = float(loaded["loadgen"]["rate"])  # type: ignore[index]
            made = 2 * int(loaded["loadgen"]["connections"])  # type: ignore[index]
            loaded["flows_from_other_processes"] = int(loaded["flows_captured"]) - made  # type: ignore[call-overload]
            pairs.append(
                {"without": bare, "with": with_agent, "ratio": round(with_agent / bare, 3)}
            )
            report["under_load_last_round"] = loaded
        report["rate_pairs"] = pairs
        report["rate_ratio_median"] = statistics.median(p["ratio"] for p in pairs)
    report["pipeline_only"] = [pipeline_only(200_000, b) for b in (500, 2_000, 20_000)]
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()

"""Benchmark: several exporters → a real collector process → attributed rows in its sink.

Usage:  python bench/collector_ingest.py [--flows 600000] [--exporters 4] [--batch 20000]
                                         [--sink store|parquet] [--no-fsync] [--dir DIR]

The collector runs as its own process (`python -m flowtrail.collector`, TLS, tokens, fsynced
write-ahead log, streaming attribution, sink); exporters are separate processes posting
pre-encoded Arrow IPC batches of simulator flows (times moved to now) over keep-alive
HTTPS. The figure of merit is rows stored per CPU-second of the collector process
(user+system, all its threads, from /proc), measured from the first batch sent until
every row is decided and stored, so attribution and storage are inside the measurement.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flowtrail.collector.client import ipc_bytes
from flowtrail.collector.devcert import self_signed
from flowtrail.sim.simulation import simulate

S = 1_000_000_000
TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def sender(port: int, cafile: str, k: int, bodies: list[bytes], tag: str, out: mp.Queue) -> None:  # type: ignore[type-arg]
    token = f"bench-token-{k}-0123456789"
    ctx = ssl.create_default_context(cafile=cafile)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=120)
    lat = []
    for i, body in enumerate(bodies):
        t = time.perf_counter()
        conn.request(
            "POST", "/v1/flows", body=body,
            headers={"Authorization": f"Bearer {token}", "X-Flowtrail-Batch": f"{tag}-{i}"},
        )  # fmt: skip
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            raise SystemExit(f"batch {i}: HTTP {r.status}")
        lat.append(time.perf_counter() - t)
    out.put(lat)


def run_senders(port: int, cafile: str, bodies: list[list[bytes]], tag: str) -> list[float]:
    q: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    procs = [
        mp.Process(target=sender, args=(port, cafile, k, bodies[k], tag, q))
        for k in range(len(bodies))
    ]
    for sp in procs:
        sp.start()
    lat = [x for _ in procs for x in q.get()]
    for sp in procs:
        sp.join()
    return lat


def _warm_rows(k: int, f: pa.Table) -> pa.Table:
    one = f.slice(0, 1)
    one = one.set_column(one.column_names.index("exporter"), "exporter", pa.array([f"sender-{k}"]))
    return one.set_column(one.column_names.index("flow_id"), "flow_id", pa.array([f"warm-{k}"]))


def metric(port: int, cafile: str, name: str) -> float:
    ctx = ssl.create_default_context(cafile=cafile)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--flows", type=int, default=600_000)
    ap.add_argument("--exporters", type=int, default=4)
    ap.add_argument("--batch", type=int, default=20_000)
    ap.add_argument("--sink", choices=["store", "parquet"], default="store")
    ap.add_argument("--no-fsync", action="store_true")
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    if args.dir is None:
        with tempfile.TemporaryDirectory(prefix="ft-collector-bench-") as tmp:
            run(args, Path(tmp))
    else:
        args.dir.mkdir(parents=True, exist_ok=True)
        run(args, args.dir)


def run(args: argparse.Namespace, work: Path) -> None:

    # Simulated fleet, its exporters folded onto --exporters senders (each sender is one
    # token; rows are relabelled with the sender's exporter name).
    f = simulate("churny", 1, flows=args.flows).flows.drop_columns(["received_ns"])
    shift = time.time_ns() - 30 * S - pc.max(f["end_ns"]).as_py()
    for col in ("start_ns", "end_ns"):
        f = f.set_column(f.column_names.index(col), col, pc.add(f[col], shift))
    names = sorted(set(f["exporter"].to_pylist()))
    group = {n: i % args.exporters for n, i in zip(names, range(len(names)), strict=True)}
    which = np.array([group[e] for e in f["exporter"].to_pylist()])
    bodies: list[list[bytes]] = []
    rows = 0
    for k in range(args.exporters):
        part = f.filter(pa.array(which == k))
        part = part.set_column(
            part.column_names.index("exporter"),
            "exporter",
            pa.array([f"sender-{k}"] * part.num_rows),
        )
        # flow_id is unique per exporter: keep them unique after relabelling
        part = part.set_column(
            part.column_names.index("flow_id"), "flow_id",
            pc.binary_join_element_wise(part["flow_id"], part["exporter"], "@"),
        )  # fmt: skip
        rows += part.num_rows
        bodies.append(
            [ipc_bytes(part.slice(i, args.batch)) for i in range(0, part.num_rows, args.batch)]
        )
    tokens = work / "tokens"
    tokens.write_text(
        "".join(f"sender-{k} bench-token-{k}-0123456789\n" for k in range(args.exporters))
    )
    cert, key = self_signed(work / "tls")
    data = work / "data"
    port_file = work / "port"
    port_file.unlink(missing_ok=True)
    cmd = [
        sys.executable, "-m", "flowtrail.collector", "--listen", "127.0.0.1:0",
        "--port-file", str(port_file), "--tokens", str(tokens), "--data-dir", str(data),
        "--tls-cert", str(cert), "--tls-key", str(key), "--sink", args.sink,
        "--no-events", "--max-wait", "5s", "--rate", "10000000",
    ] + (["--no-fsync"] if args.no_fsync else [])  # fmt: skip
    log = open(work / "collector.log", "wb")  # noqa: SIM115
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        while not port_file.exists():
            if p.poll() is not None:
                raise SystemExit((work / "collector.log").read_text())
            time.sleep(0.05)
        port = int(port_file.read_text())
        # Warm-up outside the measurement: one small batch per sender, decided and stored
        # (loads the engine's compiled kernels and the sink once per process).
        warm = [[ipc_bytes(_warm_rows(k, f))] for k in range(args.exporters)]
        run_senders(port, str(cert), warm, "warm")
        while metric(port, str(cert), "flowtrail_collector_rows_stored_total") < args.exporters:
            time.sleep(0.2)
        base = metric(port, str(cert), "flowtrail_collector_rows_stored_total")
        cpu0, wall0 = proc_cpu(p.pid), time.perf_counter()
        lat = run_senders(port, str(cert), bodies, "run")
        acked_wall = time.perf_counter() - wall0
        acked_cpu = proc_cpu(p.pid) - cpu0
        while metric(port, str(cert), "flowtrail_collector_rows_stored_total") < base + rows:
            time.sleep(0.2)
        wall = time.perf_counter() - wall0
        cpu = proc_cpu(p.pid) - cpu0
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    lat_ms = np.array(lat) * 1000
    result = {
        "rows": rows,
        "exporters": args.exporters,
        "batch_rows": args.batch,
        "sink": args.sink,
        "fsync": not args.no_fsync,
        "ingest_wall_s": round(acked_wall, 2),
        "ingest_cpu_s": round(acked_cpu, 2),
        "ingest_rows_per_cpu_s": round(rows / acked_cpu),
        "total_wall_s": round(wall, 2),
        "total_cpu_s": round(cpu, 2),
        "rows_per_cpu_s": round(rows / cpu),
        "ack_latency_ms_p50": round(float(np.percentile(lat_ms, 50)), 1),
        "ack_latency_ms_p99": round(float(np.percentile(lat_ms, 99)), 1),
        "cores": os.cpu_count(),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""Agent capture overhead: connection rate with and without the BPF program, and the agent's CPU.

    sudo .venv/bin/python bench/agent_overhead.py [--seconds 3] [--rounds 10] [--soak 30]
        [--soak-rate CONNS_PER_S]

One run, three measurements, written to bench/out/agent_overhead.json and printed as a summary:
1. the connect/send/close rate of bench/loadgen.c (compiled here with cc -O2) on loopback,
   unattached and attached, in --rounds adjacent pairs (order alternating: off-on, on-off, ...)
   so that load from anything else on the machine hits both sides of a pair alike; the result
   is the median of the per-pair ratios;
   "attached" is the real thing: Capture started, a reader thread polling and decoding every
   record into RAW_SCHEMA batches as the agent does;
   because other work on a shared machine moves raw rates a lot, the same pairs also give the
   generator's own CPU per connection (user + system from wait4, which includes the program's
   run time in its context) and the BPF program's run time per connection (bpf_stats);
2. the reader thread's user CPU (getrusage RUSAGE_THREAD) per decoded record;
3. a --soak second run, attached, flat out (or paced with --soak-rate), checking that no record
   is lost (every loss counter unchanged; untracked_close aside, which only counts sockets
   opened before the capture) and that every socket's record arrived.
Traffic stays on 127.0.0.1. Needs root (loads the BPF program).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flowtrail.agent.capture import Capture

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
LOADGEN_SRC = HERE / "loadgen.c"
LOADGEN = OUT / "loadgen"


def build_loadgen() -> Path:
    OUT.mkdir(exist_ok=True)
    if not LOADGEN.exists() or LOADGEN.stat().st_mtime < LOADGEN_SRC.stat().st_mtime:
        subprocess.run(
            ["cc", "-O2", "-Wall", "-pthread", "-o", str(LOADGEN), str(LOADGEN_SRC)], check=True
        )
    return LOADGEN


def run_loadgen(seconds: float, threads: int, rate: float = 0) -> dict[str, float]:
    """One generator run: its own report plus the CPU it used (user + system, from wait4)."""
    proc = subprocess.Popen(
        [str(LOADGEN), str(seconds), str(threads), str(rate)], stdout=subprocess.PIPE, text=True
    )
    _, status, usage = os.wait4(proc.pid, 0)
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.stdout.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen failed ({proc.returncode}): {out}")
    result = {k: float(v) for k, v in (kv.split("=") for kv in out.split())}
    result["cpu_s"] = usage.ru_utime + usage.ru_stime
    result["cpu_us_per_conn"] = result["cpu_s"] / max(result["connections"], 1) * 1e6
    return result


@contextlib.contextmanager
def bpf_stats_enabled() -> Iterator[None]:
    """kernel.bpf_stats_enabled=1 for the run (program run time and count), then as it was."""
    knob = Path("/proc/sys/kernel/bpf_stats_enabled")
    before = knob.read_text().strip()
    knob.write_text("1")
    try:
        yield
    finally:
        knob.write_text(before)


class Reader:
    """The agent's capture side in a thread: poll, decode, count rows and CPU."""

    def __init__(self, capture: Capture, poll_ms: int) -> None:
        self.capture, self.poll_ms = capture, poll_ms
        self.rows = 0
        self.user_s = self.sys_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        r0 = resource.getrusage(resource.RUSAGE_THREAD)
        while not self._stop.is_set():
            batch = self.capture.poll(self.poll_ms)
            if batch is not None:
                self.rows += batch.num_rows
        while (batch := self.capture.poll(0)) is not None:
            self.rows += batch.num_rows
        r1 = resource.getrusage(resource.RUSAGE_THREAD)
        self.user_s, self.sys_s = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime

    def __enter__(self) -> Reader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def attached(seconds: float, threads: int, poll_ms: int, rate: float = 0) -> dict[str, Any]:
    with Capture() as capture:
        before, prog0 = capture.stats(), capture.program_stats()
        with Reader(capture, poll_ms) as reader:
            gen = run_loadgen(seconds, threads, rate)
            time.sleep(poll_ms / 1000 * 2)  # let the last records arrive
        after, prog1 = capture.stats(), capture.program_stats()
    drops = {k: after[k] - before[k] for k in after}
    conns = max(gen["connections"], 1)
    return {
        "rate": gen["rate"],
        "cpu_us_per_conn": gen["cpu_us_per_conn"],
        "bpf_runs_per_conn": (prog1["run_cnt"] - prog0["run_cnt"]) / conns,
        "bpf_us_per_conn": (prog1["run_time_ns"] - prog0["run_time_ns"]) / conns / 1e3,
        "connections": int(gen["connections"]),
        "errors": int(gen["errors"]),
        "rows": reader.rows,
        "user_s": reader.user_s,
        "sys_s": reader.sys_s,
        "drops": drops,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each rate phase")
    ap.add_argument("--rounds", type=int, default=10, help="unattached/attached phase pairs")
    ap.add_argument("--soak", type=float, default=30.0, help="zero-drop soak length (0: skip)")
    ap.add_argument(
        "--soak-rate", type=float, default=0, help="soak pace, connections/s (0: flat out)"
    )
    ap.add_argument("--threads", type=int, default=1, help="load generator client threads")
    ap.add_argument("--poll-ms", type=int, default=200, help="reader poll timeout")
    args = ap.parse_args(argv)
    build_loadgen()

    with bpf_stats_enabled():
        result = measure(args)
    OUT.mkdir(exist_ok=True)
    (OUT / "agent_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def measure(args: argparse.Namespace) -> dict[str, Any]:
    run_loadgen(1, args.threads)  # warm up (page cache, port range)
    off_rates, on_rates, on_runs, off_runs = [], [], [], []
    for i in range(args.rounds):
        if i % 2 == 0:
            off = run_loadgen(args.seconds, args.threads)
            on = attached(args.seconds, args.threads, args.poll_ms)
        else:
            on = attached(args.seconds, args.threads, args.poll_ms)
            off = run_loadgen(args.seconds, args.threads)
        off_runs.append(off)
        off_rates.append(off["rate"])
        on_rates.append(on["rate"])
        on_runs.append(on)
        print(
            f"round {i + 1}: unattached {off['rate']:.0f}/s, attached {on['rate']:.0f}/s "
            f"({on['rows']} records, user {on['user_s']:.3f} s)",
            file=sys.stderr,
        )
    result: dict[str, Any] = {
        "machine": {"cpus": len(os.sched_getaffinity(0)), "kernel": platform.release()},
        "seconds_per_phase": args.seconds,
        "rounds": args.rounds,
    }
    if on_runs:
        rows = sum(r["rows"] for r in on_runs)
        user = sum(r["user_s"] for r in on_runs)
        system = sum(r["sys_s"] for r in on_runs)
        ratios = [a / b for a, b in zip(on_rates, off_rates, strict=True)]
        cpu_off = [r["cpu_us_per_conn"] for r in off_runs]
        cpu_on = [r["cpu_us_per_conn"] for r in on_runs]
        result |= {
            "generator_cpu_us_per_conn_unattached": statistics.median(cpu_off),
            "generator_cpu_us_per_conn_attached": statistics.median(cpu_on),
            # the rate a CPU-bound generator keeps, judged by CPU per connection: less
            # sensitive than raw rates to whatever else shares the machine
            "cpu_based_rate_ratio": statistics.median(
                a / b for a, b in zip(cpu_off, cpu_on, strict=True)
            ),
            "bpf_program_runs_per_conn": statistics.median(r["bpf_runs_per_conn"] for r in on_runs),
            "bpf_program_us_per_conn": statistics.median(r["bpf_us_per_conn"] for r in on_runs),
            "unattached_rates": off_rates,
            "attached_rates": on_rates,
            "pair_ratios": ratios,
            "attached_over_unattached": statistics.median(ratios),
            "generator_connections": sum(r["connections"] for r in on_runs),
            "records": rows,
            "reader_user_us_per_record": user / rows * 1e6 if rows else None,
            "reader_sys_us_per_record": system / rows * 1e6 if rows else None,
            "drops_during_rate_phases": {
                k: sum(r["drops"][k] for r in on_runs) for k in on_runs[0]["drops"]
            },
        }
    if args.soak > 0:
        soak = attached(args.soak, args.threads, args.poll_ms, args.soak_rate)
        lost = sum(v for k, v in soak["drops"].items() if k != "untracked_close")
        result["soak"] = {
            "seconds": args.soak,
            "paced_at": args.soak_rate or None,
            "close_rate": soak["rate"],
            "connections": soak["connections"],
            "records": soak["rows"],
            "records_per_connection": soak["rows"] / max(soak["connections"], 1),
            "drops": soak["drops"],
            "zero_drops": lost == 0,
            "reader_user_us_per_record": soak["user_s"] / max(soak["rows"], 1) * 1e6,
        }
    return result


if __name__ == "__main__":
    sys.exit(main())

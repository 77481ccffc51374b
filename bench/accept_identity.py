"""What naming accepted connections by their acceptor costs: the accept tracepoints, measured.

    sudo .venv/bin/python bench/accept_identity.py [--seconds 3] [--rounds 10]

bench/loadgen.c (connect / send 64 bytes / close on loopback; its server thread calls
accept()) runs in --rounds adjacent pairs of phases, order alternating, with the capture
attached both times: once with the programs on syscalls:sys_exit_accept4 / sys_exit_accept
(the default) and once without (`Capture(accepts=False)`). Reported, medians over the pairs:
* the accept program's own run time per run and per accepted connection (bpf_stats);
* the generator's CPU (user + system, from wait4) per connection with and without: this also
  holds what the program costs outside its run time (a syscall tracepoint makes every
  syscall of every task take the kernel's tracing path while it is attached);
* the agent's user-space work is unchanged (the acceptor replaces the socket's cgroup in the
  record; no column, no lookup added), so it is not measured again here.
Written to bench/out/accept_identity.json. Needs root; traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_overhead import OUT, Reader, bpf_stats_enabled, build_loadgen, run_loadgen

from flowtrail.agent.capture import ACCEPT_PROGRAMS, Capture


def phase(seconds: float, accepts: bool) -> dict[str, Any]:
    with Capture(accepts=accepts) as capture:
        names = ACCEPT_PROGRAMS if accepts else ()
        before = {n: capture.program_stats(n) for n in names}
        with Reader(capture, 200):
            gen = run_loadgen(seconds, 1)
            time.sleep(0.4)  # the last records
        after = {n: capture.program_stats(n) for n in names}
    runs = sum(after[n]["run_cnt"] - before[n]["run_cnt"] for n in names)
    ns = sum(after[n]["run_time_ns"] - before[n]["run_time_ns"] for n in names)
    conns = max(gen["connections"], 1)
    return {
        "rate": gen["rate"],
        "cpu_us_per_conn": gen["cpu_us_per_conn"],
        "accept_runs": runs,
        "accept_ns_per_run": ns / runs if runs else 0.0,
        "accept_ns_per_conn": ns / conns,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each phase")
    ap.add_argument("--rounds", type=int, default=10, help="with/without phase pairs")
    args = ap.parse_args(argv)
    build_loadgen()
    run_loadgen(1, 1)  # warm up
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    with bpf_stats_enabled():
        for i in range(args.rounds):
            order = (True, False) if i % 2 == 0 else (False, True)
            got = {a: phase(args.seconds, a) for a in order}
            pairs.append((got[True], got[False]))
            print(
                f"round {i + 1}: with {got[True]['cpu_us_per_conn']:.2f} µs/conn, without "
                f"{got[False]['cpu_us_per_conn']:.2f} µs/conn, accept program "
                f"{got[True]['accept_ns_per_run']:.0f} ns/run",
                file=sys.stderr,
            )
    on, off = [p[0] for p in pairs], [p[1] for p in pairs]
    result = {
        "machine": {"cpus": len(os.sched_getaffinity(0)), "kernel": platform.release()},
        "seconds_per_phase": args.seconds,
        "rounds": args.rounds,
        "accept_program_ns_per_run": statistics.median(r["accept_ns_per_run"] for r in on),
        "accept_program_ns_per_conn": statistics.median(r["accept_ns_per_conn"] for r in on),
        "generator_cpu_us_per_conn_with": statistics.median(r["cpu_us_per_conn"] for r in on),
        "generator_cpu_us_per_conn_without": statistics.median(r["cpu_us_per_conn"] for r in off),
        "cpu_ratio_with_over_without": statistics.median(
            a["cpu_us_per_conn"] / b["cpu_us_per_conn"] for a, b in pairs
        ),
        "rate_with": statistics.median(r["rate"] for r in on),
        "rate_without": statistics.median(r["rate"] for r in off),
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "accept_identity.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

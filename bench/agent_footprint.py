"""The agent's footprint: resident memory and CPU of `flowtrail agent --out DIR`, idle and loaded.

    sudo .venv/bin/python bench/agent_footprint.py [--isolated] [--idle 30] [--load 30]
        [--rate 40000] [--after 65] [--settle 5] [-- EXTRA AGENT OPTIONS]

Starts the real agent as its own process (`python -m flowtrail agent --out TMP/flows
--metrics TMP/metrics.json`, real eBPF, so as root) and, once it says it is capturing and has
settled, measures three windows:

1. idle: nothing generated (the host's own background connections still count);
2. load: bench/loadgen.c (compiled here with cc -O2) makes connect / send 64 bytes / close on
   loopback at --rate flows/s (each connection is two flows, one per end), 2 client threads;
3. after: idle again, longer than the 60 s interval, to see whether memory taken under load
   is given back once the rows held at its end have gone out.

With --isolated the bench creates a network namespace of its own (loopback only), the agent
exports only it (`--netns NAME`) and the generator runs inside it: on a machine that other
work shares, its connections and namespaces would otherwise be the agent's "idle" load. The
agent still loads, captures and decodes everything the same way (the kernel program sees
every namespace's sockets); what it skips is naming, NAT, scopes and listener looks for the
others' namespaces.

Memory is sampled once a second from /proc/PID/status (VmRSS) and /proc/PID/smaps_rollup (Pss,
and USS = Private_Clean + Private_Dirty: what stopping the agent would free). CPU is utime +
stime of the whole process from /proc/PID/stat (every thread, exited ones included) plus the
children it waited for (cutime + cstime: the `ip` / `nft` it runs), over each window, in
clock ticks (10 ms). At the end the agent is stopped with SIGINT (it exports its last batch)
and its counters are checked: every drop counter zero and every generated connection's two
rows exported (the kernel's own misses, `recursion_miss` and what follows from it, are
reported apart: they are not the agent falling behind). Writes bench/out/agent_footprint.json
and prints a table. Loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
from agent_overhead import build_loadgen

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
TICK = os.sysconf("SC_CLK_TCK")
READY = "flowtrail agent: capturing"
LOSSES = ("backlog_dropped_rows", "export_dropped_rows", "spool_dropped_rows")
# The kernel skipping the program (a close interrupting another run on one CPU) and what
# follows from it: counted, but not the agent's user space falling behind.
KERNEL_MISSES = (
    "capture_drop_recursion_miss",
    "capture_drop_stale_start",
    "capture_drop_untracked_close",  # also: sockets opened before the capture started
    "capture_drop_expired_start",
)


def memory(pid: int) -> dict[str, int]:
    """VmRSS, Pss and USS of `pid` in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()

    def field(text: str, name: str) -> int:
        found = re.search(rf"^{name}:\s+(\d+) kB", text, re.M)
        return int(found.group(1)) if found else 0

    return {
        "rss": field(status, "VmRSS"),
        "pss": field(rollup, "Pss"),
        "uss": field(rollup, "Private_Clean") + field(rollup, "Private_Dirty"),
    }


def threads(pid: int) -> int:
    found = re.search(r"^Threads:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(found.group(1)) if found else 0


def cpu_s(pid: int) -> tuple[float, float]:
    """(own utime + stime, waited-for children's) in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # after the command name: state is field 3, utime 14, stime 15, cutime 16, cstime 17
    utime, stime, cutime, cstime = (int(fields[i - 3]) for i in (14, 15, 16, 17))
    return (utime + stime) / TICK, (cutime + cstime) / TICK


class Window:
    """Samples one process's memory once a second over a phase; CPU from first to last."""

    def __init__(self, pid: int, name: str) -> None:
        self.pid, self.name = pid, name
        self.samples: list[dict[str, int]] = []

    def run(self, seconds: float, during: Any = None) -> dict[str, Any]:
        own0, kids0 = cpu_s(self.pid)
        t0 = time.monotonic()
        worker = threading.Thread(target=during, daemon=True) if during is not None else None
        if worker is not None:
            worker.start()
        deadline = t0 + seconds
        while True:
            self.samples.append({**memory(self.pid), "threads": threads(self.pid)})
            now = time.monotonic()
            if now >= deadline and (worker is None or not worker.is_alive()):
                break
            time.sleep(min(1.0, max(deadline - now, 0.05)))
        wall = time.monotonic() - t0
        own1, kids1 = cpu_s(self.pid)
        out: dict[str, Any] = {"window": self.name, "seconds": round(wall, 1)}
        for key in ("rss", "pss", "uss"):
            values = [s[key] for s in self.samples]
            out[f"{key}_mib_median"] = round(statistics.median(values) / 1024, 1)
            out[f"{key}_mib_max"] = round(max(values) / 1024, 1)
            out[f"{key}_mib_last"] = round(values[-1] / 1024, 1)
        out["threads_max"] = max(s["threads"] for s in self.samples)
        out["cpu_s"] = round(own1 - own0, 2)
        out["children_cpu_s"] = round(kids1 - kids0, 2)
        out["cpu_percent_of_one_core"] = round((own1 - own0 + kids1 - kids0) / wall * 100, 2)
        return out


def start_agent(tmp: Path, extra: list[str]) -> tuple[subprocess.Popen[str], list[str]]:
    argv = [
        sys.executable,
        "-m",
        "flowtrail",
        "agent",
        "--out",
        str(tmp / "flows"),
        "--metrics",
        str(tmp / "metrics.json"),
        *extra,
    ]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if line.startswith(READY):
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 120
    while not ready.wait(0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the agent did not start:\n" + "\n".join(lines))
    return proc, lines


def loadgen_run(seconds: float, rate: int, result: dict[str, float], netns: str | None) -> None:
    inside = ["ip", "netns", "exec", netns] if netns else []
    out = subprocess.run(
        [*inside, str(build_loadgen()), str(seconds), "2", str(rate / 2)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result.update({k: float(v) for k, v in (kv.split("=") for kv in out.split())})


def exported_rows(flows: Path) -> dict[str, int]:
    if not flows.exists() or not any(flows.glob("*.parquet")):
        return {"rows": 0, "closed_rows": 0, "files": 0}
    data = ds.dataset(flows, format="parquet").to_table(columns=["state"])
    closed = sum(1 for s in data.column("state").to_pylist() if s == "closed")
    return {
        "rows": data.num_rows,
        "closed_rows": closed,
        "files": len(list(flows.glob("*.parquet"))),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle", type=float, default=30.0, help="idle window, seconds")
    ap.add_argument("--load", type=float, default=30.0, help="loaded window, seconds (0: skip)")
    ap.add_argument(
        "--rate", type=int, default=40_000, help="flows/s under load (2 per connection)"
    )
    ap.add_argument(
        "--after",
        type=float,
        default=65.0,
        help="idle window after the load (past the 60 s interval: held rows go out)",
    )
    ap.add_argument("--settle", type=float, default=5.0, help="seconds after start, unmeasured")
    ap.add_argument(
        "--isolated", action="store_true", help="agent and generator in a namespace of their own"
    )
    ap.add_argument("extra", nargs="*", help="more agent options (after --)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (the agent loads its BPF program)", file=sys.stderr)
        return 2
    build_loadgen()
    tmp = Path(tempfile.mkdtemp(prefix="flowtrail-footprint-"))
    netns = f"ftfoot-{secrets.token_hex(3)}" if args.isolated else None
    extra = list(args.extra)
    if netns:
        subprocess.run(["ip", "netns", "add", netns], check=True)
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        extra += ["--netns", netns]
    try:
        return measure(args, tmp, extra, netns)
    finally:
        if netns:
            subprocess.run(["ip", "netns", "del", netns], check=False)


def measure(args: argparse.Namespace, tmp: Path, extra: list[str], netns: str | None) -> int:
    t_start = time.monotonic()
    proc, log = start_agent(tmp, extra)
    started_s = time.monotonic() - t_start
    windows: list[dict[str, Any]] = []
    gen: dict[str, float] = {}
    try:
        time.sleep(args.settle)  # imports done, first cgroup scan and address facts read
        start_mem = memory(proc.pid)
        windows.append(Window(proc.pid, "idle").run(args.idle))
        if args.load > 0:
            loaded = Window(proc.pid, f"load {args.rate} flows/s")
            windows.append(
                loaded.run(args.load, lambda: loadgen_run(args.load, args.rate, gen, netns))
            )
            windows.append(Window(proc.pid, "idle after load").run(args.after))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    metrics = json.loads((tmp / "metrics.json").read_text())
    drops = {k: v for k, v in metrics.items() if k.startswith("capture_drop_") or k in LOSSES}
    rows = exported_rows(tmp / "flows")
    if gen:
        gen["flows_per_s"] = round(2 * gen["connections"] / gen["seconds"])
        windows[1]["cpu_us_per_flow"] = round(
            (windows[1]["cpu_s"] + windows[1]["children_cpu_s"])
            / max(metrics["captured_rows"], 1)
            * 1e6,
            2,
        )
    result = {
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "kernel": platform.release(),
            "load_average": os.getloadavg(),
        },
        "agent_args": extra,
        "seconds_to_capturing": round(started_s, 1),
        "after_settle_mib": {k: round(v / 1024, 1) for k, v in start_mem.items()},
        "windows": windows,
        "loadgen": gen,
        "captured_rows": metrics["captured_rows"],
        "exported_rows": metrics["exported_rows"],
        "parquet": rows,
        "losses": drops,
        "no_loss": all(v == 0 for k, v in drops.items() if k not in KERNEL_MISSES),
        "every_generated_flow_exported": rows["closed_rows"] >= 2 * int(gen.get("connections", 0)),
        "agent_exit": proc.returncode,
        "agent_stderr_tail": log[-3:],
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "agent_footprint.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print()
    print("| window | RSS MiB median (max) | PSS MiB median | USS MiB median | CPU % of a core |")
    print("|---|---|---|---|---|")
    for w in windows:
        print(
            f"| {w['window']} | {w['rss_mib_median']} ({w['rss_mib_max']}) | "
            f"{w['pss_mib_median']} | {w['uss_mib_median']} | {w['cpu_percent_of_one_core']} |"
        )
    return 0 if result["no_loss"] and result["every_generated_flow_exported"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""`flowtrail demo --kernel`: the demo's accuracy table on flows the eBPF program really captured.

A `Fleet` (flowtrail/lab/fleet.py) runs on this kernel; one real `flowtrail agent` per host
(`--netns` its namespace and those of the fleet's sites it holds: a NAT gateway and its LAN,
one of two overlapping networks; so each exports only its own sockets under its own name)
writes Parquet. When the run ends the captured rows (received_ns: when the agent wrote them) and the
lab's event feed are attributed the demo's three ways and judged against the lab's truth, and
every attempt the workloads logged is looked up among the captured rows: each end once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flowtrail.errors import CapabilityError
from flowtrail.evaluate import EvalReport, evaluate
from flowtrail.lab import workload as wl
from flowtrail.lab.fleet import Fleet, exporter_name
from flowtrail.lab.fleet_sites import LAN_PORTS
from flowtrail.lab.netns import LabError
from flowtrail.lab.wait import stop_all
from flowtrail.tables import write_table

AGENT_INTERVAL = "2s"


@dataclass(frozen=True)
class KernelRun:
    duration_s: float = 120.0
    hosts: int = 3
    slots: int = 12
    rate: float = 20.0
    churn_s: float = 4.0
    seed: int = 0


def say(text: str) -> None:
    print(f"demo --kernel: {text}", file=sys.stderr, flush=True)


@contextmanager
def agents(fleet: Fleet, out: Path) -> Iterator[list[Path]]:
    """One `flowtrail agent` per host; stopped with SIGTERM (each flushes its last batch)."""
    procs: list[subprocess.Popen[bytes]] = []
    dirs: list[Path] = []
    out.mkdir(parents=True, exist_ok=True)
    try:
        for i in range(fleet.hosts):
            where = out / f"host-{i}"
            argv = [sys.executable, "-m", "flowtrail", "agent", "--out", str(where)]
            argv += ["--interval", AGENT_INTERVAL, "--exporter", exporter_name(i)]
            argv += ["--region", "lab", "--resolvers", "systemd"]
            for ns in fleet.agent_namespaces(i):
                argv += ["--netns", ns]
            # The hosts are namespaces with no route out: detection would call the fleet's
            # network host-local. Here it stands for a network between hosts.
            argv += ["--routable", f"{fleet.net}.0/24"]
            argv += ["--metrics", str(out / f"host-{i}.json")]
            with (out / f"host-{i}.log").open("wb") as log:  # the child keeps its own copy
                # Its own session: Ctrl-C is the lab's to handle, and it stops them.
                proc = subprocess.Popen(
                    argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            procs.append(proc)
            dirs.append(where)
        for i, proc in enumerate(procs):
            # The metrics file comes one interval after capture is attached.
            deadline = time.monotonic() + 60
            while not (out / f"host-{i}.json").exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    text = (out / f"host-{i}.log").read_text(errors="replace")
                    raise LabError(f"agent for host-{i} did not start:\n{text[-2000:]}")
                time.sleep(0.1)
        yield dirs
    finally:
        stop_all(procs, grace_s=60)
    for i, proc in enumerate(procs):
        if proc.returncode != 0:
            text = (out / f"host-{i}.log").read_text(errors="replace")
            raise LabError(f"agent for host-{i} exited {proc.returncode}:\n{text[-2000:]}")


def exported(dirs: list[Path]) -> pa.Table:
    """Every row the agents wrote; received_ns is when its file was written."""
    parts = []
    for d in dirs:
        for f in sorted(d.glob("*.parquet")):
            t = pq.read_table(f)
            got = pa.array([f.stat().st_mtime_ns] * t.num_rows, pa.int64())
            parts.append(t.set_column(t.schema.get_field_index("received_ns"), "received_ns", got))
    return pa.concat_tables(parts)


def capture_drops(out: Path, hosts: int) -> dict[str, int]:
    """What the agents' kernel programs counted as lost, per reason, summed over the agents
    (each program sees every namespace's sockets, so a loss may be counted by several)."""
    total: dict[str, int] = {}
    for i in range(hosts):
        metrics = json.loads((out / f"host-{i}.json").read_text())
        for key, value in metrics.items():
            if key.startswith("capture_drop_") and value:
                reason = key.removeprefix("capture_drop_")
                total[reason] = total.get(reason, 0) + int(value)
    return total


def attempts(fleet: Fleet) -> pl.DataFrame:
    """Every attempt the workloads logged; `translated`: made behind the NAT gateway (its
    server end sees another 4-tuple)."""
    rows: list[list[Any]] = []
    for f in sorted(fleet.logs.glob("*.jsonl")):
        rows.extend(json.loads(line) for line in f.read_text().splitlines() if line)
    made = pl.DataFrame(
        rows,
        schema=["local_ip", "local_port", "remote_ip", "remote_port", "outcome", "t_ns"],
        orient="row",
    )
    behind = pl.lit(False)
    for prefix in fleet.translated_prefixes():
        behind = behind | pl.col("local_ip").str.starts_with(prefix)
    return made.with_columns(behind.alias("translated"))


def _kind(column: str) -> pl.Expr:
    """Outcomes in the classes both the log and every agent version tell apart: a connection
    (also one reset later, when its workload was stopped), a refused attempt, any other failed
    one (the client's connect timeout is `abandoned` or `failed`, by agent version)."""
    c = pl.col(column)
    connected = c.is_null() | c.is_in(["established", "reset"])
    return (
        pl.when(connected)
        .then(pl.lit("established"))
        .when(c == "refused")
        .then(pl.lit("refused"))
        .otherwise(pl.lit("failed"))
        .alias(column)
    )


def counted_once(made: pl.DataFrame, flows: pa.Table) -> dict[str, int]:
    """Each attempt the workloads logged, looked up among the closed rows, per 4-tuple.

    An attempt's client end must be one `outbound` row with its outcome; an established
    connection to a service (not via the load balancer, whose end has no agent, nor through
    the NAT gateway, whose server end has the gateway's address and port) must also be one
    `inbound` row at the server. A 4-tuple used n times must be found n times.
    """
    client, server, by = _ends(made, flows)
    return {
        "attempts": made.height,
        "established": int(by.get("established", 0)),
        "refused": int(by.get("refused", 0)),
        "failed": int(by.get("failed", 0)),
        "client_ends_missing": _sum_over(client, "made", "outbound"),
        "client_ends_extra": _sum_over(client, "outbound", "made"),
        "server_ends_expected": int(server.get_column("made").sum()),
        "server_ends_missing": _sum_over(server, "made", "inbound"),
        "server_ends_extra": _sum_over(server, "inbound", "made"),
    }


def miscounted(made: pl.DataFrame, flows: pa.Table) -> pl.DataFrame:
    """The 4-tuples `counted_once` found a different number of times than they were used."""
    client, server, _ = _ends(made, flows)
    return pl.concat(
        [
            client.filter(pl.col("made") != pl.col("outbound")).with_columns(
                pl.lit("client").alias("end"), pl.col("outbound").alias("found")
            ),
            server.filter(pl.col("made") != pl.col("inbound")).with_columns(
                pl.lit("server").alias("end"), pl.col("inbound").alias("found")
            ),
        ],
        how="diagonal",
    ).select(
        ["end", "local_ip", "local_port", "remote_ip", "remote_port", "outcome", "made", "found"]
    )


def _sum_over(df: pl.DataFrame, a: str, b: str) -> int:
    return int(df.select((pl.col(a) - pl.col(b)).clip(lower_bound=0).sum()).item())


def _ends(made: pl.DataFrame, flows: pa.Table) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, int]]:
    """(client ends, server ends, attempts per outcome class): per 4-tuple, made vs found."""
    df = pl.from_arrow(
        flows.select(
            ["local_ip", "local_port", "remote_ip", "remote_port", "direction", "state", "outcome"]
        )
    )
    assert isinstance(df, pl.DataFrame)
    closed = df.filter(pl.col("state") == "closed").with_columns(_kind("outcome"))
    made = made.with_columns(_kind("outcome"))
    key = ["local_ip", "local_port", "remote_ip", "remote_port"]
    made_n = made.group_by([*key, "outcome"]).agg(pl.len().cast(pl.Int64).alias("made"))
    out_n = (
        closed.filter(pl.col("direction") == "outbound")
        .group_by([*key, "outcome"])
        .agg(pl.len().cast(pl.Int64).alias("outbound"))
    )
    client = made_n.join(out_n, on=[*key, "outcome"], how="left").with_columns(
        pl.col("outbound").fill_null(0)
    )
    direct = made.filter(~pl.col("translated"))
    served = (
        direct.group_by([*key, "outcome"])
        .agg(pl.len().cast(pl.Int64).alias("made"))
        .filter((pl.col("outcome") == "established") & (pl.col("remote_port") == wl.SERVICE_PORT))
    )
    in_n = (
        closed.filter((pl.col("direction") == "inbound") & (pl.col("outcome") == "established"))
        .rename(
            {
                "local_ip": "remote_ip",
                "local_port": "remote_port",
                "remote_ip": "local_ip",
                "remote_port": "local_port",
            }
        )
        .group_by(key)
        .agg(pl.len().cast(pl.Int64).alias("inbound"))
    )
    server = served.join(in_n, on=key, how="left").with_columns(pl.col("inbound").fill_null(0))
    by = dict(made.group_by("outcome").len().iter_rows())  # after _kind
    return client, server, by


def is_connection(table: pa.Table) -> pa.Array:
    """Rows of connections (the handshake completed), as opposed to failed attempts."""
    outcome = table.column("outcome")
    done = pc.is_in(outcome, value_set=pa.array(["established", "reset"]))
    return pc.or_(pc.is_null(outcome), done)


KINDS = ("connections", "translated connections", "failed attempts")


def translated(table: pa.Table, gateway_ip: str) -> pa.Array:
    """Server rows of connections the NAT gateway translated: from its address and from a
    port of its LANs (the ports its own connections use are another range)."""
    low, high = min(r[0] for r in LAN_PORTS), max(r[1] for r in LAN_PORTS)
    port = table.column("remote_port")
    return pc.and_(
        pc.and_(
            pc.equal(table.column("direction"), "inbound"),
            pc.equal(table.column("remote_ip"), gateway_ip),
        ),
        pc.and_(pc.greater_equal(port, low), pc.less_equal(port, high)),
    )


def by_kind(attributed: pa.Table, truth: pa.Table, gateway_ip: str) -> dict[str, EvalReport]:
    """The same evaluation on connections alone (but the translated ones), on the gateway's
    translated connections alone (their server rows: unattributed, by design), and on failed
    attempts alone."""
    connected = is_connection(attributed)
    nat = translated(attributed, gateway_ip)
    return {
        "connections": evaluate(attributed.filter(pc.and_(connected, pc.invert(nat))), truth),
        "translated connections": evaluate(attributed.filter(pc.and_(connected, nat)), truth),
        "failed attempts": evaluate(attributed.filter(pc.invert(connected)), truth),
    }


def run_lab(cfg: KernelRun, out_dir: str | None) -> dict[str, Any]:
    """Build the fleet, run it for `cfg.duration_s`, tear it down; the captured inputs."""
    if os.geteuid() != 0:
        raise CapabilityError("demo --kernel needs root (network namespaces, cgroups, eBPF)")
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="flowtrail-kernel-"))
    out.mkdir(parents=True, exist_ok=True)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        fleet = Fleet(out / "lab", hosts=cfg.hosts, slots=cfg.slots, rate=cfg.rate, seed=cfg.seed)
        with fleet:
            say(
                f"{cfg.hosts} hosts, {cfg.slots} workloads, a load balancer at {fleet.vip}; "
                f"{cfg.duration_s:.0f} s, ~{cfg.rate:g} connections/s"
            )
            with agents(fleet, out / "agents") as dirs:
                fleet.start_workloads()
                _churn(fleet, cfg)
                fleet.stop_all()
                say("workloads stopped; agents flushing")
            flows = exported(dirs)
            made = attempts(fleet)
            drops = capture_drops(out / "agents", cfg.hosts)
            result = {
                "flows": flows,  # with the listeners' `listening` rows: heartbeats, not flows
                "listening_rows": int(
                    pc.sum(pc.equal(flows.column("outcome"), "listening")).as_py() or 0
                ),
                "events": fleet.events(),
                "regions": fleet.regions(),
                "truth": fleet.truth(),
                "attempts": made,
                "capture_drops": drops,
                "handovers": fleet.handovers,
                "across_hosts": fleet.across_hosts,
                "gateway_ip": fleet.router.ip,
                "overlap_prefix": fleet.overlap_prefix,
            }
        say("namespaces, cgroups and processes removed")
        if out_dir is not None:  # the inputs, as `flowtrail attribute` and `eval` read them
            for name in ("flows", "events", "regions", "truth"):
                write_table(result[name], out / f"{name}.parquet")
        return result
    finally:
        signal.signal(signal.SIGTERM, previous)
        if out_dir is None:
            shutil.rmtree(out, ignore_errors=True)


def _churn(fleet: Fleet, cfg: KernelRun) -> None:
    start = time.monotonic()
    next_report = start + 10
    halfway = False
    while (now := time.monotonic()) - start < cfg.duration_s:
        time.sleep(max(0.0, min(cfg.churn_s - fleet.settle_s, cfg.duration_s - (now - start))))
        if time.monotonic() - start >= cfg.duration_s:
            break
        fleet.hand_over()
        if not halfway and time.monotonic() - start >= cfg.duration_s / 2:
            halfway = True
            fleet.halfway()
        if time.monotonic() >= next_report:
            next_report += 10
            made = sum(len(f.read_text().splitlines()) for f in fleet.logs.glob("*.jsonl"))
            say(
                f"{time.monotonic() - start:.0f}/{cfg.duration_s:.0f} s: {made:,} attempts, "
                f"{fleet.handovers} handovers ({fleet.across_hosts} across hosts)"
            )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM tears down like Ctrl-C
